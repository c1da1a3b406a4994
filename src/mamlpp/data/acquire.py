"""The splits of a ``[data]`` section (found in the data folder, or downloaded, announced), and
how its images are prepared.

:func:`load_splits` is the one call a run makes into the data for a load. Every dataset is an entry
of the dataset table (:mod:`mamlpp.data.table`), which says where its files are, how they
download and how its images are prepared. Only datasets whose entry has a download (Omniglot,
mini-ImageNet, CIFAR-100) download on their own; a local folder or the two Omniglot zips are used
as they are, whatever their checksums.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mamlpp.data.download import ChecksumError
from mamlpp.data.files import data_dir
from mamlpp.data.images import Preprocessing, normalisation
from mamlpp.data.section import DataSection
from mamlpp.data.structures import FewShotSplit
from mamlpp.data.table import Files, dataset
from mamlpp.errors import ConfigError, DataError


def load_splits(
    data: DataSection,
    data_dir_arg: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    say: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, FewShotSplit]:
    """``{"train", "val", "test"}`` for ``data.dataset``, downloading it first if allowed.

    ``data_dir_arg`` is ``--data-dir`` (else ``$MAMLPP_DATA`` or ``~/.cache/mamlpp``); ``say``
    announces a download."""
    entry = dataset(data.dataset)
    if entry.files is None:  # generated in memory
        return entry.load(progress=progress, **loader_options(data))
    if entry.own_images:
        if not data_dir_arg and not os.environ.get("MAMLPP_DATA"):
            raise ConfigError(
                f"data.dataset={data.dataset} needs --data-dir DIR (the folder of your images)"
            )
        splits = entry.load(
            data_dir(data_dir_arg),
            preprocessing=preprocessing_for(data),
            auto_channels=data.channels == "auto",
            val_fraction=data.val_fraction,
            test_fraction=data.test_fraction,
            split_seed=data.split_seed,
            groups=data.groups,
            sources=data.sources,
            source_pattern=data.source_pattern,
            progress=progress,
            say=lambda note: say(f"note: {note}"),
        )
        check_servable(data, splits["train"].image_shape[0])
        return splits
    root = data_dir(data_dir_arg)
    if entry.files.locate(root) is None and entry.files.download is not None:
        _fetch(entry.files, root, download, say, progress)
    return entry.load(root, progress=progress, **loader_options(data))


def loader_options(data: DataSection) -> dict[str, Any]:
    """What a built-in dataset's loader takes from the ``[data]`` section: the image size, and
    the resampling rule when it is not the dataset's own."""
    rule = {} if data.resample == "auto" else {"resample": data.resample}
    return {"image_size": data.image_size, **rule}


def preprocessing_for(d: DataSection, channels: int | None = None) -> Preprocessing:
    """The image preparation of a ``[data]`` section.

    A built-in dataset's is its table entry's (the loaders apply the same rules to their files;
    `mamlpp adapt` applies them to new images). ``channels`` is the trained model's input
    channel count (it settles ``channels="auto"`` of a folder dataset); without it an "auto"
    folder dataset decodes RGB.
    """
    spec = dataset(d.dataset).preprocessing
    if spec is not None:
        rule = spec.resample if d.resample == "auto" else d.resample
        return Preprocessing(d.image_size, spec.channels, spec.mean, spec.std, resample=rule)
    fixed = {"grey": 1, "rgb": 3}.get(d.channels)
    width = fixed or channels or 3
    if fixed is not None and channels is not None and channels != fixed:
        raise DataError(f"data.channels={d.channels}, but the model takes {channels} channels")
    mean, std = normalisation("unit" if d.normalize == "auto" else d.normalize, width)
    rule = "bilinear" if d.resample == "auto" else d.resample
    return Preprocessing(d.image_size, width, mean, std, resample=rule, resize=d.resize == "always")


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
    fetch = files.downloader()
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
        raise DataError(files.download_failed(why, folder)) from None


def check_servable(data: DataSection, channels: int) -> None:
    """Refuse, before training, preprocessing that a trained model could not use later:
    ImageNet's mean and std are per RGB channel, so a grey dataset (``channels="auto"`` found
    every image grey) cannot be normalised with them in ``adapt``, ``export`` or ``serve``."""
    if data.normalize == "imagenet" and channels != 3:
        raise ConfigError(
            "data.normalize=imagenet needs RGB images, but every image is grey (data.channels="
            f"{data.channels} kept {channels} channel): set data.channels=rgb to train on them "
            "as RGB, or data.normalize=unit or half"
        )
