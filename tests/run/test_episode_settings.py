"""The [data] episode keys reach the samplers of a run: training episodes within one group,
source-disjoint, rotated or augmented as set; evaluation under the dataset's protocol."""

from __future__ import annotations

import pytest
import torch

from mamlpp.data.structures import FewShotSplit, build_class_index
from mamlpp.errors import ConfigError
from mamlpp.run.episodes import episode_sampler
from mamlpp.run.experiment import build_config
from mamlpp.run.presets import resolve_config


def grouped_split(name: str) -> FewShotSplit:
    """24 classes in 3 groups of 8, 4 images each with sources 0, 0, 1, 1."""
    image_class = torch.arange(24).repeat_interleave(4)
    table, counts = build_class_index(image_class, 24)
    return FewShotSplit(
        name=name,
        images=torch.zeros(96, 1, 16, 16, dtype=torch.uint8),
        class_images=table,
        class_counts=counts,
        class_names=[f"c{i}" for i in range(24)],
        mean=(0.5,),
        std=(0.5,),
        class_groups=torch.arange(3).repeat_interleave(8),
        group_names=("a", "b", "c"),
        image_sources=torch.tensor([0, 0, 1, 1]).repeat(24),
    )


def samplers(*overrides: str):
    config = resolve_config("synthetic", None, overrides)
    return {
        role: episode_sampler(config, grouped_split(role), role, seed=0)
        for role in ("train", "val", "test")
    }


def test_defaults_are_the_plain_episodes():
    for sampler in samplers().values():
        assert not sampler.within_group and not sampler.distinct_sources
        assert sampler.augment is None


def test_the_lake_dataset_evaluates_within_alphabets_with_other_drawers():
    made = samplers("data.dataset=omniglot-lake")
    assert not made["train"].within_group  # training episodes are the user's choice
    for role in ("val", "test"):
        assert made[role].within_group and made[role].distinct_sources
    random_eval = samplers("data.dataset=omniglot-lake", "data.eval_episodes=random")
    assert not random_eval["test"].within_group


def test_training_keys_reach_the_training_sampler_only():
    made = samplers(
        "data.train_episodes=within-group",
        "data.distinct_sources=true",
        "data.augment_rotation=10",
        "data.augment_translate=0.1",
        "data.rotate=yes",
    )
    train = made["train"]
    assert train.within_group and train.distinct_sources and train.rotate
    assert train.augment is not None and train.augment.rotation == 10
    assert made["test"].augment is None and not made["test"].within_group
    assert made["test"].distinct_sources  # data.distinct_sources holds for every split


def test_impossible_augmentation_is_a_one_line_config_error():
    shear = r"^data\.augment_shear must lie in \[0\.0, 90\.0\), got 95\.0$"
    with pytest.raises(ConfigError, match=shear):
        resolve_config("synthetic", None, ["data.augment_shear=95"])
    with pytest.raises(ConfigError, match="data.train_episodes"):
        resolve_config("synthetic", None, ["data.train_episodes=alphabet"])


def test_a_config_of_an_older_run_loads_with_plain_episodes():
    tree = resolve_config("quickstart").to_dict()
    for key in ("train_episodes", "eval_episodes", "distinct_sources", "rotate"):
        tree["data"].pop(key)
    for key in ("rotation", "shear", "scale", "translate"):
        tree["data"].pop(f"augment_{key}")
    old = build_config(tree)
    assert old == resolve_config("quickstart")
