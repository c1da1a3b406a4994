"""The dataset table: every dataset mamlpp knows, one :class:`Dataset` entry each.

Everything that takes a dataset name reads this table: :func:`load_dataset`, the run's data
source (``mamlpp.run.datasource``: finding, downloading and preparing images), the config check
of ``data.dataset``, ``mamlpp data download|info`` and the datasets of ``mamlpp ablate``. Adding
a dataset means one entry here plus its loader.

An entry names its functions (finder, downloader, loader) as ``"module:function"`` strings that
:func:`resolve` imports on first use. That is for start-up cost: the command line reads the table
when it builds its parser (``mamlpp --help``), and the loaders import numpy and torch; this
module imports neither.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, overload

from mamlpp.data.files import data_dir as resolve_data_dir
from mamlpp.data.stats import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    OMNIGLOT_MEAN,
    OMNIGLOT_STD,
)
from mamlpp.errors import DataError
from mamlpp.util.format import did_you_mean

if TYPE_CHECKING:
    from mamlpp.data.structures import FewShotSplit


def resolve(ref: str) -> Callable[..., Any]:
    """The function an entry names as ``"module:function"``, imported now (see the module doc)."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


class Partial(NamedTuple):
    """Files found in part: the folder holding the others, and what to say and fetch."""

    folder: Path  # the downloader fetches the missing part into it (its ``folder=``)
    missing: str  # "missing images_evaluation.zip (or the folder images_evaluation/) in DIR"
    fetching: str  # what the download fetches: "images_evaluation.zip (md5-checked) beside ..."


@dataclass(frozen=True)
class Files:
    """Where a dataset's files come from; datasets cut from the same files share one."""

    name: str  # what `mamlpp data download` also takes for them: "omniglot", "cifar-100"
    title: str  # in messages: "Omniglot", "CIFAR-100"
    folder: str  # the sub-folder of the data folder a download (or a copy by hand) goes to
    looked_for: str  # what `find` looks for, for the "not found" message
    find: str  # "module:function": (data folder) -> the source to load, or None
    download: str | None = None  # "module:function": (data folder, progress=) -> its folder
    download_note: str = "it"  # announced: "downloading <note> to <folder>"
    # One line on getting the files yourself; "{folder}" is where they go. Required when there
    # is no download; with one, it is the way out when the download fails or is not allowed.
    by_hand: str = ""
    # "module:function": (data folder) -> Partial or None, for files that can be there in part;
    # the downloader then takes folder= and fetches only what is missing.
    partial: str | None = None

    @property
    def offered(self) -> bool:
        """Whether `mamlpp data download` offers these files (a download, or how to get them)."""
        return self.download is not None or bool(self.by_hand)

    def locate(self, root: Path) -> Path | None:
        found: Path | None = resolve(self.find)(root)
        return found

    def partial_in(self, root: Path) -> Partial | None:
        return None if self.partial is None else resolve(self.partial)(root)

    def downloader(self) -> Callable[..., Path]:
        """The download function (check ``download`` first: without one, see ``by_hand``)."""
        if self.download is None:
            raise DataError(f"{self.title} has no download")
        return resolve(self.download)

    def how_to_get(self, folder: Path) -> str:
        return self.by_hand.format(folder=folder)

    def download_failed(self, why: str, folder: Path) -> str:
        """The one-line error of a download of these files that failed for ``why`` (not a
        corrupt download: that error stands as it is): ``why``, then how to get the files by
        hand into ``folder`` when the entry says how."""
        if not self.by_hand:
            return why
        return f"cannot download {self.title} ({why}): {self.how_to_get(folder)}"

    def not_found(self, root: Path, name: str) -> str:
        """The one-line error when ``find`` finds nothing in ``root``."""
        if self.download is None:
            return self.how_to_get(root / self.folder)
        return (
            f"{self.title} not found in {root} (looked for {self.looked_for}); run "
            f"`mamlpp data download {name} --data-dir {root}`"
        )


@dataclass(frozen=True)
class ImageSpec:
    """How a dataset's images are prepared (its loader and `mamlpp adapt` apply the same)."""

    channels: int  # 1 (grey) or 3 (RGB)
    image_size: int  # the usual side in pixels (data.image_size may ask for another)
    mean: tuple[float, ...]  # per channel, pixels in [0, 1]
    std: tuple[float, ...]
    resample: str  # see mamlpp.data.images.RESAMPLERS
    fixed_size: bool = False  # data.image_size must be image_size


