"""Batch-norm semantics, evaluation purity, LSLR sign freedom and step-count checks."""

from __future__ import annotations

import pytest
import torch
from core_helpers import tiny_learner, tiny_tasks

from mamlpp import MAMLpp, MetaConfig, TaskBatch
from mamlpp.errors import ConfigError
from mamlpp.nn import Conv4, fold_running_stats, per_step_batch_norm


class StepRecorder:
    """Wraps a backbone's functional forward and records (pass kind, BN step, running used)."""

    def __init__(self, learner: MAMLpp, support_n: int):
        self.calls: list[tuple[str, int, bool]] = []
        self.support_n = support_n
        backbone = learner.backbone
        for method in ("functional_forward", "task_batched_forward"):
            setattr(backbone, method, self._wrap(getattr(backbone, method)))

    def _wrap(self, original):
        def recording(params, x, bn):
            # x: [n, C, H, W] per task or [B, n, C, H, W] batched; n tells the pass apart.
            kind = "support" if x.shape[-4] == self.support_n else "target"
            self.calls.append((kind, bn.step, bn.running is not None))
            return original(params, x, bn)

        return recording


@pytest.mark.parametrize("execution", ["batched", "vmap", "loop"])
def test_bn_rows_used_by_each_pass(execution):
    config = MetaConfig(num_inner_steps=3, first_order_epochs=0, bn_mode="per_step")
    learner = tiny_learner(config, execution=execution)
    sx, sy, qx, qy = tiny_tasks(tasks=1, shots=1, targets=2)  # support 3 images, target 6
    recorder = StepRecorder(learner, support_n=3)

    learner.meta_loss(
        TaskBatch(sx, sy, qx, qy), epoch=0
    )  # MSL on: target pass after step i uses row i
    assert recorder.calls == [
        ("support", 0, False),
        ("target", 0, False),
        ("support", 1, False),
        ("target", 1, False),
        ("support", 2, False),
        ("target", 2, False),
    ]
    recorder.calls.clear()
    learner.meta_loss(TaskBatch(sx, sy, qx, qy), epoch=10)  # MSL off: one target pass with row S-1
    assert recorder.calls == [
        ("support", 0, False),
        ("support", 1, False),
        ("support", 2, False),
        ("target", 2, False),
    ]
    recorder.calls.clear()
    learner.adapt_and_predict(sx, sy, qx)  # evaluation: row S-1, running statistics (per_step)
    assert recorder.calls == [
        ("support", 0, True),
        ("support", 1, True),
        ("support", 2, True),
        ("target", 2, True),
    ]


def test_per_step_batch_norm_selects_the_row():
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    weight = torch.tensor([[1.0, 1.0], [2.0, 3.0]], dtype=torch.float64)
    bias = torch.tensor([[0.0, 0.0], [5.0, -5.0]], dtype=torch.float64)
    y0, _ = per_step_batch_norm(x, weight, bias, 0)
    y1, (mean, var) = per_step_batch_norm(x, weight, bias, 1)
    torch.testing.assert_close(y1[:, 0], 2 * y0[:, 0] + 5)
    torch.testing.assert_close(y1[:, 1], 3 * y0[:, 1] - 5)
    torch.testing.assert_close(mean, x.mean((0, 2, 3)))
    torch.testing.assert_close(var, x.transpose(0, 1).reshape(2, -1).var(1, unbiased=True))
    rm = torch.tensor([[0.0, 0.0], [1.0, -1.0]], dtype=torch.float64)
    rv = torch.tensor([[1.0, 1.0], [4.0, 0.25]], dtype=torch.float64)
    y, stats = per_step_batch_norm(x, weight, bias, 1, rm, rv, eps=0.0)
    assert stats is None
    torch.testing.assert_close(y[:, 0], 2 * (x[:, 0] - 1) / 2 + 5)


