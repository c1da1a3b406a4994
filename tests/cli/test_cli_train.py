"""`mamlpp train` on the file-free synthetic preset: run folders, resume rules, progress output,
non-finite losses, TensorBoard logging and a side-by-side report."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch

from mamlpp.cli.main import main
from mamlpp.data import load_dataset
from mamlpp.run.presets import resolve_config
from mamlpp.run.run_dir import RunDir
from mamlpp.run.trainer import NonFiniteLoss
from mamlpp.run.training import run_training

TINY = [
    "train.epochs=2",
    "train.iterations_per_epoch=3",
    "train.tasks_per_batch=2",
    "train.log_every=1",
    "model.channels=4",
    "eval.val_tasks=6",
    "eval.test_tasks=6",
    "eval.batch_size=6",
    "eval.top_k=2",
    "train.threads=1",  # tiny models: one thread is fastest and avoids oversubscription
]


def _train(out: Path, *extra: str, quiet: bool = True) -> int:
    args = ["train", "--preset", "synthetic", "--out", str(out), "--device", "cpu"]
    for assignment in TINY:
        args += ["--set", assignment]
    return main(args + (["--quiet"] if quiet else []) + list(extra))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "run"
    assert _train(out) == 0
    return out


def test_progress_and_epoch_lines(tmp_path: Path, capsys) -> None:
    assert _train(tmp_path / "run", quiet=False) == 0
    captured = capsys.readouterr()
    epochs = [line for line in captured.out.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2 and epochs[0].startswith("epoch 1/2: val ")
    assert "95% CI over 6 tasks" in epochs[0] and "lr 1.00e-03" in epochs[0]
    assert "test: " in captured.out
    bar = captured.err.replace("\r", "\n").strip().splitlines()[-1]  # its final state (no tty)
    assert bar.startswith("train: 100%") and "6/6" in bar and "it/s" in bar
    assert "loss=" in bar and "acc=" in bar


def test_an_existing_run_is_never_reused_without_resume(tiny_run: Path, capsys) -> None:
    before = (tiny_run / "metrics.jsonl").read_bytes()
    assert _train(tiny_run) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (tiny_run / "metrics.jsonl").read_bytes() == before


def test_resume_refuses_an_incompatible_config(tiny_run: Path, capsys) -> None:
    before = (tiny_run / "checkpoints" / "latest.pt").read_bytes()
    assert _train(tiny_run, "--resume", "--set", "meta.inner_lr=0.5") == 2
    err = capsys.readouterr().err.strip()
    assert "cannot resume" in err and "meta.inner_lr (0.1 -> 0.5)" in err and "\n" not in err
    assert (tiny_run / "checkpoints" / "latest.pt").read_bytes() == before


def test_resume_of_a_finished_run_may_change_the_ensemble(tiny_run: Path) -> None:
    args = ["train", "--out", str(tiny_run), "--resume", "--quiet", "--device", "cpu"]
    assert main([*args, "--set", "eval.top_k=1"]) == 0  # the run's own config, one change
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["ensemble_size"] == 1 and len(summary["ensemble_epochs"]) == 1


def test_default_folder_names_the_preset(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["train", "--preset", "synthetic", "--quiet", "--device", "cpu"]
    for assignment in [*TINY, "train.epochs=1", "train.iterations_per_epoch=1"]:
        args += ["--set", assignment]
    assert main(args) == 0
    (folder,) = (tmp_path / "runs").iterdir()
    assert folder.name.startswith("synthetic-20") and (folder / "summary.json").is_file()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    config = resolve_config("synthetic", None, TINY)
    splits = load_dataset("synthetic")
    run = RunDir(tmp_path / "run")

    def poison(trainer) -> None:
        real = trainer.learner.meta_loss_and_stats  # what the one outer step calls
        calls = {"n": 0}

        def meta_loss_and_stats(*args, **kwargs):
            loss, metrics, stats = real(*args, **kwargs)
            calls["n"] += 1
            if calls["n"] == 5:
                loss = loss * float("nan")
                metrics = {**metrics, "loss": loss.detach()}
            return loss, metrics, stats

        trainer.learner.meta_loss_and_stats = meta_loss_and_stats

    with pytest.raises(NonFiniteLoss) as info:
        run_training(config, run, splits, torch.device("cpu"), progress=False, on_start=poison)
    message = str(info.value)
    assert "epoch 2, iteration 2" in message and "global iteration 5" in message
    assert str(run.latest) in message and "\n" not in message
    state = torch.load(run.latest, weights_only=True)
    assert state["progress"] == {"epoch": 1, "iteration": 0, "step": 3}
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not run.summary.exists()


def test_tensorboard_logging_when_installed(tmp_path: Path, monkeypatch) -> None:
    scalars: list[tuple[str, float, int]] = []

    class FakeWriter:
        def __init__(self, log_dir, purge_step=None):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def close(self):
            scalars.append(("closed", 0.0, 0))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    assert _train(tmp_path / "run") == 0
    tags = {tag for tag, _, _ in scalars}
    assert {"train/loss", "train/accuracy", "val/accuracy", "closed"} <= tags
    assert [step for tag, _, step in scalars if tag == "val/accuracy"] == [3, 6]


def test_report_puts_runs_side_by_side(tiny_run: Path, tmp_path: Path) -> None:
    maml = tmp_path / "maml"
    plain = ["meta.learn_inner_lrs=false", "meta.msl=false", "meta.first_order_epochs=0"]
    plain += ["meta.per_step_bn_stats=false", "meta.per_step_bn_affine=false"]
    plain += ["meta.cosine_lr=false"]
    extra = [item for assignment in plain for item in ("--set", assignment)]
    assert _train(maml, *extra) == 0
    out = tmp_path / "report"
    assert main(["report", str(tiny_run), str(maml), "--out", str(out)]) == 0
    markdown = (out / "report.md").read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 3  # header + two runs
    # The techniques that acted, as summary.json lists them: DA never does in 2 epochs.
    assert "| MSL BNRS BNWB LSLR CA |" in rows[1] and "| MAML |" in rows[2]
    for name in ("run-inner-lrs.png", "maml-inner-lrs.png", "maml-bn-gamma.png"):
        assert (out / name).is_file() and f"({name})" in markdown
