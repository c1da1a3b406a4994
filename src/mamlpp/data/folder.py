"""Few-shot datasets from a folder of the user's own images (``data.dataset = "folder"``).

Two layouts (the first that matches wins)::

    DIR/train/<class>/*.png|jpg|..., DIR/val/<class>/..., DIR/test/<class>/...   split folders
    DIR/<class>/*.png|jpg|...                                                     one flat folder

Images are files of any format Pillow reads (:data:`~mamlpp.data.picture.PICTURE_SUFFIXES`),
read as a person sees them (:func:`~mamlpp.data.picture.read_picture`); other files are skipped
and named in a note.

A flat folder is split by class: the sorted class names are shuffled with
``numpy.random.default_rng(split_seed)``; the last ``round(n * test_fraction)`` classes of that
order are the test split, the ``round(n * val_fraction)`` before them validation, the rest train.

Every image goes through one :class:`~mamlpp.data.images.Preprocessing` (size, channels,
resizing rule), so ``mamlpp adapt`` can prepare new images exactly the same way. The first load
decodes all images into a uint8 ``.npz`` cache keyed by a fingerprint of the files (path, size,
mtime) and of the preprocessing; later loads read only that file. ``channels=None`` ("auto")
keeps one channel when every image is grey (R, G, B within
:data:`~mamlpp.data.picture.GREY_TOLERANCE` after decoding), else three.

Groups and sources, for fine-grained episodes (see :class:`~mamlpp.data.sampler.EpisodeSampler`),
are off by default (today's layouts, bitwise the same splits)::

    groups="folders"       DIR/[train|val|test/]<group>/<class>/*.png: class names "group/class";
                           a flat folder is split by group (the fractions count groups)
    sources="subfolders"   <class>/<source>/*.png: an image's source is its sub-folder
    sources="pattern"      the one group of ``source_pattern`` searched in each file name

Both are read from the paths on every load; the cache holds only pixels, keyed by every file's
path, so it needs no key of its own for them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mamlpp.data.grouping import Grouping
from mamlpp.data.image_cache import (
    CACHE_VERSION,
    cache_folder,
    cached_images,
    decode_images,
    file_stamp,
    fingerprint,
)
from mamlpp.data.images import Preprocessing, list_class_folders, list_images, skipped_note
from mamlpp.data.picture import READER_VERSION, is_grey
from mamlpp.data.split_layout import SPLIT_NAMES
from mamlpp.data.structures import FewShotSplit, build_class_index
from mamlpp.errors import DataError


def folder_layout(root: Path) -> str:
    """``"splits"`` if ``root`` has any of train/ val/ test/, else ``"flat"``."""
    if any((root / name).is_dir() for name in SPLIT_NAMES):
        return "splits"
    return "flat"


def class_files(folder: Path, skipped: list[Path] | None = None) -> dict[str, list[Path]]:
    """``{class name: image files}`` of the class folders in ``folder``; refuses empty classes.
    Files that are not pictures Pillow reads are appended to ``skipped`` (when given)."""
    classes = {}
    for class_folder in list_class_folders(folder):
        files = list_images(class_folder, skipped)
        if not files:
            raise DataError(
                f"class folder {class_folder} has no images (any format Pillow reads: "
                ".png, .jpg, .webp, .bmp, .gif, .tif, ...)"
            )
        classes[class_folder.name] = files
    if not classes:
        raise DataError(f"{folder} has no class folders (expected {folder}/<class>/*.png|jpg)")
    return classes


def split_classes(
    names: list[str], val_fraction: float, test_fraction: float, seed: int, what: str = "classes"
) -> dict[str, list[str]]:
    """The seeded class split of a flat folder (see the module docstring); names sorted.
    ``what`` names the things split in the error (``"groups"`` when whole groups are split)."""
    order = sorted(names)
    permuted = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    n_test = round(len(order) * test_fraction)
    n_val = round(len(order) * val_fraction)
    n_train = len(order) - n_val - n_test
    if min(n_train, n_val, n_test) < 1:
        raise DataError(
            f"{len(order)} {what} cannot be split into train/val/test with "
            f"val_fraction={val_fraction} and test_fraction={test_fraction} "
            f"({n_train}/{n_val}/{n_test} {what}); add {what} or use split folders"
        )
    return {
        "train": sorted(permuted[:n_train]),
        "val": sorted(permuted[n_train : n_train + n_val]),
        "test": sorted(permuted[n_train + n_val :]),
    }


def _gather(
    root: Path,
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
    grouping: Grouping,
    skipped: list[Path] | None = None,
) -> tuple[dict[str, list[str]], dict[str, list[Path]]]:
    """(split -> class keys, class key -> files). Keys are ``split/class`` for split folders
    (a class name may appear in two splits), plain class names for a flat folder; with groups
    the class part is ``group/class``."""
    if folder_layout(root) == "flat":
        files = grouped_class_files(root, grouping, skipped)
        if grouping.groups == "folders":
            return _split_by_group(list(files), val_fraction, test_fraction, split_seed), files
        return split_classes(list(files), val_fraction, test_fraction, split_seed), files
    missing = [name for name in SPLIT_NAMES if not (root / name).is_dir()]
    if missing:
        raise DataError(
            f"{root} has split folders but no {', '.join(m + '/' for m in missing)} "
            "(expected train/, val/ and test/, each with <class>/ folders)"
        )
    splits, files = {}, {}
    for split in SPLIT_NAMES:
        found = grouped_class_files(root / split, grouping, skipped)
        splits[split] = [f"{split}/{name}" for name in found]
        files.update({f"{split}/{name}": paths for name, paths in found.items()})
    return splits, files


def split_listing(
    root: str | os.PathLike[str],
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
    grouping: Grouping | None = None,
) -> dict[str, tuple[list[str], list[int]]]:
    """``{split: (class names, images per class)}`` of the folder, as
    :func:`load_folder_dataset` splits and names it, from the file listing alone: nothing is
    decoded or cached (what a data check needs before loading)."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"image folder {base} does not exist (pass it with --data-dir DIR)")
    grouping = grouping or Grouping()
    splits, files = _gather(base, val_fraction, test_fraction, split_seed, grouping)
    flat = folder_layout(base) == "flat"
    return {
        split: ([_class_name(key, flat) for key in keys], [len(files[key]) for key in keys])
        for split, keys in splits.items()
    }


