"""One task-batch type: what the sampler makes, the learner, the outer step and the step runner
take; the four-tensor call forms of earlier releases still work, with a DeprecationWarning."""

from __future__ import annotations

import warnings

import pytest
import torch
from core_helpers import clone_learner, tiny_learner, tiny_tasks

import mamlpp
import mamlpp.data
from mamlpp import MetaConfig, MetaStepRunner, TaskBatch
from mamlpp.core.types import TaskBatch as CoreTaskBatch

CONFIG = MetaConfig(num_inner_steps=2, first_order_epochs=0)


def test_one_type_everywhere():
    assert mamlpp.TaskBatch is mamlpp.data.TaskBatch is CoreTaskBatch
    batch = TaskBatch(*tiny_tasks())
    support_x, support_y, query_x, query_y = batch  # still a tuple
    assert support_x is batch.support_x and query_y is batch.query_y
    moved = batch.to("cpu")
    assert isinstance(moved, TaskBatch) and torch.equal(moved.query_x, batch.query_x)


def _no_deprecation(call):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        return call()


def test_meta_loss_old_form_warns_and_gives_the_same():
    learner = tiny_learner(CONFIG)
    other = clone_learner(learner)
    batch = TaskBatch(*tiny_tasks())
    new, _ = _no_deprecation(lambda: learner.meta_loss(batch, 1))
    with pytest.warns(DeprecationWarning, match=r"meta_loss\(support_x"):
        old, _ = other.meta_loss(*batch, epoch=1)
    assert torch.equal(new, old)
    with pytest.warns(DeprecationWarning):
        again, _ = clone_learner(learner).meta_loss(*batch, 1)
    assert again.shape == new.shape
    same, _ = _no_deprecation(lambda: clone_learner(other).meta_loss(batch, epoch=1))
    assert same.shape == new.shape
    with pytest.raises(TypeError, match="TaskBatch and the epoch"):
        learner.meta_loss(batch, 1, 2)


def test_meta_step_and_runner_old_forms_warn_and_give_the_same():
    batch = TaskBatch(*tiny_tasks())
    reference = tiny_learner(CONFIG)
    runs = []
    for form in ("new", "old"):
        learner = clone_learner(reference)
        optimizer = learner.make_optimizer()
        runner = MetaStepRunner(clone_learner(reference))
        if form == "new":
            step = _no_deprecation(lambda: learner.meta_step(optimizer, batch, 0))  # noqa: B023
            replay = _no_deprecation(lambda: runner(batch, 0))  # noqa: B023
        else:
            with pytest.warns(DeprecationWarning, match="meta_step"):
                step = learner.meta_step(optimizer, *batch, 0)
            with pytest.warns(DeprecationWarning, match="MetaStepRunner"):
                replay = runner(*batch, 0)
        runs.append((step["loss"], replay["loss"], learner.backbone.head.weight.detach().clone()))
    for new, old in zip(*runs, strict=True):
        assert torch.equal(new, old)


def test_fast_meta_step_is_the_runner_under_its_old_name():
    import mamlpp.engine.step_runner as step_runner

    with pytest.warns(DeprecationWarning, match="FastMetaStep"):
        assert step_runner.FastMetaStep is MetaStepRunner
    assert "FastMetaStep" not in mamlpp.__all__
