"""The opt-in batch-norm modes that let training see what evaluation does (issue 10, item 4).

``per_step_trained`` (stored statistics in every training pass after a warm-up),
``per_step_query`` (stored statistics in the query passes only) and ``support`` (the query
normalised with the support set's statistics). The table of which statistics each pass uses is
``mamlpp.config.bn_pass_norms``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from core_helpers import grads_of, tiny_learner, tiny_tasks

from mamlpp import MetaConfig
from mamlpp.config import bn_pass_norms, bn_running_weight
from mamlpp.errors import ConfigError

NEW_MODES = ("per_step_trained", "per_step_query", "support")
# Epoch 1 of a 3-epoch blend from epoch 0: the stored statistics weigh 2/4 in training.
BLENDED = {"bn_blend_epochs": 3}
MSL_OFF = 10  # an epoch at which MSL is over (msl_epochs=10): one final target pass


def _config(mode: str, **changes) -> MetaConfig:
    # Second order from epoch 0, so that the gradient checks cover the double backward.
    return MetaConfig(num_inner_steps=2, first_order_epochs=0, bn_mode=mode, **changes)


def test_off_by_default_and_the_pass_table():
    config = MetaConfig()
    assert config.bn_mode == "transductive" and config.bn_warmup_epochs == 0
    assert config.bn_blend_epochs == 0
    expected = {
        # mode: (training after the warm-up, evaluation)
        "transductive": (("batch", "batch"), ("batch", "batch")),
        "per_step": (("batch", "batch"), ("running", "running")),
        "per_step_trained": (("running", "running"), ("running", "running")),
        "per_step_query": (("batch", "running"), ("batch", "running")),
        "support": (("batch", "support"), ("batch", "support")),
    }
    for mode, (train, evaluation) in expected.items():
        config = MetaConfig(bn_mode=mode, bn_warmup_epochs=3)
        assert bn_pass_norms(config, 3) == train, mode
        assert bn_pass_norms(config, None) == evaluation, mode
        # During the warm-up the stored-statistics modes train with batch statistics.
        warm = ("batch", "support") if mode == "support" else ("batch", "batch")
        assert bn_pass_norms(config, 2) == warm, mode


def test_blend_weight_schedule():
    config = MetaConfig(bn_mode="per_step_trained", bn_warmup_epochs=2, bn_blend_epochs=3)
    weights = [bn_running_weight(config, epoch) for epoch in range(7)]
    assert weights == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert bn_running_weight(config, None) == 1.0  # evaluation: stored statistics alone
    assert bn_running_weight(MetaConfig(bn_mode="per_step_trained"), 0) == 1.0


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"bn_mode": "running"}, "bn_mode must be one of"),
        ({"bn_warmup_epochs": -1}, "bn_warmup_epochs must be >= 0"),
        ({"bn_blend_epochs": -2}, "bn_blend_epochs must be >= 0"),
    ],
)
def test_bad_values_are_one_line_errors(changes, message):
    with pytest.raises(ConfigError, match=message):
        MetaConfig(**changes)


@pytest.mark.parametrize("mode", ["transductive", *NEW_MODES])
def test_training_target_loss_equals_the_evaluation_loss(mode):
    """After the warm-up, the final target pass of training (first order, MSL over) computes
    exactly what evaluation computes: same inner steps, same normalisation of the query."""
    learner = tiny_learner(_config(mode, second_order=False))
    sx, sy, qx, qy = tiny_tasks()
    loss, _ = learner.meta_loss(sx, sy, qx, qy, epoch=MSL_OFF, update_bn_stats=False)
    logits = learner.adapt_and_predict(sx, sy, qx)  # [B, m, ways]
    eval_loss = F.cross_entropy(logits.flatten(0, 1), qy.flatten(), reduction="none")
    torch.testing.assert_close(loss, eval_loss.view(qy.shape).mean(1).mean())


def test_per_step_training_differs_from_its_evaluation():
    """The mismatch the new modes remove (and proof that the equality above can fail)."""
    learner = tiny_learner(_config("per_step", second_order=False))
    sx, sy, qx, qy = tiny_tasks()
    loss, _ = learner.meta_loss(sx, sy, qx, qy, epoch=MSL_OFF, update_bn_stats=False)
    logits = learner.adapt_and_predict(sx, sy, qx)
    eval_loss = F.cross_entropy(logits.flatten(0, 1), qy.flatten())
    assert abs(loss.item() - eval_loss.item()) > 1e-3


def test_warm_up_trains_with_batch_statistics():
    sx, sy, qx, qy = tiny_tasks()
    losses = {}
    for mode in ("transductive", "per_step_trained"):
        learner = tiny_learner(_config(mode, bn_warmup_epochs=MSL_OFF + 1))
        losses[mode] = learner.meta_loss(sx, sy, qx, qy, epoch=MSL_OFF, update_bn_stats=False)[0]
    torch.testing.assert_close(losses["per_step_trained"], losses["transductive"])


def test_stored_statistics_only_change_the_output_where_they_are_read():
    sx, sy, qx, _ = tiny_tasks()
    for mode, reads in (("per_step_trained", True), ("per_step_query", True), ("support", False)):
        learner = tiny_learner(_config(mode))
        before = learner.adapt_and_predict(sx, sy, qx)
        with torch.no_grad():
            for layer in learner.backbone.bn_layers().values():
                layer.running_mean.add_(0.7)
                layer.running_var.mul_(3.0)
        changed = not torch.allclose(before, learner.adapt_and_predict(sx, sy, qx))
        assert changed == reads, mode


def test_support_normalisation_is_not_transductive_in_the_query():
    """Each query prediction depends on the support set and that query image alone."""
    sx, sy, qx, _ = tiny_tasks()
    for mode, independent in (("support", True), ("transductive", False)):
        learner = tiny_learner(_config(mode))
        all_queries = learner.adapt_and_predict(sx, sy, qx)
        first_alone = learner.adapt_and_predict(sx, sy, qx[:, :1])
        same = torch.allclose(all_queries[:, :1], first_alone)
        assert same == independent, mode


@pytest.mark.parametrize("mode", NEW_MODES)
def test_evaluation_leaves_every_stored_value_unchanged(mode):
    learner = tiny_learner(_config(mode))
    state = {k: v.clone() for k, v in learner.state_dict().items()}
    sx, sy, qx, qy = tiny_tasks()
    learner.adapt_and_predict(sx, sy, qx)
    learner.adapt_and_predict(sx, sy, qx, execution="loop")
    learner.adapt(sx, sy)
    learner.meta_loss(sx, sy, qx, qy, update_bn_stats=False)
    for key, value in learner.state_dict().items():
        assert torch.equal(value, state[key]), key
    # Training does update the statistics (so the check above could fail).
    learner.meta_loss(sx, sy, qx, qy)
    assert not torch.equal(learner.backbone.bn0.running_mean, state["backbone.bn0.running_mean"])


def test_predict_without_a_support_set_is_refused_in_support_mode():
    learner = tiny_learner(_config("support"))
    sx, sy, qx, _ = tiny_tasks()
    with pytest.raises(ConfigError, match="adapt_and_predict"):
        learner.predict(learner.adapt(sx, sy), qx)


def test_running_statistics_are_updated_from_batch_statistics_when_stored_ones_normalise():
    """bn0's input in the first support pass is conv0(support) with theta_0 whatever the mode,
    so its row-0 update is the same as in batch mode; later rows see different activations."""
    sx, sy, qx, qy = tiny_tasks()
    rows = {}
    for mode in ("transductive", "per_step_trained"):
        learner = tiny_learner(_config(mode))
        learner.meta_loss(sx, sy, qx, qy, epoch=MSL_OFF)  # MSL over: row 0 = support pass 0
        rows[mode] = learner.backbone.bn0.running_var.clone()
    torch.testing.assert_close(rows["per_step_trained"][0], rows["transductive"][0])
    assert not torch.allclose(rows["per_step_trained"][1], rows["transductive"][1])


@pytest.mark.parametrize(
    "mode, changes", [(m, {}) for m in NEW_MODES] + [("per_step_trained", BLENDED)]
)
def test_execution_paths_agree_in_float64(mode, changes):
    """Batched (grouped conv, own BN code) vs the per-task loop (generic BN function; vmap runs
    the same per-task code): loss, every meta-gradient (second order, MSL on) and the updated
    running statistics."""
    sx, sy, qx, qy = tiny_tasks()
    results = {}
    for execution in ("batched", "loop"):
        learner = tiny_learner(_config(mode, **changes), execution=execution)
        loss, _ = learner.meta_loss(sx, sy, qx, qy, epoch=1)
        loss.backward()
        buffers = {n: b.clone() for n, b in learner.backbone.named_buffers()}
        results[execution] = (loss.detach(), grads_of(learner), buffers)
    torch.testing.assert_close(results["loop"], results["batched"], rtol=1e-9, atol=1e-11)


# per_step_query normalises with the same code paths as these.
@pytest.mark.parametrize(
    "mode, changes", [("per_step_trained", {}), ("support", {}), ("per_step_trained", BLENDED)]
)
def test_second_order_meta_gradient_matches_finite_differences(mode, changes):
    learner = tiny_learner(_config(mode, **changes))
    batch = tiny_tasks()
    learner.zero_grad(set_to_none=True)
    learner.meta_loss(*batch, epoch=1, update_bn_stats=False)[0].backward()
    analytic = grads_of(learner)
    named = dict(learner.backbone.named_parameters())
    named["inner_lrs"] = learner.inner_lrs
    g = torch.Generator().manual_seed(0)
    eps = 1e-6
    for name in ("conv0.weight", "conv2.bias", "head.weight", "bn1.weight", "inner_lrs"):
        flat = named[name].data.view(-1)
        for idx in torch.randperm(flat.numel(), generator=g)[:1].tolist():
            original = flat[idx].item()
            with torch.no_grad():
                flat[idx] = original + eps
                plus = learner.meta_loss(*batch, epoch=1, update_bn_stats=False)[0].item()
                flat[idx] = original - eps
                minus = learner.meta_loss(*batch, epoch=1, update_bn_stats=False)[0].item()
                flat[idx] = original
            numeric = (plus - minus) / (2 * eps)
            assert analytic[name].view(-1)[idx].item() == pytest.approx(
                numeric, rel=1e-5, abs=1e-8
            ), (name, idx)
