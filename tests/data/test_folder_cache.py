"""The cache of a folder dataset: a new cache replaces the stale ones of the same image folder
(the user's own files are never touched), and a cache folder shared by several image folders
keeps every folder's cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _images(root: Path, classes: int = 6, per_class: int = 2, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")


def _load(root: Path, image_size: int = 16, cache_dir: Path | None = None) -> Path:
    from mamlpp.data.folder import load_folder_dataset
    from mamlpp.run.datasource import preprocessing_for
    from mamlpp.run.experiment import DataSection

    prep = preprocessing_for(DataSection(dataset="folder", channels="rgb", image_size=image_size))
    splits = load_folder_dataset(
        root, prep, val_fraction=0.2, test_fraction=0.2, cache_dir=cache_dir
    )
    return Path(splits["train"].meta["cache"])


def _caches(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "mamlpp-folder-" in p.name)


def test_a_new_folder_cache_replaces_the_stale_ones(tmp_path: Path) -> None:
    root = tmp_path / "images"
    _images(root)
    # The user's own files that look a little like caches are never touched.
    mine = [".mamlpp-folder-notes.npz", "mamlpp-folder-16px-0123456789abcdef.npz", ".x.npz"]
    for name in mine:
        (root / name).write_bytes(b"mine")
    first = _load(root)
    assert first.parent == root and first.name.startswith(".mamlpp-folder-16px-")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / "class0" / "new.png")
    second = _load(root)  # the files changed: a new cache
    third = _load(root, image_size=12)  # the preprocessing changed: another one
    assert len({first, second, third}) == 3
    assert [p.name for p in root.iterdir() if p.name.startswith(".mamlpp-folder-")].count(
        third.name
    ) == 1
    assert _caches(root) == sorted([third.name, *mine[:2]])
    assert all((root / name).read_bytes() == b"mine" for name in mine)
    assert _load(root, image_size=12) == third  # read again, kept


def test_a_shared_cache_folder_keeps_other_folders_caches(tmp_path: Path) -> None:
    """In a cache folder that several image folders share, a cache name does not say whose it
    is: nothing is removed there."""
    shared = tmp_path / "cache"
    for name in ("a", "b"):
        _images(tmp_path / name, seed=len(name))
        _load(tmp_path / name, cache_dir=shared)
    assert len(_caches(shared)) == 2
