"""Any plain ``nn.Module`` as a MAML++ backbone: per-step batch norm and tasks under vmap.

:class:`ModuleBackbone` takes a module built from standard layers (an ``nn.Sequential`` of
Conv2d/BatchNorm2d/LeakyReLU/MaxPool2d/Flatten/Linear, a ResNet, an MLP with BatchNorm1d, ...)
and gives it the :class:`~mamlpp.nn.backbone.Backbone` protocol that the algorithm calls:

* Every ``nn.BatchNorm1d/2d/3d`` becomes a :class:`StepBatchNorm`: gamma/beta ``[S, C]`` per
  inner step (BNWB) or ``[C]``, running statistics ``[S, C]`` (BNRS) or ``[C]``; the per-step
  switches and S come from the learner's ``MetaConfig`` alone (``MAMLpp`` sets them).
* Its forward reads the call's :class:`~mamlpp.nn.backbone.BatchNormContext` from a context
  that the wrapper sets around each call, and hands the batch statistics back as outputs of
  that call: nothing is mutated in place, so the same module runs under
  ``torch.func.functional_call`` + ``vmap``.
* ``task_batched_forward`` runs all B tasks at once: ``vmap`` over the task dimension of the
  parameters and inputs. vmap's rules turn convolutions with per-task weights into one grouped
  convolution and linear layers into batched matrix products; batch norm is folded into the
  channel dimension and uses the hand-written cheap double backward of
  :func:`~mamlpp.nn.batch_norm_fn.batch_norm_train` (second order through BN dominates on a CPU).

The module is copied: the backbone owns its parameters (``backbone.module``), and the caller's
module is left as it was. Parameter names are those of the module with a ``module.`` prefix.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.modules.instancenorm import _InstanceNorm

from mamlpp.errors import ConfigError
from mamlpp.nn.backbone import BatchNormContext, BatchStats
from mamlpp.nn.batch_norm_fn import (
    FunctionContext,
    Grads,
    batch_norm_train,
    native_train_backward,
    native_train_forward,
)
from mamlpp.nn.per_step_bn import (
    PerStepBatchNorm,
    step_row,
    support_batch_norm,
    unbiased_variance,
)
from mamlpp.util.format import did_you_mean

if TYPE_CHECKING:
    from torch._functorch.autograd_function import VmapInfo

PREFIX = "module."  # the wrapped module's parameters appear as "module.<its own name>"
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class _ForwardContext:
    """What one forward call tells every StepBatchNorm: how batch norm normalises (``bn``),
    whether tasks are vmapped, where the batch statistics go (``None`` outside a call), and the
    number of examples in the call (``bn_mode="support"`` checks it)."""

    bn: BatchNormContext = BatchNormContext(0)
    batched: bool = False
    stats: BatchStats | None = None
    examples: int = 0

    @contextmanager
    def call(self, bn: BatchNormContext, batched: bool, examples: int) -> Iterator[BatchStats]:
        if self.stats is not None:
            raise RuntimeError("ModuleBackbone forward calls cannot be nested")
        self.bn, self.batched, self.stats, self.examples = bn, batched, {}, examples
        try:
            yield self.stats
        finally:
            self.bn, self.stats = BatchNormContext(0), None


class _TaskBatchNorm(torch.autograd.Function):
    """Training-mode batch norm of one task's ``x [n, C, *]`` -> ``(y, mean [C], var [C])``
    (variance biased). Under ``vmap`` the :meth:`vmap` rule folds the B tasks into the channel
    dimension, ``[n, B*C, *]``, and calls :func:`batch_norm_train` once, whose hand-written
    double backward is what the outer (second-order) backward then runs.

    Same forward and first backward as :func:`batch_norm_train`'s Function; it differs on purpose
    in having a vmap rule (the per-task op vmap sees) and a plain backward, reached only outside
    vmap, where PyTorch's own differentiable backward is enough."""

    @staticmethod
    def forward(
        x: Tensor, gamma: Tensor, beta: Tensor, eps: float
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return native_train_forward(x, gamma, beta, eps)

    @staticmethod
    def setup_context(
        ctx: FunctionContext, inputs: tuple[Any, ...], output: tuple[Tensor, ...]
    ) -> None:
        x, gamma, _, eps = inputs
        _, mean, _, rstd = output
        ctx.save_for_backward(x, gamma, mean, rstd)
        ctx.eps = eps
        ctx.mark_non_differentiable(output[1], output[2], output[3])

    @staticmethod
    def backward(
        ctx: FunctionContext,
        grad_y: Tensor,
        _grad_mean: Tensor | None,
        _grad_var: Tensor | None,
        _grad_rstd: Tensor | None,
    ) -> Grads:
        # Only reached outside vmap (e.g. torch.func.grad over one task): PyTorch's own
        # batch-norm backward, itself differentiable.
        x, gamma, mean, rstd = ctx.saved_tensors
        grad_x, grad_gamma, grad_beta = native_train_backward(grad_y, x, gamma, mean, rstd, ctx.eps)
        return grad_x, grad_gamma, grad_beta, None

    @staticmethod
    def vmap(
        info: VmapInfo,
        in_dims: tuple[int | None, ...],
        x: Tensor,
        gamma: Tensor,
        beta: Tensor,
        eps: float,
    ) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor], tuple[int, int, int, int]]:
        tasks = info.batch_size
        x_dim, gamma_dim, beta_dim = in_dims[:3]
        # x: [n, B, C, *] (vmap's convolution rule already produces the task dim there, so
        # the reshape to channel groups below is a view).
        if x_dim is not None:
            x = x.movedim(x_dim, 1)
        else:  # the same input for every task
            x = x.unsqueeze(1).expand(x.shape[0], tasks, *x.shape[1:])
        gamma = gamma.movedim(gamma_dim, 0) if gamma_dim is not None else gamma.expand(tasks, -1)
        beta = beta.movedim(beta_dim, 0) if beta_dim is not None else beta.expand(tasks, -1)
        n, channels = x.shape[0], x.shape[2]
        # batch_norm_train wants [n, C, H, W]: trailing dims flattened into H, W = 1.
        flat = x.reshape(n, tasks * channels, -1, 1)
        y, mean, var = batch_norm_train(flat, gamma.reshape(-1), beta.reshape(-1), eps)
        y = y.view(x.shape)  # [n, B, C, *]
        mean, var = mean.view(tasks, channels), var.view(tasks, channels)
        return (y, mean, var, (var + eps).rsqrt()), (1, 0, 0, 0)


