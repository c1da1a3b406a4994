"""The step runner: one outer step per call, replayed from a CUDA graph on GPUs, eager elsewhere.

The reference implementation spends a GPU's time launching tens of thousands of small kernels.
Here the complete outer update (:func:`mamlpp.core.outer_step.outer_step`: S inner steps for all
tasks, multi-step loss, double backward, gradient clamp, Adam step and running-statistics fold) is
recorded once into a CUDA graph and then replayed with one launch per iteration. What a replay
needs:

* static input buffers: each batch is copied into the same device tensors;
* a capturable optimiser: Adam with ``capturable=True`` and a tensor learning rate, so cosine
  annealing changes a value in place instead of the graph;
* the MSL weights as a device tensor (they change per epoch, the graph's shape does not);
* one graph per schedule shape: MSL on/off and first/second order change the computation, so
  each combination (and each input shape) gets its own graph, captured on first use;
* no host work inside the step: the last eager warm-up step of each graph runs under
  :class:`~mamlpp.engine.capture.CaptureHazardMode`, and any hazard stops training with the
  operation and the source line (``CaptureError``) instead of a cryptic failure or a silent
  slow-down;
* distributed (``sync``): the collectives are recorded into the graph (``sync_in_graph=True``,
  NCCL), or the step is recorded as two graphs, meta-loss + backward and clamp + Adam + fold,
  replayed around the collectives, which then run eagerly (``sync_in_graph=False``: a backend
  whose collectives cannot be captured, e.g. gloo).

A failed capture is an error by default. ``fallback="eager"`` instead warns, trains eagerly and
says so in :meth:`MetaStepRunner.describe` (which the trainer logs and writes to summary.json). On
the CPU the same outer step runs eagerly: there is nothing to capture.
"""

from __future__ import annotations

import contextlib
import copy
import time
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal

import torch
from torch import Tensor

from mamlpp.core.executions import EXECUTIONS, Execution
from mamlpp.core.learner import MAMLpp
from mamlpp.core.outer_step import StepSync, outer_backward, outer_update, synchronise
from mamlpp.core.types import PassStats, TaskBatch, batch_and_epoch
from mamlpp.engine.capture import CaptureError, CaptureHazard, CaptureHazardMode
from mamlpp.engine.precision import (
    Precision,
    autocast_dtype_of,
    check_precision,
    precision_context,
)

# A captured graph's shape: MSL on, second order, support and query shapes, input dtype.
GraphKey = tuple[bool, bool, tuple[int, ...], tuple[int, ...], torch.dtype]


def make_capturable_optimizer(learner: MAMLpp) -> torch.optim.Adam:
    """Adam over the meta-parameters, capturable on CUDA (tensor lr, on-device step count)."""
    device = next(learner.parameters()).device
    if device.type == "cuda":
        lr = torch.tensor(learner.outer_lr(0), device=device)
        return torch.optim.Adam(learner.meta_parameters(), lr=lr, capturable=True)
    return learner.make_optimizer()


