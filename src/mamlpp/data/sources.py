"""Where the datasets come from, and the explicit download commands.

Downloads happen only here (``mamlpp data download ...``); loaders never touch the network.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mamlpp.data.download import ChecksumError, download_file
from mamlpp.data.files import data_dir
from mamlpp.errors import DataError


@dataclass(frozen=True)
class RemoteFile:
    name: str
    urls: tuple[str, ...]  # tried in order
    md5: str | None = None
    size: int | None = None


_OMNIGLOT_PREFIXES = (
    "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/",  # torchvision
    "https://github.com/brendenlake/omniglot/raw/master/python/",  # torchmeta
)
OMNIGLOT_FILES = (
    RemoteFile(
        "images_background.zip",
        tuple(p + "images_background.zip" for p in _OMNIGLOT_PREFIXES),
        md5="68d2efa1b9178cc56df9314c21c6e718",
        size=9_464_212,
    ),
    RemoteFile(
        "images_evaluation.zip",
        tuple(p + "images_evaluation.zip" for p in _OMNIGLOT_PREFIXES),
        md5="6b91aef0f799c5bb55b94e3f2daec811",
        size=6_462_886,
    ),
)

# learn2learn's public mirrors of the per-split pickles (no published checksum, so the loader's
# structural checks are the verification).
MINI_IMAGENET_FILES = tuple(
    RemoteFile(
        f"mini-imagenet-cache-{split}.pkl",
        (
            f"https://zenodo.org/record/7978538/files/mini-imagenet-cache-{split}.pkl",
            f"https://www.dropbox.com/s/{box}/mini-imagenet-cache-{split}.pkl?dl=1",
        ),
    )
    for split, box in (
        ("train", "9g8c6w345s2ek03"),
        ("validation", "ip1b7se3gij3r1b"),
        ("test", "ye9jeb5tyz0x01b"),
    )
)

MINI_IMAGENET_HELP = (
    "mini-ImageNet could not be downloaded ({why}). Get the images yourself (ImageNet terms of "
    "use apply) and put them in {folder} in one of these forms: "
    "mini-imagenet-cache-{{train,val,test}}.pkl (e.g. from "
    "https://zenodo.org/record/7978538), {{train,val,test}}/<wnid>/*.jpg, or images/*.jpg with "
    "the Ravi CSVs; then run `mamlpp data info mini-imagenet`"
)


@contextlib.contextmanager
def _no_empty_folders_on_failure(folder: Path) -> Iterator[None]:
    """On any failure inside, remove the folders up to ``folder`` that did not exist before,
    deepest first, and only while empty: what a failed download made, never what was there (a
    kept ``.part`` file for a later resume keeps its folder)."""
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        yield
    except BaseException:
        for path in created:
            try:
                path.rmdir()
            except OSError:
                break  # not empty (or not removable): nor are the folders above it
        raise


def _fetch(remote: RemoteFile, folder: Path, progress: bool) -> Path:
    """Try each mirror in turn; report every mirror's failure if none works.

    The error is a ChecksumError if any mirror served bad bytes (the more alarming failure).
    """
    errors: list[DataError] = []
    for url in remote.urls:
        try:
            return download_file(
                url,
                folder / remote.name,
                md5=remote.md5,
                expected_size=remote.size,
                progress=progress,
            )
        except DataError as error:
            errors.append(error)
    kind = ChecksumError if any(isinstance(e, ChecksumError) for e in errors) else DataError
    raise kind("; ".join(str(e) for e in errors))


def download_omniglot(
    root: str | os.PathLike[str] | None = None,
    progress: bool = True,
    *,
    folder: str | os.PathLike[str] | None = None,
) -> Path:
    """Fetch the two official zips into ``folder`` (default ``<data dir>/omniglot``,
    md5-verified); return that folder. A zip already there is kept, not fetched again.

    The loader reads the zips directly, so nothing is extracted. A failed download leaves no
    empty folder behind (a kept ``.part`` file for a later resume keeps its folder).
    """
    folder = Path(folder) if folder is not None else data_dir(root) / "omniglot"
    with _no_empty_folders_on_failure(folder):
        for remote in OMNIGLOT_FILES:
            subset = folder / remote.name.removesuffix(".zip")
            if not (subset.is_dir() or (folder / remote.name).is_file()):  # kept as it is
                _fetch(remote, folder, progress)
    return folder


def download_mini_imagenet(
    root: str | os.PathLike[str] | None = None, progress: bool = True
) -> Path:
    """Fetch the three mini-ImageNet pickles into ``<data dir>/miniimagenet``; return it."""
    folder = data_dir(root) / "miniimagenet"
    with _no_empty_folders_on_failure(folder):
        for remote in MINI_IMAGENET_FILES:
            try:
                _fetch(remote, folder, progress)
            except DataError as error:
                raise DataError(MINI_IMAGENET_HELP.format(why=error, folder=folder)) from None
    return folder


CIFAR100_FILE = RemoteFile(
    "cifar-100-python.tar.gz",
    ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
    md5="eb9058c3a382ffc7106e4002c42a8d85",  # published on the CIFAR page
)


def download_cifar100(root: str | os.PathLike[str] | None = None, progress: bool = True) -> Path:
    """Fetch the CIFAR-100 python tarball into ``<data dir>/cifar100`` (md5-verified); return
    that folder. CIFAR-FS and FC100 are read from the tarball directly. A failed download
    leaves no empty folder behind."""
    folder = data_dir(root) / "cifar100"
    with _no_empty_folders_on_failure(folder):
        _fetch(CIFAR100_FILE, folder, progress)
    return folder