class StepBatchNorm(PerStepBatchNorm):
    """Stands in for an ``nn.BatchNorm1d/2d/3d`` of a wrapped module: per-step rows, and
    statistics handed to the surrounding :class:`ModuleBackbone` call instead of mutated.

    Takes ``eps`` and the current values of the source layer; its ``momentum`` is not used (the
    learner folds the statistics in with ``MetaConfig.bn_momentum``)."""

    def __init__(self, name: str, source: _BatchNorm, context: _ForwardContext) -> None:
        super().__init__(source.num_features, source.eps)
        self.name = name  # the backbone's name of this layer, the key of its statistics
        self.input_dims = {nn.BatchNorm1d: (2, 3), nn.BatchNorm2d: (4,), nn.BatchNorm3d: (5,)}[
            type(source)
        ]
        self.context = context
        # Start from the source layer's values (a pretrained module keeps them); the learner
        # then copies them into every per-step row.
        with torch.no_grad():
            self.weight.copy_(source.weight.detach())
            self.bias.copy_(source.bias.detach())
            # Both statistics exist, or neither (track_running_stats=False).
            if source.running_mean is not None and source.running_var is not None:
                self.running_mean.copy_(source.running_mean)
                self.running_var.copy_(source.running_var)
        # A frozen gamma or beta stays frozen (set_steps then gives it no per-step rows).
        self.weight.requires_grad_(source.weight.requires_grad)
        self.bias.requires_grad_(source.bias.requires_grad)
        # (name of the layer before it, input dims) when that layer's bias is taken as dead:
        # true only while the layer's output has its channels where this one normalises them.
        self.after_dead_bias: tuple[str, int] | None = None

    def forward(self, x: Tensor) -> Tensor:
        ctx = self.context
        if ctx.stats is None:
            raise RuntimeError(f"BN layer {self.name} runs only inside a ModuleBackbone call")
        if x.dim() not in self.input_dims:
            raise ValueError(
                f"BN layer {self.name} expects {' or '.join(map(str, self.input_dims))}-D "
                f"input, got shape {tuple(x.shape)}"
            )
        step, running, stats_rows = ctx.bn.step, ctx.bn.running, ctx.bn.stats_rows
        weight, bias = step_row(self.weight, step), step_row(self.bias, step)
        if running is not None:
            mean = step_row(running[f"{self.name}.running_mean"], step)
            var = step_row(running[f"{self.name}.running_var"], step)
            return F.batch_norm(x, mean, var, weight, bias, training=False, eps=self.eps)
        if self.after_dead_bias is not None and x.dim() != self.after_dead_bias[1]:
            producer, wanted = self.after_dead_bias
            raise ConfigError(
                f"BN layer {self.name} gets {x.dim()}-D input from layer {producer}, whose "
                f"bias it removes only from {wanted}-D input: that bias was taken as dead (exact "
                "gradient 0) and kept still, which is wrong here; put the two layers in "
                "separate nn.Sequential containers"
            )
        if stats_rows is not None:  # bn_mode="support": the first stats_rows examples'
            if x.shape[0] != ctx.examples:
                raise ConfigError(
                    f"BN layer {self.name} sees {x.shape[0]} rows for {ctx.examples} examples; "
                    'bn_mode="support" needs one row per example along dim 0 of every BN input'
                )
            y, ctx.stats[self.name] = support_batch_norm(x, weight, bias, stats_rows, self.eps)
            return y
        count = x.numel() // x.shape[1]  # positions per channel (per task under vmap)
        if ctx.batched:
            y, mean, var, _ = _TaskBatchNorm.apply(x, weight, bias, self.eps)
        else:
            y = F.batch_norm(x, None, None, weight, bias, training=True, eps=self.eps)
            dims = [d for d in range(x.dim()) if d != 1]
            mean = x.detach().mean(dims)
            var = x.detach().var(dims, correction=0)
        ctx.stats[self.name] = (mean, unbiased_variance(var, count))
        return y


