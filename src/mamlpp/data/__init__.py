"""Few-shot datasets held in memory, an on-device episode sampler, and verified downloads.

Typical use::

    from mamlpp.data import load_dataset, EpisodeSampler
    splits = load_dataset("omniglot", data_dir)            # {"train", "val", "test"}
    train = EpisodeSampler(splits["train"], ways=20, shots=1, targets=1, seed=0, device="cuda")
    batch = train.sample(range(it * 8, it * 8 + 8))        # TaskBatch of 8 tasks
"""

from __future__ import annotations

from mamlpp.data.archive import extract_zip
from mamlpp.data.cifar import find_cifar100, load_cifar_fewshot
from mamlpp.data.download import ChecksumError, download_file
from mamlpp.data.files import data_dir
from mamlpp.data.folder import load_folder_dataset
from mamlpp.data.images import Preprocessing
from mamlpp.data.miniimagenet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    find_mini_imagenet,
    load_mini_imagenet,
)
from mamlpp.data.omniglot import find_omniglot, load_omniglot, prepare_omniglot
from mamlpp.data.omniglot_splits import REFERENCE_CODE_SEED, reference_split, vinyals_split
from mamlpp.data.sampler import Episodes, EpisodeSampler
from mamlpp.data.sources import download_mini_imagenet, download_omniglot
from mamlpp.data.structures import FewShotSplit, TaskBatch
from mamlpp.data.synthetic import make_synthetic
from mamlpp.data.table import DATASETS, load_dataset
from mamlpp.data.tiered import find_tiered_imagenet, load_tiered_imagenet

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
