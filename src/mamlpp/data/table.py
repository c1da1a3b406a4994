"""Datasets by name, so a trainer or the CLI can select one with a string."""

from __future__ import annotations

import os
from typing import Any

from mamlpp.data.cifar import find_cifar100, load_cifar_fewshot
from mamlpp.data.files import data_dir as resolve_data_dir
from mamlpp.data.folder import load_folder_dataset
from mamlpp.data.miniimagenet import find_mini_imagenet, load_mini_imagenet
from mamlpp.data.omniglot import find_omniglot, load_omniglot
from mamlpp.data.structures import FewShotSplit
from mamlpp.data.synthetic import make_synthetic
from mamlpp.data.tiered import find_tiered_imagenet, how_to_get, load_tiered_imagenet
from mamlpp.errors import DataError

DATASETS = (
    "omniglot",
    "omniglot-vinyals",
    "mini-imagenet",
    "synthetic",
    "cifar-fs",
    "fc100",
    "tiered-imagenet",
    "folder",
)
_ALIASES = {
    "omniglot-mamlpp": "omniglot",
    "miniimagenet": "mini-imagenet",
    "mini_imagenet": "mini-imagenet",
    "cifarfs": "cifar-fs",
    "tieredimagenet": "tiered-imagenet",
}


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r} (choose from {', '.join(DATASETS)})")
    return key


def load_dataset(
    name: str, data_dir: str | os.PathLike[str] | None = None, **opts: Any
) -> dict[str, FewShotSplit]:
    """``{"train", "val", "test"}`` splits of dataset ``name``.

    ``data_dir`` is the folder given by ``--data-dir`` (else ``$MAMLPP_DATA`` or
    ``~/.cache/mamlpp``); the dataset is looked up in it and in its usual sub-folders
    (``omniglot/``, ``miniimagenet/``). ``opts`` go to the loader (e.g. ``cache_dir``,
    ``image_size``, ``progress``; for synthetic ``classes``, ``seed`` ...). ``folder`` reads
    ``data_dir`` itself and needs ``preprocessing`` (see :func:`load_folder_dataset`).
    """
    key = canonical_name(name)
    if key == "synthetic":
        return make_synthetic(**opts)
    root = resolve_data_dir(data_dir)
    if key == "folder":
        return load_folder_dataset(root, **opts)
    if key in ("cifar-fs", "fc100"):
        cifar = find_cifar100(root)
        if cifar is None:
            raise DataError(
                f"CIFAR-100 not found in {root} (looked for cifar-100-python.tar.gz or the "
                f"folder cifar-100-python/); run `mamlpp data download {key} --data-dir {root}`"
            )
        return load_cifar_fewshot(cifar, key, **opts)
    if key == "tiered-imagenet":
        tiered = find_tiered_imagenet(root)
        if tiered is None:
            raise DataError(how_to_get(root / "tiered-imagenet"))
        return load_tiered_imagenet(tiered, **opts)
    if key in ("omniglot", "omniglot-vinyals"):
        source = find_omniglot(root)
        if source is None:
            raise DataError(
                f"Omniglot not found in {root} (looked for images_background.zip and "
                "images_evaluation.zip or their folders); run `mamlpp data download "
                f"omniglot --data-dir {root}`"
            )
        return load_omniglot(
            source, split="vinyals" if key == "omniglot-vinyals" else "mamlpp", **opts
        )
    source = find_mini_imagenet(root)
    if source is None:
        raise DataError(
            f"mini-ImageNet not found in {root} or {root / 'miniimagenet'}; run "
            "`mamlpp data download mini-imagenet` or see docs/data.md"
        )
    return load_mini_imagenet(source, **opts)
