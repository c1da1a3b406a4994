"""Few-shot datasets held in memory, an on-device episode sampler, and verified downloads.

Typical use::

    from mamlpp.data import load_dataset, EpisodeSampler
    splits = load_dataset("omniglot", data_dir)            # {"train", "val", "test"}
    train = EpisodeSampler(splits["train"], ways=20, shots=1, targets=1, seed=0, device="cuda")
    batch = train.sample(range(it * 8, it * 8 + 8))        # TaskBatch of 8 tasks

The datasets by name are the table of :mod:`mamlpp.data.table`. The names below load on first
use (PEP 562), so reading that table (as the command line does to build its parser) imports
neither numpy nor torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mamlpp.util.lazy import lazy_attributes

# public name -> the module that defines it
_EXPORTS = {
    "extract_zip": "mamlpp.data.archive",
    "find_cifar100": "mamlpp.data.cifar",
    "load_cifar_fewshot": "mamlpp.data.cifar",
    "ChecksumError": "mamlpp.data.download",
    "download_file": "mamlpp.data.download",
    "data_dir": "mamlpp.data.files",
    "load_folder_dataset": "mamlpp.data.folder",
    "Preprocessing": "mamlpp.data.images",
    "find_mini_imagenet": "mamlpp.data.miniimagenet",
    "load_mini_imagenet": "mamlpp.data.miniimagenet",
    "find_omniglot": "mamlpp.data.omniglot",
    "load_omniglot": "mamlpp.data.omniglot",
    "prepare_omniglot": "mamlpp.data.omniglot",
    "REFERENCE_CODE_SEED": "mamlpp.data.omniglot_splits",
    "reference_split": "mamlpp.data.omniglot_splits",
    "vinyals_split": "mamlpp.data.omniglot_splits",
    "Episodes": "mamlpp.data.sampler",
    "EpisodeSampler": "mamlpp.data.sampler",
    "download_mini_imagenet": "mamlpp.data.sources",
    "download_omniglot": "mamlpp.data.sources",
    "IMAGENET_MEAN": "mamlpp.data.stats",
    "IMAGENET_STD": "mamlpp.data.stats",
    "FewShotSplit": "mamlpp.data.structures",
    "TaskBatch": "mamlpp.core.types",
    "make_synthetic": "mamlpp.data.synthetic",
    "DATASETS": "mamlpp.data.table",
    "load_dataset": "mamlpp.data.table",
    "find_tiered_imagenet": "mamlpp.data.tiered",
    "load_tiered_imagenet": "mamlpp.data.tiered",
}

__all__ = [
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "REFERENCE_CODE_SEED",
    "ChecksumError",
    "EpisodeSampler",
    "Episodes",
    "FewShotSplit",
    "Preprocessing",
    "TaskBatch",
    "data_dir",
    "download_file",
    "download_mini_imagenet",
    "download_omniglot",
    "extract_zip",
    "find_cifar100",
    "find_mini_imagenet",
    "find_omniglot",
    "find_tiered_imagenet",
    "load_cifar_fewshot",
    "load_dataset",
    "load_folder_dataset",
    "load_mini_imagenet",
    "load_omniglot",
    "load_tiered_imagenet",
    "make_synthetic",
    "prepare_omniglot",
    "reference_split",
    "vinyals_split",
]


__getattr__, __dir__ = lazy_attributes("mamlpp.data", _EXPORTS, globals())


if TYPE_CHECKING:  # the same names for type checkers and IDEs
    from mamlpp.core.types import TaskBatch
    from mamlpp.data.archive import extract_zip
    from mamlpp.data.cifar import find_cifar100, load_cifar_fewshot
    from mamlpp.data.download import ChecksumError, download_file
    from mamlpp.data.files import data_dir
    from mamlpp.data.folder import load_folder_dataset
    from mamlpp.data.images import Preprocessing
    from mamlpp.data.miniimagenet import find_mini_imagenet, load_mini_imagenet
    from mamlpp.data.omniglot import find_omniglot, load_omniglot, prepare_omniglot
    from mamlpp.data.omniglot_splits import REFERENCE_CODE_SEED, reference_split, vinyals_split
    from mamlpp.data.sampler import Episodes, EpisodeSampler
    from mamlpp.data.sources import download_mini_imagenet, download_omniglot
    from mamlpp.data.stats import IMAGENET_MEAN, IMAGENET_STD
    from mamlpp.data.structures import FewShotSplit
    from mamlpp.data.synthetic import make_synthetic
    from mamlpp.data.table import DATASETS, load_dataset
    from mamlpp.data.tiered import find_tiered_imagenet, load_tiered_imagenet
