"""Atomic checkpoints for exact resume, readable with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts:

* ``model``: the learner's state dict (weights, BN gamma/beta, running statistics, LSLR table)
* ``optimizer``: Adam's state dict (moments, step counts, current learning rate)
* ``schedule``: the per-epoch schedule values in force (outer lr, MSL weights, derivative order);
  they are pure functions of the epoch, stored so a checkpoint explains itself
* ``rng``: every random number generator's state (torch CPU and CUDA, numpy, Python)
* ``progress``: ``epoch`` and ``iteration`` (the next to run), ``step`` (iterations done)
* ``config``: the resolved experiment config as a nested dict
* ``history``: ``[[epoch, val accuracy], ...]`` for the top-k selection
* ``timing``, ``shape``: wall-clock seconds so far, and the input shape ``[C, H, W]``

Writes are atomic (temporary file, flush + fsync, ``os.replace``, fsync of the folder): a crash
at any moment leaves either the previous file or the new one, never a mixture.
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mamlpp.errors import MamlppError
from mamlpp.util.atomic import atomic_write

FORMAT_VERSION = 1


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` so that readers see the old file or the new one, whole."""
    with atomic_write(path) as handle:
        torch.save(obj, handle)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint dict (tensors on the CPU); a clear one-line error if it is unreadable."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MamlppError(f"checkpoint {path} does not exist") from None
    except (PermissionError, IsADirectoryError) as error:
        raise MamlppError(f"cannot read checkpoint {path}: {error.strerror or error}") from None
    except Exception as error:  # torch raises many types for a damaged or foreign file
        why = _why_damaged(path, error)
        raise DamagedCheckpoint(f"checkpoint {path} is damaged ({why})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise DamagedCheckpoint(f"{path} is not a mamlpp checkpoint (format {FORMAT_VERSION})")
    return state


class DamagedCheckpoint(MamlppError):
    """A checkpoint file that exists but cannot be loaded (truncated, empty or foreign)."""


def _why_damaged(path: Path, error: Exception) -> str:
    size = path.stat().st_size if path.is_file() else 0
    if size == 0:
        return "an empty file"
    detail = (str(error).strip().splitlines() or [type(error).__name__])[0].split(". ")[0]
    return f"{size} bytes, truncated or not a torch file: {detail}"


def remove_stale_temporaries(folder: Path) -> None:
    """Delete ``.*.tmp`` files left by a write that was killed half-way."""
    for tmp in folder.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()


# ------------------------------------------------------------------------------ RNG states


def capture_rng() -> dict[str, Any]:
    """Every RNG's state as tensors and numbers (so weights_only loading accepts it)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["gauss"],
        )
    )
    python_state = state["python"]
    random.setstate(
        (
            python_state["version"],
            tuple(int(v) for v in python_state["internal"].tolist()),
            python_state["gauss_next"],
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


# ------------------------------------------------------------------------------ top-k


def top_k_epochs(history: list[list[float]], k: int) -> list[int]:
    """Epochs of the k best validation accuracies; ties go to the earlier epoch."""
    ranked = sorted(history, key=lambda item: (-item[1], item[0]))
    return [int(epoch) for epoch, _ in ranked[:k]]


def epoch_checkpoint_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}.pt"


def epoch_of(path: Path) -> int | None:
    """The epoch of an ``epoch-NNNN.pt`` file name, else None."""
    stem = path.name.removesuffix(".pt")
    if path.suffix != ".pt" or not stem.startswith("epoch-"):
        return None
    digits = stem.removeprefix("epoch-")
    return int(digits) if digits.isdigit() else None
