"""CIFAR-FS and FC100: few-shot splits of CIFAR-100 (100 classes x 600 images, 32x32 RGB).

Source: the official "CIFAR-100 python version" (www.cs.toronto.edu/~kriz/cifar.html), either the
tarball ``cifar-100-python.tar.gz`` (read directly, nothing is extracted) or its extracted folder
``cifar-100-python/`` with the pickles ``train``, ``test`` and ``meta``. Each data pickle is a dict
with ``data`` uint8 [N, 3072] (red, green, blue planes of 32x32), ``fine_labels`` and
``coarse_labels``; ``meta`` names the classes (``fine_label_names``, ``coarse_label_names``).
The official train and test images are pooled (600 per class) and split by class:

* CIFAR-FS (Bertinetto et al., ICLR 2019): 64 / 16 / 20 classes;
* FC100 (Oreshkin et al., NeurIPS 2018): 12 / 4 / 4 superclasses = 60 / 20 / 20 classes, so that
  no superclass is shared between splits.

The class lists ship in ``splits/cifar100/{cifar-fs,fc100}/{train,val,test}.txt`` (see
``splits/README.md`` for where they come from). Both read the pickles in about a second, so there
is no cache.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from mamlpp.data.files import data_dir
from mamlpp.data.miniimagenet import _ArrayUnpickler, _resize_batch
from mamlpp.data.split_layout import SPLIT_NAMES, SPLITS_DIR
from mamlpp.data.stats import CIFAR100_MEAN, CIFAR100_STD
from mamlpp.data.structures import FewShotSplit, build_class_index
from mamlpp.errors import DataError

TARBALL = "cifar-100-python.tar.gz"
FOLDER = "cifar-100-python"
BENCHMARKS = ("cifar-fs", "fc100")


def find_cifar100(root: str | os.PathLike[str] | None = None) -> Path | None:
    """The extracted folder or the tarball, looked up in ``root``, ``root/cifar100`` and
    ``root/cifar-100``; ``root`` defaults to the data folder."""
    base = data_dir(root)
    for candidate in (base, base / "cifar100", base / "cifar-100"):
        for source in (candidate / FOLDER, candidate):
            if all((source / name).is_file() for name in ("train", "test", "meta")):
                return source
        if (candidate / TARBALL).is_file():
            return candidate / TARBALL
    return None


def class_split(benchmark: str) -> dict[str, list[str]]:
    """``{"train", "val", "test"}`` fine class names of CIFAR-FS or FC100 (shipped files)."""
    if benchmark not in BENCHMARKS:
        raise DataError(f"unknown CIFAR benchmark {benchmark!r} (choose {', '.join(BENCHMARKS)})")
    folder = SPLITS_DIR / "cifar100" / benchmark
    return {
        split: (folder / f"{split}.txt").read_text(encoding="utf-8").split()
        for split in SPLIT_NAMES
    }


def _unpickle(data: bytes, name: str) -> dict[str, object]:
    """A CIFAR pickle (written by Python 2: latin1 strings) as a dict with str keys."""
    try:
        loaded = _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise DataError(f"{name} is not a CIFAR-100 pickle ({error})") from None
    if not isinstance(loaded, dict):
        raise DataError(f"{name} is not a CIFAR-100 pickle (no dict inside)")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in loaded.items()}


def _read_members(source: Path) -> dict[str, bytes]:
    """The bytes of ``train``, ``test`` and ``meta`` from the folder or the tarball."""
    names = ("train", "test", "meta")
    try:
        if source.is_dir():
            return {name: (source / name).read_bytes() for name in names}
        with tarfile.open(source, "r:gz") as archive:
            out = {}
            for name in names:
                try:
                    member = archive.extractfile(f"{FOLDER}/{name}")
                except KeyError:
                    member = None
                if member is None:
                    raise DataError(f"{source} has no {FOLDER}/{name} (not the CIFAR-100 tarball)")
                out[name] = member.read()
            return out
    except (OSError, tarfile.TarError, EOFError) as error:
        raise DataError(f"cannot read CIFAR-100 from {source}: {error}") from None


def _names(meta: dict[str, object], key: str, source: Path) -> list[str]:
    values = meta.get(key)
    if not isinstance(values, list):
        raise DataError(f"{source}: meta has no {key} list")
    return [v.decode("latin1") if isinstance(v, bytes) else str(v) for v in values]


def read_cifar100(source: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All 60,000 images: uint8 [N, 3, 32, 32], fine label [N], fine class names."""
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"CIFAR-100 not found at {path}")
    members = _read_members(path)
    names = _names(_unpickle(members["meta"], f"{path}: meta"), "fine_label_names", path)
    images, labels = [], []
    for part in ("train", "test"):
        batch = _unpickle(members[part], f"{path}: {part}")
        data, fine = batch.get("data"), batch.get("fine_labels")
        if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"{path}: {part} data should be uint8 [N, 3072]")
        if not isinstance(fine, list | tuple | np.ndarray) or len(fine) != data.shape[0]:
            raise DataError(f"{path}: {part} fine_labels do not match its data")
        images.append(data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(fine, dtype=np.int64))
    label = np.concatenate(labels)
    if label.min() < 0 or label.max() >= len(names):
        raise DataError(f"{path}: fine labels outside the {len(names)} class names")
    return np.concatenate(images), label, names


def load_cifar_fewshot(
    source: str | os.PathLike[str],
    benchmark: str = "cifar-fs",
    image_size: int = 32,
    *,
    progress: bool = False,
) -> dict[str, FewShotSplit]:
    """CIFAR-FS or FC100 as ``{"train", "val", "test"}`` FewShotSplits (uint8, CIFAR-100
    mean/std); images are resized (antialiased bilinear) if ``image_size`` is not 32.

    ``progress`` is accepted as by the other loaders; reading takes about a second, so no bar.
    """
    del progress
    split_names = class_split(benchmark)
    images, label, names = read_cifar100(source)
    index = {name: i for i, name in enumerate(names)}
    result = {}
    for split in SPLIT_NAMES:
        missing = [name for name in split_names[split] if name not in index]
        if missing:
            raise DataError(
                f"{source}: CIFAR-100 has no class {missing[0]!r} named by the {benchmark} "
                f"{split} split ({len(missing)} missing)"
            )
        wanted = np.array([index[name] for name in split_names[split]], dtype=np.int64)
        local = np.full(len(names), -1, dtype=np.int64)
        local[wanted] = np.arange(len(wanted))
        rows = np.flatnonzero(local[label] >= 0)  # images of this split, in file order
        pixels = torch.from_numpy(np.ascontiguousarray(images[rows]))
        if image_size != 32:
            pixels = _resize_batch(pixels, image_size)
        table, counts = build_class_index(torch.from_numpy(local[label[rows]]), len(wanted))
        result[split] = FewShotSplit(
            name=split,
            images=pixels,
            class_images=table,
            class_counts=counts,
            class_names=list(split_names[split]),
            mean=CIFAR100_MEAN,
            std=CIFAR100_STD,
            rotate=False,
            meta={"dataset": benchmark, "source": str(source), "cache": "(none: read directly)"},
        )
    return result
