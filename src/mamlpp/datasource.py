"""The splits an experiment trains on: found in the data folder, or downloaded (announced).

Only ``train`` downloads on its own, and only Omniglot and mini-ImageNet's public mirrors; a
local folder or the two Omniglot zips are used as they are, whatever their checksums.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .data import (
    ChecksumError,
    FewShotSplit,
    data_dir,
    download_mini_imagenet,
    download_omniglot,
    find_mini_imagenet,
    find_omniglot,
    load_dataset,
)
from .data.omniglot import partial_omniglot
from .errors import DataError
from .experiment import DataSection

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
    root = data_dir(data_dir_arg)
    if data.dataset in ("omniglot", "omniglot-vinyals"):
        if find_omniglot(root) is None:
            _fetch_omniglot(root, download, say, progress, partial_omniglot(root))
    elif find_mini_imagenet(root) is None:
        if not download:
            raise DataError(f"mini-ImageNet is not in {root} and --no-download was given")
        say(f"mini-ImageNet is not in {root}; downloading it to {root / 'miniimagenet'}")
        download_mini_imagenet(root, progress=progress)
    return load_dataset(data.dataset, root, image_size=data.image_size, progress=progress)


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
