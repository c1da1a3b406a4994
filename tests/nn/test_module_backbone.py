"""Any nn.Module through the generic path (ModuleBackbone): parity with the built-in grouped-conv
Conv4, finite-difference meta-gradients, parameter selection, and one-line errors."""

from __future__ import annotations

import pytest
import torch
from core_helpers import central_differences, grads_of, tiny_learner, tiny_tasks
from torch import nn

from mamlpp import MAMLpp, MetaConfig, ModuleBackbone, TaskBatch
from mamlpp.errors import ConfigError
from mamlpp.nn import BatchNormContext
from mamlpp.nn.module_backbone import _TaskBatchNorm

# Six techniques on (DA: first order at epoch 0, second order from epoch 1; MSL active to 3).
ALL_SIX = MetaConfig(num_inner_steps=2, first_order_epochs=1, msl_epochs=3)


def sequential_conv4(ways: int, channels: int, image_size: int) -> nn.Sequential:
    """Conv4 written as a plain Sequential: (conv, BN, leaky ReLU 0.01, max-pool) x 4, linear."""
    layers: list[nn.Module] = []
    for b in range(4):
        layers += [
            nn.Conv2d(1 if b == 0 else channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.LeakyReLU(0.01),
            nn.MaxPool2d(2),
        ]
    spatial = image_size // 16
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * spatial * spatial, ways))


def conv4_name(name: str) -> str:
    """Built-in Conv4 name -> the Sequential's backbone name (conv{b} -> 4b, bn{b} -> 4b+1)."""
    layer, _, what = name.partition(".")
    if layer == "head":
        return f"module.17.{what}"
    index = int(layer[-1]) * 4 + (1 if layer.startswith("bn") else 0)
    return f"module.{index}.{what}"


def generic_twin(config: MetaConfig, execution: str = "batched") -> tuple[MAMLpp, MAMLpp]:
    """The built-in Conv4 learner of core_helpers and a Sequential twin with copied state."""
    builtin = tiny_learner(config)
    generic = MAMLpp(sequential_conv4(3, 3, 16), config, execution=execution).double()
    target = generic.state_dict()
    with torch.no_grad():
        for name, value in builtin.state_dict().items():
            if name.startswith("backbone."):
                name = "backbone." + conv4_name(name.removeprefix("backbone."))
            target[name].copy_(value)
    return builtin, generic


def _meta(learner: MAMLpp, batch, epoch: int, execution: str | None = None):
    learner.zero_grad(set_to_none=True)
    loss, metrics = learner.meta_loss(batch, epoch, execution=execution)
    loss.backward()
    return loss.detach(), metrics, grads_of(learner)


@pytest.mark.parametrize(
    "execution, epoch",
    [("batched", 0), ("batched", 1), ("loop", 1)],
    ids=["batched-first-order", "batched-second-order", "loop-second-order"],
)
@pytest.mark.slow
def test_sequential_conv4_equals_builtin_conv4(execution, epoch):
    builtin, generic = generic_twin(ALL_SIX, execution)
    assert builtin.second_order_at(epoch) == (epoch == 1)
    assert builtin.msl_weights(epoch) is not None
    batch = tiny_tasks()
    loss_b, metrics_b, grads_b = _meta(builtin, batch, epoch)
    loss_g, metrics_g, grads_g = _meta(generic, batch, epoch)
    assert abs(loss_b - loss_g) < 1e-10
    for key in ("step_losses", "support_losses"):
        assert torch.allclose(metrics_b[key], metrics_g[key], rtol=0, atol=1e-10)
    # Every meta-gradient: conv/linear weights and biases, per-step BN gamma/beta, the LSLR table.
    assert len(grads_b) == len(grads_g) == 19
    assert grads_b["head.weight"].abs().max() > 1e-3
    for name, grad in grads_b.items():
        twin = grads_g[name if name == "inner_lrs" else conv4_name(name)]
        assert torch.allclose(grad, twin, rtol=0, atol=1e-10), name
    # The per-step running statistics after the update that meta_loss made.
    buffers_g = dict(generic.backbone.named_buffers())
    for name, value in builtin.backbone.named_buffers():
        assert value.shape == (2, 3)
        assert torch.allclose(value, buffers_g[conv4_name(name)], rtol=0, atol=1e-10), name


@pytest.mark.parametrize("bn_mode", ["transductive", "per_step"])
def test_sequential_conv4_evaluation_equals_builtin(bn_mode):
    config = ALL_SIX.replace(bn_mode=bn_mode)
    builtin, generic = generic_twin(config)
    sx, sy, qx, _ = tiny_tasks()
    buffers = {n: b.clone() for n, b in generic.backbone.named_buffers()}
    expected = builtin.adapt_and_predict(sx, sy, qx)
    assert torch.allclose(expected, generic.adapt_and_predict(sx, sy, qx), rtol=0, atol=1e-10)
    fast = generic.adapt(sx, sy)
    assert torch.allclose(expected, generic.predict(fast, qx), rtol=0, atol=1e-10)
    for name, value in generic.backbone.named_buffers():  # evaluation stores nothing
        assert torch.equal(value, buffers[name]), name