class MetaStepRunner:
    """Callable outer update: ``metrics = step(batch, epoch)`` for a
    :class:`~mamlpp.core.types.TaskBatch` (the earlier ``step(support_x, support_y, query_x,
    query_y, epoch)`` still works, with a DeprecationWarning).

    Sets the outer learning rate of ``epoch`` (cosine annealing), then runs one
    :func:`~mamlpp.core.outer_step.outer_step`, replayed from a CUDA graph when ``use_cuda_graph``
    (default: on for CUDA). The first ``warmup_steps`` iterations of each graph shape run eagerly
    on a side stream (they are real training steps), as CUDA graph capture requires; the last of
    them is checked for capture hazards. Returned metrics are copies.

    ``precision``: ``"fp32"``, ``"tf32"`` or ``"bf16"`` (see :func:`precision_context`).
    ``fallback``: ``"error"`` (default) raises :class:`~mamlpp.engine.capture.CaptureError` when a
    graph cannot be captured; ``"eager"`` warns and continues without graphs.
    ``sync_in_graph``: the collectives of ``sync`` inside the step (one graph), or after the
    replay of phase 1 and before phase 2 (two graphs; see :mod:`mamlpp.core.outer_step`).
    """

    def __init__(
        self,
        learner: MAMLpp,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        use_cuda_graph: bool | None = None,
        precision: Precision = "fp32",
        fallback: Literal["error", "eager"] = "error",
        warmup_steps: int = 3,
        sync: StepSync | None = None,
        sync_in_graph: bool = True,
    ) -> None:
        if fallback not in ("error", "eager"):
            raise ValueError(f"fallback must be 'error' or 'eager', got {fallback!r}")
        check_precision(precision)
        self.learner = learner
        self.device = next(learner.parameters()).device
        self.optimizer = optimizer if optimizer is not None else make_capturable_optimizer(learner)
        cuda = self.device.type == "cuda"
        self.use_cuda_graph = cuda if use_cuda_graph is None else (use_cuda_graph and cuda)
        self.precision = precision
        self.fallback = fallback
        self.fallback_reason: str | None = None
        self.warmup_steps = max(1, warmup_steps)
        self.sync = sync
        self.sync_in_graph = sync_in_graph
        self.world_size = 1 if sync is None else sync.world_size
        steps = learner.config.num_inner_steps
        self._msl_weights = torch.zeros(steps, device=self.device)  # static [S]
        self._graphs: dict[GraphKey, dict[str, Any]] = {}
        self._eager_counts: dict[GraphKey, int] = {}
        self._pool: Any = None  # the CUDA graph memory pool, shared by this runner's graphs
        self.captures = 0  # how many graphs were captured (for tests and benchmarks)

    # -- what runs ---------------------------------------------------------------------------
    @property
    def path(self) -> str:
        """``"cuda-graph"`` or ``"eager"``: how iterations run from now on."""
        return "cuda-graph" if self.use_cuda_graph else "eager"

    def describe(self) -> dict[str, Any]:
        """What trains, for the run log and summary.json."""
        return {
            "path": self.path,
            "precision": self.precision,
            "execution": self.learner.execution,
            "device": str(self.device),
            "graph_fallback": self.fallback_reason,
            "graph_sync": "in-graph" if self.sync_in_graph else "after-replay",
        }

    # -- the step itself (eager, or recorded into graphs) -------------------------------------
    def _body(
        self,
        batch: TaskBatch,
        epoch: int,
        segment: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
        between: Callable[..., Any] | None = None,
    ) -> dict[str, Tensor]:
        """One real step (or, under capture, its recording): phase 1, collectives, phase 2 (see
        :func:`~mamlpp.core.outer_step.outer_step`). ``segment()`` is entered around each part a
        graph records: the whole step, or each phase, with ``between(metrics, stats)`` (default: the
        collectives) run eagerly between them."""
        nothing = contextlib.nullcontext
        whole, part = (segment, nothing) if self.sync_in_graph else (nothing, segment)
        with precision_context(self.precision, self.device), whole():
            with part():
                local = outer_backward(
                    self.learner,
                    self.optimizer,
                    batch,
                    epoch,
                    msl_weights=self._msl_weights,
                    world_size=self.world_size,
                    set_grads_to_none=not self.use_cuda_graph,
                    autocast_dtype=autocast_dtype_of(self.precision),
                )
            metrics, stats = (between or partial(synchronise, self.learner, self.sync))(*local)
            with part():
                outer_update(self.learner, self.optimizer, stats)
        return metrics

    def find_hazards(self, batch: TaskBatch, *args: Any, epoch: int = 0) -> list[CaptureHazard]:
        """Run one real step with every part that a graph records under
        :class:`~mamlpp.engine.capture.CaptureHazardMode` (eager collectives excluded); its
        hazards."""
        batch, epoch = batch_and_epoch("MetaStepRunner.find_hazards", batch, args, epoch)
        mode = CaptureHazardMode()
        self._body(batch, epoch, segment=lambda: mode)
        return mode.hazards

    def _set_epoch(self, epoch: int) -> None:
        lr = self.learner.outer_lr(epoch)
        for group in self.optimizer.param_groups:
            if torch.is_tensor(group["lr"]):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        weights = self.learner.msl_weights(epoch)
        if weights is not None:
            self._msl_weights.copy_(torch.tensor(weights, dtype=self._msl_weights.dtype))

    def __call__(self, batch: TaskBatch, *args: Any, epoch: int = 0) -> dict[str, Tensor]:
        batch, epoch = batch_and_epoch("MetaStepRunner.__call__", batch, args, epoch)
        self._set_epoch(epoch)
        if not self.use_cuda_graph:
            return {k: v.clone() for k, v in self._body(batch, epoch).items()}
        # The graph's shape: MSL on/off, first/second order, and the input shapes.
        key: GraphKey = (
            self.learner.msl_weights(epoch) is not None,
            self.learner.second_order_at(epoch),
            tuple(batch.support_x.shape),
            tuple(batch.query_x.shape),
            batch.support_x.dtype,
        )
        graph = self._graphs.get(key)
        if graph is None:
            done = self._eager_counts.get(key, 0)
            if done < self.warmup_steps:
                self._eager_counts[key] = done + 1
                last = done + 1 == self.warmup_steps
                return self._side_stream_step(batch, epoch, check=last)
            try:
                graph = self._capture(key, batch, epoch)
            except CaptureError:
                raise
            except Exception as error:  # noqa: BLE001 - reported with its type and text
                reason = f"{type(error).__name__}: {error}"
                return self._capture_failed(reason, batch, epoch)
        for static, value in zip(graph["inputs"], batch, strict=True):
            static.copy_(value, non_blocking=True)
        graph["graphs"][0].replay()
        metrics = graph["metrics"]
        if not self.sync_in_graph:  # phase 1 replayed; collectives eagerly; phase 2 replayed
            metrics, stats = synchronise(self.learner, self.sync, *graph["local"])
            for bn, pair in stats.values.items():
                for static, value in zip(graph["stats_in"].values[bn], pair, strict=True):
                    static.copy_(value)
            graph["graphs"][1].replay()
        return {k: v.clone() for k, v in metrics.items()}

    def _capture_failed(self, reason: str, batch: TaskBatch, epoch: int) -> dict[str, Tensor]:
        """A capture raised: stop (default) or, opted out, redo this step eagerly."""
        self._give_up_graphs(f"CUDA graph capture failed: {reason}", reason)
        torch.cuda.synchronize(self.device)
        return {k: v.clone() for k, v in self._body(batch, epoch).items()}

    def _give_up_graphs(self, what: str, reason: str) -> None:
        """Raise CaptureError (``fallback="error"``), or warn and train eagerly from now on,
        recording why (``describe()`` puts it in the run log and summary.json)."""
        collectives = self.sync is not None and self.sync_in_graph  # maybe what broke capture
        message = (
            f"{what}. Set {'train.graph_sync=after-replay, ' if collectives else ''}"
            "train.graph_fallback=eager to train without graphs (slower), or train.cuda_graph=false"
        )
        if self.fallback == "error":
            raise CaptureError(message)
        warnings.warn(message + "; continuing eagerly", RuntimeWarning, stacklevel=4)
        self.fallback_reason = reason
        self.use_cuda_graph = False

    def _side_stream_step(
        self, batch: TaskBatch, epoch: int, check: bool = False
    ) -> dict[str, Tensor]:
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        mode = CaptureHazardMode()
        with torch.cuda.stream(stream):
            segment: Callable[[], contextlib.AbstractContextManager[Any]] = (
                (lambda: mode) if check else contextlib.nullcontext
            )
            metrics = self._body(batch, epoch, segment=segment)
            metrics = {k: v.clone() for k, v in metrics.items()}
        torch.cuda.current_stream(self.device).wait_stream(stream)
        if mode.hazards:
            found = "; ".join(h.describe() for h in mode.hazards[:3])
            more = f" (+{len(mode.hazards) - 3} more)" if len(mode.hazards) > 3 else ""
            return self._hazards_found(found + more, metrics)
        return metrics

    def _hazards_found(self, found: str, metrics: dict[str, Tensor]) -> dict[str, Tensor]:
        """The step just ran eagerly and correctly; only its capture would break."""
        self._give_up_graphs(
            f"the meta-iteration cannot be captured as a CUDA graph: {found}", found
        )
        return metrics

    def _capture(self, key: GraphKey, batch: TaskBatch, epoch: int) -> dict[str, Any]:
        """Record the step: one graph, or phase 1 and phase 2 (which reads the gathered batch
        statistics from static buffers ``[world * B, P, C]`` that the replay fills)."""
        static: dict[str, Any] = {"inputs": TaskBatch(*(t.clone() for t in batch)), "graphs": []}
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()

        def recorded() -> contextlib.AbstractContextManager[Any]:
            static["graphs"].append(torch.cuda.CUDAGraph())
            return torch.cuda.graph(static["graphs"][-1], pool=self._pool)

        def hold(
            metrics: dict[str, Tensor], stats: PassStats
        ) -> tuple[dict[str, Tensor], PassStats]:
            static["local"] = metrics, stats
            world = self.world_size  # phase 2 folds the whole meta-batch's [world * B, P, C]
            values = {
                bn: (
                    mean.new_empty((world * len(mean), *mean.shape[1:])),
                    var.new_empty((world * len(var), *var.shape[1:])),
                )
                for bn, (mean, var) in stats.values.items()
            }
            static["stats_in"] = PassStats(values, stats.rows)
            return metrics, static["stats_in"]

        torch.cuda.synchronize(self.device)
        # Gradients must be static buffers: allocated by the warm-up steps, zeroed in place.
        between = None if self.sync_in_graph else hold  # in the graph: the collectives
        static["metrics"] = self._body(static["inputs"], epoch, recorded, between)
        self._graphs[key] = static
        self.captures += 1
        return static