def _check_layers(module: nn.Module) -> None:
    """One-line error naming the first layer that cannot run functionally under vmap."""
    for name, layer in module.named_modules():
        where = f"layer {name or '(root)'} ({type(layer).__name__})"
        if isinstance(layer, _DropoutNd):
            raise ConfigError(
                f"{where} is random: dropout makes the inner and outer passes of MAML see "
                "different networks; remove it"
            )
        if isinstance(layer, _InstanceNorm) and layer.track_running_stats:
            raise ConfigError(
                f"{where} updates running statistics in place; use track_running_stats=False"
            )
        if isinstance(layer, _BatchNorm) and type(layer) not in BATCH_NORMS:
            raise ConfigError(f"{where} is not supported; use BatchNorm1d, BatchNorm2d or 3d")
        if isinstance(layer, _BatchNorm) and not layer.affine:
            raise ConfigError(f"{where} has affine=False; per-step BN needs gamma and beta")
        for pname, p in layer.named_parameters(recurse=False):
            if isinstance(p, nn.parameter.UninitializedParameter):
                raise ConfigError(
                    f"{where} has an uninitialised parameter {pname}; run one forward pass "
                    "before wrapping it"
                )


def _replace_batch_norms(module: nn.Module, context: _ForwardContext) -> nn.Module:
    """Swap every BatchNorm1d/2d/3d for a StepBatchNorm (in ``module``, returned)."""
    if isinstance(module, BATCH_NORMS):  # the module itself is one batch-norm layer
        return StepBatchNorm(PREFIX[:-1], module, context)
    for name, layer in list(module.named_modules()):
        for child_name, child in list(layer.named_children()):
            if isinstance(child, BATCH_NORMS):
                full = f"{PREFIX}{name}.{child_name}" if name else f"{PREFIX}{child_name}"
                setattr(layer, child_name, StepBatchNorm(full, child, context))
    return module


