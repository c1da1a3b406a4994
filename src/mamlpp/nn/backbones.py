"""Backbones as plain modules with a pure functional forward.

A backbone owns its parameters and BN statistics but never sees the experiment configuration.
The learner calls :meth:`functional_forward` with a dict of (possibly adapted) tensors, the inner
step index for per-step batch norm, and optionally the running statistics to normalise with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batch_norm_fn import batch_norm_train
from .per_step_bn import PerStepBatchNorm, per_step_batch_norm

# {bn layer name: (batch mean [C], unbiased batch variance [C])} from one forward pass.
BatchStats = dict[str, tuple[Tensor, Tensor]]


class Backbone(Protocol):
    """What the learner needs from a network."""

    num_steps: int

    def adaptable_names(self) -> list[str]:
        """Parameters adapted in the inner loop (conv and linear weights and biases)."""
        ...

    def bn_layers(self) -> dict[str, PerStepBatchNorm]: ...

    def functional_forward(
        self,
        params: Mapping[str, Tensor],
        x: Tensor,
        step: int,
        running: Mapping[str, Tensor] | None = None,
        norm_rows: int | None = None,
        running_weight: float = 1.0,
    ) -> tuple[Tensor, BatchStats]: ...


class Conv4(nn.Module):
    """The conv4 ("VGG") backbone of MAML and MAML++ (spec section 2).

    Four blocks of 3x3 conv (stride 1, padding 1, bias) -> per-step BN -> leaky ReLU (0.01) ->
    2x2 max-pool, then flatten -> linear to ``ways`` classes. Omniglot: 64 channels, 28x28 input,
    28->14->7->3->1 (64 features); mini-ImageNet: 48 channels, 84x84, 84->42->21->10->5 (1200).
    Xavier-uniform weights, zero biases, BN gamma 1 and beta 0.

    ``num_steps`` is the number of inner steps S: per-step BN weights/biases are ``[S, C]`` when
    ``per_step_bn_affine`` (BNWB), ``[C]`` otherwise; running statistics are ``[S, C]`` when
    ``per_step_bn_stats`` (BNRS), ``[C]`` otherwise.
    """

    def __init__(
        self,
        ways: int,
        in_channels: int = 1,
        channels: int = 64,
        image_size: int = 28,
        num_steps: int = 5,
        per_step_bn_stats: bool = True,
        per_step_bn_affine: bool = True,
        num_blocks: int = 4,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if ways < 2:
            raise ValueError(f"Conv4 needs ways >= 2, got {ways}")
        spatial = image_size
        for _ in range(num_blocks):
            spatial //= 2
        if spatial < 1:
            raise ValueError(f"image_size {image_size} is too small for {num_blocks} 2x2 max-pools")
        self.ways = ways
        self.num_steps = num_steps
        self.num_blocks = num_blocks
        self.per_step_bn_stats = per_step_bn_stats
        self.per_step_bn_affine = per_step_bn_affine
        for b in range(num_blocks):
            conv = nn.Conv2d(in_channels if b == 0 else channels, channels, 3, padding=1)
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
            self.add_module(f"conv{b}", conv)
            bn = PerStepBatchNorm(channels, num_steps, per_step_bn_affine, per_step_bn_stats, eps)
            self.add_module(f"bn{b}", bn)
        self.head = nn.Linear(channels * spatial * spatial, ways)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def adaptable_names(self) -> list[str]:
        names = [f"conv{b}.{p}" for b in range(self.num_blocks) for p in ("weight", "bias")]
        return names + ["head.weight", "head.bias"]

    def bn_layers(self) -> dict[str, PerStepBatchNorm]:
        return {f"bn{b}": getattr(self, f"bn{b}") for b in range(self.num_blocks)}

    def functional_forward(
        self,
        params: Mapping[str, Tensor],
        x: Tensor,
        step: int,
        running: Mapping[str, Tensor] | None = None,
        norm_rows: int | None = None,
        running_weight: float = 1.0,
    ) -> tuple[Tensor, BatchStats]:
        """Logits ``[n, ways]`` for images ``x [n, C, H, W]`` at inner step ``step``.

        ``params`` maps every parameter name to a tensor (adapted or not). ``running`` (buffer
        name -> tensor) switches BN to stored statistics; otherwise BN uses batch statistics,
        those of the first ``norm_rows`` images alone when given. ``running_weight`` w < 1 blends
        ``w * stored + (1 - w) * batch`` statistics. Returns per layer the batch
        statistics (of the first ``norm_rows`` images when given) for the running update.
        """
        stats: BatchStats = {}
        h = x
        for b in range(self.num_blocks):
            h = F.conv2d(h, params[f"conv{b}.weight"], params[f"conv{b}.bias"], padding=1)
            bn = f"bn{b}"
            mean = var = None
            if running is not None:
                mean, var = running[f"{bn}.running_mean"], running[f"{bn}.running_var"]
            h, stats[bn] = per_step_batch_norm(
                h,
                params[f"{bn}.weight"],
                params[f"{bn}.bias"],
                step,
                mean,
                var,
                self._modules[bn].eps,
                norm_rows,
                running_weight,
            )
            h = F.leaky_relu(h, 0.01)
            h = F.max_pool2d(h, 2)
        h = h.flatten(1)
        return F.linear(h, params["head.weight"], params["head.bias"]), stats

    def task_batched_forward(
        self,
        params: Mapping[str, Tensor],
        x: Tensor,
        step: int,
        running: Mapping[str, Tensor] | None = None,
        norm_rows: int | None = None,
        running_weight: float = 1.0,
    ) -> tuple[Tensor, BatchStats]:
        """All tasks of a meta-batch at once: every parameter carries a leading task dimension.

        ``params[name]``: ``[B, *shape]`` (shared tensors expanded by the caller); ``x``:
        ``[B, n, C, H, W]``. Returns logits ``[B, n, ways]`` and per-layer batch statistics
        ``(mean [B, C], var [B, C])``; ``running`` holds per-step tables without a task dim.
        ``norm_rows``, ``running_weight``: as in :meth:`functional_forward` (per task).

        Layout: tasks become channel groups. Activations live as ``[n, B*C, H, W]``, so one
        grouped convolution (``groups=B``) applies each task's own weights, and batch norm over
        the B*C channels is exactly per-task, per-channel batch norm (native fused kernel).
        """
        num_tasks, n = x.shape[:2]
        h = x.transpose(0, 1).reshape(n, -1, *x.shape[3:])  # [n, B*C_in, H, W]
        stats: BatchStats = {}
        for b in range(self.num_blocks):
            weight = params[f"conv{b}.weight"]  # [B, O, C, 3, 3]
            h = F.conv2d(
                h,
                weight.reshape(-1, *weight.shape[2:]),
                params[f"conv{b}.bias"].reshape(-1),
                padding=1,
                groups=num_tasks,
            )  # [n, B*O, H, W]
            bn = f"bn{b}"
            layer = self._modules[bn]
            gamma, beta = params[f"{bn}.weight"], params[f"{bn}.bias"]  # [B, S, C] or [B, C]
            if gamma.dim() == 3:
                gamma, beta = gamma[:, step], beta[:, step]
            if running is not None and running_weight != 1.0:
                # Blend w * stored + (1 - w) * batch (mean and biased variance, batch part
                # differentiable; generic ops). Stored rows [C] repeat over the B task groups.
                mean = running[f"{bn}.running_mean"]
                var = running[f"{bn}.running_var"]
                if mean.dim() == 2:
                    mean, var = mean[step], var[step]
                batch_var, batch_mean = torch.var_mean(h, dim=(0, 2, 3), correction=0)  # [B*C]
                w = running_weight
                mean = w * mean.repeat(num_tasks) + (1.0 - w) * batch_mean
                var = w * var.repeat(num_tasks) + (1.0 - w) * batch_var
                scale = gamma.reshape(-1) * torch.rsqrt(var + layer.eps)
                shift = beta.reshape(-1) - mean * scale
                count = h.shape[0] * h.shape[2] * h.shape[3]
                unbiased = batch_var.detach() * (count / max(count - 1, 1))
                stats[bn] = (batch_mean.detach().view(num_tasks, -1), unbiased.view(num_tasks, -1))
                h = h * scale[:, None, None] + shift[:, None, None]
            elif running is not None:
                mean = running[f"{bn}.running_mean"]
                var = running[f"{bn}.running_var"]
                if mean.dim() == 2:
                    mean, var = mean[step], var[step]
                # The batch's own statistics, only for the running update (no gradient).
                with torch.no_grad():
                    batch_var, batch_mean = torch.var_mean(h, dim=(0, 2, 3), correction=1)
                stats[bn] = (batch_mean.view(num_tasks, -1), batch_var.view(num_tasks, -1))
                h = F.batch_norm(
                    h,
                    mean.repeat(num_tasks),
                    var.repeat(num_tasks),
                    gamma.reshape(-1),
                    beta.reshape(-1),
                    training=False,
                    eps=layer.eps,
                )
            elif norm_rows is not None:
                # Statistics of each task's first norm_rows images (the support set), applied
                # to all n (generic autograd ops: the cheap double backward assumes whole-batch
                # statistics). ref: [norm_rows, B*C, H, W].
                ref = h[:norm_rows]
                var, mean = torch.var_mean(ref, dim=(0, 2, 3), correction=0)  # [B*C]
                scale = gamma.reshape(-1) * torch.rsqrt(var + layer.eps)
                shift = beta.reshape(-1) - mean * scale
                h = h * scale[:, None, None] + shift[:, None, None]
                ref_count = ref.shape[0] * ref.shape[2] * ref.shape[3]
                unbiased = var.detach() * (ref_count / max(ref_count - 1, 1))
                stats[bn] = (mean.detach().view(num_tasks, -1), unbiased.view(num_tasks, -1))
            else:
                # Hand-written double backward: far cheaper than the generic one (second order).
                h, mean, var = batch_norm_train(h, gamma.reshape(-1), beta.reshape(-1), layer.eps)
                count = h.shape[0] * h.shape[2] * h.shape[3]
                unbiased = var * (count / max(count - 1, 1))  # as running statistics use it
                stats[bn] = (mean.view(num_tasks, -1), unbiased.view(num_tasks, -1))
            # Pool first: leaky ReLU is increasing, so max-pool and it commute (same values,
            # same argmax) and the activation touches a quarter of the elements.
            h = F.leaky_relu(F.max_pool2d(h, 2), 0.01)
        features = h.reshape(n, num_tasks, -1).transpose(0, 1)  # [B, n, O*h*w]
        weight, bias = params["head.weight"], params["head.bias"]  # [B, ways, F], [B, ways]
        logits = torch.baddbmm(bias[:, None, :], features, weight.transpose(1, 2))
        return logits, stats

    def forward(self, x: Tensor, step: int | None = None) -> Tensor:
        """Logits with the stored (unadapted) parameters and batch statistics, at ``step``
        (default: the last inner step)."""
        step = self.num_steps - 1 if step is None else step
        logits, _ = self.functional_forward(dict(self.named_parameters()), x, step)
        return logits


def conv4_for(ways: int, in_channels: int, image_size: int, config, channels: int | None = None):
    """A Conv4 shaped for a MetaConfig: its BN tables match the config's per-step switches."""
    if channels is None:
        channels = 64 if image_size <= 32 else 48
    return Conv4(
        ways,
        in_channels=in_channels,
        channels=channels,
        image_size=image_size,
        num_steps=config.num_inner_steps,
        per_step_bn_stats=config.per_step_bn_stats,
        per_step_bn_affine=config.per_step_bn_affine,
    )


__all__ = ["Backbone", "BatchStats", "Conv4", "conv4_for"]