def choose_execution(
    learner: MAMLpp,
    batch: TaskBatch,
    *,
    precision: Precision = "fp32",
    candidates: Sequence[Execution] = EXECUTIONS,
    iterations: int = 5,
    timer: Callable[[Callable[[], Any]], float] | None = None,
) -> tuple[Execution, dict[str, float]]:
    """The fastest way to run the meta-batch, and each candidate's seconds per iteration.

    On CUDA every candidate execution is captured on a *copy* of the learner and its replays are
    timed (the real learner and its optimiser are not touched). On the CPU the rule is
    ``"batched"``: measured fastest there (docs/results), and nothing is timed. ``timer(fn)``
    returns the seconds of one ``fn()`` (tests pass a fake; the default synchronises CUDA).
    """
    device = next(learner.parameters()).device
    if device.type != "cuda" and timer is None:
        return "batched", {}
    timer = _cuda_timer if timer is None else timer
    seconds: dict[Execution, float] = {}
    for execution in candidates:
        trial = _copy_learner(learner)
        trial.execution = execution
        step = MetaStepRunner(trial, precision=precision, fallback="error")
        try:
            for _ in range(step.warmup_steps + 1):  # warm-up and capture, untimed
                step(batch, 0)
            one_step = partial(step, batch, 0)
            times = [timer(one_step) for _ in range(iterations)]
        except Exception:  # noqa: BLE001 - a candidate that cannot run is not chosen
            continue
        seconds[execution] = sorted(times)[len(times) // 2]
    if not seconds:
        raise CaptureError("no execution candidate could be captured as a CUDA graph")
    fastest = min(seconds, key=seconds.__getitem__)
    return fastest, {str(name): secs for name, secs in seconds.items()}


def _copy_learner(learner: MAMLpp) -> MAMLpp:
    return copy.deepcopy(learner)


def _cuda_timer(fn: Callable[[], Any]) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def __getattr__(name: str) -> Any:
    """``FastMetaStep``, the name of earlier releases (the runner also runs eager CPU steps,
    hence the new name): still importable, with a DeprecationWarning, until the next release."""
    if name == "FastMetaStep":
        warnings.warn(
            "FastMetaStep is deprecated: it is MetaStepRunner",
            DeprecationWarning,
            stacklevel=2,
        )
        return MetaStepRunner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