# Layers whose bias adds one constant per output channel, the channels at dim 1 of an
# ``[n, C, *]`` output: a Linear on ``[n, F]`` input, a convolution on batched input.
BIAS_BEFORE_BN = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


def _mark_dead_biases(module: nn.Module) -> list[str]:
    """Names of the biases that batch norm removes in every training pass, each marked on the
    StepBatchNorm after it (which then checks the input dims that make it true).

    Detected: a Linear or convolution (exact types, bias on, no hooks, the module and its bias
    used once in the network) directly followed by a batch-norm layer among the children of a
    plain ``nn.Sequential``, which passes each child's output to the next child alone. Batch
    norm normalises every training pass with the batch's own statistics, so it subtracts that
    bias again: its exact gradient is 0.
    """
    uses: dict[int, int] = {}
    for _, m in module.named_modules(remove_duplicate=False):
        uses[id(m)] = uses.get(id(m), 0) + 1
    for _, t in module.named_parameters(remove_duplicate=False):
        uses[id(t)] = uses.get(id(t), 0) + 1
    dead = []
    for name, seq in module.named_modules():
        if type(seq) is not nn.Sequential or seq._forward_hooks or seq._forward_pre_hooks:
            continue
        children = list(seq.named_children())
        for (child_name, layer), (_, bn) in zip(children, children[1:], strict=False):
            if not (
                type(layer) in BIAS_BEFORE_BN
                and isinstance(bn, StepBatchNorm)
                and isinstance(layer.bias, Tensor)
                and uses[id(layer)] == 1
                and uses[id(layer.bias)] == 1
                and not (layer._forward_hooks or bn._forward_pre_hooks)
            ):
                continue
            full = f"{PREFIX}{name}.{child_name}" if name else f"{PREFIX}{child_name}"
            # The dims of the output that put the bias's channels where BN normalises them.
            dims = len(layer.kernel_size) + 2 if isinstance(layer, _ConvNd) else 2
            bn.after_dead_bias = (f"{full} ({type(layer).__name__})", dims)
            dead.append(f"{full}.bias")
    return dead


def _select(candidates: list[str], adapt: Sequence[str], exclude: Sequence[str]) -> list[str]:
    """Names (module-relative) matching any ``adapt`` pattern and no ``exclude`` pattern."""
    for pattern in (*adapt, *exclude):
        if not fnmatch.filter(candidates, pattern):
            hint = did_you_mean(pattern, candidates)
            raise ConfigError(
                f"pattern {pattern!r} matches no adaptable parameter{hint}; BN gamma/beta are "
                "adapted only with MetaConfig.adapt_bn_affine, frozen tensors "
                "(requires_grad=False) never"
            )
    chosen = [
        n
        for n in candidates
        if any(fnmatch.fnmatchcase(n, p) for p in adapt)
        and not any(fnmatch.fnmatchcase(n, p) for p in exclude)
    ]
    if not chosen:
        raise ConfigError("the adapt/exclude patterns leave no parameter to adapt")
    return chosen