@dataclass(frozen=True)
class Dataset:
    """One dataset: its names, where its files come from, how it loads and is prepared."""

    name: str
    description: str  # one line
    loader: str  # "module:function": (source, **options) -> {"train", "val", "test"} splits
    files: Files | None  # None: generated in memory (the loader takes no source)
    preprocessing: ImageSpec | None  # None: set by the [data] keys (own images)
    aliases: tuple[str, ...] = ()
    loader_options: Mapping[str, Any] = field(default_factory=dict)  # fixed loader arguments
    ablation: bool = False  # offered by `mamlpp ablate --dataset`
    # Its val and test tasks are within-group and source-disjoint (data.eval_episodes="auto").
    fine_grained_evaluation: bool = False
    # The data.resample rules it allows besides "auto": a built-in loader takes the rule as its
    # "resample" option; own images get it in their Preprocessing.
    resamplers: tuple[str, ...] = ()

    @property
    def own_images(self) -> bool:
        """Whether the [data] keys (channels, normalize, resize, ...) prepare its images."""
        return self.preprocessing is None

    def load(
        self, data_dir: str | os.PathLike[str] | None = None, **opts: Any
    ) -> dict[str, FewShotSplit]:
        """The splits, found in ``data_dir`` (see :func:`load_dataset`); nothing is downloaded."""
        load = resolve(self.loader)
        options = {**self.loader_options, **opts}
        if self.files is None:
            splits: dict[str, FewShotSplit] = load(**options)
            return splits
        root = resolve_data_dir(data_dir)
        source = self.files.locate(root)
        if source is None:
            raise DataError(self.files.not_found(root, self.name))
        splits = load(source, **options)
        return splits


_OMNIGLOT = Files(
    name="omniglot",
    title="Omniglot",
    folder="omniglot",
    looked_for="images_background.zip and images_evaluation.zip or their folders",
    find="mamlpp.data.omniglot:find_omniglot",
    download="mamlpp.data.sources:download_omniglot",
    download_note="the two official zips (about 16 MB, md5-checked)",
    by_hand="put images_background.zip and images_evaluation.zip (or their folders) in a folder "
    "and pass it with --data-dir DIR or the MAMLPP_DATA variable, or train offline with "
    "--preset synthetic",
    partial="mamlpp.data.omniglot:missing_part",
)
_MINI_IMAGENET = Files(
    name="mini-imagenet",
    title="mini-ImageNet",
    folder="miniimagenet",
    looked_for="mini-imagenet-cache-{train,val,test}.pkl, {train,val,test}/<wnid>/ folders or "
    "images/ with the Ravi CSVs, there or in miniimagenet/",
    find="mamlpp.data.miniimagenet:find_mini_imagenet",
    download="mamlpp.data.sources:download_mini_imagenet",
)
_CIFAR100 = Files(
    name="cifar-100",
    title="CIFAR-100",
    folder="cifar100",
    looked_for="cifar-100-python.tar.gz or the folder cifar-100-python/",
    find="mamlpp.data.cifar:find_cifar100",
    download="mamlpp.data.sources:download_cifar100",
    download_note="it (about 160 MB, md5-checked)",
    by_hand="download cifar-100-python.tar.gz (the python version on "
    "https://www.cs.toronto.edu/~kriz/cifar.html) yourself and put it, or the folder "
    "cifar-100-python/ it unpacks to, in {folder}",
)
_TIERED_IMAGENET = Files(
    name="tiered-imagenet",
    title="tieredImageNet",
    folder="tiered-imagenet",
    looked_for="{train,val,test}_images_png.pkl with {train,val,test}_labels.pkl, or "
    "train/ val/ test/ class folders",
    find="mamlpp.data.tiered:find_tiered_imagenet",
    by_hand="tieredImageNet has no public download with a checksum (ImageNet terms of use "
    "apply): make it with the tools of github.com/renmengye/few-shot-ssl-public from ImageNet, "
    "or get the released {{split}}_images_png.pkl and {{split}}_labels.pkl files, and put them "
    "(or train/, val/, test/ folders of <wnid>/*.jpg) in {folder}",
)
_OWN_IMAGES = Files(
    name="folder",
    title="the image folder",
    folder="",
    looked_for="<class>/ folders of images, or train/ val/ test/ folders of them",
    find="mamlpp.data.files:data_dir",  # the data folder itself (--data-dir DIR)
)

_OMNIGLOT_IMAGES = ImageSpec(1, 28, OMNIGLOT_MEAN, OMNIGLOT_STD, "nearest-binary")
# mamlpp.data.omniglot.RESAMPLES (this module imports no loader).
_OMNIGLOT_RESAMPLERS = ("nearest-binary", "bilinear")
_IMAGENET_IMAGES = ImageSpec(3, 84, IMAGENET_MEAN, IMAGENET_STD, "bicubic")
_CIFAR_IMAGES = ImageSpec(3, 32, CIFAR100_MEAN, CIFAR100_STD, "bilinear")

