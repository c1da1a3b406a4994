"""Every command reads a run's checkpoints the same way (`RunCheckpoints`): a damaged file is
named in a one-line warning and the intact ones are used, in `train --resume`, `evaluate`,
`adapt` and `export` alike."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mamlpp.cli.main import main
from mamlpp.errors import MamlppError
from mamlpp.run.checkpoint import atomic_save
from mamlpp.run.run_dir import RunDir

TINY = [
    "train.epochs=3",
    "train.iterations_per_epoch=2",
    "train.tasks_per_batch=2",
    "model.channels=4",
    "eval.val_tasks=4",
    "eval.test_tasks=4",
    "eval.batch_size=4",
    "eval.top_k=3",
    "train.threads=1",
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 3-epoch synthetic run with three epoch checkpoints (top-3)."""
    out = tmp_path_factory.mktemp("loader") / "run"
    args = ["train", "--preset", "synthetic", "--out", str(out), "--device", "cpu", "--quiet"]
    for assignment in TINY:
        args += ["--set", assignment]
    assert main(args) == 0
    assert sorted(RunDir(out).epoch_checkpoints()) == [1, 2, 3]
    return out


@pytest.fixture
def damaged(finished: Path, tmp_path: Path) -> Path:
    """A copy of the run whose latest.pt is cut to 500 bytes (`truncate -s 500`)."""
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    with open(RunDir(copy).latest, "r+b") as handle:
        handle.truncate(500)
    return copy


@pytest.fixture
def task(tmp_path: Path) -> tuple[Path, Path]:
    """Five classes of one random grey 28x28 PNG each, and two query images."""
    rng = np.random.default_rng(0)
    support, query = tmp_path / "support", tmp_path / "query"
    query.mkdir()
    for c in range(5):
        (support / f"c{c}").mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(
            support / f"c{c}" / "a.png"
        )
    for q in range(2):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(query / f"q{q}.png")
    return support, query


def _warning(err: str, path: Path) -> str:
    """The one warning line that names ``path``."""
    lines = [line for line in err.splitlines() if str(path) in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("warning: checkpoint ") and "is damaged (500 bytes" in lines[0]
    return lines[0]


def _ranking(run: Path) -> list[str]:
    """Epoch files by validation accuracy, best first (from an intact checkpoint's history)."""
    history = torch.load(RunDir(run).epoch_checkpoint(3), weights_only=True)["history"]
    ranked = sorted(history, key=lambda item: (-item[1], item[0]))
    return [f"epoch-{int(e):04d}.pt" for e, _ in ranked]


def test_evaluate_uses_the_intact_checkpoints(damaged: Path, capsys) -> None:
    args = ["evaluate", str(damaged), "--device", "cpu", "--tasks", "2", "--top-k", "2"]
    assert main(args) == 0
    captured = capsys.readouterr()
    line = _warning(captured.err, RunDir(damaged).latest)
    assert "ranking the checkpoints by the history in epoch-0003.pt (epoch 3)" in line
    record = json.loads((damaged / "eval-test-top2-2.json").read_text())
    assert record["checkpoints"] == _ranking(damaged)[:2]


def test_adapt_uses_the_intact_checkpoints(damaged: Path, task, capsys) -> None:
    support, query = task
    out = damaged.parent / "p.json"
    args = ["adapt", str(damaged), "--support", str(support), "--query", str(query)]
    assert main([*args, "--top-k", "2", "--out", str(out)]) == 0
    _warning(capsys.readouterr().err, RunDir(damaged).latest)
    assert json.loads(out.read_text())["checkpoints"] == _ranking(damaged)[:2]


def test_export_uses_the_intact_checkpoints(damaged: Path, capsys) -> None:
    model = damaged.parent / "model.pt"
    assert main(["export", str(damaged), str(model), "--top-k", "3"]) == 0
    _warning(capsys.readouterr().err, RunDir(damaged).latest)
    assert torch.load(model, weights_only=True)["checkpoints"] == _ranking(damaged)


def test_resume_uses_the_intact_checkpoints(damaged: Path, capsys) -> None:
    args = ["train", "--out", str(damaged), "--resume", "--device", "cpu", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    line = _warning(out, RunDir(damaged).latest)
    assert line.endswith("resuming from epoch-0003.pt, the end of epoch 3")
    assert torch.load(RunDir(damaged).latest, weights_only=True)["progress"]["epoch"] == 3


def test_a_damaged_ensemble_member_is_left_out_with_a_warning(damaged: Path, capsys) -> None:
    best = _ranking(damaged)[0]
    (RunDir(damaged).checkpoints / best).write_bytes(b"")
    args = ["evaluate", str(damaged), "--device", "cpu", "--tasks", "2", "--top-k", "3"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert f"{best} is damaged (an empty file)" in captured.err
    assert "only 2 checkpoints kept" in captured.out
    record = json.loads((damaged / "eval-test-top3-2.json").read_text())
    assert record["checkpoints"] == _ranking(damaged)[1:]


def test_each_damaged_file_is_named_once(damaged: Path) -> None:
    from mamlpp.run.run_dir import RunCheckpoints

    said: list[str] = []
    checkpoints = RunCheckpoints(RunDir(damaged), said.append)
    assert len(checkpoints.ensemble(3)) == 3
    assert checkpoints.newest() is checkpoints.newest()
    assert len(said) == 1 and "latest.pt is damaged" in said[0]


def test_no_intact_checkpoint_is_one_error(damaged: Path, capsys) -> None:
    from mamlpp.run.run_dir import RunCheckpoints

    for path in RunDir(damaged).epoch_checkpoints().values():
        atomic_save({"something": "else"}, path)  # foreign files: not mamlpp checkpoints
    with pytest.raises(MamlppError, match="no intact checkpoint in .*latest.pt is damaged"):
        RunCheckpoints(RunDir(damaged), lambda line: None).ensemble(1)
    assert main(["evaluate", str(damaged), "--device", "cpu", "--tasks", "2"]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("mamlpp: error: no intact checkpoint")
