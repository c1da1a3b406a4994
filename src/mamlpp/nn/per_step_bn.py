"""Functional per-step batch norm (BNRS + BNWB, spec section 1).

The step index is explicit, statistics go in and come out as values: nothing is updated in place,
so the same code runs under ``torch.func.vmap`` and ``torch.func.grad``. The running statistics are
folded in afterwards by :func:`fold_running_stats` from the batch statistics each pass returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn


def _row(table: Tensor, step: int) -> Tensor:
    """Row ``step`` of a per-step table ``[S, C]``, or the shared ``[C]`` tensor itself."""
    return table[step] if table.dim() == 2 else table


def per_step_batch_norm(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    step: int,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    eps: float = 1e-5,
    norm_rows: int | None = None,
    running_weight: float = 1.0,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Batch-normalise ``x [n, C, H, W]`` with the parameters of inner step ``step``.

    ``weight``/``bias``: ``[S, C]`` (per step) or ``[C]`` (shared). With ``running_mean`` and
    ``running_var`` (``[S, C]`` or ``[C]``) the stored statistics of ``step`` normalise (the
    ``"running"`` pass norm), blended as ``w * stored + (1 - w) * batch`` when
    ``running_weight`` w < 1. Otherwise batch statistics normalise (differentiably): those of the
    whole batch, or with ``norm_rows`` those of its first ``norm_rows`` samples alone (the
    support images, ``"support"`` pass norm). Either way the statistics of the samples that would
    normalise in batch mode (all, or the first ``norm_rows``) are returned detached as
    ``(mean [C], var [C])`` for the running-statistics update, the variance unbiased as PyTorch's
    running statistics use it.
    """
    ref = x if norm_rows is None else x[:norm_rows]
    batch_mean = ref.mean(dim=(0, 2, 3))
    batch_var = ref.var(dim=(0, 2, 3), unbiased=False)
    count = ref.shape[0] * ref.shape[2] * ref.shape[3]
    unbiased = batch_var * (count / max(count - 1, 1))
    batch_stats = (batch_mean.detach(), unbiased.detach())
    if running_mean is not None and running_var is not None:
        mean, var = _row(running_mean, step), _row(running_var, step)
        if running_weight != 1.0:
            mean = running_weight * mean + (1.0 - running_weight) * batch_mean
            var = running_weight * var + (1.0 - running_weight) * batch_var
    else:
        mean, var = batch_mean, batch_var
    scale = _row(weight, step) * torch.rsqrt(var + eps)  # [C]
    shift = _row(bias, step) - mean * scale  # [C]
    return x * scale[:, None, None] + shift[:, None, None], batch_stats


def fold_running_stats(
    running: Tensor, batch_values: Tensor, rows: Sequence[int], momentum: float
) -> Tensor:
    """New running statistics after a sequence of exponential-moving-average updates.

    ``running``: ``[S, C]`` (per step) or ``[C]`` (shared). ``batch_values``: ``[B, P, C]``, the
    statistics of P passes for each of B tasks, pass p belonging to step ``rows[p]``. The updates
    are applied in the order a per-task loop makes them (task by task, pass by pass), each
    ``r <- (1 - m) r + m v``; for K updates of one row that is, in closed form,
    ``(1-m)^K r + sum_k m (1-m)^(K-1-k) v_k``, done here with one weighted sum per row.
    """
    per_step = running.dim() == 2
    new = running.clone()
    groups: dict[int, list[int]] = {}
    for p, row in enumerate(rows):
        groups.setdefault(row if per_step else 0, []).append(p)
    for row, passes in groups.items():
        values = batch_values[:, passes, :].reshape(-1, batch_values.shape[-1])  # [K, C], K=B*len
        k = values.shape[0]
        decay = (1.0 - momentum) ** torch.arange(
            k - 1, -1, -1, dtype=values.dtype, device=values.device
        )  # [K]: (1-m)^(K-1-k)
        update = momentum * (decay[:, None] * values).sum(0)
        if per_step:
            new[row] = (1.0 - momentum) ** k * running[row] + update
        else:
            new = (1.0 - momentum) ** k * running + update
    return new


class PerStepBatchNorm(nn.Module):
    """Holds the parameters and statistics of one batch-norm layer; computing is functional.

    ``weight``/``bias``: ``[num_steps, C]`` when ``per_step_affine`` (BNWB), else ``[C]``.
    ``running_mean``/``running_var``: ``[num_steps, C]`` when ``per_step_stats`` (BNRS), else
    ``[C]``. Initialised as the spec says: gamma 1, beta 0, mean 0, var 1.
    """

    def __init__(
        self,
        channels: int,
        num_steps: int,
        per_step_affine: bool = True,
        per_step_stats: bool = True,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        affine_shape = (num_steps, channels) if per_step_affine else (channels,)
        stats_shape = (num_steps, channels) if per_step_stats else (channels,)
        self.num_steps = num_steps
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(affine_shape))
        self.bias = nn.Parameter(torch.zeros(affine_shape))
        self.register_buffer("running_mean", torch.zeros(stats_shape))
        self.register_buffer("running_var", torch.ones(stats_shape))

    def extra_repr(self) -> str:
        return f"weight={tuple(self.weight.shape)}, running={tuple(self.running_mean.shape)}"


def running_stat_names(bn_names: Sequence[str]) -> list[str]:
    """Buffer names of the running statistics of the given BN layers."""
    return [f"{n}.running_{s}" for n in bn_names for s in ("mean", "var")]


def select_running(buffers: Mapping[str, Tensor], bn_name: str) -> tuple[Tensor, Tensor]:
    return buffers[f"{bn_name}.running_mean"], buffers[f"{bn_name}.running_var"]
