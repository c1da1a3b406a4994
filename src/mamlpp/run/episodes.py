"""The episode sampler of each split of a run, built from its configuration in one place.

Training episodes follow ``data.train_episodes``, ``data.distinct_sources``, ``data.rotate`` and
the ``data.augment_*`` ranges; evaluation episodes (val and test) are never augmented and follow
``data.eval_episodes``, whose ``"auto"`` is the dataset's own protocol (``omniglot-lake``:
within-alphabet tasks whose support and query images come from different drawers, as in Lake et
al.'s one-shot challenge; random tasks elsewhere).
"""

from __future__ import annotations

from typing import Literal

import torch

from mamlpp.data import EpisodeSampler, FewShotSplit
from mamlpp.data.augment import Augment
from mamlpp.data.table import TABLE
from mamlpp.run.experiment import DataSection, ExperimentConfig

Role = Literal["train", "val", "test"]


def training_augment(d: DataSection) -> Augment:
    """The affine ranges of ``data.augment_*`` (inactive when all are 0)."""
    return Augment(
        rotation=d.augment_rotation,
        shear=d.augment_shear,
        scale=d.augment_scale,
        translate=d.augment_translate,
    )


def fine_grained_evaluation(d: DataSection) -> bool:
    """Whether val and test tasks are within-group and source-disjoint."""
    if d.eval_episodes == "auto":
        entry = TABLE.get(d.dataset)
        return entry is not None and entry.fine_grained_evaluation
    return d.eval_episodes == "within-group"


def episode_sampler(
    config: ExperimentConfig,
    split: FewShotSplit,
    role: Role,
    seed: int,
    device: torch.device | str | None = None,
) -> EpisodeSampler:
    """The sampler of ``split`` in the run's ``role`` (a task: a function of (split, id, seed))."""
    d = config.data
    if role == "train":
        within, disjoint = d.train_episodes == "within-group", d.distinct_sources
        rotate = None if d.rotate == "auto" else d.rotate == "yes"
        augment: Augment | None = training_augment(d)
    else:  # evaluation: the dataset's protocol (or the setting), never rotated or augmented
        within = fine_grained_evaluation(d)
        # Within-group evaluation is source-disjoint where the split has sources (a folder may
        # have groups only: its within-group tasks then draw support and query freely).
        disjoint = d.distinct_sources or (within and split.image_sources is not None)
        rotate, augment = None, None
    return EpisodeSampler(
        split,
        d.ways,
        d.shots,
        d.targets,
        seed,
        device,
        rotate,
        within_group=within,
        distinct_sources=disjoint,
        augment=augment,
    )
