"""Speed and memory of one meta-iteration, measured against the machine's own limit.

For each configuration of :data:`mamlpp.studies.bench_configs.CONFIGS` (the paper's four experiment
shapes, the generic path, ResNet-12, first-order variants) the harness reports, after warm-up, the
median seconds per meta-iteration over ``iters`` iterations for each execution path side by side,
the FLOPs of one iteration (``torch.utils.flop_counter``, counted on the loop path so that every
path is charged the same algorithmic work), the achieved rate, the rate of a large float32 matmul
measured in the same run and the ratio of the two, and peak memory. Optional: precision modes (TF32,
bf16 autocast) with the relative error of their meta-gradients against the float32 loop path,
activation checkpointing, a memory sweep over steps x tasks, and the time to evaluate 600 tasks.
Output: JSON plus a short table. ``mamlpp bench`` and ``benchmarks/meta_step.py`` both run
:func:`main`; :func:`run` measures and returns the report, for any caller with a
:class:`~mamlpp.studies.bench_configs.BenchOptions`.
"""

from __future__ import annotations

import contextlib
import copy
import math
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from mamlpp.core.config import MetaConfig
from mamlpp.core.executions import Execution, check_execution
from mamlpp.core.learner import MAMLpp
from mamlpp.core.types import TaskBatch
from mamlpp.engine.precision import PRECISIONS, Precision, autocast_dtype_of, precision_context
from mamlpp.engine.step_runner import MetaStepRunner
from mamlpp.errors import ConfigError
from mamlpp.nn.conv4 import Conv4, conv4_sequential
from mamlpp.nn.resnet12 import ResNet12, resnet12_widths
from mamlpp.run.run_dir import json_text
from mamlpp.studies.bench_configs import CONFIGS, PAPER_REFERENCE, BenchConfig, BenchOptions
from mamlpp.util.atomic import atomic_write


def _network(config: BenchConfig) -> torch.nn.Module:
    """The benchmark's network, before the learner gives it per-step batch norm."""
    if config.backbone == "resnet12":
        return ResNet12(config.ways, config.in_channels, resnet12_widths(config.channels))
    if config.backbone == "conv4-module":
        return conv4_sequential(config.ways, config.in_channels, config.channels, config.image_size)
    return Conv4(config.ways, config.in_channels, config.channels, config.image_size)


def build_problem(
    config: BenchConfig, device: torch.device, seed: int = 0
) -> tuple[MAMLpp, TaskBatch]:
    """Learner and one synthetic meta-batch (random images, balanced labels) on ``device``."""
    meta = MetaConfig(
        num_inner_steps=config.steps,
        first_order_epochs=0,
        second_order=config.second_order,
        msl=config.msl,
    )
    torch.manual_seed(seed)
    learner = MAMLpp(_network(config), meta).to(device)
    g = torch.Generator().manual_seed(seed)
    shape = (config.in_channels, config.image_size, config.image_size)
    sx = torch.rand(config.tasks, config.ways * config.shots, *shape, generator=g)
    qx = torch.rand(config.tasks, config.ways * config.targets, *shape, generator=g)
    sy = torch.arange(config.ways).repeat_interleave(config.shots).repeat(config.tasks, 1)
    qy = torch.arange(config.ways).repeat_interleave(config.targets).repeat(config.tasks, 1)
    return learner, TaskBatch(sx, sy, qx, qy).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, size: int | None = None, repeats: int = 10) -> float:
    """Achieved float32 matmul rate (FLOP/s) of a large square matmul on ``device``."""
    size = size or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    for _ in range(2):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def count_flops(learner: MAMLpp, batch: TaskBatch) -> int:
    """FLOPs of one meta-iteration (forward, inner gradients, outer backward) on the loop path."""
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = learner.meta_loss(batch, 0, execution="loop", update_bn_stats=False)
        loss.backward()
    learner.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def _step_fn(learner: MAMLpp, batch: TaskBatch, path: str, mode: Precision) -> Callable[[], Any]:
    """A callable running one full meta-iteration (including the Adam step) on ``path``."""
    learner.execution = _execution_of(path)
    if path.startswith("graph"):
        runner = MetaStepRunner(learner, use_cuda_graph=True, precision=mode)
        return lambda: runner(batch, 0)
    learner.checkpoint_steps = path == "batched-ckpt"
    runner = MetaStepRunner(learner, use_cuda_graph=False, precision=mode)
    return lambda: runner(batch, 0)