def test_fold_running_stats_equals_sequential_updates():
    running = torch.randn(3, 4, dtype=torch.float64)
    values = torch.randn(2, 5, 4, dtype=torch.float64)  # 2 tasks, 5 passes
    rows = [0, 0, 1, 1, 2]
    expected = running.clone()
    for b in range(2):
        for p, r in enumerate(rows):
            expected[r] = 0.9 * expected[r] + 0.1 * values[b, p]
    torch.testing.assert_close(fold_running_stats(running, values, rows, 0.1), expected)
    shared = running[0].clone()
    expected_shared = shared.clone()
    for b in range(2):
        for p in range(5):
            expected_shared = 0.9 * expected_shared + 0.1 * values[b, p]
    torch.testing.assert_close(fold_running_stats(shared, values, rows, 0.1), expected_shared)


def _running(learner):
    return {n: b.clone() for n, b in learner.backbone.named_buffers()}


def test_per_step_evaluation_uses_running_statistics_and_transductive_does_not():
    batch = tiny_tasks()
    for mode, should_change in (("per_step", True), ("transductive", False)):
        learner = tiny_learner(MetaConfig(num_inner_steps=2, bn_mode=mode))
        before = learner.adapt_and_predict(batch[0], batch[1], batch[2])
        with torch.no_grad():
            for layer in learner.backbone.bn_layers().values():
                layer.running_mean.add_(0.7)
                layer.running_var.mul_(3.0)
        after = learner.adapt_and_predict(batch[0], batch[1], batch[2])
        changed = not torch.allclose(before, after)
        assert changed == should_change, mode


@pytest.mark.parametrize("bn_mode", ["transductive", "per_step"])
@pytest.mark.slow
def test_evaluation_leaves_every_stored_value_unchanged(bn_mode):
    learner = tiny_learner(MetaConfig(num_inner_steps=2, bn_mode=bn_mode))
    state = {k: v.clone() for k, v in learner.state_dict().items()}
    sx, sy, qx, qy = tiny_tasks()
    learner.adapt_and_predict(sx, sy, qx)
    learner.adapt_and_predict(sx[0], sy[0], qx[0])  # single task
    fast = learner.adapt(sx, sy)
    learner.predict(fast, qx)
    learner.meta_loss(TaskBatch(sx, sy, qx, qy), update_bn_stats=False)
    for key, value in learner.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(p.grad is None for p in learner.parameters())
    # Training does change the statistics (so the check above could fail).
    learner.meta_loss(TaskBatch(sx, sy, qx, qy))
    assert not torch.equal(learner.backbone.bn0.running_mean, state["backbone.bn0.running_mean"])


def test_adapt_then_predict_equals_adapt_and_predict():
    learner = tiny_learner(MetaConfig(num_inner_steps=2, bn_mode="per_step"))
    sx, sy, qx, _ = tiny_tasks()
    torch.testing.assert_close(
        learner.predict(learner.adapt(sx, sy), qx), learner.adapt_and_predict(sx, sy, qx)
    )
    torch.testing.assert_close(
        learner.adapt_and_predict(sx, sy, qx, execution="loop"),
        learner.adapt_and_predict(sx, sy, qx),
    )


@pytest.mark.slow
def test_learned_inner_learning_rates_may_go_negative():
    learner = tiny_learner(MetaConfig(num_inner_steps=2, first_order_epochs=0))
    batch = tiny_tasks()
    with torch.no_grad():
        learner.inner_lrs.fill_(1e-4)
    loss, _ = learner.meta_loss(batch, update_bn_stats=False)
    loss.backward()
    grad = learner.inner_lrs.grad
    assert (grad > 0).any()
    # A plain SGD step large enough to cross zero: nothing clamps the table.
    with torch.no_grad():
        learner.inner_lrs -= 2e-4 * grad.sign()  # rates with a positive gradient cross zero
    assert (learner.inner_lrs < 0).any()
    negative = learner.inner_lrs.detach().clone()
    learner.meta_loss(batch, update_bn_stats=False)
    assert torch.equal(learner.inner_lrs.detach(), negative)
    # And a negative rate really reverses the step: the support loss rises instead of falling.
    with torch.no_grad():
        learner.inner_lrs.fill_(-0.05)
    _, metrics = learner.meta_loss(batch, update_bn_stats=False)
    assert metrics["support_losses"][1] > metrics["support_losses"][0]


