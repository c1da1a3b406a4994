"""Omniglot class splits: the MAML++ reference split (computed) and the Vinyals split (from files).

Class names are ``Alphabet/characterNN`` (background and evaluation alphabets pooled; the names
are unique across the two).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mamlpp.data.split_layout import SPLIT_NAMES, SPLITS_DIR, read_lines
from mamlpp.errors import DataError

# MAML++ ``train_val_test_split`` for Omniglot. int(f * 1623) truncates 1150.99999 to 1150 and
# 1200.99999 to 1200, giving 1150 / 50 / 423 classes.
REFERENCE_FRACTIONS = (0.70918052988, 0.03080714725, 0.2606284658)
# The shipped seed0_*.txt files shuffle with RandomState(0). The reference code instead replaces
# val_seed=0 by RandomState(0).randint(1, 999999) == 985773 before shuffling; that gives a
# different (same-sized) split. See docs/data.md.
REFERENCE_SEED = 0
REFERENCE_CODE_SEED = 985773


def reference_split(class_names: list[str], seed: int = REFERENCE_SEED) -> dict[str, list[str]]:
    """The MAML++ split: sort all names, shuffle their indices with RandomState(seed), cut.

    Returns names per split in shuffled order (the order of the seed0_*.txt files), which is also
    the class order of the resulting FewShotSplit.
    """
    names = sorted(class_names)
    order = np.arange(len(names))
    np.random.RandomState(seed).shuffle(order)
    train_end = int(REFERENCE_FRACTIONS[0] * len(names))
    val_end = int((REFERENCE_FRACTIONS[0] + REFERENCE_FRACTIONS[1]) * len(names))
    shuffled = [names[i] for i in order]
    return {
        "train": shuffled[:train_end],
        "val": shuffled[train_end:val_end],
        "test": shuffled[val_end:],
    }


def packaged_reference_split() -> dict[str, list[str]]:
    """The seed0 lists shipped inside the package (copies of shared/data/omniglot/splits/mamlpp)."""
    return {
        name: read_lines(SPLITS_DIR / "omniglot" / "mamlpp" / f"seed0_{name}.txt")
        for name in SPLIT_NAMES
    }


def vinyals_split(split_dir: Path | None = None) -> dict[str, list[tuple[str, int]]]:
    """(character, rotation in degrees) per split, from ``Alphabet/characterNN/rotDDD`` lines."""
    folder = split_dir if split_dir is not None else SPLITS_DIR / "omniglot" / "vinyals"
    result: dict[str, list[tuple[str, int]]] = {}
    for name in SPLIT_NAMES:
        path = folder / f"{name}.txt"
        entries = []
        for line in read_lines(path):
            character, _, rotation = line.rpartition("/")
            if (
                not rotation.startswith("rot")
                or not rotation[3:].isdigit()
                or int(rotation[3:]) % 90
            ):
                raise DataError(
                    f"bad line {line!r} in {path}: expected Alphabet/characterNN/rotDDD"
                )
            entries.append((character, int(rotation[3:]) % 360))
        result[name] = entries
    return result
