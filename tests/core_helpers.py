"""Small float64 problems and glue between the learner and the naive reference."""

from __future__ import annotations

import copy

import torch

from mamlpp import Conv4, MAMLpp, MetaConfig, TaskBatch


def tiny_learner(
    config: MetaConfig,
    ways: int = 3,
    channels: int = 3,
    image_size: int = 16,
    seed: int = 0,
    execution: str = "batched",
) -> MAMLpp:
    torch.manual_seed(seed)
    backbone = Conv4(ways, in_channels=1, channels=channels, image_size=image_size)
    learner = MAMLpp(backbone, config, execution=execution).double()
    # Non-trivial BN affine rows and running statistics, so that a wrong row is visible.
    with torch.no_grad():
        for layer in backbone.bn_layers().values():
            layer.weight.uniform_(0.5, 1.5)
            layer.bias.uniform_(-0.3, 0.3)
            layer.running_mean.uniform_(-0.5, 0.5)
            layer.running_var.uniform_(0.5, 2.0)
        if config.learn_inner_lrs:
            learner.inner_lrs.uniform_(0.05, 0.15)
    return learner


def tiny_tasks(
    tasks: int = 2,
    ways: int = 3,
    shots: int = 2,
    targets: int = 2,
    image_size: int = 16,
    seed: int = 1,
):
    """A float64 meta-batch: TaskBatch(support_x [B, N*K, 1, H, W], support_y, query_x,
    query_y)."""
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(
        tasks, ways * shots, 1, image_size, image_size, generator=g, dtype=torch.float64
    )
    qx = torch.randn(
        tasks, ways * targets, 1, image_size, image_size, generator=g, dtype=torch.float64
    )
    sy = torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1)
    qy = torch.arange(ways).repeat_interleave(targets).repeat(tasks, 1)
    return TaskBatch(sx, sy, qx, qy)


def naive_inputs(learner: MAMLpp):
    """Split the learner's state into the naive implementation's dicts (sharing parameters,
    so naive gradients land in the learner's .grad fields; running statistics copied)."""
    params = dict(learner.backbone.named_parameters())
    weights = {n: params[n] for n in learner.backbone.adaptable_names()}
    bn = {n: p for n, p in params.items() if n.startswith("bn")}
    running = {n: b.clone() for n, b in learner.backbone.named_buffers()}
    lrs = {n: learner.inner_lrs[j] for j, n in enumerate(learner.adapted_names)}
    return weights, bn, running, lrs


def grads_of(learner: MAMLpp) -> dict[str, torch.Tensor]:
    named = dict(learner.backbone.named_parameters())
    named["inner_lrs"] = learner.inner_lrs
    return {n: p.grad.clone() for n, p in named.items() if p.grad is not None}


def clone_learner(learner: MAMLpp) -> MAMLpp:
    return copy.deepcopy(learner)


def central_differences(
    learner: MAMLpp,
    batch,
    tensors: dict[str, torch.Tensor],
    analytic: dict[str, torch.Tensor],
    per_tensor: int,
    generator: torch.Generator,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Central finite differences of the meta-loss (epoch 0, statistics untouched) at
    ``per_tensor`` random entries of each tensor, and the matching ``analytic`` gradients."""
    fd_values, an_values = [], []
    for name, p in tensors.items():
        flat = p.data.view(-1)
        for idx in torch.randperm(flat.numel(), generator=generator)[:per_tensor].tolist():
            original = flat[idx].item()
            with torch.no_grad():
                flat[idx] = original + eps
                plus = learner.meta_loss(batch, 0, update_bn_stats=False)[0].item()
                flat[idx] = original - eps
                minus = learner.meta_loss(batch, 0, update_bn_stats=False)[0].item()
                flat[idx] = original
            fd_values.append((plus - minus) / (2 * eps))
            an_values.append(analytic[name].view(-1)[idx].item())
    return torch.tensor(fd_values), torch.tensor(an_values)
