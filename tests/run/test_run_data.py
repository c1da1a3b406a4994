"""A run knows its data: a short run on a folder of real Omniglot characters records the folder
and a fingerprint of its splits, and `evaluate`, `train --resume` and the ensemble of `adapt`
refuse other data (one line, exit code 2) unless `evaluate --allow-other-data` asks for it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from own_images_helpers import omniglot_characters, write_classes

from mamlpp.cli.main import main
from mamlpp.run.checkpoint import atomic_save
from mamlpp.run.run_dir import RunDir

SETTINGS = {
    "data.dataset": "folder",
    "data.val_fraction": 0.2,  # 30 classes: 18 train, 6 val, 6 test
    "data.test_fraction": 0.2,
    "model.channels": 4,
    "train.epochs": 2,
    "train.iterations_per_epoch": 2,
    "train.tasks_per_batch": 2,
    "train.log_every": 1,
    "eval.val_tasks": 4,
    "eval.test_tasks": 4,
    "eval.batch_size": 4,
    "eval.top_k": 2,
    "train.threads": 1,
}


@pytest.fixture(scope="module")
def folders(omniglot_dir, tmp_path_factory) -> tuple[Path, Path]:
    """Two flat folders of 30 different Omniglot characters, 10 images each."""
    root = tmp_path_factory.mktemp("data")
    zip_path = omniglot_dir / "images_background.zip"
    first = write_classes(root / "first", omniglot_characters(zip_path, 30), limit=10)
    other = write_classes(root / "other", omniglot_characters(zip_path, 30, skip=30), limit=10)
    return first, other


@pytest.fixture(scope="module")
def trained(folders, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "flat"
    args = ["train", "--preset", "synthetic", "--data-dir", str(folders[0]), "--out", str(run)]
    for key, value in SETTINGS.items():
        args += ["--set", f"{key}={value}"]
    assert main([*args, "--device", "cpu", "--quiet"]) == 0
    return run


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "flat"
    shutil.copytree(trained, copy)
    return copy


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("mamlpp: error: ") and "\n" not in err, err
    return err


def _evaluate(run: Path, data: Path, *extra: str) -> int:
    return main(["evaluate", str(run), "--data-dir", str(data), "--device", "cpu", *extra])


def test_a_run_records_its_data(trained: Path, folders) -> None:
    record = json.loads((trained / "data.json").read_text())
    assert record["dataset"] == "folder"
    assert record["data_dir"] == str(folders[0].resolve())
    assert len(record["fingerprint"]) == 16
    assert {name: (s["classes"], s["images"]) for name, s in record["splits"].items()} == {
        "train": (18, 180),
        "val": (6, 60),
        "test": (6, 60),
    }
    checkpoints = [RunDir(trained).latest, *RunDir(trained).epoch_checkpoints().values()]
    for path in checkpoints:
        assert torch.load(path, weights_only=True)["data"] == record
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["data_fingerprint"] == record["fingerprint"]


def test_evaluate_on_its_own_data(run: Path, folders, capsys) -> None:
    assert _evaluate(run, folders[0]) == 0
    result = json.loads((run / "eval-test-top2-4.json").read_text())
    assert result["own_data"] is True and result["data"]["data_dir"] == str(folders[0].resolve())
    assert "note:" not in capsys.readouterr().out


def test_evaluate_on_other_data_is_refused(run: Path, folders, capsys) -> None:
    before = _snapshot(run)
    assert _evaluate(run, folders[1]) == 2
    err = _error_line(capsys)
    assert f"was trained on folder data in {folders[0].resolve()} (fingerprint " in err
    assert f"not on folder data in {folders[1].resolve()}" in err
    assert "--allow-other-data" in err
    assert _snapshot(run) == before  # nothing written, the earlier results kept


def test_other_data_is_scored_when_allowed_under_another_name(run: Path, folders, capsys) -> None:
    assert _evaluate(run, folders[0]) == 0
    own = (run / "eval-test-top2-4.json").read_bytes()
    assert _evaluate(run, folders[1], "--allow-other-data") == 0
    out = capsys.readouterr().out
    assert "note: scoring on other data than the run's: folder data in" in out
    assert (run / "eval-test-top2-4.json").read_bytes() == own  # not overwritten
    written = sorted(run.glob("eval-test-top2-4-otherdata-*.json"))
    assert len(written) == 1
    result = json.loads(written[0].read_text())
    assert result["own_data"] is False
    assert result["data"]["data_dir"] == str(folders[1].resolve())
    assert written[0].name == f"eval-test-top2-4-otherdata-{result['data']['fingerprint'][:8]}.json"
    assert result["run_data"] == json.loads((run / "data.json").read_text())


def test_resume_on_other_data_is_refused(run: Path, folders, capsys) -> None:
    before = _snapshot(run)
    args = ["train", "--out", str(run), "--resume", "--data-dir", str(folders[1])]
    assert main([*args, "--device", "cpu", "--quiet"]) == 2
    err = _error_line(capsys)
    assert "was trained on folder data in" in err and "continues on the data it started on" in err
    assert _snapshot(run) == before
    # Its own data (the same folder copied elsewhere is the same data) resumes.
    moved = run.parent / "moved"
    shutil.copytree(folders[0], moved)
    args[5] = str(moved)
    assert main([*args, "--device", "cpu", "--quiet"]) == 0


def _forget_data(run: Path) -> None:
    """Make ``run`` look like a run from before data records."""
    (run / "data.json").unlink()
    for path in [RunDir(run).latest, *RunDir(run).epoch_checkpoints().values()]:
        state = torch.load(path, weights_only=True)
        del state["data"]
        atomic_save(state, path)


def test_a_run_without_a_data_record_is_checked_by_its_test_tasks(
    run: Path, folders, capsys
) -> None:
    _forget_data(run)
    assert _evaluate(run, folders[0]) == 0  # summary.json's test tasks match: its own data
    assert json.loads((run / "eval-test-top2-4.json").read_text())["own_data"] is True
    # The test fingerprint sees the test split's shape (class and image counts), not names.
    fewer = run.parent / "fewer"
    shutil.copytree(folders[0], fewer)
    for folder in fewer.iterdir():
        if folder.is_dir():
            sorted(folder.iterdir())[0].unlink()
    capsys.readouterr()
    assert _evaluate(run, fewer) == 2
    assert "was tested on other tasks: summary.json's test_fingerprint is" in _error_line(capsys)
    # Other tasks than the summary's: nothing to compare; a note, not a refusal.
    assert _evaluate(run, folders[0], "--tasks", "3") == 0
    out = capsys.readouterr().out
    assert "note: " in out and "has no record of the data it was trained on" in out
    assert json.loads((run / "eval-test-top2-3.json").read_text())["own_data"] is None


def test_an_ensemble_member_from_other_data_is_refused(
    run: Path, folders, tmp_path: Path, capsys
) -> None:
    path = sorted(RunDir(run).epoch_checkpoints().values())[0]
    state = torch.load(path, weights_only=True)
    state["data"] = {**state["data"], "fingerprint": "0123456789abcdef"}
    atomic_save(state, path)
    support = tmp_path / "support"
    for name in sorted(p.name for p in folders[1].iterdir() if p.is_dir())[:5]:
        (support / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(sorted((folders[1] / name).iterdir())[0], support / name)
    query = sorted((folders[1] / name).iterdir())[1]
    args = ["adapt", str(run), "--support", str(support), "--query", str(query), "--top-k", "2"]
    assert main(args) == 2
    err = _error_line(capsys)
    assert f"checkpoint {path} was trained on folder data" in err
    assert "an ensemble takes the run's own checkpoints only" in err
    assert main(["export", str(run), str(run.parent / "m.pt"), "--top-k", "2"]) == 2
    assert "an ensemble takes the run's own checkpoints only" in _error_line(capsys)