def time_path(
    learner: MAMLpp,
    batch: TaskBatch,
    path: str,
    mode: Precision,
    iters: int,
    warmup: int,
    device: torch.device,
) -> dict[str, Any]:
    step = _step_fn(learner, batch, path, mode)
    for _ in range(warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    result = {"median_s": statistics.median(times), "min_s": min(times), "iters": iters}
    if device.type == "cuda":
        result["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    return result


def meta_gradients(
    learner: MAMLpp, batch: TaskBatch, path: str, mode: Precision
) -> dict[str, torch.Tensor]:
    """Every meta-gradient of one iteration by parameter name (no optimiser step)."""
    learner.zero_grad(set_to_none=True)
    learner.execution = _execution_of(path)
    learner.checkpoint_steps = path == "batched-ckpt"
    dtype = autocast_dtype_of(mode)
    device_type = batch[0].device.type
    with precision_context(mode, batch[0].device):
        with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
            loss, _ = learner.meta_loss(batch, 0, update_bn_stats=False)
        loss.backward()
    names = dict(learner.named_parameters())
    grads = {n: p.grad.detach().double().clone() for n, p in names.items() if p.grad is not None}
    learner.zero_grad(set_to_none=True)
    return grads


def parameter_group(name: str) -> str:
    """The group a meta-parameter's error is reported in."""
    if name == "inner_lrs":
        return "inner lrs"
    if ".bn" in name or name.split(".")[-2].startswith("bn"):
        return "batch norm"
    if ".head." in name:
        return "head"
    return "conv biases" if name.endswith(".bias") else "conv weights"


# A group's reference gradient counts as exactly zero (a conv bias before batch norm) when its
# norm is at most this fraction of the whole gradient's: float64 rounding leaves about 1e-16, and
# a real gradient of a group is far above 1e-9 of the whole.
EXACT_ZERO = 1e-9


def _group_error(group: str, error: dict[str, Any]) -> str:
    """``conv weights 6.6e-07`` (relative error), or for a group whose exact gradient is zero,
    where a relative error means nothing, ``conv biases (exact gradient 0: absolute error X)``."""
    if error.get("exact_zero"):
        return f"{group} (exact gradient 0: absolute error {error['abs_error']:.1e})"
    return f"{group} {error['rel_error']:.1e}"


def gradient_errors(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict:
    """Relative error ``|g - r| / |r|`` and cosine similarity of the meta-gradients against a
    reference, over all of them and per parameter group.

    Why per group: under batch-statistics BN a conv bias shifts every activation of its channel
    equally and the normalisation removes that shift, so its exact meta-gradient is zero. Its
    computed gradient is rounding noise, and a relative error over the whole vector can be
    dominated by it (the 0.5-0.7 seen with TF32 on an H100); the groups show where error lives.

    Each entry also holds ``abs_error`` ``|g - r|`` and ``exact_zero``: whether the reference
    of the group is zero up to rounding (its norm at most :data:`EXACT_ZERO` of the whole
    reference's). A relative error or a cosine would then measure noise against noise (a
    relative error of 1e+08, or of infinity for an exact 0): both are None, and
    :func:`format_table` reports the absolute error instead.
    """
    whole = math.sqrt(sum(float(reference[n].norm()) ** 2 for n in reference if n in grads))

    def measure(names: list[str]) -> dict[str, Any]:
        g = torch.cat([grads[n].flatten() for n in names])
        r = torch.cat([reference[n].flatten() for n in names])
        norm = float(r.norm())
        error = float((g - r).norm())
        zero = norm <= EXACT_ZERO * whole
        return {
            "rel_error": None if zero else error / norm,
            "abs_error": error,
            "exact_zero": zero,
            "cosine": None if zero else float(torch.nn.functional.cosine_similarity(g, r, dim=0)),
            "reference_norm": norm,
        }

    names = [n for n in reference if n in grads]
    out = {"all": measure(names)}
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(parameter_group(n), []).append(n)
    for group, members in groups.items():
        out[group] = measure(members)
    return out


def _status_kib(field: str) -> int:
    """A memory field of /proc/self/status (Linux), in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _probe_peak_kib(config_name: str, path: str) -> int:
    """Run one meta-iteration in this (fresh) process; the growth of its peak resident memory.

    The peak (VmHWM) is reset after set-up where the kernel allows (``clear_refs``); the
    getrusage maximum cannot be used, as it survives fork and exec from a large parent."""
    learner, batch = build_problem(CONFIGS[config_name], torch.device("cpu"))
    step = _step_fn(learner, batch, path, "fp32")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        pass
    base = _status_kib("VmRSS")
    step()
    return _status_kib("VmHWM") - base


def cpu_peak_memory_gb(config_name: str, path: str) -> float:
    """Extra resident memory of one CPU meta-iteration, measured in a fresh process."""
    code = (
        "from mamlpp.studies.bench import _probe_peak_kib\n"
        f"print(_probe_peak_kib({config_name!r}, {path!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) * 1024 / 1e9


def peak_memory(config: BenchConfig, path: str, device: torch.device) -> float:
    if device.type != "cuda":
        return cpu_peak_memory_gb(config.name, path)
    learner, batch = build_problem(config, device)
    step = _step_fn(learner, batch, path, "fp32")
    step()
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    _sync(device)
    peak = torch.cuda.max_memory_allocated(device) / 1e9
    del learner, batch, step
    torch.cuda.empty_cache()
    return peak


def memory_sweep(
    config: BenchConfig, device: torch.device, steps=(1, 2, 3, 5), tasks=(1, 2, 4, 8)
) -> list[dict]:
    """Peak memory of one iteration against inner steps x tasks, with and without
    checkpointing: second-order memory grows with steps x tasks x activations."""
    rows = []
    for s in steps:
        for t in tasks:
            sub = BenchConfig(**{**asdict(config), "steps": s, "tasks": t, "name": config.name})
            row = {"steps": s, "tasks": t}
            for path in ("batched", "batched-ckpt"):
                row[path] = peak_memory(sub, path, device) if device.type == "cuda" else None
            rows.append(row)
    return rows


def evaluation_time(
    config: BenchConfig, device: torch.device, tasks: int = 600, chunk: int = 100
) -> float:
    """Seconds to adapt to and predict ``tasks`` tasks (first order, batched, no outer graph)."""
    chunk = min(chunk, tasks)
    learner, batch = build_problem(BenchConfig(**{**asdict(config), "tasks": chunk}), device)
    sx, sy, qx, _ = batch
    learner.adapt_and_predict(sx, sy, qx)  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(math.ceil(tasks / chunk)):
        learner.adapt_and_predict(sx, sy, qx)
    _sync(device)
    return time.perf_counter() - start


# Eager paths, and the CUDA-graph fast path with each execution inside the graph.
PATHS = ("batched", "batched-ckpt", "vmap", "loop", "graph", "graph-loop", "graph-vmap")


def _execution_of(path: str) -> Execution:
    """The learner execution a bench path runs: "graph" and "batched-ckpt" are batched."""
    name = path.removeprefix("graph").removeprefix("-") or "batched"
    return check_execution("batched" if name.startswith("batched") else name)


MODES = PRECISIONS  # bench modes are the step runner's precisions


def _plan(options: BenchOptions):
    """Validate the options: device, configs, paths and modes (one-line errors)."""
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if options.device == "auto" else options.device)
    if device.type == "cuda" and not torch.cuda.is_available() and not options.dry_run:
        raise ConfigError("--device cuda was asked for but no CUDA device is available")
    names = list(options.configs)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise ConfigError(f"unknown benchmark config(s) {unknown}; known: {sorted(CONFIGS)}")
    paths, modes = list(options.paths), list(options.modes)
    if bad := [p for p in paths if p not in PATHS]:
        raise ConfigError(f"unknown path(s) {bad}; known: {list(PATHS)}")
    if bad := [m for m in modes if m not in MODES]:
        raise ConfigError(f"unknown mode(s) {bad}; known: {list(MODES)}")
    if options.memory_sweep and options.memory_sweep not in CONFIGS:
        raise ConfigError(f"unknown --memory-sweep config {options.memory_sweep!r}")
    if options.iters < 1 or options.warmup < 0:
        raise ConfigError("--iters must be >= 1 and --warmup >= 0")
    return device, names, paths, modes


@contextlib.contextmanager
def _keeping_float_flags() -> Iterator[None]:
    """PyTorch's global float flags (TF32 matmuls and convolutions, cuDNN autotuning) left as
    the caller set them, whatever the measured paths and modes do to them meanwhile."""
    flags = (
        (torch.backends.cuda.matmul, "allow_tf32"),
        (torch.backends.cudnn, "allow_tf32"),
        (torch.backends.cudnn, "benchmark"),
    )
    saved = [getattr(owner, name) for owner, name in flags]
    try:
        yield
    finally:
        for (owner, name), value in zip(flags, saved, strict=True):
            setattr(owner, name, value)


@_keeping_float_flags()
def run(options: BenchOptions) -> dict:
    """Measure what ``options`` asks for; the report as a JSON-ready dict."""
    device, names, paths, modes = _plan(options)
    if device.type != "cuda":
        paths = [p for p in paths if not p.startswith("graph")]
    peak_rate = matmul_rate(device)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "matmul_tflops": peak_rate / 1e12,
        "results": [],
    }
    for name in names:
        config = CONFIGS[name]
        learner, batch = build_problem(config, device)
        flops = count_flops(learner, batch)
        reference64 = None
        if options.grad_check:
            # Second-order meta-gradients can be ill-conditioned in float32 (the float32 loop
            # path itself may be off by percents), so every path and precision is compared with
            # the float64 loop path.
            double = copy.deepcopy(learner).double()
            sx, sy, qx, qy = batch
            batch64 = TaskBatch(sx.double(), sy, qx.double(), qy)  # labels stay int64
            reference64 = meta_gradients(double, batch64, "loop", "fp32")
            del double, batch64
        entry: dict[str, Any] = {"config": asdict(config), "gflop": flops / 1e9, "paths": {}}
        if name in PAPER_REFERENCE:
            entry["reference_s"], entry["reference_peak_gb"] = PAPER_REFERENCE[name]
        for path in paths:
            for mode in modes:
                if mode == "tf32" and device.type != "cuda":
                    continue  # no TF32 on the CPU: it would equal fp32
                key = f"{path}/{mode}"
                print(f"[bench] {name} {key} ...", file=sys.stderr, flush=True)
                learner, batch = build_problem(config, device)
                timing = time_path(
                    learner, batch, path, mode, options.iters, options.warmup, device
                )
                timing["tflops"] = flops / timing["median_s"] / 1e12
                timing["fraction_of_matmul"] = flops / timing["median_s"] / peak_rate
                if reference64 is not None:
                    fresh, batch = build_problem(config, device)
                    errors = gradient_errors(meta_gradients(fresh, batch, path, mode), reference64)
                    timing["grad_errors_f64"] = errors
                    timing["grad_rel_error_f64"] = errors["all"]["rel_error"]
                entry["paths"][key] = timing
        loop = entry["paths"].get("loop/fp32")
        for timing in entry["paths"].values():
            if loop is not None:  # > 1: faster than the per-task loop (the reference's shape)
                timing["speedup_vs_loop"] = loop["median_s"] / timing["median_s"]
        if options.memory:
            measured: tuple[str, ...] = ("batched", "batched-ckpt", "loop")
            if device.type == "cuda":
                measured = ("graph", *measured)  # what training runs, against the reference's
            entry["peak_memory_gb"] = {p: peak_memory(config, p, device) for p in measured}
        report["results"].append(entry)
    if options.memory_sweep:
        report["memory_sweep"] = memory_sweep(CONFIGS[options.memory_sweep], device)
    if options.eval_tasks:
        report["evaluation_s"] = {
            "config": options.eval_config,
            "tasks": options.eval_tasks,
            "seconds": evaluation_time(CONFIGS[options.eval_config], device, options.eval_tasks),
        }
    report["max_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    return report


def format_table(report: dict) -> str:
    lines = [
        f"device: {report['device']}, torch {report['torch']}, "
        f"matmul {report['matmul_tflops'] * 1e3:.1f} GFLOP/s",
        f"{'config':<22} {'path/mode':<20} {'GFLOP':>7} {'median s':>9} {'GFLOP/s':>8} "
        f"{'of matmul':>9} {'vs loop':>7} {'err/fp64':>9} {'cosine':>9} {'peak GB':>8} "
        f"{'ref s':>6}",
    ]
    for entry in report["results"]:
        for key, t in entry["paths"].items():
            errors = t.get("grad_errors_f64", {})
            err = errors.get("all", {}).get("rel_error")
            cosine = errors.get("all", {}).get("cosine")
            peak = t.get("peak_memory_gb")
            speedup = t.get("speedup_vs_loop")
            lines.append(
                f"{entry['config']['name']:<22} {key:<20} {entry['gflop']:7.1f} "
                f"{t['median_s']:9.4f} {t['tflops'] * 1e3:8.1f} {t['fraction_of_matmul']:9.1%} "
                f"{'' if speedup is None else f'{speedup:.2f}x':>7} "
                f"{'' if err is None else f'{err:.1e}':>9} "
                f"{'' if cosine is None else f'{cosine:.6f}':>9} "
                f"{'' if peak is None else f'{peak:.2f}':>8} "
                f"{entry.get('reference_s', ''):>6}"
            )
            groups = [(g, e) for g, e in errors.items() if g != "all"]
            if groups:
                lines.append(
                    f"{'':<22}   error/fp64 by group: "
                    + ", ".join(_group_error(g, e) for g, e in groups)
                )
        if "peak_memory_gb" in entry:
            mem = ", ".join(f"{k} {v:.2f} GB" for k, v in entry["peak_memory_gb"].items())
            lines.append(f"{'':<22} peak memory: {mem}")
    if "evaluation_s" in report:
        e = report["evaluation_s"]
        lines.append(f"evaluation of {e['tasks']} {e['config']} tasks: {e['seconds']:.2f} s")
    for row in report.get("memory_sweep", []):
        lines.append(
            f"memory sweep steps={row['steps']} tasks={row['tasks']}: "
            + ", ".join(
                f"{k} {v:.3f} GB"
                for k, v in row.items()
                if k not in ("steps", "tasks") and v is not None
            )
        )
    return "\n".join(lines)


def main(options: BenchOptions) -> int:
    """``mamlpp bench``: the plan (``dry_run``), or the measurement as a table (and JSON)."""
    device, names, paths, modes = _plan(options)
    if options.dry_run:
        print(
            f"plan: device {device}, configs {names}, paths {paths}, modes {modes}, "
            f"{options.iters} iterations after {options.warmup} warm-up"
        )
        return 0
    if options.threads:
        torch.set_num_threads(options.threads)
    report = run(options)
    text = json_text(report, indent=2, sort_keys=False)  # strict: null for a non-finite number
    if options.json:
        with atomic_write(options.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    print(format_table(report))
    return 0
