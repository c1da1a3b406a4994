"""tieredImageNet (Ren et al., ICLR 2018): 351 / 97 / 160 ImageNet classes in 34 superclasses,
84x84 RGB, ImageNet mean/std.

Accepted layouts inside ``source`` (first match wins):

1. the common pickles ``{train,val,test}_images_png.pkl`` (a list of PNG-encoded images) with
   ``{split}_labels.pkl`` (a dict with ``label_specific`` [N] and ``label_specific_str``, the
   class names; ``label_general*`` are the superclasses), as released with the paper;
2. ``{split}_images.npz`` (key ``images``, uint8 [N, 84, 84, 3]) with the same label pickles;
3. split folders ``{train,val,test}/<wnid>/*.jpg|png`` (read as a folder dataset).

The class split is the one the files carry (no list is shipped: the 608 class ids are defined by
the released files). PNG pickles are decoded once into an ``.npz`` per split, keyed by the
pickle's size and mtime and the image size.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mamlpp.data.files import find_in_usual_folders
from mamlpp.data.folder import load_folder_dataset
from mamlpp.data.image_cache import (
    CACHE_VERSION,
    cache_folder,
    cached_images,
    decode_images,
    file_stamp,
    fingerprint,
)
from mamlpp.data.images import Preprocessing
from mamlpp.data.miniimagenet import _ArrayUnpickler, imagenet_split
from mamlpp.data.split_layout import SPLIT_NAMES
from mamlpp.data.stats import IMAGENET_MEAN, IMAGENET_STD
from mamlpp.data.structures import FewShotSplit
from mamlpp.data.table import dataset
from mamlpp.errors import DataError

FOLDER_NAMES = ("tiered-imagenet", "tieredimagenet", "tiered_imagenet", "tieredImageNet")
PREPROCESSING = Preprocessing(84, 3, IMAGENET_MEAN, IMAGENET_STD, resample="bicubic")


def how_to_get(folder: Path) -> str:
    """The one-line answer to "where do I get tieredImageNet?" (the dataset table's hint)."""
    files = dataset("tiered-imagenet").files
    assert files is not None
    return files.how_to_get(folder)


def find_tiered_imagenet(root: str | os.PathLike[str] | None = None) -> Path | None:
    """The first of ``root`` and ``root/<usual folder names>`` holding a known layout."""
    return find_in_usual_folders(root, FOLDER_NAMES, lambda folder: _layout(folder) is not None)


def _layout(source: Path) -> str | None:
    if (source / "train_labels.pkl").is_file():
        if (source / "train_images_png.pkl").is_file():
            return "png-pickle"
        if (source / "train_images.npz").is_file():
            return "npz"
    if all((source / split).is_dir() for split in SPLIT_NAMES):
        return "folders"
    return None


def load_tiered_imagenet(
    source: str | os.PathLike[str],
    image_size: int = 84,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    splits: tuple[str, ...] = SPLIT_NAMES,
    progress: bool = False,
) -> dict[str, FewShotSplit]:
    """tieredImageNet as ``{"train", "val", "test"}`` FewShotSplits (uint8, ImageNet mean/std)."""
    root = Path(source).expanduser()
    layout = _layout(root) if root.is_dir() else None
    if layout is None:
        raise DataError(how_to_get(root))
    if layout == "folders":
        prep = Preprocessing(image_size, 3, IMAGENET_MEAN, IMAGENET_STD, resample="bicubic")
        loaded = load_folder_dataset(root, prep, cache_dir=cache_dir, progress=progress)
        return {split: loaded[split] for split in splits}
    result = {}
    for split in splits:
        names, label = _read_labels(root / f"{split}_labels.pkl")
        if layout == "npz":
            pixels = _read_npz(root / f"{split}_images.npz")
        else:
            pixels = _decode_png_pickle(root, split, label.shape[0], cache_dir, progress)
        if pixels.shape[0] != label.shape[0]:
            raise DataError(
                f"{root}: {split} has {pixels.shape[0]} images but {label.shape[0]} labels"
            )
        meta = {"dataset": "tiered-imagenet", "source": str(root), "format": layout}
        result[split] = imagenet_split(
            split, torch.from_numpy(pixels), torch.from_numpy(label), names, image_size, meta
        )
    return result


def _load_pickle(path: Path) -> object:
    if not path.is_file():
        raise DataError(f"missing {path}")
    try:
        with open(path, "rb") as handle:
            try:
                return _ArrayUnpickler(handle).load()
            except UnicodeDecodeError:  # written by Python 2
                handle.seek(0)
                return _ArrayUnpickler(handle, encoding="latin1").load()
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise DataError(f"{path} is not a tieredImageNet pickle ({error})") from None


def _read_labels(path: Path) -> tuple[list[str], np.ndarray]:
    """(class names, class index per image)."""
    data = _load_pickle(path)
    if not isinstance(data, dict) or "label_specific" not in data:
        raise DataError(f"{path} lacks the key label_specific")
    label = np.asarray(data["label_specific"], dtype=np.int64).reshape(-1)
    count = int(label.max()) + 1 if label.size else 0
    raw = data.get("label_specific_str")
    names = (
        [v.decode("latin1") if isinstance(v, bytes) else str(v) for v in raw]
        if raw is not None
        else [f"class{i:03d}" for i in range(count)]
    )
    if label.size == 0 or label.min() < 0 or count > len(names):
        raise DataError(f"{path}: label_specific outside 0..{len(names) - 1}")
    return names, label


def _read_npz(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as data:
            pixels = data["images"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise DataError(f"cannot read images from {path}: {error}") from None
    if pixels.ndim != 4 or pixels.shape[-1] != 3 or pixels.dtype != np.uint8:
        raise DataError(f"{path}: images should be uint8 [N, H, W, 3], got {pixels.shape}")
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))


def _decode_png_pickle(
    root: Path, split: str, count: int, cache_dir: str | os.PathLike[str] | None, progress: bool
) -> np.ndarray:
    """uint8 [N, 3, 84, 84] of ``{split}_images_png.pkl`` (``count`` images expected), through
    an .npz cache."""
    path = root / f"{split}_images_png.pkl"
    if not path.is_file():
        raise DataError(f"missing {path}")
    # One pickle holds the split, so its stamp alone names the cache (the recipe is fixed).
    key = fingerprint(f"tiered-v{CACHE_VERSION}:{file_stamp(path)}")
    cache = cache_folder(root, cache_dir) / f"tiered-imagenet-{split}-{key}.npz"

    def decode_pickle() -> np.ndarray:
        encoded = _load_pickle(path)
        if not isinstance(encoded, list | np.ndarray):
            raise DataError(f"{path} should hold a list of PNG-encoded images")
        items: Sequence[object] = encoded if isinstance(encoded, list) else list(encoded)
        return decode_images(
            items, decode, PREPROCESSING.shape, f"decoding tieredImageNet {split}", progress
        )

    def decode(item: object, i: int) -> np.ndarray:
        data = item.tobytes() if isinstance(item, np.ndarray) else bytes(item)  # type: ignore[call-overload]
        return PREPROCESSING.pixels(data, f"{path.name}[{i}]")

    return cached_images(cache, count, PREPROCESSING.image_size, decode_pickle)[0]