TABLE: dict[str, Dataset] = {
    entry.name: entry
    for entry in (
        Dataset(
            "omniglot",
            "Omniglot, the MAML++ split: 1150/50/423 characters, 28x28 grey, train rotated",
            "mamlpp.data.omniglot:load_omniglot",
            _OMNIGLOT,
            _OMNIGLOT_IMAGES,
            aliases=("omniglot-mamlpp",),
            loader_options={"split": "mamlpp"},
            ablation=True,
            resamplers=_OMNIGLOT_RESAMPLERS,
        ),
        Dataset(
            "omniglot-vinyals",
            "Omniglot, the Vinyals split: 1028/172/423 characters x 4 rotations as classes",
            "mamlpp.data.omniglot:load_omniglot",
            _OMNIGLOT,
            _OMNIGLOT_IMAGES,
            loader_options={"split": "vinyals"},
            ablation=True,
            resamplers=_OMNIGLOT_RESAMPLERS,
        ),
        Dataset(
            "omniglot-lake",
            "Omniglot, Lake's one-shot challenge: train on 25 background alphabets, val on 5, "
            "test within each of the 20 evaluation alphabets, support and query by other drawers",
            "mamlpp.data.omniglot:load_omniglot",
            _OMNIGLOT,
            _OMNIGLOT_IMAGES,
            loader_options={"split": "lake"},
            ablation=True,
            fine_grained_evaluation=True,
            resamplers=_OMNIGLOT_RESAMPLERS,
        ),
        Dataset(
            "mini-imagenet",
            "mini-ImageNet, the Ravi & Larochelle split: 64/16/20 classes x 600, 84x84 RGB",
            "mamlpp.data.miniimagenet:load_mini_imagenet",
            _MINI_IMAGENET,
            ImageSpec(3, 84, IMAGENET_MEAN, IMAGENET_STD, "bicubic", fixed_size=True),
            aliases=("miniimagenet", "mini_imagenet"),
            ablation=True,
        ),
        Dataset(
            "synthetic",
            "procedural stroke characters, no files: 400/100/100 classes x 20, 28x28 grey",
            "mamlpp.data.synthetic:make_synthetic",
            None,
            ImageSpec(1, 28, OMNIGLOT_MEAN, OMNIGLOT_STD, "bilinear"),
            ablation=True,
        ),
        Dataset(
            "cifar-fs",
            "CIFAR-FS: 64/16/20 CIFAR-100 classes x 600, 32x32 RGB",
            "mamlpp.data.cifar:load_cifar_fewshot",
            _CIFAR100,
            _CIFAR_IMAGES,
            aliases=("cifarfs",),
            loader_options={"benchmark": "cifar-fs"},
        ),
        Dataset(
            "fc100",
            "FC100: 60/20/20 CIFAR-100 classes x 600 split by superclass, 32x32 RGB",
            "mamlpp.data.cifar:load_cifar_fewshot",
            _CIFAR100,
            _CIFAR_IMAGES,
            loader_options={"benchmark": "fc100"},
        ),
        Dataset(
            "tiered-imagenet",
            "tieredImageNet: 351/97/160 ImageNet classes in 34 superclasses, 84x84 RGB",
            "mamlpp.data.tiered:load_tiered_imagenet",
            _TIERED_IMAGENET,
            _IMAGENET_IMAGES,
            aliases=("tieredimagenet",),
        ),
        Dataset(
            "folder",
            "your own images: DIR/<class>/*.png|jpg or train/ val/ test/ folders of them",
            "mamlpp.data.folder:load_folder_dataset",
            _OWN_IMAGES,
            None,
            resamplers=("bilinear", "bicubic"),
        ),
    )
}


class Names(Sequence[str]):
    """The names of the entries ``accept`` takes, in table order, read anew on every use: a
    view, not a copy, so a module that keeps one at import time still sees every entry."""

    def __init__(self, accept: Callable[[Dataset], bool] | None = None) -> None:
        self._accept = accept

    def _names(self) -> tuple[str, ...]:
        accept = self._accept
        return tuple(n for n, entry in TABLE.items() if accept is None or accept(entry))

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, value: object) -> bool:
        return value in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __repr__(self) -> str:
        return repr(self._names())


DATASETS = Names()
ABLATION_DATASETS = Names(lambda entry: entry.ablation)


def dataset_hint(name: str) -> str:
    """`` (did you mean 'x'?)`` for the dataset whose name or alias is closest, or ``""``."""
    spelled = {alias: e.name for e in TABLE.values() for alias in (e.name, *e.aliases)}
    return did_you_mean(name.strip().lower(), spelled, shown=spelled)


def dataset(name: str) -> Dataset:
    """The entry called ``name`` (or one of its aliases; any case)."""
    key = name.strip().lower()
    for entry in TABLE.values():
        if key == entry.name or key in entry.aliases:
            return entry
    raise DataError(
        f"unknown dataset {name!r} (choose from {', '.join(TABLE)}){dataset_hint(name)}"
    )


def canonical_name(name: str) -> str:
    return dataset(name).name


def download_names() -> tuple[str, ...]:
    """What `mamlpp data download` takes: the datasets with files to get, and those files'
    own names (``cifar-100``: the archive CIFAR-FS and FC100 are cut from)."""
    names: dict[str, None] = {}
    for entry in TABLE.values():
        if entry.files is not None and entry.files.offered:
            names.update({entry.name: None, entry.files.name: None})
    return tuple(names)


def download_files(name: str) -> Files:
    """The files `mamlpp data download NAME` gets."""
    for entry in TABLE.values():
        files = entry.files
        if files is not None and files.offered and name in (entry.name, files.name):
            return files
    raise DataError(f"nothing to download for {name!r} (choose from {', '.join(download_names())})")


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
    return dataset(name).load(data_dir, **opts)
