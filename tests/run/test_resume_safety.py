"""`mamlpp train --resume` on a finished run (`--preset synthetic`, tiny budgets) that was
re-tested, damaged, emptied of checkpoints, locked or given another configuration: nothing is
lost or trained again, every refusal comes before any data work and is one line; and evaluate's
note about the checkpoints kept."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mamlpp.cli.main import main
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


def _train(out: Path, *extra: str) -> int:
    args = ["train", "--preset", "synthetic", "--out", str(out), "--device", "cpu", "--quiet"]
    for assignment in TINY:
        args += ["--set", assignment]
    return main(args + list(extra))


def _resume(out: Path, *extra: str) -> int:
    return main(["train", "--out", str(out), "--resume", "--device", "cpu", "--quiet", *extra])


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 3-epoch run with three epoch checkpoints (top-3)."""
    out = tmp_path_factory.mktemp("first-hour") / "run"
    assert _train(out) == 0
    assert len(RunDir(out).epoch_checkpoints()) == 3
    return out


@pytest.fixture
def run_copy(finished: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("mamlpp: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# Re-testing with a smaller top-k must not delete checkpoints -------------------------------


def test_retesting_with_a_smaller_top_k_keeps_every_checkpoint(run_copy: Path, capsys) -> None:
    before = sorted(RunDir(run_copy).epoch_checkpoints())
    assert _resume(run_copy, "--set", "eval.top_k=1") == 0
    assert json.loads((run_copy / "summary.json").read_text())["ensemble_size"] == 1
    assert sorted(RunDir(run_copy).epoch_checkpoints()) == before  # nothing deleted
    assert _resume(run_copy, "--set", "eval.top_k=3") == 0  # and the top-3 is still there
    assert json.loads((run_copy / "summary.json").read_text())["ensemble_size"] == 3


# A damaged or missing latest.pt ------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_damaged_latest_names_the_file_and_falls_back(run_copy: Path, damage, capsys) -> None:
    latest = RunDir(run_copy).latest
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    metrics_before = (run_copy / "metrics.jsonl").read_text()
    assert _resume(run_copy) == 0
    out = capsys.readouterr().out
    assert f"checkpoint {latest} is damaged (" in out
    assert ("an empty file" in out) == (damage == "empty")
    assert "resuming from epoch-0003.pt, the end of epoch 3" in out  # announced
    # The newest epoch file is the end of the run: nothing was trained again or lost.
    assert (run_copy / "metrics.jsonl").read_text() == metrics_before


def test_a_deleted_latest_resumes_from_the_newest_epoch_file(run_copy: Path, capsys) -> None:
    run = RunDir(run_copy)
    run.latest.unlink()
    run.epoch_checkpoint(3).unlink()  # the newest intact one is now epoch 2
    lines = (run_copy / "metrics.jsonl").read_text().splitlines()
    assert _resume(run_copy) == 0
    out = capsys.readouterr().out
    assert "latest.pt is missing; resuming from epoch-0002.pt, the end of epoch 2" in out
    records = [json.loads(line) for line in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "val"] == [1, 2, 3]  # not restarted
    assert len(records) == len(lines)


def test_a_run_with_history_and_no_checkpoint_is_never_restarted(run_copy: Path, capsys) -> None:
    shutil.rmtree(run_copy / "checkpoints")
    metrics_before = (run_copy / "metrics.jsonl").read_bytes()
    assert _resume(run_copy) == 1
    err = _one_line_error(capsys)
    assert "cannot resume" in err and "3 finished epoch(s)" in err
    assert (run_copy / "metrics.jsonl").read_bytes() == metrics_before


def test_an_unreadable_checkpoint_message_is_complete(tmp_path: Path) -> None:
    from mamlpp.errors import MamlppError
    from mamlpp.run.checkpoint import load_checkpoint

    empty = tmp_path / "latest.pt"
    empty.write_bytes(b"")
    with pytest.raises(MamlppError, match=r"latest\.pt is damaged \(an empty file\)$"):
        load_checkpoint(empty)


# The resume config check comes before any data work ----------------------------------------


def test_resume_with_another_preset_is_refused_before_loading_data(
    finished: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    def no_data(*args, **kwargs):
        raise AssertionError("data was loaded before the resume check")

    monkeypatch.setattr("mamlpp.run.datasource.load_splits", no_data)
    monkeypatch.setenv("MAMLPP_DATA", str(tmp_path / "data"))
    args = ["train", "--out", str(finished), "--resume", "--preset", "omniglot-5w1s"]
    assert main(args) == 2
    assert "cannot resume" in _one_line_error(capsys)
    assert not (tmp_path / "data").exists()


def test_resume_of_a_folder_without_config_is_refused_early(
    run_copy: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr("mamlpp.run.datasource.load_splits", pytest.fail)
    (run_copy / "config.toml").unlink()
    assert _resume(run_copy) == 2
    assert "no config.toml" in _one_line_error(capsys)


# One writer per run folder ----------------------------------------------------------------


def test_a_second_writer_is_refused_and_a_stale_lock_does_not_block(run_copy: Path, capsys) -> None:
    from mamlpp.run.run_dir import locked

    run = RunDir(run_copy)
    before = run.latest.read_bytes()
    with locked(run):  # another process training in this folder (flock is per open file)
        assert _resume(run_copy) == 2
        err = _one_line_error(capsys)
        assert "in use by another mamlpp process" in err
    assert run.latest.read_bytes() == before
    # The lock file stays behind, as after a kill; nobody holds it, so resume goes ahead.
    assert (run_copy / ".lock").is_file()
    assert _resume(run_copy) == 0


def test_the_checkpoint_count_note_is_singular_for_one(run_copy: Path, capsys) -> None:
    for epoch in (2, 3):
        RunDir(run_copy).epoch_checkpoint(epoch).unlink()
    args = ["evaluate", str(run_copy), "--device", "cpu", "--tasks", "2", "--top-k", "3"]
    assert main(args) == 0
    assert "only 1 checkpoint kept in" in capsys.readouterr().out
