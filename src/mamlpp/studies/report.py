"""`mamlpp report`: PNG plots and a Markdown summary of one or more run folders.

Plots (matplotlib, see :mod:`mamlpp.studies.plots`; epochs are 1-based as everywhere):

* ``accuracy.png``, ``loss.png``: training (dashed, per metrics line) and validation (per epoch)
  curves of every run on shared axes, x in epochs done (a log axis when a run diverged)
* ``<run>-inner-lrs.png``: the learned inner learning rates (LSLR) as adapted tensor x step
* ``<run>-msl-weights.png``: the multi-step-loss weight of every inner step over the epochs
* ``<run>-bn-gamma.png``: the mean BN gamma of every layer at every inner step (BNWB)

A run stopped by a non-finite loss is marked "failed" (its metrics.jsonl ends with a
``"failed"`` line written by the trainer).

``report.md`` has one table row per run and embeds the plots.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mamlpp.core.schedules import step_loss_weights
from mamlpp.errors import MamlppError
from mamlpp.run.experiment import ExperimentConfig
from mamlpp.run.run_dir import (
    RunCheckpoints,
    RunDir,
    read_json,
    read_metrics,
    read_run_config,
    require_run_dir,
    run_status,
)
from mamlpp.studies.plots import Series, heatmap, line_chart, merge_equal
from mamlpp.util.format import duration, markdown_table, percent


@dataclass(frozen=True)
class RunData:
    name: str
    run: RunDir
    config: ExperimentConfig
    metrics: list[dict[str, Any]]
    summary: dict[str, Any] | None
    checkpoint: dict[str, Any] | None  # the newest intact checkpoint, if any


def load_run(path: Path, name: str) -> RunData:
    run = require_run_dir(path)
    newest = RunCheckpoints(run).newest()  # as every command reads them: damaged files named
    checkpoint = newest.state if newest is not None else None
    return RunData(
        name=name,
        run=run,
        config=read_run_config(run),
        metrics=read_metrics(run.metrics),
        summary=_summary(run),
        checkpoint=checkpoint,
    )


# The fields of summary.json the report's table shows (mamlpp.run.training.summarise).
SUMMARY_FIELDS = (
    "test_accuracy",
    "test_ci95",
    "test_tasks",
    "ensemble_size",
    "wall_time_s",
    "iterations_per_second",
)


def _summary(run: RunDir) -> dict[str, Any] | None:
    """summary.json, or None before the run finished; a file there that is not a run summary
    (another tool's, or one edited by hand) is a one-line error naming what it lacks."""
    summary = read_json(run.summary)
    if summary is None:
        return None
    missing = [k for k in SUMMARY_FIELDS if not isinstance(summary, dict) or k not in summary]
    if missing:
        raise MamlppError(
            f"{run.summary} is not a mamlpp run summary (no {', '.join(missing)}): move it "
            "away, and the run is reported as unfinished"
        )
    return summary


def _names(paths: list[Path]) -> list[str]:
    """Folder names, made unique with the parent folder where two runs share a name."""
    names = [p.resolve().name for p in paths]
    out = []
    for path, name in zip(paths, names, strict=True):
        if names.count(name) > 1:
            name = f"{path.resolve().parent.name}/{name}"
        out.append(name)
    return out


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"


def make_report(paths: list[Path], out: Path) -> Path:
    """Write the plots and ``report.md`` into ``out``; return the Markdown file."""
    if not paths:
        raise MamlppError("report needs at least one RUN_DIR")
    runs = [load_run(p, n) for p, n in zip(paths, _names(paths), strict=True)]
    out.mkdir(parents=True, exist_ok=True)
    curves = {
        "accuracy": _curve_chart(runs, "accuracy", out / "accuracy.png"),
        "loss": _curve_chart(runs, "loss", out / "loss.png"),
    }
    per_run = {run.name: _run_charts(run, out) for run in runs}
    markdown = out / "report.md"
    markdown.write_text(_markdown(runs, curves, per_run, out), encoding="utf-8")
    return markdown


# ------------------------------------------------------------------------------ charts


def _curve_chart(runs: list[RunData], key: str, path: Path) -> Path:
    label = "accuracy (query, final step)" if key == "accuracy" else "loss (query)"
    title = f"{key}: training (dashed) and validation"
    return line_chart(path, _curve_series(runs, key), title, "epochs done", label)


def _curve_series(runs: list[RunData], key: str) -> list[Series]:
    """Training (per metrics line, at the fraction of epochs done) and validation (at the end
    of each 1-based epoch) curves of ``key``."""
    series = []
    for run in runs:
        per_epoch = run.config.train.iterations_per_epoch
        train = [r for r in run.metrics if r.get("kind") == "train" and key in r]
        val = [r for r in run.metrics if r.get("kind") == "val" and key in r]
        status = run_status(run.summary, run.metrics, run.config.train.epochs)
        failed = " (failed)" if status.startswith("failed") else ""
        series.append(
            Series(
                f"{run.name} train{failed}",
                [r["step"] / per_epoch for r in train],
                [r[key] for r in train],
                dashed=True,
            )
        )
        series.append(
            Series(
                f"{run.name} val{failed}",
                [r["epoch"] for r in val],
                [r[key] for r in val],
                markers=len(val) <= 40,
            )
        )
    return series


def _run_charts(run: RunData, out: Path) -> dict[str, Path]:
    slug = _slug(run.name)
    charts = {"msl": _msl_chart(run, out / f"{slug}-msl-weights.png")}
    if run.checkpoint is not None:
        charts["lrs"] = _lr_heatmap(run, out / f"{slug}-inner-lrs.png")
        charts["gamma"] = _gamma_heatmap(run, out / f"{slug}-bn-gamma.png")
    return charts


def _msl_chart(run: RunData, path: Path) -> Path:
    title = f"{run.name}: MSL weights per epoch" + ("" if run.config.meta.msl else " (MSL off)")
    return line_chart(path, _msl_series(run), title, "epoch", "weight of the step's target loss")


def _msl_series(run: RunData) -> list[Series]:
    """One line per inner step; equal non-final steps merged into one visible line."""
    meta, epochs = run.config.meta, run.config.train.epochs
    steps = meta.num_inner_steps
    rows = []
    for epoch in range(epochs):
        weights = step_loss_weights(epoch, meta)
        rows.append(weights if weights is not None else [0.0] * (steps - 1) + [1.0])
    # The weights of epoch e (0-based) apply during epoch e + 1 (1-based, as everywhere).
    series = [
        Series(f"step {i + 1}", list(range(1, epochs + 1)), [row[i] for row in rows], markers=True)
        for i in range(steps)
    ]
    return merge_equal(series, "steps {}-{} (each)")


def _lr_heatmap(run: RunData, path: Path) -> Path:
    assert run.checkpoint is not None
    table = run.checkpoint["model"]["inner_lrs"].double()  # [tensors, steps]
    names = list(run.checkpoint.get("adapted_names", [f"tensor {i}" for i in range(len(table))]))
    learned = "learned" if run.config.meta.learn_inner_lrs else "fixed (LSLR off)"
    return heatmap(
        path,
        table.tolist(),
        names,
        [f"step {i + 1}" for i in range(table.shape[1])],
        f"{run.name}: inner learning rates, {learned}",
        f"inner learning rate (initial {run.config.meta.inner_lr:g})",
        center=run.config.meta.inner_lr,
    )


def _gamma_heatmap(run: RunData, path: Path) -> Path:
    assert run.checkpoint is not None
    model = run.checkpoint["model"]
    layers = sorted(
        {k.split(".")[1] for k in model if re.fullmatch(r"backbone\.bn\d+\.weight", k)},
        key=lambda name: int(name[2:]),
    )
    rows, columns = [], None
    for layer in layers:
        gamma = model[f"backbone.{layer}.weight"].double()  # [S, C] per step, or [C]
        per_step = gamma.mean(-1) if gamma.dim() == 2 else gamma.mean().reshape(1)
        rows.append(per_step.tolist())
        columns = columns or (
            [f"step {i + 1}" for i in range(per_step.numel())] if gamma.dim() == 2 else ["shared"]
        )
    if not rows:
        rows, columns = [[float("nan")]], ["-"]
    return heatmap(
        path,
        rows,
        layers or ["-"],
        columns or ["-"],
        f"{run.name}: mean BN gamma per layer and step",
        "mean gamma (initial 1)",
        center=1.0,
    )


# ------------------------------------------------------------------------------ markdown


def _pct(value: float | None, ci: float | None = None) -> str:
    if value is None:
        return "-"
    return percent(value) + (f" ± {percent(ci)}" if ci is not None else "")


def _row(run: RunData) -> list[str]:
    c, s = run.config, run.summary
    val = [r for r in run.metrics if r.get("kind") == "val"]
    best = max(val, key=lambda r: (r["accuracy"], -r["epoch"])) if val else None
    status = run_status(s, run.metrics, c.train.epochs)
    techniques = " ".join(c.active_techniques) or "MAML"  # as summary.json lists them
    return [
        run.name,
        c.preset,
        c.data.dataset,
        f"{c.data.ways}-way {c.data.shots}-shot",
        techniques,
        f"{c.train.epochs}x{c.train.iterations_per_epoch}",
        f"{_pct(best['accuracy'])} (ep {best['epoch']})" if best else "-",
        _pct(s["test_accuracy"], s["test_ci95"]) if s else "-",
        str(s["test_tasks"]) if s else "-",
        str(s["ensemble_size"]) if s else "-",
        duration(s["wall_time_s"]) if s else "-",
        f"{s['iterations_per_second']:.2f}" if s else "-",
        status,
    ]


def _markdown(runs, curves, per_run, out: Path) -> str:
    header = [
        "run",
        "preset",
        "dataset",
        "task",
        "techniques",
        "epochs x it",
        "best val % (epoch)",
        "test % ± 95% CI",
        "test tasks",
        "ensemble",
        "wall time",
        "it/s",
        "status",
    ]
    lines = ["# mamlpp report", ""]
    lines += markdown_table(header, [_row(run) for run in runs])
    lines += [
        "",
        "Test accuracy: the logits of the top-k validation checkpoints averaged, on fixed tasks; "
        "± is a 95% confidence interval over tasks (1.96 standard errors).",
        "",
        "## Accuracy and loss",
        "",
        f"![accuracy]({curves['accuracy'].relative_to(out)})",
        "",
        f"![loss]({curves['loss'].relative_to(out)})",
    ]
    for run in runs:
        lines += ["", f"## {run.name}", "", f"Folder: `{run.run.root}`", ""]
        for key in ("lrs", "gamma", "msl"):
            if key in per_run[run.name]:
                lines += [f"![{key}]({per_run[run.name][key].relative_to(out)})", ""]
    return "\n".join(lines).rstrip() + "\n"