def _class_name(key: str, flat: bool) -> str:
    """A class's name from its key: flat keys are the names; split-folder keys carry
    ``split/`` in front."""
    return key if flat else key.split("/", 1)[1]


def load_folder_dataset(
    root: str | os.PathLike[str],
    preprocessing: Preprocessing,
    *,
    auto_channels: bool = False,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    split_seed: int = 0,
    groups: str = "none",
    sources: str = "none",
    source_pattern: str = "",
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
    say: Callable[[str], None] | None = None,
) -> dict[str, FewShotSplit]:
    """``{"train", "val", "test"}`` FewShotSplits of the images under ``root``.

    ``preprocessing`` gives the size, resizing rule and normalisation; with ``auto_channels``
    its channel count is only the decoding width (use 3) and grey datasets keep one channel.
    ``groups``, ``sources`` and ``source_pattern``: see the module docstring.
    Files in class folders that are not pictures are named in one line given to ``say``.
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"image folder {base} does not exist (pass it with --data-dir DIR)")
    grouping = Grouping(groups, sources, source_pattern)
    skipped: list[Path] = []
    splits, files = _gather(base, val_fraction, test_fraction, split_seed, grouping, skipped)
    note = skipped_note(skipped)
    if note is not None and say is not None:
        say(note)
    keys = sorted(files)  # all classes, the cache's order
    paths = [path for key in keys for path in files[key]]
    image_class = np.repeat(np.arange(len(keys)), [len(files[k]) for k in keys])
    images, cache = _decode_cached(base, paths, preprocessing, auto_channels, cache_dir, progress)
    channels = images.shape[1]
    if channels != preprocessing.channels:  # auto: the grey dataset keeps one channel
        preprocessing = replace(
            preprocessing, channels=channels, mean=preprocessing.mean[:1], std=preprocessing.std[:1]
        )
    pixels = torch.from_numpy(images)
    table, _ = build_class_index(torch.from_numpy(image_class), len(keys))
    index = {key: i for i, key in enumerate(keys)}
    meta = {
        "dataset": f"folder ({folder_layout(base)} layout{grouping.describe()})",
        "source": str(base),
        "cache": str(cache) if cache else "(not written)",
        "preprocessing": json.dumps(preprocessing.to_dict()),
    }
    flat = folder_layout(base) == "flat"
    source_ids = _image_sources(grouping, paths)  # int64 [M] in cache order, or None
    result = {}
    for split in SPLIT_NAMES:
        rows = [table[index[key], : len(files[key])] for key in splits[split]]
        counts = torch.tensor([len(r) for r in rows], dtype=torch.int64)
        ids = torch.cat(rows)
        local = torch.repeat_interleave(torch.arange(len(rows)), counts)
        class_images, _ = build_class_index(local, len(rows))
        names = [_class_name(key, flat) for key in splits[split]]
        result[split] = FewShotSplit(
            name=split,
            images=pixels[ids].contiguous(),
            class_images=class_images,
            class_counts=counts,
            class_names=names,
            mean=preprocessing.mean,
            std=preprocessing.std,
            rotate=False,
            meta=dict(meta),
            **_class_groups(grouping, names),
            image_sources=None if source_ids is None else source_ids[ids],
        )
    return result


# ----------------------------------------------------------------------------- groups + sources


def _split_by_group(
    keys: list[str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[str]]:
    """A flat folder's "group/class" keys split by whole groups: the seeded split of the group
    names (:func:`split_classes`) sends every class of a group to the group's split."""
    group_of = {key: key.split("/", 1)[0] for key in keys}
    by_group = split_classes(
        sorted(set(group_of.values())), val_fraction, test_fraction, seed, "groups"
    )
    return {
        split: sorted(key for key in keys if group_of[key] in set(chosen))
        for split, chosen in by_group.items()
    }


