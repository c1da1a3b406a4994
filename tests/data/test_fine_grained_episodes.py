"""Fine-grained episodes: every class of a task from one group, support and query of a class from
different sources (Lake et al.'s Omniglot one-shot protocol), still a pure function of the task."""

from __future__ import annotations

import pytest
import torch

from mamlpp.data.sampler import EpisodeSampler
from mamlpp.data.structures import FewShotSplit, build_class_index
from mamlpp.errors import DataError

GROUP_SIZES = (3, 5, 8, 8, 2, 10)  # classes per group; 5-way tasks can use groups 1, 2, 3, 5
IMAGES_PER_CLASS = 6
SOURCES = (0, 0, 1, 1, 2, 2)  # two images per source in every class


def grouped_split(groups: tuple[int, ...] = GROUP_SIZES, with_sources: bool = True) -> FewShotSplit:
    num_classes = sum(groups)
    image_class = torch.arange(num_classes).repeat_interleave(IMAGES_PER_CLASS)
    table, counts = build_class_index(image_class, num_classes)
    images = torch.randint(
        0,
        256,
        (image_class.numel(), 1, 8, 8),
        dtype=torch.uint8,
        generator=torch.Generator().manual_seed(0),
    )
    class_groups = torch.arange(len(groups)).repeat_interleave(torch.tensor(groups))
    return FewShotSplit(
        name="train",
        images=images,
        class_images=table,
        class_counts=counts,
        class_names=[f"c{i}" for i in range(num_classes)],
        mean=(0.5,),
        std=(0.25,),
        class_groups=class_groups,
        group_names=tuple(f"g{g}" for g in range(len(groups))),
        image_sources=torch.tensor(SOURCES).repeat(num_classes) if with_sources else None,
    )


def test_every_class_of_a_task_is_in_one_eligible_group():
    split = grouped_split()
    sampler = EpisodeSampler(split, ways=5, shots=1, targets=1, seed=3, within_group=True)
    episodes = sampler.sample_indices(range(400))
    groups = split.class_groups[episodes.classes]  # [B, N]
    assert bool((groups == groups[:, :1]).all())
    used = set(groups[:, 0].tolist())
    assert used == {1, 2, 3, 5}  # every group with >= 5 classes, and only those
    assert bool((episodes.classes.sort(-1).values.diff(dim=-1) > 0).all())  # distinct classes


def test_without_the_option_tasks_cross_groups():
    split = grouped_split()
    episodes = EpisodeSampler(split, 5, 1, 1, seed=3).sample_indices(range(200))
    groups = split.class_groups[episodes.classes]
    assert not bool((groups == groups[:, :1]).all())


def test_a_single_group_draws_exactly_the_plain_tasks():
    """The class draw is the same stream: restricting to a group that holds every class
    changes nothing."""
    split = grouped_split(groups=(36,))
    plain = EpisodeSampler(split, 5, 1, 2, seed=7).sample(range(20))
    grouped = EpisodeSampler(split, 5, 1, 2, seed=7, within_group=True).sample(range(20))
    assert all(torch.equal(a, b) for a, b in zip(plain, grouped, strict=True))


@pytest.mark.parametrize(("shots", "targets"), [(1, 1), (2, 2), (1, 4)])
def test_support_and_query_of_a_class_come_from_different_sources(shots, targets):
    split = grouped_split()
    sampler = EpisodeSampler(split, 5, shots, targets, seed=1, distinct_sources=True)
    episodes = sampler.sample_indices(range(300))
    sources = split.image_sources[episodes.images]  # [B, N, K+T]
    support, query = sources[..., :shots], sources[..., shots:]
    assert not bool((support.unsqueeze(-1) == query.unsqueeze(-2)).any())
    images = episodes.images
    assert bool((images.sort(-1).values.diff(dim=-1) > 0).all())  # no image twice
    # Without the option the same draw does put a support and a query image on one source.
    plain = EpisodeSampler(split, 5, shots, targets, seed=1).sample_indices(range(300))
    plain_sources = split.image_sources[plain.images]
    clash = plain_sources[..., :shots].unsqueeze(-1) == plain_sources[..., shots:].unsqueeze(-2)
    assert bool(clash.any())


def test_fine_grained_tasks_are_pure_functions_of_the_task_id():
    """Exact resume and sharding rely on this: task j is the same alone, in any batch, and in
    any process's share of the ids."""
    split = grouped_split()
    sampler = EpisodeSampler(split, 5, 1, 1, seed=11, within_group=True, distinct_sources=True)
    whole = sampler.sample(range(16))
    again = EpisodeSampler(split, 5, 1, 1, seed=11, within_group=True, distinct_sources=True)
    halves = [again.sample(range(0, 8)), again.sample(range(8, 16))]
    for field, joined in zip(whole, zip(*halves, strict=True), strict=True):
        assert torch.equal(field, torch.cat(joined))
    # Two processes: rank r takes every other task; together they are the one-process batch.
    even, odd = sampler.sample(range(0, 16, 2)), sampler.sample(range(1, 16, 2))
    assert torch.equal(whole.support_x[0::2], even.support_x)
    assert torch.equal(whole.query_x[1::2], odd.query_x)
    alone = sampler.sample([5])
    assert torch.equal(alone.support_x[0], whole.support_x[5])


def test_impossible_fine_grained_tasks_are_one_line_errors():
    with pytest.raises(DataError, match="need class groups"):
        split = grouped_split()
        from dataclasses import replace

        EpisodeSampler(
            replace(split, class_groups=None, group_names=()), 5, 1, 1, within_group=True
        )
    with pytest.raises(DataError, match="largest group of the train split has 10"):
        EpisodeSampler(grouped_split(), 11, 1, 1, within_group=True)
    with pytest.raises(DataError, match="need image sources"):
        EpisodeSampler(grouped_split(with_sources=False), 5, 1, 1, distinct_sources=True)
    with pytest.raises(DataError, match="too few sources"):
        EpisodeSampler(grouped_split(), 5, 2, 3, distinct_sources=True)  # 2 sources taken: 2 left


def test_lake_protocol_on_real_omniglot(omniglot_dir, tmp_path_factory):
    from mamlpp.data.omniglot import load_omniglot

    splits = load_omniglot(omniglot_dir, split="lake", cache_dir=tmp_path_factory.mktemp("lake"))
    train, val, test = splits["train"], splits["val"], splits["test"]
    assert len(test.group_names) == 20 and test.num_classes == 659  # the evaluation alphabets
    assert len(train.group_names) + len(val.group_names) == 30  # the background alphabets
    assert train.num_classes + val.num_classes == 964
    assert not set(train.group_names) & set(val.group_names)
    assert not (set(train.group_names) | set(val.group_names)) & set(test.group_names)
    assert not train.rotate
    sampler = EpisodeSampler(test, 20, 1, 1, seed=2, within_group=True, distinct_sources=True)
    episodes = sampler.sample_indices(range(600))
    groups = test.class_groups[episodes.classes]
    assert bool((groups == groups[:, :1]).all())
    assert len(set(groups[:, 0].tolist())) == 20  # every evaluation alphabet is tested
    drawers = test.image_sources[episodes.images]
    assert bool((drawers[..., 0] != drawers[..., 1]).all())