def test_step_count_mismatch_with_per_step_parameters_is_rejected():
    learner = tiny_learner(MetaConfig(num_inner_steps=2))
    sx, sy, qx, _ = tiny_tasks()
    with pytest.raises(ConfigError, match="trained with 2"):
        learner.adapt_and_predict(sx, sy, qx, num_steps=3)
    # Without per-step parameters any step count is fine.
    maml = tiny_learner(MetaConfig.maml(num_inner_steps=2))
    assert maml.adapt_and_predict(sx, sy, qx, num_steps=4).shape == (2, 6, 3)


def test_bn_shapes_follow_the_config_alone():
    """The step count and BNRS/BNWB are stated once, in the MetaConfig: the learner gives the
    backbone's shared batch norm its per-step rows (copies of the shared initial values)."""
    net = Conv4(5)
    assert net.bn0.weight.shape == (64,) and net.bn0.running_mean.shape == (64,)
    MAMLpp(net, MetaConfig(num_inner_steps=4))
    assert net.bn0.weight.shape == (4, 64) and net.bn0.running_mean.shape == (4, 64)
    assert torch.equal(net.bn0.weight, torch.ones(4, 64))
    assert torch.equal(net.bn0.running_var, torch.ones(4, 64))
    assert net.head.in_features == 64
    net = Conv4(5, in_channels=3, channels=48, image_size=84)
    MAMLpp(net, MetaConfig(per_step_bn_stats=False, per_step_bn_affine=True))
    assert net.bn0.weight.shape == (5, 48) and net.bn0.running_var.shape == (48,)
    assert net.head.in_features == 1200
    assert net(torch.randn(2, 3, 84, 84)).shape == (2, 5)
    net = Conv4(5)
    MAMLpp(net, MetaConfig.maml())
    assert net.bn0.weight.shape == (64,) and net.bn0.running_var.shape == (64,)


def test_per_step_rows_of_another_step_count_are_refused():
    net = Conv4(3, image_size=16, channels=3)
    MAMLpp(net, MetaConfig(num_inner_steps=5))
    with pytest.raises(ValueError, match=r"cannot become \(2, 3\)"):
        MAMLpp(net, MetaConfig(num_inner_steps=2))


def test_bad_batch_shapes_are_clear_errors():
    learner = tiny_learner(MetaConfig(num_inner_steps=2))
    sx, sy, qx, qy = tiny_tasks()
    with pytest.raises(ValueError, match="support_x must be"):
        learner.meta_loss(TaskBatch(sx[0], sy, qx, qy))
    with pytest.raises(ValueError, match="query_y must be"):
        learner.meta_loss(TaskBatch(sx, sy, qx, qy[:, :2]))


def test_grad_clip_clamps_network_gradients_only():
    learner = tiny_learner(MetaConfig(num_inner_steps=2, grad_clip=1e-3, first_order_epochs=0))
    loss, _ = learner.meta_loss(tiny_tasks())
    loss.backward()
    assert learner.inner_lrs.grad.abs().max() > 1e-3
    learner.clip_gradients_()
    assert max(p.grad.abs().max() for p in learner.network_parameters()) <= 1e-3
    assert learner.inner_lrs.grad.abs().max() > 1e-3


@pytest.mark.slow
def test_meta_step_trains_a_separable_problem():
    """A few outer steps on a fixed meta-batch lower the loss (the loop is wired correctly)."""
    torch.manual_seed(0)
    learner = MAMLpp(
        Conv4(3, channels=8, image_size=16),
        MetaConfig(num_inner_steps=2, first_order_epochs=0, meta_lr=3e-3),
    )
    sx, sy, qx, qy = (t.float() if t.is_floating_point() else t for t in tiny_tasks())
    optimizer = learner.make_optimizer()
    first = learner.meta_step(optimizer, TaskBatch(sx, sy, qx, qy))["loss"].item()
    for _ in range(15):
        last = learner.meta_step(optimizer, TaskBatch(sx, sy, qx, qy))["loss"].item()
    assert last < first * 0.8