def grouped_class_files(
    folder: Path, grouping: Grouping, skipped: list[Path] | None = None
) -> dict[str, list[Path]]:
    """``{class key: image files}`` under ``folder``: ``group/class`` keys with groups, each
    class's files from its source sub-folders with ``sources="subfolders"`` (sorted by path)."""
    if grouping.groups == "none":
        return _classes_with_sources(folder, grouping, skipped)
    classes = {}
    for group in list_class_folders(folder):
        if list_images(group):
            raise DataError(
                f"group folder {group} holds images itself; with data.groups=folders the "
                f"classes are its sub-folders: {folder}/<group>/<class>/*.png"
            )
        found = _classes_with_sources(group, grouping, skipped)
        classes.update({f"{group.name}/{name}": files for name, files in found.items()})
    if not classes:
        raise DataError(f"{folder} has no group folders (expected {folder}/<group>/<class>/*.png)")
    return classes


def _classes_with_sources(
    folder: Path, grouping: Grouping, skipped: list[Path] | None = None
) -> dict[str, list[Path]]:
    """:func:`class_files`, or with ``sources="subfolders"`` the images of each class's source
    sub-folders (``<class>/<source>/*.png``)."""
    if grouping.sources != "subfolders":
        return class_files(folder, skipped)
    classes = {}
    for class_folder in list_class_folders(folder):
        if list_images(class_folder):
            raise DataError(
                f"class folder {class_folder} holds images itself; with data.sources=subfolders "
                "they go in one sub-folder per source: <class>/<source>/*.png"
            )
        files = [
            path
            for source in list_class_folders(class_folder)
            for path in list_images(source, skipped)
        ]
        if not files:
            raise DataError(
                f"class folder {class_folder} has no images in source sub-folders "
                "(<class>/<source>/*.png)"
            )
        classes[class_folder.name] = files
    if not classes:
        raise DataError(f"{folder} has no class folders (expected {folder}/<class>/<source>/*.png)")
    return classes


# ----------------------------------------------------------------------------- decode + cache

