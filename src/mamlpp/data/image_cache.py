"""Decoded images kept as one uint8 ``.npz`` so that only the first load decodes files.

One cache for the folder, mini-ImageNet and tieredImageNet loaders (Omniglot shares the version
and the file stamps, but packs its pixels into bits, see :mod:`mamlpp.data.omniglot`):

* :data:`CACHE_VERSION`: bumping it rebuilds every cache;
* :func:`fingerprint` names a cache after how its images were made (a per-dataset recipe) and
  the :func:`file_stamp` (name, size, mtime) of each source file, so a changed file rebuilds it;
* :func:`cached_images` returns the cached ``[M, C, S, S]``, or builds it (usually with
  :func:`decode_images`, which shows a progress bar) and stores it atomically: a failed write
  only costs later loads their speed-up; an unreadable or ill-fitting cache is built again;
* :func:`remove_stale` deletes the earlier caches a new one replaces, where their names say
  whose they are (the folder loader's hidden cache inside the image folder).
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from mamlpp.data.files import data_dir, is_writable_dir, make_dirs
from mamlpp.errors import DataError
from mamlpp.util.atomic import atomic_write
from mamlpp.util.progress import progress_bar

# The version of every decoded-image cache (and of Omniglot's packed one): bump it when the
# decoding changes, and each loader rebuilds its cache on the next load.
CACHE_VERSION = 1

T = TypeVar("T")


def file_stamp(path: Path, name: str | None = None) -> str:
    """``name:size:mtime_ns`` of a file (``size:mtime_ns`` without a name): what marks a source
    file as changed for a cache."""
    try:
        stat = path.stat()
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from None
    prefix = "" if name is None else f"{name}:"
    return f"{prefix}{stat.st_size}:{stat.st_mtime_ns}"


def fingerprint(recipe: str, stamps: Iterable[str] = ()) -> str:
    """16 hex digits naming a cache: sha256 of ``recipe`` (how the images were made, with
    :data:`CACHE_VERSION`) and of each file's stamp (see :func:`file_stamp`)."""
    digest = hashlib.sha256(recipe.encode())
    for stamp in stamps:
        digest.update(f"{stamp};".encode())
    return digest.hexdigest()[:16]


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
    items: Sequence[T],
    decode: Callable[[T, int], np.ndarray],
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


def remove_stale(path: Path, naming: re.Pattern[str]) -> list[Path]:
    """Delete the files beside ``path`` whose whole name ``naming`` matches, ``path`` itself
    excepted: the earlier caches of the same source that ``path`` replaces. Only plain files
    are deleted, and one that cannot be is left; returns the ones deleted."""
    removed: list[Path] = []
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return removed
    for other in siblings:
        if other.name == path.name or not naming.fullmatch(other.name):
            continue
        try:
            if other.is_file() and not other.is_symlink():
                other.unlink()
                removed.append(other)
        except OSError:
            pass  # another process's, or read-only: it only costs disk space
    return removed


def cached_images(
    path: Path,
    count: int,
    image_size: int,
    build: Callable[[], np.ndarray],
    *,
    replaces: re.Pattern[str] | None = None,
) -> tuple[np.ndarray, Path | None]:
    """uint8 ``[count, C, S, S]`` from the cache at ``path`` when it fits, else ``build()``
    stored there; with the cache's path, or None when it could not be written.

    ``replaces``: the naming pattern of the earlier caches of the same source only (a cache
    folder shared by several sources must not pass one); once a new cache is written, the
    files beside it that match it are deleted (see :func:`remove_stale`)."""
    images = read_images(path, count, image_size)
    if images is not None:
        return images, path
    images = build()
    written = write_images(path, images)
    if written is not None and replaces is not None:
        remove_stale(written, replaces)
    return images, written
