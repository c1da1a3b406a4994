"""A `mamlpp train` that cannot start or cannot write fails in one line: a full disk, --out under
a file, a non-positive meta.inner_lr and impossible episode sizes (these two exit 2 and leave no
run folder behind)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from mamlpp.cli.main import main
from mamlpp.run import trainer as train_module

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


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("mamlpp: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# Filesystem errors are one line ------------------------------------------------------------


def test_a_full_disk_is_a_one_line_error(tmp_path: Path, monkeypatch, capsys) -> None:
    def no_space(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(train_module, "atomic_save", no_space)
    assert _train(tmp_path / "run") == 1
    err = _one_line_error(capsys)
    assert "No space left on device" in err and "checkpoints/epoch-0001.pt" in err


def test_out_under_a_file_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    assert _train(tmp_path / "file" / "run") == 1  # mkdir under a file: NotADirectoryError
    assert "Not a directory" in _one_line_error(capsys)


# meta.inner_lr is validated ----------------------------------------------------------------


@pytest.mark.parametrize("value", ["-0.1", "0"])
def test_a_non_positive_inner_lr_is_refused(tmp_path: Path, value, capsys) -> None:
    assert _train(tmp_path / "run", "--set", f"meta.inner_lr={value}") == 2
    assert "inner_lr must be > 0" in _one_line_error(capsys)
    assert not (tmp_path / "run").exists()


# Impossible episode sizes: exit 2 and no stub folder ---------------------------------------


@pytest.mark.parametrize("setting", ["data.ways=500", "data.targets=100"])
def test_impossible_episodes_exit_2_without_a_run_folder(tmp_path: Path, setting, capsys) -> None:
    assert _train(tmp_path / "run", "--set", setting) == 2
    assert "need" in _one_line_error(capsys)
    assert not (tmp_path / "run").exists()
