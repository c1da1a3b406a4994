"""`mamlpp train` (the quickstart preset, shortened with --set) on the real Omniglot, then
`evaluate` and `report` on the run it wrote: every file and every summary field."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch
from PIL import Image

from mamlpp.cli.main import main
from mamlpp.run.experiment import build_config
from mamlpp.run.presets import resolve_config

pytestmark = pytest.mark.slow  # trains on the real Omniglot

SHORT = [
    "train.epochs=2",
    "train.iterations_per_epoch=3",
    "train.log_every=1",
    "model.channels=8",
    "eval.val_tasks=10",
    "eval.test_tasks=12",
    "eval.batch_size=6",
    "eval.top_k=3",
    "train.threads=1",  # a tiny model: one thread is fastest on a shared 2-core machine
]


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory) -> Path:
    # The shared data folder is read-only (CI): the preprocessed cache goes here.
    return tmp_path_factory.mktemp("data-cache")


@pytest.fixture(scope="module")
def quickstart_run(omniglot_dir: Path, data_cache: Path, tmp_path_factory) -> Path:
    """One shortened quickstart run, shared by the tests of this module."""
    run = tmp_path_factory.mktemp("quickstart") / "run"
    patcher = pytest.MonkeyPatch()
    patcher.setenv("MAMLPP_DATA", str(data_cache))
    threads = torch.get_num_threads()
    args = ["train", "--data-dir", str(omniglot_dir), "--out", str(run), "--quiet"]
    args += ["--device", "cpu"]
    for assignment in SHORT:
        args += ["--set", assignment]
    try:
        assert main(args) == 0
    finally:
        patcher.undo()
        torch.set_num_threads(threads)
    return run


def test_quickstart_writes_every_file(quickstart_run: Path) -> None:
    run = quickstart_run
    # config.toml: the resolved quickstart preset plus the overrides, readable back.
    with open(run / "config.toml", "rb") as handle:
        written = build_config(tomllib.load(handle))
    assert written == resolve_config("quickstart", None, SHORT)
    assert written.preset == "quickstart" and written.data.dataset == "omniglot"
    assert written.techniques == ["MSL", "DA", "BNRS", "BNWB", "LSLR", "CA"]

    # metrics.jsonl: a training line per iteration (log_every=1) and one val line per epoch.
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["kind"] == "train"]
    val = [r for r in lines if r["kind"] == "val"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert [(r["epoch"], r["step"], r["tasks"]) for r in val] == [(1, 3, 10), (2, 6, 10)]
    for record in train:
        assert 0.0 <= record["accuracy"] <= 1.0 and record["loss"] > 0
        # The quickstart's 3 inner steps (docs/results/quickstart-10min): one loss per step.
        assert len(record["step_losses"]) == 3 and len(record["msl_weights"]) == 3
    assert train[0]["outer_lr"] == pytest.approx(3e-3) and train[0]["second_order"] is False

    # checkpoints: latest plus the top-k epochs (k=3 > 2 epochs: both kept), weights_only.
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["epoch-0001.pt", "epoch-0002.pt", "latest.pt"]
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert state["progress"] == {"epoch": 2, "iteration": 0, "step": 6}
    assert [e for e, _ in state["history"]] == [1, 2]
    assert state["model"]["inner_lrs"].shape == (10, 3)  # 10 adapted tensors x 3 steps
    assert state["model"]["backbone.bn0.running_mean"].shape == (3, 8)  # per-step statistics
    assert set(state["rng"]) >= {"torch", "numpy", "python"}
    assert state["optimizer"]["state"], "Adam moments must be stored"

    # summary.json
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_tasks"] == 12 and summary["ensemble_size"] == 2
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and summary["test_ci95"] > 0
    assert sorted(summary["ensemble_epochs"]) == [1, 2]
    assert summary["iterations"] == 6 and summary["epochs"] == 2
    assert summary["wall_time_s"] > 0 and summary["iterations_per_second"] > 0
    # Training (iterations) < training with validations and checkpoints < everything.
    assert 0 < summary["train_time_s"] < summary["fit_time_s"] < summary["wall_time_s"]
    assert summary["preset"] == "quickstart" and summary["device"] == "cpu"


def test_evaluate_command_is_repeatable(quickstart_run, omniglot_dir, data_cache, monkeypatch):
    monkeypatch.setenv("MAMLPP_DATA", str(data_cache))
    before = {p.name: p.read_bytes() for p in (quickstart_run / "checkpoints").iterdir()}
    args = ["evaluate", str(quickstart_run), "--data-dir", str(omniglot_dir), "--device", "cpu"]
    assert main([*args, "--split", "val", "--tasks", "8", "--top-k", "1"]) == 0
    first = json.loads((quickstart_run / "eval-val-top1-8.json").read_text())
    assert main([*args, "--split", "val", "--tasks", "8", "--top-k", "1"]) == 0
    second = json.loads((quickstart_run / "eval-val-top1-8.json").read_text())
    assert first == second and first["num_tasks"] == 8 and first["ensemble_size"] == 1
    # The default test evaluation reproduces the summary written by `train`.
    assert main(args) == 0
    test = json.loads((quickstart_run / "eval-test-top3-12.json").read_text())
    summary = json.loads((quickstart_run / "summary.json").read_text())
    assert test["accuracy"] == summary["test_accuracy"]
    assert test["ci95"] == summary["test_ci95"]
    after = {p.name: p.read_bytes() for p in (quickstart_run / "checkpoints").iterdir()}
    assert before == after, "evaluation must not touch the checkpoints"


def test_report_on_the_run(quickstart_run: Path, tmp_path: Path, capsys) -> None:
    assert main(["report", str(quickstart_run), "--out", str(tmp_path / "report")]) == 0
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "| run |" in markdown and "quickstart" in markdown and "complete" in markdown
    for name in (
        "accuracy.png",
        "loss.png",
        "run-inner-lrs.png",
        "run-msl-weights.png",
        "run-bn-gamma.png",
    ):
        path = tmp_path / "report" / name
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 300
        assert f"({name})" in markdown
