"""The procedural dataset: seeded, quick, varied within a class, and learnable by MAML++."""

from __future__ import annotations

import time

import pytest
import torch

from mamlpp.data import EpisodeSampler, load_dataset, make_synthetic
from mamlpp.errors import DataError


def test_shapes_and_splits():
    start = time.perf_counter()
    splits = make_synthetic()
    assert time.perf_counter() - start < 5.0  # ~0.3 s on one idle core
    assert {n: s.num_classes for n, s in splits.items()} == {"train": 400, "val": 100, "test": 100}
    for name, split in splits.items():
        assert split.name == name
        assert split.images.shape == (split.num_classes * 20, 1, 28, 28)
        assert split.images.dtype == torch.uint8
        assert set(split.images.unique().tolist()) == {0, 255}
        assert split.mean == (0.0,) and split.std == (1.0,) and not split.rotate
    # 20-way tasks fit every split.
    for split in splits.values():
        EpisodeSampler(split, ways=20, shots=5, targets=15)


def test_seeded_and_deterministic():
    a = make_synthetic(classes=(10, 5, 5), seed=3)
    b = make_synthetic(classes=(10, 5, 5), seed=3)
    c = make_synthetic(classes=(10, 5, 5), seed=4)
    assert torch.equal(a["train"].images, b["train"].images)
    assert not torch.equal(a["train"].images, c["train"].images)
    assert load_dataset("synthetic", classes=(10, 5, 5), seed=3)["val"].images.equal(
        a["val"].images
    )


def test_samples_vary_within_a_class_but_stay_closer_than_other_classes():
    split = make_synthetic(classes=(50, 5, 5), seed=0)["train"]
    ink = (split.images == 0).float().view(50, 20, -1)  # [class, sample, pixels]
    # No two samples of a class are identical ...
    for c in range(0, 50, 7):
        assert len({bytes(x.to(torch.uint8).numpy()) for x in ink[c]}) == 20
    # ... yet a one-shot nearest-neighbour rule (IoU of ink) already beats chance by far.
    support, query = ink[:, 0], ink[:, 1:]  # [50, P], [50, 19, P]
    inter = torch.einsum("qsp,cp->qsc", query, support)
    union = query.sum(-1, keepdim=True) + support.sum(-1) - inter
    predicted = (inter / union).argmax(-1)  # [50, 19]
    accuracy = (predicted == torch.arange(50).unsqueeze(1)).float().mean()
    assert accuracy > 0.5  # chance is 0.02


def test_bad_arguments():
    with pytest.raises(DataError, match="3 positive class counts"):
        make_synthetic(classes=(10, 0, 5))
    with pytest.raises(DataError):
        make_synthetic(image_size=2)


def test_rotate_train_flag():
    splits = make_synthetic(classes=(10, 5, 5), rotate_train=True)
    assert splits["train"].rotate and not splits["val"].rotate and not splits["test"].rotate


@pytest.mark.slow
def test_meta_learning_beats_chance_on_synthetic_tasks():
    """A few dozen first-order MAML++ iterations with a tiny conv4: 5-way 1-shot accuracy on
    fixed validation tasks rises well above chance (0.2) and above the untrained network."""
    from mamlpp import Conv4, MAMLpp, MetaConfig

    torch.manual_seed(0)
    splits = make_synthetic(classes=(100, 30, 30), seed=0)
    config = MetaConfig(
        num_inner_steps=1,
        second_order=False,
        first_order_epochs=0,
        msl=False,
        cosine_lr=False,
        total_epochs=1,
        meta_lr=3e-3,
    )
    backbone = Conv4(5, in_channels=1, channels=16, image_size=28)
    learner = MAMLpp(backbone, config)
    optimizer = torch.optim.Adam(learner.meta_parameters(), lr=config.meta_lr)
    train = EpisodeSampler(splits["train"], ways=5, shots=1, targets=5, seed=1)
    val = EpisodeSampler(splits["val"], ways=5, shots=1, targets=5, seed=0)
    fixed = val.sample(range(100))  # the same validation tasks before and after

    def accuracy() -> float:
        logits = learner.adapt_and_predict(fixed.support_x, fixed.support_y, fixed.query_x)
        return (logits.argmax(-1) == fixed.query_y).float().mean().item()

    before = accuracy()
    for iteration in range(30):
        batch = train.sample(range(iteration * 8, iteration * 8 + 8))
        loss, _ = learner.meta_loss(batch, epoch=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = accuracy()
    assert after > 0.45, (before, after)
    assert after > before + 0.1, (before, after)
