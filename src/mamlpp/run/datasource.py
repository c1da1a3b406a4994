"""The splits an experiment trains on: found in the data folder, or downloaded (announced).

Only ``train`` downloads on its own, and only Omniglot and mini-ImageNet's public mirrors; a
local folder or the two Omniglot zips are used as they are, whatever their checksums.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from mamlpp.data import (
    ChecksumError,
    FewShotSplit,
    data_dir,
    download_mini_imagenet,
    download_omniglot,
    find_mini_imagenet,
    find_omniglot,
    load_dataset,
)
from mamlpp.data.cifar import CIFAR100_MEAN, CIFAR100_STD, find_cifar100
from mamlpp.data.images import Preprocessing, normalisation
from mamlpp.data.miniimagenet import IMAGENET_MEAN, IMAGENET_STD
from mamlpp.data.omniglot import OMNIGLOT_MEAN, OMNIGLOT_STD, partial_omniglot
from mamlpp.data.sources import download_cifar100
from mamlpp.errors import ConfigError, DataError
from mamlpp.run.experiment import DataSection

# How each built-in dataset prepares an image: (resampling, channels, mean, std). The loaders
# apply the same rules to their files; `mamlpp adapt` applies them to new images.
BUILTIN_PREPROCESSING = {
    "omniglot": ("nearest-binary", 1, OMNIGLOT_MEAN, OMNIGLOT_STD),
    "omniglot-vinyals": ("nearest-binary", 1, OMNIGLOT_MEAN, OMNIGLOT_STD),
    "synthetic": ("bilinear", 1, (0.0,), (1.0,)),
    "mini-imagenet": ("bicubic", 3, IMAGENET_MEAN, IMAGENET_STD),
    "tiered-imagenet": ("bicubic", 3, IMAGENET_MEAN, IMAGENET_STD),
    "cifar-fs": ("bilinear", 3, CIFAR100_MEAN, CIFAR100_STD),
    "fc100": ("bilinear", 3, CIFAR100_MEAN, CIFAR100_STD),
}


def preprocessing_for(data: DataSection, channels: int | None = None) -> Preprocessing:
    """The image preparation of a run's ``[data]`` section.

    ``channels`` is the trained model's input channel count (it settles ``channels="auto"`` of
    a folder dataset); without it an "auto" folder dataset decodes RGB.
    """
    if data.dataset != "folder":
        resample, width, mean, std = BUILTIN_PREPROCESSING[data.dataset]
        return Preprocessing(data.image_size, width, mean, std, resample=resample)
    fixed = {"grey": 1, "rgb": 3}.get(data.channels)
    width = fixed or channels or 3
    if fixed is not None and channels is not None and channels != fixed:
        raise DataError(f"data.channels={data.channels}, but the model takes {channels} channels")
    mean, std = normalisation("unit" if data.normalize == "auto" else data.normalize, width)
    return Preprocessing(
        data.image_size, width, mean, std, resample="bilinear", resize=data.resize == "always"
    )


OFFLINE_HINT = (
    "put images_background.zip and images_evaluation.zip (or their folders) in a folder and "
    "pass it with --data-dir DIR or the MAMLPP_DATA variable, or train offline with "
    "--preset synthetic"
)


def load_splits(
    data: DataSection,
    data_dir_arg: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    say: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, FewShotSplit]:
    """``{"train", "val", "test"}`` for ``data.dataset``, downloading it first if allowed."""
    if data.dataset == "synthetic":
        return load_dataset("synthetic", image_size=data.image_size)
    if data.dataset == "folder":
        return _load_folder(data, data_dir_arg, progress)
    root = data_dir(data_dir_arg)
    if data.dataset in ("cifar-fs", "fc100"):
        if find_cifar100(root) is None:
            if not download:
                raise DataError(f"CIFAR-100 is not in {root} and --no-download was given")
            say(f"CIFAR-100 is not in {root}; downloading it (about 160 MB, md5-checked)")
            download_cifar100(root, progress=progress)
        return load_dataset(data.dataset, root, image_size=data.image_size)
    if data.dataset == "tiered-imagenet":
        return load_dataset(data.dataset, root, image_size=data.image_size, progress=progress)
    if data.dataset in ("omniglot", "omniglot-vinyals"):
        if find_omniglot(root) is None:
            _fetch_omniglot(root, download, say, progress, partial_omniglot(root))
    elif find_mini_imagenet(root) is None:
        if not download:
            raise DataError(f"mini-ImageNet is not in {root} and --no-download was given")
        say(f"mini-ImageNet is not in {root}; downloading it to {root / 'miniimagenet'}")
        download_mini_imagenet(root, progress=progress)
    return load_dataset(data.dataset, root, image_size=data.image_size, progress=progress)


def _load_folder(
    data: DataSection, data_dir_arg: str | os.PathLike[str] | None, progress: bool
) -> dict[str, FewShotSplit]:
    if not data_dir_arg and not os.environ.get("MAMLPP_DATA"):
        raise ConfigError("data.dataset=folder needs --data-dir DIR (the folder of your images)")
    return load_dataset(
        "folder",
        data_dir(data_dir_arg),
        preprocessing=preprocessing_for(data),
        auto_channels=data.channels == "auto",
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
        split_seed=data.split_seed,
        progress=progress,
    )


def _fetch_omniglot(
    root, download: bool, say: Callable[[str], None], progress: bool, partial
) -> None:
    """Download Omniglot, or only the zip missing beside one already there (``partial``)."""
    if partial is not None:
        folder, (subset,) = partial
        missing = f"missing {subset}.zip (or the folder {subset}/) in {folder}"
        if not download:
            raise DataError(f"{missing} and --no-download was given")
        say(f"{missing}; downloading {subset}.zip (md5-checked) beside the other")
    else:
        if not download:
            raise DataError(
                f"Omniglot is not in {root} and --no-download was given: {OFFLINE_HINT}"
            )
        folder = root / "omniglot"
        say(
            f"Omniglot is not in {root}; downloading the two official zips (about 16 MB, "
            f"md5-checked) to {folder}"
        )
    try:
        download_omniglot(root, progress=progress, folder=folder)
    except ChecksumError:
        raise
    except DataError as error:
        why = str(error).split(";")[0]
        if "mismatch" in why:  # a corrupt download, not a missing network: say exactly that
            raise
        raise DataError(f"cannot download Omniglot ({why}): {OFFLINE_HINT}") from None
