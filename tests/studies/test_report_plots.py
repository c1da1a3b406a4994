"""`mamlpp report` plots with matplotlib, from fixture run folders: a healthy run, a diverged
one (loss ~1e6) and one stopped by a non-finite loss. The PNGs were also looked at by eye."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mamlpp.cli.main import main
from mamlpp.data import load_dataset
from mamlpp.run.presets import resolve_config
from mamlpp.run.run_dir import RunDir
from mamlpp.run.trainer import NonFiniteLoss
from mamlpp.run.training import run_training
from mamlpp.studies import plots, report

TINY = [
    "train.epochs=3",
    "train.iterations_per_epoch=2",
    "train.tasks_per_batch=2",
    "model.channels=4",
    "eval.val_tasks=4",
    "eval.test_tasks=4",
    "eval.batch_size=4",
    "eval.top_k=2",
    "train.threads=1",
    "meta.msl_epochs=2",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("plots")
    config = resolve_config("synthetic", None, TINY)
    splits = load_dataset("synthetic")
    healthy = root / "healthy"
    run_training(config, RunDir(healthy), splits, torch.device("cpu"), progress=False)
    # Diverged: the same run with every loss multiplied by 1e6.
    diverged = root / "diverged"
    shutil.copytree(healthy, diverged)
    lines = [json.loads(line) for line in (diverged / "metrics.jsonl").read_text().splitlines()]
    for record in lines:
        record["loss"] = record["loss"] * 1e6
    (diverged / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))

    def poison(trainer) -> None:  # NaN from the first meta-loss on (what the outer step calls)
        real = trainer.learner.meta_loss_and_stats

        def meta_loss_and_stats(*args, **kwargs):
            loss, metrics, stats = real(*args, **kwargs)
            loss = loss * float("nan")
            return loss, {**metrics, "loss": loss.detach()}, stats

        trainer.learner.meta_loss_and_stats = meta_loss_and_stats

    failed = root / "failed"
    with pytest.raises(NonFiniteLoss):
        run_training(config, RunDir(failed), splits, torch.device("cpu"), on_start=poison)
    return {"healthy": healthy, "diverged": diverged, "failed": failed}


def test_report_renders_every_plot_with_matplotlib(runs, tmp_path) -> None:
    out = tmp_path / "report"
    assert main(["report", *(str(p) for p in runs.values()), "--out", str(out)]) == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert {"accuracy.png", "loss.png", "healthy-msl-weights.png"} <= set(pngs)
    assert {"healthy-inner-lrs.png", "healthy-bn-gamma.png"} <= set(pngs)
    for name in pngs:
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000, name
    table = (out / "report.md").read_text()
    failed_row = next(line for line in table.splitlines() if line.startswith("| failed |"))
    assert "failed in epoch 1 (non-finite loss)" in failed_row


def _loaded(runs, *names):
    return [report.load_run(runs[n], n) for n in names]


def test_a_diverged_run_puts_the_loss_on_a_log_axis(runs) -> None:
    series = report._curve_series(_loaded(runs, "healthy", "diverged"), "loss")
    assert plots.line_figure(series, "t", "x", "y").axes[0].get_yscale() == "log"
    healthy = report._curve_series(_loaded(runs, "healthy"), "loss")
    assert plots.line_figure(healthy, "t", "x", "y").axes[0].get_yscale() == "linear"


def test_a_failed_run_is_labelled_failed_in_the_legend(runs) -> None:
    series = report._curve_series(_loaded(runs, "failed"), "accuracy")
    assert [s.label for s in series] == ["failed train (failed)", "failed val (failed)"]


def test_heatmaps_have_a_colour_bar() -> None:
    figure = plots.heatmap_figure(
        [[0.1, 0.2], [0.3, 0.05]], ["a", "b"], ["step 1", "step 2"], "t", "lr"
    )
    assert len(figure.axes) == 2 and figure.axes[1].get_ylabel() == "lr"


def test_msl_weights_of_equal_steps_are_one_visible_line_with_1_based_epochs(runs) -> None:
    (run,) = _loaded(runs, "healthy")
    series = report._msl_series(run)
    assert [s.label for s in series] == ["steps 1-4 (each)", "step 5"]
    assert list(series[0].xs) == [1, 2, 3]  # epochs count from 1, as in metrics and messages


def test_missing_matplotlib_is_a_one_line_error(monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(Exception, match=r"pip install 'mamlpp\[plot\]'"):
        plots.line_figure([], "t", "x", "y")


def test_run_status_reads_the_state_from_a_runs_files() -> None:
    """One rule for `mamlpp report` and `mamlpp ablate`: complete, failed, in progress, not
    started."""
    from mamlpp.run.run_dir import run_status

    val = [{"kind": "val", "epoch": 1}, {"kind": "train", "epoch": 2}, {"kind": "val", "epoch": 2}]
    assert run_status({"test_accuracy": 0.9}, val, 3) == "complete"
    assert run_status(None, val, 3) == "epoch 2/3"
    failed = [*val, {"kind": "failed", "epoch": 3, "step": 7}]
    assert run_status(None, failed, 3) == "failed in epoch 3 (non-finite loss)"
    assert run_status(None, [{"kind": "train", "epoch": 1}], 3) == "epoch 0/3"
    assert run_status(None, [], 3) == "not started"
