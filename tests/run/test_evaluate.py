"""Evaluation: fixed tasks, the 95% confidence interval, checkpoint ensembles, no side effects."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mamlpp.data import EpisodeSampler, make_synthetic
from mamlpp.run.build import build_learner
from mamlpp.run.checkpoint import atomic_save
from mamlpp.run.evaluate import confidence_interval95, ensemble_paths, evaluate, load_member
from mamlpp.run.presets import resolve_config
from mamlpp.run.run_dir import RunDir


def _config(*extra: str):
    return resolve_config("synthetic", None, ["model.channels=4", *extra])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models: one thread is fastest and avoids oversubscribing a shared 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def splits():
    return make_synthetic(classes=(30, 12, 12), samples_per_class=6, image_size=28, seed=3)


def _trained(config, splits, steps: int = 3, seed: int = 0):
    """A learner moved away from its initialisation by a few meta-steps."""
    learner = build_learner(config, 1)
    sampler = EpisodeSampler(splits["train"], 5, 1, 1, seed=seed)
    optimizer = learner.make_optimizer()
    for it in range(steps):
        learner.meta_step(optimizer, sampler.sample(range(it * 2, it * 2 + 2)), epoch=0)
    return learner


def _clone_state(learner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learner.state_dict().items()}


def test_the_same_tasks_every_call(splits) -> None:
    config = _config()
    learner = _trained(config, splits)
    sampler = EpisodeSampler(splits["val"], 5, 1, 1, seed=1)
    first = evaluate(learner, sampler, tasks=10, batch_size=4)
    second = evaluate(learner, sampler, tasks=10, batch_size=7)  # batching must not matter
    assert first.per_task_accuracies == second.per_task_accuracies
    assert first.num_tasks == 10 and first.ensemble_size == 1
    # A fresh sampler with the same seed gives the same episodes; another seed does not.
    again = EpisodeSampler(splits["val"], 5, 1, 1, seed=1).sample(range(10))
    other = EpisodeSampler(splits["val"], 5, 1, 1, seed=2).sample(range(10))
    assert torch.equal(again.support_x, sampler.sample(range(10)).support_x)
    assert not torch.equal(other.support_x, again.support_x)


@pytest.mark.parametrize("bn_mode", ["transductive", "per_step"])
def test_evaluation_leaves_stored_state_unchanged(splits, bn_mode: str) -> None:
    config = _config(f"meta.bn_mode={bn_mode!r}".replace("'", '"'))
    learner = _trained(config, splits)
    other = _trained(config, splits, seed=9)
    before, before_other = _clone_state(learner), _clone_state(other)
    sampler = EpisodeSampler(splits["test"], 5, 1, 1, seed=2)
    evaluate([learner, other], sampler, tasks=6, batch_size=3)
    for name, value in learner.state_dict().items():
        assert torch.equal(value, before[name]), name
    for name, value in other.state_dict().items():
        assert torch.equal(value, before_other[name]), name


def test_ensemble_of_one_checkpoint_equals_that_checkpoint(splits, tmp_path: Path) -> None:
    config = _config()
    learner = _trained(config, splits)
    path = tmp_path / "epoch-0001.pt"
    atomic_save({"format": 1, "model": learner.state_dict()}, path)
    template = build_learner(config, 1)  # different (initial) weights
    member = load_member(template, path)
    sampler = EpisodeSampler(splits["test"], 5, 1, 1, seed=2)
    direct = evaluate(learner, sampler, tasks=8, batch_size=4)
    ensemble = evaluate([member], sampler, tasks=8, batch_size=4)
    assert ensemble.per_task_accuracies == direct.per_task_accuracies
    assert ensemble.loss == direct.loss and ensemble.ensemble_size == 1
    # The template itself is untouched: members are copies.
    fresh = build_learner(config, 1)
    for name, value in template.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[name]), name


def test_ensemble_averages_logits_on_the_same_tasks(splits) -> None:
    config = _config()
    a, b = _trained(config, splits, seed=0), _trained(config, splits, steps=5, seed=4)
    sampler = EpisodeSampler(splits["test"], 5, 1, 1, seed=2)
    result = evaluate([a, b], sampler, tasks=6, batch_size=6)
    sx, sy, qx, qy = sampler.sample(range(6))
    logits = (a.adapt_and_predict(sx, sy, qx) + b.adapt_and_predict(sx, sy, qx)) / 2
    expected = (logits.argmax(-1) == qy).float().mean(-1)
    assert result.per_task_accuracies == expected.tolist()
    assert result.ensemble_size == 2
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), qy.flatten())
    assert result.loss == pytest.approx(float(loss), rel=1e-6)


def test_confidence_interval_is_1_96_standard_errors() -> None:
    values = torch.tensor([0.2, 0.4, 0.4, 0.6, 1.0, 0.8, 0.6])
    expected = 1.96 * np.std(values.numpy().astype(np.float64), ddof=1) / math.sqrt(7)
    assert confidence_interval95(values) == pytest.approx(expected, rel=1e-12)
    assert math.isnan(confidence_interval95(torch.tensor([0.5])))


def test_ensemble_paths_rank_by_validation_history(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.checkpoints.mkdir()
    history = [[1, 0.5], [2, 0.7], [3, 0.6], [4, 0.7]]
    for epoch in (2, 3, 4):
        atomic_save({"format": 1, "history": history}, run.epoch_checkpoint(epoch))
    atomic_save({"format": 1, "history": history}, run.latest)
    # 0.7 at epochs 2 and 4: the tie goes to the earlier epoch; epoch 1 was pruned.
    assert [p.name for p in ensemble_paths(run, 2)] == ["epoch-0002.pt", "epoch-0004.pt"]
    assert [p.name for p in ensemble_paths(run, 5)] == [
        "epoch-0002.pt",
        "epoch-0004.pt",
        "epoch-0003.pt",
    ]