def bn1d_mlp(features: int = 16, hidden: int = 6, ways: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(features, hidden),
        nn.BatchNorm1d(hidden),
        nn.Tanh(),
        nn.Linear(hidden, ways),
    )


@pytest.mark.slow
def test_bn1d_mlp_second_order_meta_gradient_matches_central_finite_differences():
    config = MetaConfig(num_inner_steps=2, first_order_epochs=0)  # second order, MSL at epoch 0
    torch.manual_seed(0)
    learner = MAMLpp(bn1d_mlp(), config).double()
    with torch.no_grad():  # distinct per-step BN rows and learning rates
        bn = learner.backbone.bn_layers()["module.2"]
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.3, 0.3)
        learner.inner_lrs.uniform_(0.2, 0.6)
    sx, sy, qx, qy = tiny_tasks(tasks=2, shots=2, targets=2, image_size=4)
    batch = (sx, sy, qx, qy)
    assert learner.second_order_at(0) and learner.msl_weights(0) is not None
    learner.zero_grad(set_to_none=True)
    learner.meta_loss(batch, 0, update_bn_stats=False)[0].backward()
    named = dict(learner.backbone.named_parameters())
    named["inner_lrs"] = learner.inner_lrs
    assert set(named) == {
        "module.1.weight",
        "module.1.bias",
        "module.2.weight",
        "module.2.bias",
        "module.4.weight",
        "module.4.bias",
        "inner_lrs",
    }
    g = torch.Generator().manual_seed(0)
    analytic = {n: p.grad for n, p in named.items()}
    fd, an = central_differences(learner, batch, named, analytic, 3, g)
    assert an.abs().max() > 1e-3, "gradients too small for a meaningful check"
    assert torch.allclose(fd, an, rtol=1e-5, atol=1e-8), (fd - an).abs().max()


def test_task_batched_forward_on_vectors_equals_one_task_at_a_time():
    """The contract on [B, n, D] inputs: batched logits and statistics are the per-task ones."""
    torch.manual_seed(0)
    backbone = MAMLpp(bn1d_mlp(features=5), MetaConfig(num_inner_steps=3)).backbone.double()
    params = {
        n: p.detach() + 0.1 * torch.randn(3, *p.shape).double()
        for n, p in backbone.named_parameters()
    }  # a different network per task: [B=3, *shape]
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    logits, stats = backbone.task_batched_forward(params, x, BatchNormContext(1))
    assert logits.shape == (3, 4, 3) and set(stats) == {"module.2"}
    for b in range(3):
        one, one_stats = backbone.functional_forward(
            {n: t[b] for n, t in params.items()}, x[b], BatchNormContext(1)
        )
        assert torch.allclose(logits[b], one, rtol=0, atol=1e-12)
        for j in range(2):
            assert torch.allclose(stats["module.2"][j][b], one_stats["module.2"][j], atol=1e-12)
    # Stored statistics: row `step` normalises, and no statistics are returned.
    running = {n: b + 0.5 for n, b in backbone.named_buffers()}
    logits_r, stats_r = backbone.task_batched_forward(params, x, BatchNormContext(2, running))
    one_r, _ = backbone.functional_forward(
        {n: t[0] for n, t in params.items()}, x[0], BatchNormContext(2, running)
    )
    assert stats_r == {} and torch.allclose(logits_r[0], one_r, rtol=0, atol=1e-12)
    assert not torch.allclose(logits_r, logits)


def test_learner_takes_examples_of_any_shape_not_only_images():
    """A wrapped MLP learns from feature vectors [B, n, D]: the same meta-loss, meta-gradients
    and predictions as from the same numbers laid out as images (its Flatten undoes that)."""
    torch.manual_seed(0)
    learner = MAMLpp(bn1d_mlp(), MetaConfig(num_inner_steps=2, first_order_epochs=0)).double()
    images = tiny_tasks(tasks=2, shots=2, targets=2, image_size=4)  # x: [2, n, 1, 4, 4]
    vectors = tuple(t.flatten(2) if t.dim() == 5 else t for t in images)  # x: [2, n, 16]
    results = []
    for batch in (images, vectors):
        loss, _, grads = _meta(learner, batch, 1)
        results.append((loss, grads, learner.adapt_and_predict(*batch[:3])))
    (loss_i, grads_i, logits_i), (loss_v, grads_v, logits_v) = results
    assert torch.equal(loss_i, loss_v) and torch.equal(logits_i, logits_v)
    assert grads_i.keys() == grads_v.keys() and len(grads_v) == 7
    assert all(torch.equal(grads_i[n], grads_v[n]) for n in grads_i)
    one_task = learner.adapt_and_predict(vectors[0][0], vectors[1][0], vectors[2][0])
    assert torch.allclose(one_task, logits_v[0], rtol=0, atol=1e-12)
    sx, sy, qx, qy = vectors
    with pytest.raises(ValueError, match=r"query_x must be \[B=2, N\*Q, 16\]"):
        learner.meta_loss(TaskBatch(sx, sy, qx[..., :8], qy))