class ModuleBackbone(nn.Module):
    """A plain module as a MAML++ backbone (the ``Backbone`` protocol; ``task_batched_forward``
    under vmap).

    The batch-norm tables get their per-step rows from the learner's MetaConfig (``MAMLpp``
    calls ``set_steps`` on every layer of ``bn_layers()``). ``adapt`` / ``exclude`` are
    ``fnmatch`` patterns over the module's own parameter names (``"0.weight"``, ``"head.*"``):
    adapted in the inner loop are the trainable (``requires_grad``) non-BN parameters matching
    any ``adapt`` pattern and no ``exclude`` pattern (default: all of them). ``dead_names()``
    lists the biases that batch norm removes in every training pass (see ``_mark_dead_biases``).
    """

    def __init__(
        self,
        module: nn.Module,
        adapt: Sequence[str] = ("*",),
        exclude: Sequence[str] = (),
    ) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise ConfigError(f"expected a torch.nn.Module, got {type(module).__name__}")
        if isinstance(adapt, str) or isinstance(exclude, str):
            raise ConfigError("adapt and exclude take a list of patterns, not a string")
        _check_layers(module)
        self._context = _ForwardContext()
        self.module = _replace_batch_norms(copy.deepcopy(module), self._context)
        self._dead = _mark_dead_biases(self.module)
        bn_params = {f"{name}.{p}" for name in self.bn_layers() for p in ("weight", "bias")}
        candidates = [
            n for n, p in self.named_parameters() if n not in bn_params and p.requires_grad
        ]
        local = [n.removeprefix(PREFIX) for n in candidates]
        self._adapted = [PREFIX + n for n in _select(local, adapt, exclude)]

    # -- the Backbone protocol -------------------------------------------------------------------
    def adaptable_names(self) -> list[str]:
        return list(self._adapted)

    def bn_layers(self) -> dict[str, PerStepBatchNorm]:
        return {m.name: m for m in self.module.modules() if isinstance(m, StepBatchNorm)}

    def dead_names(self) -> list[str]:
        """Biases that batch norm removes in every training pass (exact gradient 0; see
        ``_mark_dead_biases`` for what is detected)."""
        return list(self._dead)

    def _local(self, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Backbone names -> the wrapped module's own names (what functional_call wants)."""
        return {n.removeprefix(PREFIX): t for n, t in params.items()}

    @contextmanager
    def _call(self, bn: BatchNormContext, batched: bool, examples: int) -> Iterator[BatchStats]:
        """One forward pass of the module: sets the BN context and checks that no layer
        changed a buffer in place (state kept across calls has no place in the inner loop)."""
        buffers = dict(self.module.named_buffers())
        versions = {name: b._version for name, b in buffers.items()}
        with self._context.call(bn, batched, examples) as stats:
            yield stats
        for name, b in buffers.items():
            if b._version != versions[name]:
                owner = name.rpartition(".")[0]
                kind = type(self.module.get_submodule(owner)).__name__
                raise ConfigError(
                    f"layer {owner or '(root)'} ({kind}) changed its buffer "
                    f"{name.rpartition('.')[2]} in place during a forward pass; MAML++ needs "
                    "layers without state between calls"
                )

    def functional_forward(
        self, params: Mapping[str, Tensor], x: Tensor, bn: BatchNormContext
    ) -> tuple[Tensor, BatchStats]:
        """One task: logits ``[n, ways]`` of ``x [n, ...]`` and ``{bn: (mean [C], var [C])}``
        (no statistics when ``bn.running`` is given: BN then normalises with row ``bn.step``;
        with ``bn.stats_rows`` the first ``stats_rows`` examples define them)."""
        with self._call(bn, batched=False, examples=x.shape[0]) as stats:
            logits = functional_call(self.module, self._local(params), (x,))
        return logits, stats

    def task_batched_forward(
        self, params: Mapping[str, Tensor], x: Tensor, bn: BatchNormContext
    ) -> tuple[Tensor, BatchStats]:
        """All tasks at once: ``params[name] [B, *shape]``, ``x [B, n, ...]`` -> logits
        ``[B, n, ways]`` and ``{bn: (mean [B, C], var [B, C])}``; ``bn.running`` tables carry no
        task dimension; ``bn`` as in :meth:`functional_forward`."""

        def one_task(task_params: dict[str, Tensor], task_x: Tensor) -> tuple[Tensor, BatchStats]:
            with self._call(bn, batched=True, examples=x.shape[1]) as stats:
                logits = functional_call(self.module, task_params, (task_x,))
            return logits, stats

        return torch.func.vmap(one_task)(self._local(params), x)

    def forward(self, x: Tensor, step: int = -1) -> Tensor:
        """Logits with the stored (unadapted) parameters and batch statistics at BN row
        ``step`` (default: the last)."""
        logits, _ = self.functional_forward(
            dict(self.named_parameters()), x, BatchNormContext(step)
        )
        return logits


__all__ = ["ModuleBackbone", "StepBatchNorm"]
