"""The splits an experiment trains on: found in the data folder, or downloaded (announced).

Every dataset is an entry of the dataset table (:mod:`mamlpp.data.table`), which says where its
files are, how they download and how its images are prepared. Only ``train`` downloads on its
own, and only datasets whose entry has a download (Omniglot, mini-ImageNet, CIFAR-100); a local
folder or the two Omniglot zips are used as they are, whatever their checksums.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from mamlpp.data import ChecksumError, FewShotSplit, data_dir, load_dataset
from mamlpp.data.images import Preprocessing, normalisation
from mamlpp.data.sources import (  # noqa: F401 (looked up by name: see _downloader)
    download_cifar100,
    download_mini_imagenet,
    download_omniglot,
)
from mamlpp.data.table import Files, dataset, resolve
from mamlpp.errors import ConfigError, DataError
from mamlpp.run.experiment import DataSection

# The downloaders the table names for automatic downloads, imported above and looked up in this
# module first: one replaced here (the offline tests do) is replaced for every run.
DOWNLOADERS = ("download_omniglot", "download_mini_imagenet", "download_cifar100")


def preprocessing_for(data: DataSection, channels: int | None = None) -> Preprocessing:
    """The image preparation of a run's ``[data]`` section.

    A built-in dataset's is its table entry's (the loaders apply the same rules to their files;
    `mamlpp adapt` applies them to new images). ``channels`` is the trained model's input
    channel count (it settles ``channels="auto"`` of a folder dataset); without it an "auto"
    folder dataset decodes RGB.
    """
    spec = dataset(data.dataset).preprocessing
    if spec is not None:
        return Preprocessing(
            data.image_size, spec.channels, spec.mean, spec.std, resample=spec.resample
        )
    fixed = {"grey": 1, "rgb": 3}.get(data.channels)
    width = fixed or channels or 3
    if fixed is not None and channels is not None and channels != fixed:
        raise DataError(f"data.channels={data.channels}, but the model takes {channels} channels")
    mean, std = normalisation("unit" if data.normalize == "auto" else data.normalize, width)
    return Preprocessing(
        data.image_size, width, mean, std, resample="bilinear", resize=data.resize == "always"
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
    entry = dataset(data.dataset)
    if entry.files is None:  # generated in memory
        return load_dataset(entry.name, image_size=data.image_size, progress=progress)
    if entry.own_images:
        return _load_folder(data, data_dir_arg, progress, say)
    root = data_dir(data_dir_arg)
    if entry.files.locate(root) is None and entry.files.download is not None:
        _fetch(entry.files, root, download, say, progress)
    return load_dataset(entry.name, root, image_size=data.image_size, progress=progress)


def _load_folder(
    data: DataSection,
    data_dir_arg: str | os.PathLike[str] | None,
    progress: bool,
    say: Callable[[str], None] = print,
) -> dict[str, FewShotSplit]:
    if not data_dir_arg and not os.environ.get("MAMLPP_DATA"):
        raise ConfigError(
            f"data.dataset={data.dataset} needs --data-dir DIR (the folder of your images)"
        )
    return load_dataset(
        data.dataset,
        data_dir(data_dir_arg),
        preprocessing=preprocessing_for(data),
        auto_channels=data.channels == "auto",
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
        split_seed=data.split_seed,
        progress=progress,
        say=lambda note: say(f"note: {note}"),
    )


def _fetch(
    files: Files, root: Path, download: bool, say: Callable[[str], None], progress: bool
) -> None:
    """Download ``files`` (announced), or only the part missing beside the rest."""
    partial = files.partial_in(root)
    if partial is not None:
        folder = partial.folder
        if not download:
            raise DataError(f"{partial.missing} and --no-download was given")
        say(f"{partial.missing}; downloading {partial.fetching}")
    else:
        folder = root / files.folder
        if not download:
            hint = f": {files.how_to_get(folder)}" if files.by_hand else ""
            raise DataError(f"{files.title} is not in {root} and --no-download was given{hint}")
        say(f"{files.title} is not in {root}; downloading {files.download_note} to {folder}")
    fetch = _downloader(files)
    try:
        if partial is not None:
            fetch(root, progress=progress, folder=folder)
        else:
            fetch(root, progress=progress)
    except ChecksumError:
        raise
    except DataError as error:
        why = str(error).split(";")[0]
        if not files.by_hand or "mismatch" in why:  # a corrupt download: say exactly that
            raise
        raise DataError(
            f"cannot download {files.title} ({why}): {files.how_to_get(folder)}"
        ) from None


def _downloader(files: Files) -> Callable[..., Path]:
    """The table's download function for ``files`` (this module's copy of it, if it has one)."""
    assert files.download is not None
    module, _, name = files.download.partition(":")
    if module == "mamlpp.data.sources" and name in DOWNLOADERS:
        downloader: Callable[..., Path] = globals()[name]
        return downloader
    return resolve(files.download)