def test_bn_tables_follow_the_config_and_the_module_is_left_alone():
    module = sequential_conv4(3, 4, 16)
    for config, shape in ((ALL_SIX, (2, 4)), (MetaConfig.maml(num_inner_steps=2), (4,))):
        backbone = MAMLpp(module, config).backbone
        assert isinstance(backbone, ModuleBackbone)
        for layer in backbone.bn_layers().values():
            assert layer.weight.shape == layer.running_mean.shape == shape
    assert isinstance(module[1], nn.BatchNorm2d)  # the caller's module is not converted


def test_adapted_parameters_default_and_patterns():
    config = MetaConfig(num_inner_steps=2)
    default = MAMLpp(sequential_conv4(3, 4, 16), config)
    assert len(default.adapted_names) == 10  # conv and linear weights and biases, no BN
    assert all(not n.startswith(("module.1.", "module.5.")) for n in default.adapted_names)
    backbone = ModuleBackbone(
        sequential_conv4(3, 4, 16), adapt=["12.*", "17.*"], exclude=["*.bias"]
    )
    assert backbone.adaptable_names() == ["module.12.weight", "module.17.weight"]
    learner = MAMLpp(backbone, config)
    assert learner.adapted_names == ("module.12.weight", "module.17.weight")
    assert learner.inner_lrs.shape == (2, 2)
    # adapt_bn_affine adds the shared BN gamma/beta, as for the built-in Conv4.
    shared = MetaConfig(num_inner_steps=2, per_step_bn_affine=False, adapt_bn_affine=True)
    assert "module.1.weight" in MAMLpp(sequential_conv4(3, 4, 16), shared).adapted_names


@pytest.mark.parametrize(
    "layer, words",
    [
        (nn.Dropout(0.1), "layer 2 (Dropout) is random"),
        (nn.Dropout2d(0.1), "layer 2 (Dropout2d) is random"),
        (nn.InstanceNorm2d(4, track_running_stats=True), "layer 2 (InstanceNorm2d) updates"),
        (nn.SyncBatchNorm(4), "layer 2 (SyncBatchNorm) is not supported"),
        (nn.BatchNorm2d(4, affine=False), "layer 2 (BatchNorm2d) has affine=False"),
        (nn.LazyConv2d(4, 1), "layer 2 (LazyConv2d) has an uninitialised parameter"),
    ],
)
def test_unsupported_layers_are_one_line_errors_naming_the_layer(layer, words):
    module = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), layer, nn.Flatten())
    with pytest.raises(ConfigError) as error:
        MAMLpp(module, MetaConfig(num_inner_steps=2))
    message = str(error.value)
    assert words in message and "\n" not in message


def test_supported_stateless_norms_and_bad_patterns():
    ok = nn.Sequential(nn.Conv2d(1, 4, 3), nn.InstanceNorm2d(4), nn.GroupNorm(2, 4), nn.Flatten())
    MAMLpp(ok, MetaConfig(num_inner_steps=2))
    with pytest.raises(ConfigError, match=r"pattern 'head\.\*' matches no adaptable parameter"):
        ModuleBackbone(sequential_conv4(3, 4, 16), adapt=["head.*"])
    with pytest.raises(ConfigError, match="leave no parameter to adapt"):
        ModuleBackbone(sequential_conv4(3, 4, 16), exclude=["*"])
    with pytest.raises(ConfigError, match="list of patterns"):
        ModuleBackbone(sequential_conv4(3, 4, 16), adapt="17.*")


@pytest.mark.slow
def test_batch_norm_function_is_also_right_outside_vmap():
    """_TaskBatchNorm's own forward/backward (used when no vmap rule applies) match PyTorch's
    batch norm, first and second derivatives included."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    gamma = torch.rand(3, generator=g, dtype=torch.float64).add(0.5).requires_grad_()
    beta = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)

    def normalise(x, gamma, beta):
        return _TaskBatchNorm.apply(x, gamma, beta, 1e-5)[0]

    assert torch.autograd.gradcheck(normalise, (x, gamma, beta))
    assert torch.autograd.gradgradcheck(normalise, (x, gamma, beta))
    expected = torch.nn.functional.batch_norm(x, None, None, gamma, beta, True, 0.0, 1e-5)
    assert torch.allclose(normalise(x, gamma, beta), expected, rtol=0, atol=1e-12)


class _CountsCalls(nn.Module):
    """A layer with state between calls: a buffer incremented in place by every forward."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


def test_a_layer_that_mutates_a_buffer_is_a_one_line_error_naming_it():
    module = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), _CountsCalls())
    learner = MAMLpp(module, MetaConfig(num_inner_steps=1))
    sx, sy, qx, qy = tiny_tasks(image_size=2)
    with pytest.raises(ConfigError) as error:
        learner.meta_loss(TaskBatch(sx.float(), sy, qx.float(), qy))
    message = str(error.value)
    assert "layer 2 (_CountsCalls) changed its buffer calls in place" in message
    assert "\n" not in message
