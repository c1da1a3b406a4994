"""mini-ImageNet (Ravi & Larochelle split: 64/16/20 classes x 600 images, 84x84 RGB).

Accepted layouts inside ``source`` (first match wins):

1. pickle caches ``mini-imagenet-cache-{train,val,test}.pkl`` (``validation`` also accepted), each a
   dict with ``image_data`` uint8 [N, 84, 84, 3] and ``class_dict`` {wnid: [row, ...]};
2. split folders ``{train,val,test}/<wnid>/*.jpg``;
3. a flat folder of ``<wnid><8 digits>.jpg`` (``images/`` or ``source`` itself) plus the Ravi CSVs
   ``{train,val,test}.csv`` (from ``source``, else the copies shipped in this package).

Folders are decoded once into an ``.npz`` per split (keyed by a fingerprint of the files) because
decoding 60,000 JPEGs takes minutes; pickles are read directly.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mamlpp.data.files import find_in_usual_folders
from mamlpp.data.image_cache import (
    CACHE_VERSION,
    cache_folder,
    cached_images,
    decode_images,
    file_stamp,
    fingerprint,
)
from mamlpp.data.split_layout import SPLIT_NAMES, SPLITS_DIR
from mamlpp.data.stats import IMAGENET_MEAN, IMAGENET_STD
from mamlpp.data.structures import FewShotSplit, build_class_index
from mamlpp.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
PICKLE_NAMES = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}
FOLDER_NAMES = (
    "miniimagenet",
    "mini-imagenet",
    "mini_imagenet",
    "mini_imagenet_full_size",
    "miniImagenet",
)


def find_mini_imagenet(root: str | os.PathLike[str] | None = None) -> Path | None:
    """The first of ``root`` and ``root/<usual folder names>`` that holds a known layout."""
    return find_in_usual_folders(root, FOLDER_NAMES, lambda folder: _layout(folder) is not None)


def _pickle_path(source: Path, split: str) -> Path | None:
    for name in PICKLE_NAMES[split]:
        path = source / f"mini-imagenet-cache-{name}.pkl"
        if path.is_file():
            return path
    return None


def _flat_folder(source: Path) -> Path | None:
    for folder in (source / "images", source):
        if folder.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
            return folder
    return None


def _layout(source: Path) -> str | None:
    if any(_pickle_path(source, split) for split in SPLIT_NAMES):
        return "pickle"
    if any((source / split).is_dir() for split in SPLIT_NAMES):
        return "folders"
    if _flat_folder(source) is not None:
        return "flat"
    return None


def load_mini_imagenet(
    source: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    image_size: int = 84,
    *,
    splits: tuple[str, ...] = SPLIT_NAMES,
    progress: bool = False,
) -> dict[str, FewShotSplit]:
    """mini-ImageNet as ``{"train", "val", "test"}`` FewShotSplits (uint8, ImageNet mean/std).

    ``splits`` limits which splits are read (mini-ImageNet train alone is ~0.8 GB).
    """
    root = Path(source).expanduser()
    if not root.is_dir():
        raise DataError(
            f"mini-ImageNet folder {root} does not exist (see `mamlpp data download mini-imagenet`)"
        )
    layout = _layout(root)
    if layout is None:
        raise DataError(
            f"no mini-ImageNet found in {root}: expected mini-imagenet-cache-"
            "{train,val,test}.pkl, {train,val,test}/<wnid>/*.jpg, or images/*.jpg "
            "with the Ravi CSVs"
        )
    result = {}
    for split in splits:
        if split not in SPLIT_NAMES:
            raise DataError(f"unknown split {split!r} (choose from {', '.join(SPLIT_NAMES)})")
        if layout == "pickle":
            path = _pickle_path(root, split)
            if path is None:
                raise DataError(f"missing mini-imagenet-cache-{split}.pkl in {root}")
            images, image_class, names = _read_pickle(path)
            cache = None
        else:
            files, image_class, names = (
                _split_folder_files(root, split)
                if layout == "folders"
                else _flat_files(root, split)
            )
            images, cache = _decode_cached(root, split, files, image_size, cache_dir, progress)
        meta = {
            "dataset": "mini-imagenet",
            "source": str(root),
            "format": layout,
            "cache": str(cache) if cache else "(none)",
        }
        labels = torch.from_numpy(image_class)
        result[split] = imagenet_split(split, images, labels, names, image_size, meta)
    return result


def imagenet_split(
    split: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    names: list[str],
    image_size: int,
    meta: dict[str, str],
) -> FewShotSplit:
    """A split of ImageNet-derived images (mini- and tiered-ImageNet): uint8 ``[N, 3, H, W]``
    resized to ``image_size`` if needed, labels ``[N]``, ImageNet normalisation, no rotations."""
    if images.shape[-2:] != (image_size, image_size):
        images = _resize_batch(images, image_size)
    table, counts = build_class_index(labels, len(names))
    return FewShotSplit(
        name=split,
        images=images,
        class_images=table,
        class_counts=counts,
        class_names=names,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        rotate=False,
        meta=meta,
    )


# ----------------------------------------------------------------------------- pickle caches


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers only: a pickle can otherwise run any code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
        # Protocol 2 has no bytes opcode: numpy's raw buffers are pickled as
        # _codecs.encode(latin-1 text), which only turns a str into bytes.
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # numpy.core alias in numpy 2
            return super().find_class(module, name)


def _read_pickle(path: Path) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """-> images uint8 [N, 3, H, W], image_class [N], sorted wnids."""
    try:
        with open(path, "rb") as handle:
            try:
                data = _ArrayUnpickler(handle).load()
            except UnicodeDecodeError:  # pickles written by Python 2
                handle.seek(0)
                data = _ArrayUnpickler(handle, encoding="latin1").load()
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise DataError(f"{path} is not a valid mini-ImageNet pickle ({error})") from None
    if not isinstance(data, dict) or "image_data" not in data or "class_dict" not in data:
        raise DataError(f"{path} lacks the keys image_data and class_dict")
    pixels = data["image_data"]
    if not isinstance(pixels, np.ndarray) or pixels.ndim != 4 or pixels.shape[-1] != 3:
        shape = getattr(pixels, "shape", type(pixels).__name__)
        raise DataError(f"{path}: image_data should be uint8 [N, H, W, 3], got {shape}")
    if pixels.dtype != np.uint8:
        raise DataError(f"{path}: image_data should be uint8, got {pixels.dtype}")
    names = sorted(str(name) for name in data["class_dict"])
    image_class = np.full(pixels.shape[0], -1, dtype=np.int64)
    for index, name in enumerate(names):
        rows = np.asarray(_lookup(data["class_dict"], name), dtype=np.int64).reshape(-1)
        if rows.size == 0 or rows.min() < 0 or rows.max() >= pixels.shape[0]:
            raise DataError(f"{path}: class {name} lists rows outside image_data")
        image_class[rows] = index
    used = image_class >= 0
    if not used.all():  # rows no class claims are dropped (never seen in the public pickles)
        pixels, image_class = pixels[used], image_class[used]
    # NHWC -> NCHW once, here, so episodes are plain gathers later.
    images = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
    return images, image_class, names


def _lookup(class_dict: dict, name: str):
    if name in class_dict:
        return class_dict[name]
    return class_dict[name.encode("latin1")]  # bytes keys from Python 2 pickles


# ----------------------------------------------------------------------------- image folders


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _split_folder_files(root: Path, split: str) -> tuple[list[Path], np.ndarray, list[str]]:
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"missing folder {folder} (expected {split}/<wnid>/*.jpg)")
    names = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not names:
        raise DataError(f"{folder} has no class folders")
    files, labels = [], []
    for index, name in enumerate(names):
        found = _image_files(folder / name)
        if not found:
            raise DataError(f"class folder {folder / name} has no images")
        files.extend(found)
        labels.extend([index] * len(found))
    return files, np.array(labels, dtype=np.int64), names


def _read_csv(root: Path, split: str) -> list[tuple[str, str]]:
    local = root / f"{split}.csv"
    try:
        if local.is_file():
            text = local.read_text(encoding="utf-8")
        else:
            packaged = SPLITS_DIR / "miniimagenet" / "ravi" / f"{split}.csv.gz"
            text = gzip.decompress(packaged.read_bytes()).decode("utf-8")
    except OSError as error:
        raise DataError(f"cannot read the {split} split CSV: {error.strerror or error}") from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise DataError(f"{split}.csv must start with the header 'filename,label'")
    return [(row[0].strip(), row[1].strip()) for row in rows[1:] if len(row) >= 2]


def _flat_files(root: Path, split: str) -> tuple[list[Path], np.ndarray, list[str]]:
    folder = _flat_folder(root)
    assert folder is not None
    rows = _read_csv(root, split)
    names = sorted({label for _, label in rows})
    index = {name: i for i, name in enumerate(names)}
    rows.sort(key=lambda row: (index[row[1]], row[0]))
    files = [folder / filename for filename, _ in rows]
    missing = [path for path in files if not path.is_file()]
    if missing:
        raise DataError(
            f"missing image {missing[0]} named in {split}.csv "
            f"({len(missing)} of {len(files)} missing)"
        )
    return files, np.array([index[label] for _, label in rows], dtype=np.int64), names


def _decode_cached(
    root: Path,
    split: str,
    files: list[Path],
    image_size: int,
    cache_dir: str | os.PathLike[str] | None,
    progress: bool,
) -> tuple[torch.Tensor, Path | None]:
    """uint8 ``[len(files), 3, S, S]`` from the cache when it is current, else decoded (and
    cached); the cache file's path, or None when it could not be written."""
    # The recipe is fixed (RGB, bicubic) but for the size; files are named by class folder.
    key = fingerprint(
        f"mini-imagenet-v{CACHE_VERSION}:{image_size}",
        (file_stamp(path, f"{path.parent.name}/{path.name}") for path in files),
    )
    path = cache_folder(root, cache_dir) / f"miniimagenet-{split}-{image_size}px-{key}.npz"
    images, written = cached_images(
        path,
        len(files),
        image_size,
        lambda: decode_images(
            files,
            lambda file, _: _decode_image(file, image_size),
            (3, image_size, image_size),
            f"decoding mini-ImageNet {split}",
            progress,
        ),
    )
    return torch.from_numpy(images), written


def _decode_image(path: Path, image_size: int) -> np.ndarray:
    """JPEG/PNG -> uint8 [3, S, S]; bicubic resize only when the file is not S x S already."""
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
            if image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
            return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"corrupt image {path}: {error}") from None


def _resize_batch(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Resize uint8 [N, C, H, W] (pickles of another size) with antialiased bilinear."""
    out = torch.empty((images.shape[0], images.shape[1], image_size, image_size), dtype=torch.uint8)
    for start in range(0, images.shape[0], 1024):  # chunks: float copies of 38k images = 3 GB
        chunk = images[start : start + 1024].float()
        chunk = torch.nn.functional.interpolate(
            chunk, size=(image_size, image_size), mode="bilinear", antialias=True
        )
        out[start : start + 1024] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return out
