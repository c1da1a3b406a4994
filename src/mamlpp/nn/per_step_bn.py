"""Functional per-step batch norm, BNRS and BNWB ("How to train your MAML", section 4).

The step index is explicit, statistics go in and come out as values: nothing is updated in place,
so the same code runs under ``torch.func.vmap`` and ``torch.func.grad``. The running statistics are
folded in afterwards by :func:`fold_running_stats` from the batch statistics each pass returns.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def step_row(table: Tensor, step: int, task_dim: bool = False) -> Tensor:
    """The batch-norm values (gamma, beta, running mean or variance) of inner step ``step``.

    ``table``: ``[S, C]`` (one row per step: BNWB, BNRS) -> row ``step``, ``[C]``; ``[C]`` (shared
    by all steps) -> ``table`` itself. With ``task_dim`` every shape has a leading task dimension:
    ``[B, S, C]`` -> ``[B, C]``, ``[B, C]`` -> ``table``. The result is a view, never a copy.
    """
    if task_dim:
        return table[:, step] if table.dim() == 3 else table
    return table[step] if table.dim() == 2 else table


def unbiased_variance(var: Tensor, count: int) -> Tensor:
    """The unbiased (Bessel-corrected) variance from the biased one ``var`` of ``count`` values.

    Batch norm normalises with the biased batch variance, but its running statistics take the
    unbiased one, as PyTorch's do (``count - 1`` is kept >= 1 so one value gives ``var``).
    """
    return var * (count / max(count - 1, 1))


def support_batch_norm(
    x: Tensor, weight: Tensor, bias: Tensor, stats_rows: int, eps: float = 1e-5
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Batch-normalise every example of ``x [n, C, *]`` with the batch statistics of its first
    ``stats_rows`` examples alone (``bn_mode="support"``: the support images, followed by the
    query images they normalise).

    ``weight``/``bias``: ``[C]``. Mean and biased variance per channel over those rows (and
    every position) normalise all rows, differentiably (plain autograd ops, so second order
    differentiates through them); the other rows never reach the statistics, so each of them is
    normalised independently of the others. Returns ``y`` and the rows' ``(mean [C], unbiased
    var [C])``, detached, for the running statistics.
    """
    if not 0 < stats_rows <= x.shape[0]:
        raise ValueError(f"stats_rows must lie in [1, {x.shape[0]}], got {stats_rows}")
    rows = x[:stats_rows]
    dims = [0, *range(2, x.dim())]
    mean = rows.mean(dim=dims)
    var = rows.var(dim=dims, correction=0)  # biased: what normalises
    scale = weight * torch.rsqrt(var + eps)  # [C]
    shift = bias - mean * scale
    channel = (-1,) + (1,) * (x.dim() - 2)  # [C] broadcast over [n, C, *]
    y = x * scale.view(channel) + shift.view(channel)
    count = rows.numel() // rows.shape[1]
    return y, (mean.detach(), unbiased_variance(var, count).detach())


def per_step_batch_norm(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    step: int,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    eps: float = 1e-5,
    stats_rows: int | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """Batch-normalise ``x [n, C, H, W]`` with the parameters of inner step ``step``.

    ``weight``/``bias``: ``[S, C]`` (per step) or ``[C]`` (shared). With ``running_mean`` and
    ``running_var`` (``[S, C]`` or ``[C]``) the stored statistics of ``step`` are used (evaluation
    in ``bn_mode="per_step"``) and no batch statistics are returned. Otherwise the batch's own
    statistics normalise (differentiably) and are returned detached as ``(mean [C], var [C])``,
    the variance unbiased as PyTorch's running statistics use it; with ``stats_rows`` those of
    the first ``stats_rows`` examples alone (:func:`support_batch_norm`; stored statistics,
    when given, take precedence).
    """
    if stats_rows is not None and running_mean is None:
        return support_batch_norm(x, step_row(weight, step), step_row(bias, step), stats_rows, eps)
    if running_mean is not None and running_var is not None:
        mean, var = step_row(running_mean, step), step_row(running_var, step)
        batch_stats = None
    else:
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)  # biased: what normalises
        count = x.shape[0] * x.shape[2] * x.shape[3]
        batch_stats = (mean.detach(), unbiased_variance(var, count).detach())
    scale = step_row(weight, step) * torch.rsqrt(var + eps)  # [C]
    shift = step_row(bias, step) - mean * scale  # [C]
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
        # Integer indexing only: a Python-list index would build a CPU index tensor, which a
        # CUDA graph cannot capture. [B, len(passes), C] -> [K, C] in task-then-pass order.
        picked = torch.stack([batch_values[:, p, :] for p in passes], dim=1)
        values = picked.reshape(-1, batch_values.shape[-1])
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

    Built with shared ``[C]`` tensors (gamma 1, beta 0, mean 0, var 1: PyTorch's defaults). The
    learner then gives it per-step rows from its MetaConfig with :meth:`set_steps`, so the number
    of steps and the BNRS/BNWB switches are stated once, in the config, never in a backbone:
    ``weight``/``bias`` become ``[S, C]`` under BNWB, ``running_mean``/``running_var`` ``[S, C]``
    under BNRS.
    """

    running_mean: Tensor  # buffer, [C] or [S, C]
    running_var: Tensor  # buffer, [C] or [S, C]

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    @torch.no_grad()
    def set_steps(self, num_steps: int, per_step_affine: bool, per_step_stats: bool) -> None:
        """Give the affine parameters and/or the statistics one row per inner step (each row a
        copy of the shared value). A layer that already has the wanted shapes is left as it is.

        A frozen gamma or beta (``requires_grad=False``) is left as it is too: nothing trains
        it, so it gets no per-step rows and stays the very tensor the network was built with.
        The running statistics follow ``per_step_stats`` whether or not the layer is frozen
        (they are statistics of the data, not parameters)."""

        def rows(t: Tensor, per_step: bool, what: str) -> Tensor:
            wanted = (num_steps, t.shape[-1]) if per_step else (t.shape[-1],)
            if t.shape == wanted:
                return t
            if t.dim() != 1:
                raise ValueError(
                    f"BN {what} of shape {tuple(t.shape)} cannot become {wanted}: build the "
                    "backbone with shared [C] batch norm; the learner adds per-step rows"
                )
            return t.expand(wanted).clone()

        if self.weight.requires_grad:
            self.weight = nn.Parameter(rows(self.weight, per_step_affine, "weight"))
        if self.bias.requires_grad:
            self.bias = nn.Parameter(rows(self.bias, per_step_affine, "bias"))
        self.running_mean = rows(self.running_mean, per_step_stats, "running_mean")
        self.running_var = rows(self.running_var, per_step_stats, "running_var")

    def extra_repr(self) -> str:
        return f"weight={tuple(self.weight.shape)}, running={tuple(self.running_mean.shape)}"