# The name of the cache _decode_cached keeps inside an image folder, and nothing else.
_OWN_CACHE = re.compile(r"\.mamlpp-folder-[0-9]+px-[0-9a-f]{16}\.npz")


def _decode_cached(
    root: Path,
    paths: list[Path],
    preprocessing: Preprocessing,
    auto_channels: bool,
    cache_dir: str | os.PathLike[str] | None,
    progress: bool,
) -> tuple[np.ndarray, Path | None]:
    """uint8 ``[M, C, S, S]`` of ``paths`` (from the cache when it is current)."""
    # The recipe is the whole preprocessing: the same files prepared another way are another cache.
    recipe = {
        **preprocessing.to_dict(),
        "auto_channels": auto_channels,
        "version": CACHE_VERSION,
        "reader": READER_VERSION,  # EXIF orientation, transparency on white, ...
    }
    key = fingerprint(
        json.dumps(recipe, sort_keys=True),
        (file_stamp(path, path.relative_to(root).as_posix()) for path in paths),
    )
    folder = cache_folder(root, cache_dir)
    name = f"mamlpp-folder-{preprocessing.image_size}px-{key}.npz"
    inside = folder == root
    path = folder / (f".{name}" if inside else name)  # hidden: never taken for a class

    def decode() -> np.ndarray:
        images = decode_images(
            paths,
            lambda file, _: preprocessing.pixels(file, str(file)),
            preprocessing.shape,
            f"decoding {root.name}",
            progress,
        )
        if auto_channels and images.shape[1] == 3 and is_grey(np.moveaxis(images, 1, -1)):
            images = luma(images)  # as a one-channel model's preprocessing makes them grey
        return images

    # Inside the image folder every such cache is this folder's: a new one replaces the others
    # (older files or preprocessing). A cache folder that other folders share keeps them all,
    # since a name there does not say which folder it belongs to.
    replaces = _OWN_CACHE if inside else None
    return cached_images(path, len(paths), preprocessing.image_size, decode, replaces=replaces)


def luma(images: np.ndarray) -> np.ndarray:
    """uint8 ``[M, 1, S, S]`` grey of uint8 RGB ``[M, 3, S, S]`` by PIL's ITU-R 601 rule (what
    ``convert("L")`` computes; exactly R where R = G = B)."""
    rgb = images.astype(np.uint32)
    grey = (rgb[:, 0] * 19595 + rgb[:, 1] * 38470 + rgb[:, 2] * 7471 + 0x8000) >> 16
    return np.ascontiguousarray(grey[:, None].astype(np.uint8))


def _class_groups(grouping: Grouping, names: list[str]) -> dict[str, Any]:
    """FewShotSplit's ``class_groups`` and ``group_names`` for classes named "group/class"
    (the groups of this split, sorted); nothing without groups."""
    if grouping.groups == "none":
        return {}
    group_of = [name.split("/", 1)[0] for name in names]
    group_names = tuple(sorted(set(group_of)))
    ids = {group: g for g, group in enumerate(group_names)}
    return {
        "class_groups": torch.tensor([ids[g] for g in group_of], dtype=torch.int64),
        "group_names": group_names,
    }


def _image_sources(grouping: Grouping, paths: list[Path]) -> torch.Tensor | None:
    """int64 ``[len(paths)]``: the source of each image as an id into the sorted source
    names of the whole folder (so one person has one id in every class); None without
    sources. A file name the pattern does not match is a one-line error naming the file."""
    if grouping.sources == "none":
        return None
    if grouping.sources == "subfolders":
        names = [path.parent.name for path in paths]
    else:
        pattern = re.compile(grouping.source_pattern)
        names = []
        for path in paths:
            found = pattern.search(path.name)
            if found is None or found.group(1) is None:
                raise DataError(
                    f"{path} does not match data.source_pattern {grouping.source_pattern!r} "
                    "(its one group is the image's source)"
                )
            names.append(found.group(1))
    ids = {name: i for i, name in enumerate(sorted(set(names)))}
    return torch.tensor([ids[name] for name in names], dtype=torch.int64)
