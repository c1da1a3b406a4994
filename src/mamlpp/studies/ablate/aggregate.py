"""Aggregation: ``results.json`` from the run folders of an ablation (mean and standard
deviation over seeds, 95% CI over tasks, wall time, it/s, the test-task fingerprints)."""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path
from typing import Any

import numpy
import torch

from mamlpp.errors import ConfigError
from mamlpp.run.run_dir import read_json, read_metrics, run_status, write_json
from mamlpp.studies.ablate.grid import Variant
from mamlpp.studies.ablate.plan import (
    PLAN_FILE,
    PLAN_FORMAT,
    RUN_RECORD,
    Plan,
    base_config,
    read_plan,
    run_dir_of,
)
from mamlpp.studies.ablate.render import plots, results_markdown
from mamlpp.util.atomic import atomic_write
from mamlpp.version import __version__


def run_entry(out: Path, plan: Plan, variant: Variant, seed: int) -> dict[str, Any]:
    """One run of results.json: its status and command, and its summary.json once finished
    (test accuracy and CI, the fingerprint of its test tasks, wall time, it/s ...)."""
    run = run_dir_of(out, variant, seed)
    summary = read_json(run.summary)
    record = read_json(run.root / RUN_RECORD) or {}
    status = run_status(summary, read_metrics(run.metrics), plan.epochs)
    if summary is None and str(record.get("status", "")).startswith("failed"):
        status = record["status"]  # the worker's own account (exit code, last error line)
    return {
        "seed": seed,
        "status": status,
        "run_dir": str(run.root.relative_to(out)),
        "command": record.get("command"),
        "test_fingerprint": None,
        **(summary or {}),
    }


def _mean(runs: list[dict[str, Any]], key: str) -> float | None:
    return statistics.fmean(r[key] for r in runs) if runs else None


def collect(out: Path, plan: Plan) -> dict[str, Any]:
    """results.json's content from the run folders in ``out``."""
    rows = []
    for variant in plan.variant_list():
        runs = [run_entry(out, plan, variant, seed) for seed in plan.seeds]
        complete = [r for r in runs if r["status"] == "complete"]
        accuracies = [r["test_accuracy"] for r in complete]
        rows.append(
            {
                "name": variant.name,
                "folder": variant.folder,
                "techniques": list(variant.techniques),
                "label": variant.label,
                "note": variant.note,
                "seeds_requested": len(plan.seeds),
                "seeds_complete": [r["seed"] for r in complete],
                "mean_test_accuracy": _mean(complete, "test_accuracy"),
                "std_test_accuracy": statistics.stdev(accuracies) if len(complete) > 1 else None,
                "mean_test_ci95": _mean(complete, "test_ci95"),
                "mean_wall_time_s": _mean(complete, "wall_time_s"),
                "total_wall_time_s": sum(r["wall_time_s"] for r in complete),
                "mean_iterations_per_second": _mean(complete, "iterations_per_second"),
                "runs": runs,
            }
        )
    maml = next((r["mean_test_accuracy"] for r in rows if r["name"] == "maml"), None)
    for row in rows:
        mean = row["mean_test_accuracy"]
        delta = None if maml is None or mean is None else mean - maml
        # equal accuracies (float32 per-task scores) must not read as "-0.00 pp, below MAML"
        row["delta_vs_maml"] = None if delta is None else (0.0 if abs(delta) < 1e-6 else delta)
    # Each run's own record of the tasks it was tested on (summary.json).
    fingerprints = [r["test_fingerprint"] for row in rows for r in row["runs"]]
    fingerprints = [f for f in fingerprints if f]
    config = base_config(plan)
    return {
        "format": PLAN_FORMAT,
        "command": plan.command(out),
        "settings": {
            **{k: v for k, v in plan.to_dict().items() if k not in ("sessions", "format")},
            "val_tasks": config.eval.val_tasks,
            "top_k": config.eval.top_k,
            "val_seed": config.eval.val_seed,
            "test_seed": config.eval.test_seed,
            "channels": config.model.channels,
            "num_inner_steps": config.meta.num_inner_steps,
        },
        "test_tasks": {
            "count": plan.test_tasks,
            "seed": config.eval.test_seed,
            "fingerprints": sorted(set(fingerprints)),
            "identical": len(set(fingerprints)) <= 1,
            "runs_checked": len(fingerprints),
        },
        "elapsed_s": sum(float(s.get("elapsed_s", 0.0)) for s in plan.sessions),
        "sessions": plan.sessions,
        "environment": environment(),
        "variants": rows,
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """Versions and hardware of this machine, recorded with the results."""
    linux = hasattr(os, "sched_getaffinity")
    return {
        "mamlpp": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if linux else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def aggregate(out: Path) -> dict[str, Any]:
    """Write ``results.json``, ``results.md`` and the plots of the ablation in ``out``."""
    plan = read_plan(out)
    if plan is None:
        raise ConfigError(f"{out} is not an ablation folder (no {PLAN_FILE})")
    results = collect(out, plan)
    plot_lines = plots(out, results)
    write_json(out / "results.json", results)
    # Atomic, as results.json: a reader (publish, a browser) never sees half a file.
    with atomic_write(out / "results.md", "w", encoding="utf-8") as handle:
        handle.write(results_markdown(results, plot_lines))
    return results
