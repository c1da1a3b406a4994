"""Meta-gradients: finite differences, first vs second order, batched vs loop, naive parity."""

from __future__ import annotations

import pytest
import torch
from core_helpers import (
    central_differences,
    clone_learner,
    grads_of,
    naive_inputs,
    tiny_learner,
    tiny_tasks,
)
from naive_maml import naive_meta_loss, naive_predict

from mamlpp import MetaConfig

ALL_ON_2_STEPS = MetaConfig(num_inner_steps=2, first_order_epochs=0)  # six techniques, 2nd order


def _loss_and_grads(learner, batch, epoch=0, execution=None, update_bn_stats=False):
    learner.zero_grad(set_to_none=True)
    loss, metrics = learner.meta_loss(
        batch, epoch, execution=execution, update_bn_stats=update_bn_stats
    )
    loss.backward()
    return loss.detach(), grads_of(learner), metrics


@pytest.mark.slow
def test_second_order_meta_gradient_matches_central_finite_differences():
    learner = tiny_learner(ALL_ON_2_STEPS)
    batch = tiny_tasks()
    _, analytic, _ = _loss_and_grads(learner, batch)
    named = dict(learner.backbone.named_parameters())
    named["inner_lrs"] = learner.inner_lrs
    g = torch.Generator().manual_seed(0)
    # Backbone weights, learned inner learning rates and BN gamma/beta (per step).
    chosen = [
        "conv0.weight",
        "conv1.bias",
        "conv3.weight",
        "head.weight",
        "head.bias",
        "inner_lrs",
        "bn0.weight",
        "bn1.bias",
        "bn2.weight",
        "bn3.bias",
    ]
    fd, an = central_differences(learner, batch, {n: named[n] for n in chosen}, analytic, 4, g)
    assert an.abs().max() > 1e-4, "gradients too small for a meaningful check"
    rel = (fd - an).norm() / an.norm()
    assert rel < 1e-6, f"relative error {rel:.3e}"
    # Per-entry check as well, so that one wrong small entry cannot hide in the norm.
    assert torch.allclose(fd, an, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("msl", [True, False])
def test_first_order_equals_detached_inner_gradients(msl):
    config = ALL_ON_2_STEPS.replace(first_order_epochs=5, msl=msl)  # epoch 0: first order
    learner = tiny_learner(config)
    batch = tiny_tasks()
    assert not learner.second_order_at(0)
    _, first, _ = _loss_and_grads(learner, batch, epoch=0)

    weights, bn, running, lrs = naive_inputs(learner)
    tasks = list(zip(*batch, strict=True))
    learner.zero_grad(set_to_none=True)
    naive = naive_meta_loss(
        weights, bn, running, lrs, tasks, 2, learner.msl_weights(0), second_order=False
    )
    naive.backward()
    detached = grads_of(learner)
    assert set(first) == set(detached)
    for name in first:
        torch.testing.assert_close(first[name], detached[name], rtol=1e-10, atol=1e-12)

    # Learned learning rates still receive meta-gradient in first-order mode, except those of
    # the conv biases: batch-statistics BN cancels a conv bias, so its exact gradient (and that
    # of its rate) is 0; computed through block 0's folded BN it is exactly 0, elsewhere noise.
    dead = [n.startswith("conv") and n.endswith(".bias") for n in learner.adapted_names]
    rates = first["inner_lrs"].abs()  # [adapted tensors, steps]
    assert rates[[not d for d in dead]].min() > 1e-6
    assert (
        rates[dead].max() < 1e-20 and rates[learner.adapted_names.index("conv0.bias")].eq(0).all()
    )

    # And first order really differs from second order.
    _, second, _ = _loss_and_grads(learner, batch, epoch=5)
    assert learner.second_order_at(5)
    diff = max((first[n] - second[n]).abs().max().item() for n in first)
    assert diff > 1e-6


@pytest.mark.parametrize(
    "config",
    [
        ALL_ON_2_STEPS,
        ALL_ON_2_STEPS.replace(msl=False),
        ALL_ON_2_STEPS.replace(first_order_epochs=3),  # first order at epoch 0
        MetaConfig.maml(num_inner_steps=2),
        MetaConfig(
            num_inner_steps=3,
            per_step_bn_affine=False,
            adapt_bn_affine=True,
            first_order_epochs=0,
            task_reduction="sum",
        ),
    ],
    ids=["maml++", "no-msl", "first-order", "maml", "adapt-bn-sum"],
)
@pytest.mark.parametrize("execution", ["batched", "vmap"])
@pytest.mark.slow
def test_batched_equals_loop(config, execution):
    looped = tiny_learner(config)
    batched = clone_learner(looped)
    batch = tiny_tasks(tasks=3)
    loss_l, grads_l, metrics_l = _loss_and_grads(
        looped, batch, execution="loop", update_bn_stats=True
    )
    loss_b, grads_b, metrics_b = _loss_and_grads(
        batched, batch, execution=execution, update_bn_stats=True
    )
    torch.testing.assert_close(loss_b, loss_l, rtol=0, atol=1e-10)
    assert set(grads_l) == set(grads_b) and grads_l
    for name in grads_l:
        torch.testing.assert_close(grads_b[name], grads_l[name], rtol=0, atol=1e-10)
    for key in metrics_l:
        torch.testing.assert_close(metrics_b[key], metrics_l[key], rtol=0, atol=1e-10)
    # The BNRS statistics after the update are the same as well.
    buffers_l = dict(looped.backbone.named_buffers())
    for name, value in batched.backbone.named_buffers():
        torch.testing.assert_close(value, buffers_l[name], rtol=0, atol=1e-10)


@pytest.mark.parametrize("in_channels,image_size", [(1, 16), (3, 18)])
def test_folded_first_block_equals_conv_batch_norm_pool_on_binary_and_colour_images(
    in_channels, image_size
):
    """Block 0 of the batched Conv4 folds BN into the conv (patch mean and covariance) and pools
    channels-last. Binary images (Omniglot's strokes) have many equal patches: a degenerate patch
    covariance and exact ties in the max-pool (tied positions have equal patches there, so which
    one takes the gradient does not change it). Colour images with an odd intermediate size
    (18 -> 9 -> 4) exercise K = 27 patches and a cropped pool."""
    from mamlpp import MAMLpp
    from mamlpp.nn import Conv4

    config = ALL_ON_2_STEPS.replace(first_order_epochs=0)  # second order
    torch.manual_seed(0)
    net = Conv4(3, in_channels=in_channels, channels=3, image_size=image_size)
    looped = MAMLpp(net, config, execution="loop").double()
    batched = clone_learner(looped)
    batched.execution = "batched"
    g = torch.Generator().manual_seed(3)
    sx, sy, qx, qy = tiny_tasks(tasks=3, image_size=image_size)
    shape = (in_channels, image_size, image_size)
    sx = (torch.rand(*sx.shape[:2], *shape, generator=g) > 0.7).double()
    qx = (torch.rand(*qx.shape[:2], *shape, generator=g) > 0.7).double()
    batch = (sx, sy, qx, qy)
    loss_l, grads_l, _ = _loss_and_grads(looped, batch, update_bn_stats=True)
    loss_b, grads_b, _ = _loss_and_grads(batched, batch, update_bn_stats=True)
    torch.testing.assert_close(loss_b, loss_l, rtol=0, atol=1e-10)
    assert set(grads_l) == set(grads_b) and grads_b["conv0.weight"].abs().max() > 1e-3
    for name in grads_l:
        torch.testing.assert_close(grads_b[name], grads_l[name], rtol=0, atol=1e-10)
    buffers_l = dict(looped.backbone.named_buffers())
    for name, value in batched.backbone.named_buffers():
        torch.testing.assert_close(value, buffers_l[name], rtol=0, atol=1e-10)


@pytest.mark.parametrize("execution", ["batched", "loop"])
@pytest.mark.parametrize("bn_mode", ["transductive", "per_step"])
@pytest.mark.parametrize("epoch", [0, 10])  # MSL on at epoch 0, off from msl_epochs=10
@pytest.mark.slow
def test_parity_with_naive_implementation(bn_mode, epoch, execution):
    config = MetaConfig(num_inner_steps=3, first_order_epochs=0, bn_mode=bn_mode)
    learner = tiny_learner(config, execution=execution)
    batch = tiny_tasks(tasks=2)
    tasks = list(zip(*batch, strict=True))
    weights, bn, running, lrs = naive_inputs(learner)

    learner.zero_grad(set_to_none=True)
    naive = naive_meta_loss(weights, bn, running, lrs, tasks, 3, learner.msl_weights(epoch))
    naive.backward()
    naive_grads = grads_of(learner)

    loss, ours, _ = _loss_and_grads(learner, batch, epoch=epoch, update_bn_stats=True)
    torch.testing.assert_close(loss, naive.detach(), rtol=1e-12, atol=1e-12)
    for name in naive_grads:
        torch.testing.assert_close(ours[name], naive_grads[name], rtol=1e-9, atol=1e-11)
    # Running statistics: F.batch_norm's in-place updates vs our folded batch statistics.
    for name, value in learner.backbone.named_buffers():
        torch.testing.assert_close(value, running[name], rtol=1e-10, atol=1e-12)

    # Evaluation: per_step uses the running statistics, transductive the batch's own.
    logits = learner.adapt_and_predict(batch[0], batch[1], batch[2])
    weights, bn, running, lrs = naive_inputs(learner)
    for b, (sx, sy, qx, _) in enumerate(tasks):
        expected = naive_predict(
            weights, bn, running, lrs, sx, sy, qx, 3, use_running=bn_mode == "per_step"
        )
        torch.testing.assert_close(logits[b], expected, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("first_order_epochs", [0, 5])  # second / first order at epoch 0
@pytest.mark.parametrize("msl", [True, False])
@pytest.mark.slow
def test_checkpointed_inner_steps_give_the_same_meta_gradients(first_order_epochs, msl):
    config = MetaConfig(num_inner_steps=3, first_order_epochs=first_order_epochs, msl=msl)
    plain = tiny_learner(config)
    checkpointed = clone_learner(plain)
    checkpointed.checkpoint_steps = True
    batch = tiny_tasks(tasks=3)
    loss_p, grads_p, _ = _loss_and_grads(plain, batch, update_bn_stats=True)
    loss_c, grads_c, _ = _loss_and_grads(checkpointed, batch, update_bn_stats=True)
    torch.testing.assert_close(loss_c, loss_p, rtol=0, atol=1e-12)
    assert set(grads_c) == set(grads_p)
    for name in grads_p:
        torch.testing.assert_close(grads_c[name], grads_p[name], rtol=1e-10, atol=1e-12)
    for (name, a), b in zip(
        plain.backbone.named_buffers(), checkpointed.backbone.buffers(), strict=True
    ):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12, msg=name)
