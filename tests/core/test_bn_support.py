"""``bn_mode="support"``: every query pass normalises with the support set's batch statistics.

(a) a query's prediction does not depend on the other queries it is predicted with (Conv4 on
all three executions, a plain ``nn.Module``), and the same check catches transductive batch
norm; (b) the executions agree in float64 (losses, meta-gradients, statistics); (c) second-order
meta-gradients against finite differences; (d) a deliberately simple hand-written reference
(``F.conv2d``/``F.batch_norm``, support and query run separately); (e) the config.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from core_helpers import central_differences, clone_learner, grads_of, tiny_learner, tiny_tasks
from torch import nn

from mamlpp import MAMLpp, MetaConfig, TaskBatch
from mamlpp.errors import ConfigError
from mamlpp.nn.conv4 import conv4_sequential
from mamlpp.nn.per_step_bn import per_step_batch_norm, support_batch_norm

SUPPORT = MetaConfig(num_inner_steps=2, first_order_epochs=0, bn_mode="support")
# (a): Conv4 on each execution, and Conv4 as a plain nn.Sequential (ModuleBackbone) on two.
KINDS = ["conv4-batched", "conv4-loop", "conv4-vmap", "module-batched", "module-loop"]


def conv4_name(name: str) -> str:
    """Built-in Conv4 name -> ``conv4_sequential``'s backbone name (conv{b} -> 4b, bn{b} ->
    4b+1, head -> 17)."""
    layer, _, what = name.partition(".")
    if layer == "head":
        return f"module.17.{what}"
    return f"module.{int(layer[-1]) * 4 + layer.startswith('bn')}.{what}"


def module_twin(builtin: MAMLpp, execution: str = "batched") -> MAMLpp:
    """The same network as ``builtin`` written as a plain nn.Sequential, with its state."""
    generic = MAMLpp(conv4_sequential(3, 1, 3, 16), builtin.config, execution=execution)
    generic = generic.to(next(builtin.parameters()).dtype)
    target = generic.state_dict()
    with torch.no_grad():
        for name, value in builtin.state_dict().items():
            if name.startswith("backbone."):
                name = "backbone." + conv4_name(name.removeprefix("backbone."))
            target[name].copy_(value)
    return generic


def learner_of(kind: str, config: MetaConfig, dtype: torch.dtype = torch.float64) -> MAMLpp:
    network, execution = kind.split("-")
    builtin = tiny_learner(config).to(dtype)
    if network == "module":
        return module_twin(builtin, execution)
    builtin.execution = execution
    return builtin


# -- (a) predictions that do not depend on the other queries ------------------------------------


def batch_dependence(learner: MAMLpp, seed: int = 0) -> float:
    """Largest change of a query's logits between predicting it alone and predicting it among
    other queries of its task (several permutations and subsets, a meta-batch of 2 tasks)."""
    dtype = next(learner.parameters()).dtype
    sx, sy, qx, _ = (t.to(dtype) if t.is_floating_point() else t for t in tiny_tasks(targets=3))
    m = qx.shape[1]
    alone = torch.stack(
        [learner.adapt_and_predict(sx, sy, qx[:, j : j + 1])[:, 0] for j in range(m)], dim=1
    )  # [B, m, ways]
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for size in (m, m, m, 2, 5):  # three permutations of all queries, two subsets
        order = torch.randperm(m, generator=g)[:size]
        together = learner.adapt_and_predict(sx, sy, qx[:, order])
        worst = max(worst, (together - alone[:, order]).abs().max().item())
    return worst


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.slow
def test_a_query_prediction_is_the_same_alone_and_among_other_queries(kind):
    learner = learner_of(kind, SUPPORT, torch.float32)
    assert batch_dependence(learner) < 1e-6


@pytest.mark.parametrize("kind", ["conv4-batched", "module-batched"])
@pytest.mark.slow
def test_the_same_check_fails_for_transductive_batch_norm(kind):
    learner = learner_of(kind, SUPPORT.replace(bn_mode="transductive"), torch.float32)
    assert batch_dependence(learner) > 1e-2


@pytest.mark.slow
def test_a_single_task_and_predict_after_adapt_are_batch_independent_too():
    learner = tiny_learner(SUPPORT)
    sx, sy, qx, _ = tiny_tasks(targets=3)
    batched = learner.adapt_and_predict(sx, sy, qx)
    single = learner.adapt_and_predict(sx[1], sy[1], qx[1])
    torch.testing.assert_close(single, batched[1], rtol=0, atol=1e-12)
    fast = learner.adapt(sx, sy)
    torch.testing.assert_close(learner.predict(fast, qx, sx), batched, rtol=0, atol=1e-12)
    with pytest.raises(ConfigError, match="needs support_x"):
        learner.predict(fast, qx)


def test_evaluation_in_support_mode_leaves_every_stored_value_unchanged():
    learner = tiny_learner(SUPPORT)
    state = {k: v.clone() for k, v in learner.state_dict().items()}
    sx, sy, qx, qy = tiny_tasks()
    learner.adapt_and_predict(sx, sy, qx)
    learner.predict(learner.adapt(sx, sy), qx, sx)
    learner.meta_loss(TaskBatch(sx, sy, qx, qy), update_bn_stats=False)
    for key, value in learner.state_dict().items():
        assert torch.equal(value, state[key]), key
    learner.meta_loss(
        TaskBatch(sx, sy, qx, qy)
    )  # training folds the statistics in (never read here)
    assert not torch.equal(learner.backbone.bn0.running_mean, state["backbone.bn0.running_mean"])


# -- (b) the executions agree ---------------------------------------------------------------------


def _loss_and_grads(learner: MAMLpp, batch, epoch: int, execution: str | None = None):
    learner.zero_grad(set_to_none=True)
    loss, metrics = learner.meta_loss(batch, epoch, execution=execution)
    loss.backward()
    return loss.detach(), metrics, grads_of(learner)


@pytest.mark.parametrize(
    "config, epoch",
    [
        (SUPPORT, 0),  # MSL on, second order
        (SUPPORT.replace(msl_epochs=1), 1),  # MSL off: one target pass
        (SUPPORT.replace(first_order_epochs=3), 0),  # first order
        (MetaConfig.maml(num_inner_steps=2, bn_mode="support"), 0),  # shared BN rows
    ],
    ids=["maml++", "no-msl", "first-order", "maml"],
)
@pytest.mark.parametrize("execution", ["loop", "vmap"])
@pytest.mark.slow
def test_batched_equals_loop_and_vmap_in_float64(config, epoch, execution):
    batched = tiny_learner(config)
    other = clone_learner(batched)
    batch = tiny_tasks(tasks=3)
    loss_b, metrics_b, grads_b = _loss_and_grads(batched, batch, epoch)
    loss_o, metrics_o, grads_o = _loss_and_grads(other, batch, epoch, execution=execution)
    torch.testing.assert_close(loss_o, loss_b, rtol=0, atol=1e-10)
    assert set(grads_b) == set(grads_o) and grads_b["conv0.weight"].abs().max() > 1e-4
    for name in grads_b:
        torch.testing.assert_close(grads_o[name], grads_b[name], rtol=0, atol=1e-10)
    for key in metrics_b:
        torch.testing.assert_close(metrics_o[key], metrics_b[key], rtol=0, atol=1e-10)
    buffers_b = dict(batched.backbone.named_buffers())  # the folded statistics
    for name, value in other.backbone.named_buffers():
        torch.testing.assert_close(value, buffers_b[name], rtol=0, atol=1e-10)
    sx, sy, qx, _ = batch
    torch.testing.assert_close(
        other.adapt_and_predict(sx, sy, qx, execution=execution),
        batched.adapt_and_predict(sx, sy, qx),
        rtol=0,
        atol=1e-10,
    )


@pytest.mark.parametrize("msl_epochs", [10, 1])  # MSL on / off at epoch 1
def test_checkpointed_inner_steps_give_the_same_meta_gradients(msl_epochs):
    plain = tiny_learner(SUPPORT.replace(msl_epochs=msl_epochs))
    checkpointed = clone_learner(plain)
    checkpointed.checkpoint_steps = True
    batch = tiny_tasks()
    loss_p, _, grads_p = _loss_and_grads(plain, batch, 1)
    loss_c, _, grads_c = _loss_and_grads(checkpointed, batch, 1)
    torch.testing.assert_close(loss_c, loss_p, rtol=0, atol=1e-12)
    for name in grads_p:
        torch.testing.assert_close(grads_c[name], grads_p[name], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("execution", ["batched", "loop"])
@pytest.mark.slow
def test_a_plain_module_equals_the_builtin_conv4_in_float64(execution):
    builtin = tiny_learner(SUPPORT)
    generic = module_twin(builtin, execution)
    batch = tiny_tasks()
    loss_b, metrics_b, grads_b = _loss_and_grads(builtin, batch, 0)
    loss_g, metrics_g, grads_g = _loss_and_grads(generic, batch, 0)
    torch.testing.assert_close(loss_g, loss_b, rtol=0, atol=1e-10)
    assert len(grads_b) == len(grads_g) == 19
    for name, grad in grads_b.items():
        twin = grads_g[name if name == "inner_lrs" else conv4_name(name)]
        torch.testing.assert_close(twin, grad, rtol=0, atol=1e-10, msg=name)
    buffers_g = dict(generic.backbone.named_buffers())
    for name, value in builtin.backbone.named_buffers():
        torch.testing.assert_close(buffers_g[conv4_name(name)], value, rtol=0, atol=1e-10)
    sx, sy, qx, _ = batch
    torch.testing.assert_close(
        generic.adapt_and_predict(sx, sy, qx),
        builtin.adapt_and_predict(sx, sy, qx),
        rtol=0,
        atol=1e-10,
    )


# -- (c) finite differences ---------------------------------------------------------------------


@pytest.mark.slow
def test_second_order_meta_gradient_matches_central_finite_differences():
    learner = tiny_learner(SUPPORT)
    batch = tiny_tasks()
    assert learner.second_order_at(0) and learner.msl_weights(0) is not None
    _, _, analytic = _loss_and_grads(learner, batch, 0)
    named = dict(learner.backbone.named_parameters())
    named["inner_lrs"] = learner.inner_lrs
    chosen = ["conv0.weight", "conv2.bias", "conv3.weight", "head.weight", "inner_lrs"]
    chosen += ["bn0.weight", "bn1.bias", "bn3.weight"]
    g = torch.Generator().manual_seed(0)
    fd, an = central_differences(learner, batch, {n: named[n] for n in chosen}, analytic, 4, g)
    assert an.abs().max() > 1e-4, "gradients too small for a meaningful check"
    assert (fd - an).norm() / an.norm() < 1e-6
    torch.testing.assert_close(fd, an, rtol=1e-5, atol=1e-8)


# -- (d) a hand-written reference -----------------------------------------------------------------


def reference_conv4(params, support, query, step, eps=1e-5):
    """One task's Conv4 at BN row ``step``, support and query run separately: every layer's
    batch norm takes the support images' mean and biased variance (``F.batch_norm`` in
    evaluation mode), for the support images and the query images alike. Returns the query
    logits and each layer's support (mean, unbiased variance)."""
    stats = []
    for b in range(4):
        w, bias = params[f"conv{b}.weight"], params[f"conv{b}.bias"]
        support = F.conv2d(support, w, bias, padding=1)
        query = F.conv2d(query, w, bias, padding=1)
        mean = support.mean(dim=(0, 2, 3))
        var = support.var(dim=(0, 2, 3), unbiased=False)
        stats.append((mean, support.var(dim=(0, 2, 3), unbiased=True)))
        gamma, beta = params[f"bn{b}.weight"][step], params[f"bn{b}.bias"][step]
        support, query = (
            F.max_pool2d(F.leaky_relu(F.batch_norm(h, mean, var, gamma, beta, False, 0.0, eps)), 2)
            for h in (support, query)
        )
    return F.linear(query.flatten(1), params["head.weight"], params["head.bias"]), stats


