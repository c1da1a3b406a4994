"""The ``[data]`` section of an experiment: which dataset, the episode shape, own-image options.

It lives with the data because the data reads it: :func:`check_section` checks it against the
dataset table, and :mod:`mamlpp.data.acquire` says how its images are prepared and finds,
downloads and loads its splits (that module imports numpy and torch; this one does not). The
experiment configuration (:mod:`mamlpp.run.experiment`) holds one. Ranges are stated once, in the
fields' metadata (:mod:`mamlpp.util.fields`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

from mamlpp.data.augment import Augment
from mamlpp.data.grouping import Grouping
from mamlpp.data.table import TABLE, Dataset, dataset_hint
from mamlpp.errors import ConfigError, DataError

_AUGMENT = {f.name: f.metadata for f in fields(Augment)}  # the augment_* keys' ranges

# A name of the dataset table (mamlpp.data.table), checked by check_section(): the table, not
# this module, lists the datasets.
DatasetName = str


@dataclass(frozen=True)
class DataSection:
    dataset: DatasetName = "omniglot"
    ways: int = field(default=5, metadata={"min": 2, "why": "a task needs two classes"})
    shots: int = field(default=1, metadata={"min": 1})
    # Query (target) images per class: 1 in the reference Omniglot configs, 15 on mini-ImageNet.
    targets: int = field(default=1, metadata={"min": 1})
    image_size: int = field(default=28, metadata={"min": 16, "why": "conv4 halves it four times"})
    # Own images (dataset "folder", see mamlpp.data.folder); the other datasets fix these.
    channels: Literal["auto", "grey", "rgb"] = "auto"  # auto: grey if every image is grey
    normalize: Literal["auto", "unit", "half", "imagenet"] = "auto"  # auto: unit ([0, 1])
    resize: Literal["always", "never"] = "always"  # never: refuse images not image_size square
    # How images shrink to image_size: "auto" is the dataset's rule (Omniglot's 1-bit nearest
    # neighbour as in the reference; bilinear for folders); a dataset lists what else it allows
    # (Omniglot: antialiased "bilinear", which keeps the thin strokes nearest neighbour drops).
    resample: Literal["auto", "nearest-binary", "bilinear", "bicubic"] = "auto"
    # flat DIR/<class>/ folders: classes held out for validation, and for the test
    val_fraction: float = field(default=0.15, metadata={"gt": 0, "lt": 1})
    test_fraction: float = field(default=0.15, metadata={"gt": 0, "lt": 1})
    split_seed: int = field(default=0, metadata={"min": 0})  # ... shuffled with this seed
    # Folders: "folders" reads DIR/[split/]<group>/<class>/ (a flat folder is then split by
    # group); sources "subfolders" reads <class>/<source>/*.png, "pattern" the one regex group of
    # each file name (data.source_pattern), for data.distinct_sources and within-group episodes.
    groups: Literal["none", "folders"] = "none"
    sources: Literal["none", "subfolders", "pattern"] = "none"
    source_pattern: str = ""
    # Episodes (mamlpp.run.episodes). Training: "within-group" draws every class of a task from
    # one group (an Omniglot alphabet); evaluation: "auto" is the dataset's protocol
    # (omniglot-lake: within-alphabet, drawer-disjoint; elsewhere random).
    train_episodes: Literal["random", "within-group"] = "random"
    eval_episodes: Literal["auto", "random", "within-group"] = "auto"
    distinct_sources: bool = False  # a class's query images from sources its support has not
    rotate: Literal["auto", "yes", "no"] = "auto"  # k*90 degree turns per class in training
    # Per-image random affine distortions of training episodes (Koch et al. 2015; the ranges of
    # mamlpp.data.augment.Augment): max degrees of rotation and shear, scale in [1 - s, 1 + s],
    # shift as a fraction of the side. 0 = off.
    augment_rotation: float = field(default=0.0, metadata=_AUGMENT["rotation"])
    augment_shear: float = field(default=0.0, metadata=_AUGMENT["shear"])
    augment_scale: float = field(default=0.0, metadata=_AUGMENT["scale"])
    augment_translate: float = field(default=0.0, metadata=_AUGMENT["translate"])


# The folder keys that say how classes are grouped and where each image comes from.
GROUPING = ("groups", "sources", "source_pattern")


def check_section(d: DataSection) -> None:
    """What the dataset table allows (the name, own-image keys, a fixed image size) and the
    fractions together; a one-line ConfigError naming the ``data.`` key. The single fields'
    types and ranges are their metadata's, checked by :func:`mamlpp.util.fields.check_fields`."""
    entry = _entry(d.dataset)
    _check_own_image_keys(d, entry)
    if entry.own_images:
        try:
            Grouping(d.groups, d.sources, d.source_pattern)
        except DataError as error:
            raise ConfigError(str(error)) from None
    _check_resample(d, entry)
    spec = entry.preprocessing
    if spec is not None and spec.fixed_size and d.image_size != spec.image_size:
        size = spec.image_size
        raise ConfigError(f"{d.dataset} images are {size}x{size}; data.image_size={d.image_size}")
    if d.channels == "grey" and d.normalize == "imagenet":  # ImageNet's statistics are RGB's
        raise ConfigError("data.normalize=imagenet needs data.channels=rgb (or auto), not grey")
    if d.val_fraction + d.test_fraction >= 1.0:
        raise ConfigError(
            f"data.val_fraction + data.test_fraction must be < 1 (leave classes to train on), "
            f"got {d.val_fraction} + {d.test_fraction}"
        )


def _entry(name: str) -> Dataset:
    """The dataset table's entry for data.dataset (its exact name: aliases are for loading)."""
    entry = TABLE.get(name)
    if entry is None:
        options = ", ".join(repr(known) for known in TABLE)
        raise ConfigError(
            f"data.dataset must be one of {options}, got {name!r}{dataset_hint(name)}"
        )
    return entry


def _check_resample(d: DataSection, entry: Dataset) -> None:
    if d.resample != "auto" and d.resample not in entry.resamplers:
        allowed = ", ".join(repr(r) for r in ("auto", *entry.resamplers))
        raise ConfigError(f"data.resample for {d.dataset} must be {allowed}, got {d.resample!r}")


def _check_own_image_keys(d: DataSection, entry: Dataset) -> None:
    """The own-image keys apply to data.dataset="folder" only: elsewhere they would be ignored."""
    if entry.own_images:
        return
    defaults = DataSection()
    own = " or ".join(repr(e.name) for e in TABLE.values() if e.own_images)
    for key in ("channels", "normalize", "resize", "val_fraction", "test_fraction", *GROUPING):
        if getattr(d, key) != getattr(defaults, key):
            raise ConfigError(
                f"data.{key} applies to data.dataset={own} only (the {d.dataset} "
                "dataset fixes its own preprocessing)"
            )
