"""Decoded images kept as one uint8 ``.npz`` so that only the first load decodes files.

Used by the folder, mini-ImageNet and tieredImageNet loaders: :func:`decode_images` fills
``[M, C, S, S]`` with a progress bar, :func:`write_images` stores it atomically (a failure only
costs later loads their speed-up), :func:`read_images` returns it, or None when the file is
missing, unreadable or of another shape (the caller then decodes again).
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mamlpp.data.files import data_dir, is_writable_dir, make_dirs
from mamlpp.errors import DataError
from mamlpp.util.atomic import atomic_write
from mamlpp.util.progress import progress_bar


def cache_folder(source: Path, cache_dir: str | os.PathLike[str] | None) -> Path:
    """``cache_dir`` if given, else ``source`` when it is writable, else ``<data dir>/cache``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return source if is_writable_dir(source) else data_dir() / "cache"


def read_images(path: Path, count: int, image_size: int) -> np.ndarray | None:
    """The cached uint8 ``[count, C, S, S]``, or None if it is missing or does not fit."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            images = data["images"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None  # unreadable (an old crash, a disk error): decode again
    if images.ndim != 4 or images.shape[0] != count or images.shape[2:] != (image_size,) * 2:
        return None
    return images


def decode_images(
    items: Sequence[object],
    decode: Callable[[object, int], np.ndarray],
    shape: tuple[int, int, int],
    desc: str,
    progress: bool,
) -> np.ndarray:
    """uint8 ``[len(items), *shape]`` with ``out[i] = decode(items[i], i)``."""
    images = np.empty((len(items), *shape), dtype=np.uint8)
    bar = progress_bar(len(items), desc, "img", enabled=progress)
    try:
        for i, item in enumerate(items):
            images[i] = decode(item, i)
            bar.update(1)
    finally:
        bar.close()
    return images


def write_images(path: Path, images: np.ndarray) -> Path | None:
    """Store ``images`` at ``path`` (atomically); the path, or None (with a warning) on failure."""
    try:
        make_dirs(path.parent)  # <data dir>/cache may not exist yet
        with atomic_write(path) as handle:
            np.savez(handle, images=images)
    except (DataError, OSError) as error:
        warnings.warn(f"could not write the image cache {path}: {error}", stacklevel=2)
        return None
    return path