def reference_adapt(params, lrs, names, support, labels, steps, eps=1e-5):
    """First-order inner loop of one task with PyTorch's own training-mode batch norm."""
    fast = {n: params[n].detach().clone() for n in names}
    for i in range(steps):
        leaves = {n: t.requires_grad_() for n, t in fast.items()}
        h = support
        for b in range(4):
            h = F.conv2d(h, leaves[f"conv{b}.weight"], leaves[f"conv{b}.bias"], padding=1)
            gamma, beta = params[f"bn{b}.weight"][i], params[f"bn{b}.bias"][i]
            h = F.batch_norm(h, None, None, gamma, beta, training=True, eps=eps)
            h = F.max_pool2d(F.leaky_relu(h), 2)
        logits = F.linear(h.flatten(1), leaves["head.weight"], leaves["head.bias"])
        grads = torch.autograd.grad(F.cross_entropy(logits, labels), list(leaves.values()))
        fast = {
            n: (leaves[n] - lrs[j, i] * g).detach()
            for j, (n, g) in enumerate(zip(names, grads, strict=True))
        }
    return fast


def test_predictions_and_the_training_target_pass_equal_a_hand_written_reference():
    config = SUPPORT.replace(msl_epochs=1, first_order_epochs=5)  # epoch 1: no MSL, first order
    learner = tiny_learner(config)
    sx, sy, qx, qy = tiny_tasks(tasks=2)
    params = {n: p.detach() for n, p in learner.backbone.named_parameters()}
    names = learner.adapted_names
    logits = learner.adapt_and_predict(sx, sy, qx)
    loss, _, stats = learner.meta_loss_and_stats(TaskBatch(sx, sy, qx, qy), epoch=1)
    assert stats.rows == (0, 1, 1)  # support 0, support 1, the final target pass (row S-1)
    losses = []
    for b in range(2):
        fast = reference_adapt(params, learner.inner_lrs.detach(), names, sx[b], sy[b], 2)
        expected, support_stats = reference_conv4({**params, **fast}, sx[b], qx[b], step=1)
        torch.testing.assert_close(logits[b], expected, rtol=0, atol=1e-10)
        losses.append(F.cross_entropy(expected, qy[b]))
        for layer, (mean, var) in enumerate(support_stats):  # the statistics to fold in
            got_mean, got_var = stats.values[f"bn{layer}"]
            torch.testing.assert_close(got_mean[b, 2], mean, rtol=0, atol=1e-10)
            torch.testing.assert_close(got_var[b, 2], var, rtol=0, atol=1e-10)
    torch.testing.assert_close(loss.detach(), torch.stack(losses).mean(), rtol=0, atol=1e-10)


