"""The GPU fast path: a whole meta-iteration captured once as a CUDA graph and replayed.

The reference implementation spends a GPU's time launching tens of thousands of small kernels.
Here the complete outer update (S inner steps for all tasks, multi-step loss, double backward,
gradient clamp, Adam step and running-statistics update) is recorded once into a CUDA graph and
then replayed with one launch per iteration. What a replay needs:

* static input buffers: each batch is copied into the same device tensors;
* a capturable optimiser: Adam with ``capturable=True`` and a tensor learning rate, so cosine
  annealing changes a value in place instead of the graph;
* the MSL weights as a device tensor (they change per epoch, the graph's shape does not);
* one graph per schedule shape: MSL on/off and first/second order change the computation, so
  each combination (and each input shape) gets its own graph, captured on first use.

Where capture is impossible (CPU, or an error during capture) the same step runs eagerly, with
identical results; :class:`FastMetaStep` is therefore safe to use everywhere.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import torch
from torch import Tensor

from .learner import MAMLpp


def configure_precision(tf32: bool = True) -> None:
    """TF32 for float32 matmuls and convolutions on GPUs that have it (on by default here)."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def make_capturable_optimizer(learner: MAMLpp) -> torch.optim.Adam:
    """Adam over the meta-parameters, capturable on CUDA (tensor lr, on-device step count)."""
    device = next(learner.parameters()).device
    if device.type == "cuda":
        lr = torch.tensor(learner.outer_lr(0), device=device)
        return torch.optim.Adam(learner.meta_parameters(), lr=lr, capturable=True)
    return learner.make_optimizer()


class FastMetaStep:
    """Callable outer update: ``metrics = step(support_x, support_y, query_x, query_y, epoch)``.

    Sets the outer learning rate of ``epoch`` (cosine annealing), then runs one meta-iteration,
    replayed from a CUDA graph when ``use_cuda_graph`` (default: on for CUDA). The first
    ``warmup_steps`` iterations of each graph shape run eagerly on a side stream (they are
    real training steps), as CUDA graph capture requires. ``autocast_dtype`` (e.g.
    ``torch.bfloat16``) runs the forward passes under autocast. Returned metrics are copies.
    """

    def __init__(
        self,
        learner: MAMLpp,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        use_cuda_graph: bool | None = None,
        autocast_dtype: torch.dtype | None = None,
        warmup_steps: int = 3,
    ) -> None:
        self.learner = learner
        self.device = next(learner.parameters()).device
        self.optimizer = optimizer if optimizer is not None else make_capturable_optimizer(learner)
        cuda = self.device.type == "cuda"
        self.use_cuda_graph = cuda if use_cuda_graph is None else (use_cuda_graph and cuda)
        self.autocast_dtype = autocast_dtype
        self.warmup_steps = warmup_steps
        steps = learner.config.num_inner_steps
        self._msl_weights = torch.zeros(steps, device=self.device)  # static [S]
        self._graphs: dict[tuple, dict[str, Any]] = {}
        self._eager_counts: dict[tuple, int] = {}
        self._pool = None
        self.captures = 0  # how many graphs were captured (for tests and benchmarks)

    # -- the step itself (eager, or recorded into a graph) ------------------------------------
    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _body(self, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor, epoch: int):
        self.optimizer.zero_grad(set_to_none=not self.use_cuda_graph)
        with self._autocast():
            loss, metrics = self.learner.meta_loss(
                sx, sy, qx, qy, epoch, msl_weights=self._msl_weights
            )
        loss.backward()
        self.learner.clip_gradients_()
        self.optimizer.step()
        return metrics

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

    def __call__(self, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor, epoch: int):
        self._set_epoch(epoch)
        if not self.use_cuda_graph:
            return {k: v.clone() for k, v in self._body(sx, sy, qx, qy, epoch).items()}
        # The graph's shape: MSL on/off, first/second order, and the input shapes.
        key = (
            self.learner.msl_weights(epoch) is not None,
            self.learner.second_order_at(epoch),
            tuple(sx.shape),
            tuple(qx.shape),
            sx.dtype,
        )
        graph = self._graphs.get(key)
        if graph is None and self._eager_counts.get(key, 0) < self.warmup_steps:
            self._eager_counts[key] = self._eager_counts.get(key, 0) + 1
            return self._side_stream_step(sx, sy, qx, qy, epoch)
        if graph is None:
            try:
                graph = self._capture(key, sx, sy, qx, qy, epoch)
            except Exception as error:  # noqa: BLE001 - any capture failure means: run eagerly
                warnings.warn(
                    f"CUDA graph capture failed ({type(error).__name__}: {error}); "
                    "continuing without graphs",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.use_cuda_graph = False
                torch.cuda.synchronize(self.device)
                return self(sx, sy, qx, qy, epoch)
        for name, value in zip(("sx", "sy", "qx", "qy"), (sx, sy, qx, qy), strict=True):
            graph[name].copy_(value, non_blocking=True)
        graph["graph"].replay()
        return {k: v.clone() for k, v in graph["metrics"].items()}

    def _side_stream_step(self, sx, sy, qx, qy, epoch):
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            metrics = {k: v.clone() for k, v in self._body(sx, sy, qx, qy, epoch).items()}
        torch.cuda.current_stream(self.device).wait_stream(stream)
        return metrics

    def _capture(self, key, sx, sy, qx, qy, epoch) -> dict[str, Any]:
        static = {"sx": sx.clone(), "sy": sy.clone(), "qx": qx.clone(), "qy": qy.clone()}
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(self.device)
        # Gradients must be static buffers: allocated by the warm-up steps, zeroed in place.
        with torch.cuda.graph(graph, pool=self._pool):
            metrics = self._body(static["sx"], static["sy"], static["qx"], static["qy"], epoch)
        static["graph"] = graph
        static["metrics"] = metrics
        self._graphs[key] = static
        self.captures += 1
        return static
