"""A backbone written for the forward form of earlier releases, ``(params, x, step, running[,
stats_rows])``, still trains and predicts (through an adapter, with a DeprecationWarning) and
gives exactly what the same network of the current form ``(params, x, bn)`` gives."""

from __future__ import annotations

import warnings

import pytest
import torch
from core_helpers import tiny_learner, tiny_tasks

from mamlpp import BatchNormContext, Conv4, MAMLpp, MetaConfig, TaskBatch


class PositionalConv4(Conv4):
    """Conv4 with the forwards of earlier releases."""

    def functional_forward(self, params, x, step, running=None, stats_rows=None):
        return super().functional_forward(params, x, BatchNormContext(step, running, stats_rows))

    def task_batched_forward(self, params, x, step, running=None, stats_rows=None):
        return super().task_batched_forward(params, x, BatchNormContext(step, running, stats_rows))


class NoStatsRowsConv4(Conv4):
    """Written before bn_mode="support": no stats_rows argument at all."""

    def functional_forward(self, params, x, step, running=None):
        return super().functional_forward(params, x, BatchNormContext(step, running))

    def task_batched_forward(self, params, x, step, running=None):
        return super().task_batched_forward(params, x, BatchNormContext(step, running))


def _twin(learner: MAMLpp, kind: type[Conv4]) -> MAMLpp:
    """The learner's network as a ``kind`` with the same values, in a learner of the same
    config (built with a DeprecationWarning, which this asserts)."""
    old = learner.backbone
    backbone = kind(3, in_channels=1, channels=3, image_size=16)
    with pytest.warns(DeprecationWarning, match=r"\(params, x, bn"):
        twin = MAMLpp(backbone, learner.config, execution=learner.execution).double()
    twin.load_state_dict(learner.state_dict())
    assert type(twin.backbone) is kind and old is not backbone
    return twin


@pytest.mark.parametrize("execution", ["batched", "loop", "vmap"])
@pytest.mark.parametrize("bn_mode", ["transductive", "per_step", "support"])
def test_positional_backbone_gives_what_the_current_form_gives(execution, bn_mode):
    config = MetaConfig(num_inner_steps=2, first_order_epochs=0, bn_mode=bn_mode)
    current = tiny_learner(config, execution=execution)
    old = _twin(current, PositionalConv4)
    batch = TaskBatch(*tiny_tasks())
    for learner in (current, old):
        loss, _ = learner.meta_loss(batch, 1)
        loss.backward()
    assert torch.equal(current.meta_loss(batch, 1)[0], old.meta_loss(batch, 1)[0])
    for (name, p), (_, q) in zip(current.named_parameters(), old.named_parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert torch.equal(p.grad, q.grad), name
    for (name, b), (_, c) in zip(current.named_buffers(), old.named_buffers(), strict=True):
        assert torch.equal(b, c), name
    assert torch.equal(
        current.adapt_and_predict(batch.support_x, batch.support_y, batch.query_x),
        old.adapt_and_predict(batch.support_x, batch.support_y, batch.query_x),
    )


def test_backbone_without_stats_rows_still_runs_the_other_modes():
    config = MetaConfig(num_inner_steps=2)
    current = tiny_learner(config)
    old = _twin(current, NoStatsRowsConv4)
    batch = TaskBatch(*tiny_tasks())
    assert torch.equal(current.meta_loss(batch, 1)[0], old.meta_loss(batch, 1)[0])


def test_current_form_builds_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        MAMLpp(Conv4(3, in_channels=1, channels=3, image_size=16), MetaConfig(num_inner_steps=2))