def test_support_rows_equal_to_all_rows_is_plain_batch_norm():
    x = torch.randn(6, 3, 4, 4, dtype=torch.float64)
    weight, bias = torch.rand(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    expected, (mean, var) = per_step_batch_norm(x, weight, bias, 1)
    got, (got_mean, got_var) = per_step_batch_norm(x, weight, bias, 1, stats_rows=6)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_mean, mean)
    torch.testing.assert_close(got_var, var)
    # Only the first rows count: changing the others changes nothing but themselves.
    y, _ = support_batch_norm(x, weight[0], bias[0], 2)
    x2 = x.clone()
    x2[2:] = 10 * torch.randn(4, 3, 4, 4, dtype=torch.float64)
    y2, _ = support_batch_norm(x2, weight[0], bias[0], 2)
    torch.testing.assert_close(y2[:2], y[:2], rtol=0, atol=0)
    with pytest.raises(ValueError, match="stats_rows"):
        support_batch_norm(x, weight[0], bias[0], 0)


class _RowsPerPosition(nn.Module):
    """Batch norm over ``[n*L, C]``: one row per position, not per example."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        return self.head(self.bn(x.reshape(n * 4, 4)).reshape(n, 16))


def test_a_module_whose_batch_norm_mixes_examples_is_a_one_line_error():
    learner = MAMLpp(_RowsPerPosition(), SUPPORT).double()
    sx, sy, qx, qy = tiny_tasks(image_size=4)
    with pytest.raises(ConfigError, match=r"module\.bn sees \d+ rows for \d+ examples") as info:
        learner.adapt_and_predict(sx, sy, qx)
    assert "\n" not in str(info.value)
    MAMLpp(_RowsPerPosition(), SUPPORT.replace(bn_mode="transductive")).meta_loss(
        TaskBatch(sx.float(), sy, qx.float(), qy)
    )  # the other modes do not care


# -- (e) the config -------------------------------------------------------------------------------


def test_the_config_accepts_support_and_rejects_unknown_modes_in_one_line():
    assert MetaConfig(bn_mode="support").bn_mode == "support"
    with pytest.raises(ConfigError) as info:
        MetaConfig(bn_mode="query")
    message = str(info.value)
    assert "\n" not in message and "'support'" in message and "'query'" in message
