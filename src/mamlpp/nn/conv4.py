"""Backbones as plain modules with a pure functional forward.

A backbone owns its parameters and BN statistics but never sees the experiment configuration.
The learner calls :meth:`functional_forward` with a dict of (possibly adapted) tensors and a
:class:`~mamlpp.nn.backbone.BatchNormContext` (the inner step's batch-norm row, and optionally
the running statistics to normalise with).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mamlpp.nn.backbone import BatchNormContext, BatchStats
from mamlpp.nn.batch_norm_fn import batch_norm_train
from mamlpp.nn.per_step_bn import (
    PerStepBatchNorm,
    per_step_batch_norm,
    step_row,
    support_batch_norm,
    unbiased_variance,
)


class Conv4(nn.Module):
    """The conv4 ("VGG") backbone of MAML (Finn et al., 2017), which MAML++ keeps ("How to train
    your MAML", Antoniou et al., ICLR 2019; see ``docs/algorithm.md``).

    Four blocks of 3x3 conv (stride 1, padding 1, bias) -> per-step BN -> leaky ReLU (0.01) ->
    2x2 max-pool, then flatten -> linear to ``ways`` classes. Omniglot: 64 channels, 28x28 input,
    28->14->7->3->1 (64 features); mini-ImageNet: 48 channels, 84x84, 84->42->21->10->5 (1200).
    Xavier-uniform weights, zero biases, BN gamma 1 and beta 0.

    Batch norm is built shared (``[C]``); :class:`~mamlpp.MAMLpp` gives it per-step rows as its
    MetaConfig says (BNRS, BNWB), so the network never repeats the experiment's settings.
    """

    def __init__(
        self,
        ways: int,
        in_channels: int = 1,
        channels: int = 64,
        image_size: int = 28,
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
        self.num_blocks = num_blocks
        for b in range(num_blocks):
            conv = nn.Conv2d(in_channels if b == 0 else channels, channels, 3, padding=1)
            init_xavier(conv)
            self.add_module(f"conv{b}", conv)
            bn = PerStepBatchNorm(channels, eps)
            self.add_module(f"bn{b}", bn)
        self.head = nn.Linear(channels * spatial * spatial, ways)
        init_xavier(self.head)

    def adaptable_names(self) -> list[str]:
        names = [f"conv{b}.{p}" for b in range(self.num_blocks) for p in ("weight", "bias")]
        return names + ["head.weight", "head.bias"]

    def bn_layers(self) -> dict[str, PerStepBatchNorm]:
        return {f"bn{b}": getattr(self, f"bn{b}") for b in range(self.num_blocks)}

    def dead_names(self) -> list[str]:
        """The conv biases: batch norm, which normalises every training pass with batch
        statistics, subtracts each again, so their exact gradient is 0 (the learner keeps them
        exactly still; docs/algorithm.md)."""
        return [f"conv{b}.bias" for b in range(self.num_blocks)]

    def functional_forward(
        self, params: Mapping[str, Tensor], x: Tensor, bn: BatchNormContext
    ) -> tuple[Tensor, BatchStats]:
        """Logits ``[n, ways]`` for images ``x [n, C, H, W]`` at inner step ``bn.step``.

        ``params`` maps every parameter name to a tensor (adapted or not). ``bn.running`` (buffer
        name -> tensor) switches BN to stored statistics; otherwise BN uses batch statistics
        (with ``bn.stats_rows``, those of the first ``bn.stats_rows`` images) and returns them
        per layer for the running-statistics update.
        """
        step, running = bn.step, bn.running
        stats: BatchStats = {}
        layers = self.bn_layers()
        h = x
        for b in range(self.num_blocks):
            h = F.conv2d(h, params[f"conv{b}.weight"], params[f"conv{b}.bias"], padding=1)
            layer = f"bn{b}"
            h, batch = per_step_batch_norm(
                h,
                params[f"{layer}.weight"],
                params[f"{layer}.bias"],
                step,
                None if running is None else running[f"{layer}.running_mean"],
                None if running is None else running[f"{layer}.running_var"],
                layers[layer].eps,
                bn.stats_rows,
            )
            if batch is not None:  # batch statistics normalised (no ``running``)
                stats[layer] = batch
            h = F.leaky_relu(h, 0.01)
            h = F.max_pool2d(h, 2)
        h = h.flatten(1)
        return F.linear(h, params["head.weight"], params["head.bias"]), stats

    def task_batched_forward(
        self, params: Mapping[str, Tensor], x: Tensor, bn: BatchNormContext
    ) -> tuple[Tensor, BatchStats]:
        """All tasks of a meta-batch at once: every parameter carries a leading task dimension.

        ``params[name]``: ``[B, *shape]`` (shared tensors expanded by the caller); ``x``:
        ``[B, n, C, H, W]``. Returns logits ``[B, n, ways]`` and per-layer batch statistics
        ``(mean [B, C], var [B, C])``; ``bn.running`` holds per-step tables without a task dim.
        With ``bn.stats_rows`` each task's first ``stats_rows`` images define the statistics
        (:func:`~mamlpp.nn.per_step_bn.support_batch_norm`; the examples are dim 0 of the
        layout below, so it applies as it is), and block 0 is not folded (the fold needs the
        statistics of all images).

        Layout: tasks become channel groups. Activations live as ``[n, B*C, H, W]``, so one
        grouped convolution (``groups=B``) applies each task's own weights, and batch norm over
        the B*C channels is exactly per-task, per-channel batch norm (native fused kernel).
        """
        step, running, stats_rows = bn.step, bn.running, bn.stats_rows
        num_tasks, n = x.shape[:2]
        h = x.transpose(0, 1).reshape(n, -1, *x.shape[3:])  # [n, B*C_in, H, W]
        stats: BatchStats = {}
        layers = self.bn_layers()
        first = 0
        if running is None and stats_rows is None:  # block 0 as one matmul (first_block_folded)
            gamma = step_row(params["bn0.weight"], step, task_dim=True)  # [B, C]
            beta = step_row(params["bn0.bias"], step, task_dim=True)
            h, stats["bn0"] = first_block_folded(
                x,
                params["conv0.weight"],
                params["conv0.bias"],
                gamma,
                beta,
                layers["bn0"].eps,
            )
            first = 1
        for b in range(first, self.num_blocks):
            weight = params[f"conv{b}.weight"]  # [B, O, C, 3, 3]
            h = F.conv2d(
                h,
                weight.reshape(-1, *weight.shape[2:]),
                params[f"conv{b}.bias"].reshape(-1),
                padding=1,
                groups=num_tasks,
            )  # [n, B*O, H, W]
            layer = f"bn{b}"
            gamma = step_row(params[f"{layer}.weight"], step, task_dim=True)  # [B, C]
            beta = step_row(params[f"{layer}.bias"], step, task_dim=True)
            if running is not None:
                mean = step_row(running[f"{layer}.running_mean"], step)  # [C]
                var = step_row(running[f"{layer}.running_var"], step)
                h = F.batch_norm(
                    h,
                    mean.repeat(num_tasks),
                    var.repeat(num_tasks),
                    gamma.reshape(-1),
                    beta.reshape(-1),
                    training=False,
                    eps=layers[layer].eps,
                )
            elif stats_rows is not None:  # bn_mode="support": the first stats_rows images'
                h, (mean, var) = support_batch_norm(
                    h, gamma.reshape(-1), beta.reshape(-1), stats_rows, layers[layer].eps
                )
                stats[layer] = (mean.view(num_tasks, -1), var.view(num_tasks, -1))
            else:
                # Hand-written double backward: far cheaper than the generic one (second order).
                h, mean, var = batch_norm_train(
                    h, gamma.reshape(-1), beta.reshape(-1), layers[layer].eps
                )
                unbiased = unbiased_variance(var, h.shape[0] * h.shape[2] * h.shape[3])
                stats[layer] = (mean.view(num_tasks, -1), unbiased.view(num_tasks, -1))
            # Pool first: leaky ReLU is increasing, so max-pool and it commute (same values,
            # same argmax) and the activation touches a quarter of the elements.
            h = F.leaky_relu(F.max_pool2d(h, 2), 0.01)
        features = h.reshape(n, num_tasks, -1).transpose(0, 1)  # [B, n, O*h*w]
        weight, bias = params["head.weight"], params["head.bias"]  # [B, ways, F], [B, ways]
        logits = torch.baddbmm(bias[:, None, :], features, weight.transpose(1, 2))
        return logits, stats

    def forward(self, x: Tensor, step: int = -1) -> Tensor:
        """Logits with the stored (unadapted) parameters and batch statistics, at BN row
        ``step`` (default: the last)."""
        logits, _ = self.functional_forward(
            dict(self.named_parameters()), x, BatchNormContext(step)
        )
        return logits


def first_block_folded(
    x: Tensor, weight: Tensor, bias: Tensor, gamma: Tensor, beta: Tensor, eps: float
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Conv4's block 0 (3x3 conv, training-mode BN, 2x2 max-pool, leaky ReLU) for all tasks,
    with the batch norm folded into the convolution.

    Why: block 0 works at full resolution on few input channels, so its cost is memory traffic
    of elementwise passes (BN forward, backward and double backward over ``[n, B*C, H, W]``),
    not FLOPs: on a 2-core CPU it was half of an Omniglot meta-iteration. Its input is data, so
    with patches ``P`` (``[K = C_in*9]`` per position) the conv is ``w P + b`` and the batch
    statistics follow from the patches' mean and covariance: ``mean = w mean(P) + b``,
    ``var = w Cov(P) w^T``. The BN output ``gamma (w P + b - mean) / sqrt(var + eps) + beta`` is
    one matmul of the centred patches with rescaled weights; nothing full-size but its output.
    The conv bias cancels (its exact gradient is 0, as it is here, not rounding noise).

    ``x [B, n, C_in, H, W]``, ``weight [B, O, C_in, 3, 3]``, ``bias``/``gamma``/``beta [B, O]``.
    Returns the block's output ``[n, B*O, H/2, W/2]`` (the grouped layout of
    :meth:`Conv4.task_batched_forward`) and ``(mean [B, O], unbiased var [B, O])``.
    """
    num_tasks, n, channels, height, width = x.shape
    out = weight.shape[1]
    positions = n * height * width
    patches = F.unfold(x.reshape(num_tasks * n, channels, height, width), 3, padding=1)
    patches = patches.view(num_tasks, n, -1, height * width).transpose(1, 2)  # [B, K, n, HW]
    patches = patches.reshape(num_tasks, -1, positions)  # [B, K, M]
    w = weight.reshape(num_tasks, out, -1)  # [B, O, K]
    # The statistics in the weights' precision (float32 under bf16 autocast, as BN runs).
    with torch.autocast(x.device.type, enabled=False):
        patches = patches.to(w.dtype)
        patch_mean = patches.mean(-1, keepdim=True)  # [B, K, 1]
        centred = patches - patch_mean
        cov = torch.bmm(centred, centred.transpose(1, 2)) / positions  # [B, K, K]
        var = (torch.bmm(w, cov) * w).sum(-1)  # [B, O], biased, as BN normalises
        mean = torch.bmm(w, patch_mean).squeeze(-1) + bias  # [B, O]
        scale = gamma * torch.rsqrt(var + eps)  # [B, O]
    # `0 * bias`: the bias stays in the graph (the inner loop differentiates it) with gradient 0.
    # The output is made channels-last, [B, M, O] = [B*n, H, W, O] in memory, because PyTorch's
    # CPU max-pool is several times faster in that layout than in NCHW (fwd 5.9 vs 43.5 ms here).
    y = torch.baddbmm(
        (beta + 0.0 * bias)[:, None, :], centred.transpose(1, 2), (scale[..., None] * w).mT
    )  # [B, M, O]
    y = y.view(num_tasks * n, height, width, out).permute(0, 3, 1, 2)  # [B*n, O, H, W], CL
    y = F.max_pool2d(y, 2).reshape(num_tasks, n, out, height // 2, width // 2)
    y = F.leaky_relu(y.transpose(0, 1), 0.01)  # after the pool: they commute (see below)
    unbiased = unbiased_variance(var, positions)
    return y.reshape(n, num_tasks * out, *y.shape[3:]), (mean.detach(), unbiased.detach())


def init_xavier(layer: nn.Conv2d | nn.Linear) -> None:
    """Conv4's initialisation (that of the MAML++ reference code): Xavier-uniform weight, zero
    bias."""
    nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:  # always there in Conv4; typed optional for Conv2d
        nn.init.zeros_(layer.bias)


def conv4_for(ways: int, in_channels: int, image_size: int, channels: int | None = None) -> Conv4:
    """A Conv4 for images of this size: 64 filters up to 32x32 (Omniglot), else 48."""
    if channels is None:
        channels = 64 if image_size <= 32 else 48
    return Conv4(ways, in_channels=in_channels, channels=channels, image_size=image_size)


def conv4_sequential(
    ways: int, in_channels: int = 1, channels: int = 64, image_size: int = 28
) -> nn.Sequential:
    """Conv4 as a plain ``nn.Sequential`` of standard layers (what any user network looks like):
    ``MAMLpp(conv4_sequential(...), config)`` runs it through the generic path
    (:class:`~mamlpp.nn.module_backbone.ModuleBackbone`); same mathematics as :class:`Conv4`."""
    layers: list[nn.Module] = []
    for b in range(4):
        layers += [
            nn.Conv2d(in_channels if b == 0 else channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.LeakyReLU(0.01),
            nn.MaxPool2d(2),
        ]
    spatial = image_size // 16
    head = nn.Linear(channels * spatial * spatial, ways)
    for layer in (*layers, head):  # Conv4's initialisation
        if isinstance(layer, nn.Conv2d | nn.Linear):
            init_xavier(layer)
    return nn.Sequential(*layers, nn.Flatten(), head)


__all__ = ["Conv4", "conv4_for", "conv4_sequential"]
