"""Errors of a data-parallel `mamlpp train`: one `mamlpp: error:` line for the whole job, the
exit code of one process, no torchrun traceback, and the --resume hint only where it is true.

The runs use the tiny synthetic options of tests/e2e/test_distributed_cli.py. An unwritable run
folder is a path under a regular FILE (a read-only folder does not stop root, as in CI)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from distributed_helpers import rank_env, run_group, start_ranks, wait_all
from script_helpers import load_script
from test_distributed_cli import _one_process_env, _train

from mamlpp.run.run_dir import RunDir, locked


def _one_error_line(result) -> str:
    """The job printed exactly one `mamlpp: error:` line and no traceback of any kind."""
    text = result.stdout + result.stderr
    assert "Traceback" not in text and "ChildFailedError" not in text, text[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("mamlpp: error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def _same_as_one_process(out: Path, *extra: str) -> tuple[str, int]:
    """Run ``mamlpp train`` once in one process and once with ``--nproc 2``: the same exit
    code and the same single error line. Returns that line and the code."""
    one = run_group(_train(out, *extra), _one_process_env(), timeout=120)
    assert one.returncode != 0
    line = _one_error_line(one)
    two = run_group(_train(out, *extra, "--nproc", "2"), _one_process_env(), timeout=180)
    assert two.returncode == one.returncode, (two.returncode, one.returncode, two.stderr[-3000:])
    assert _one_error_line(two) == line
    assert "another process" not in two.stderr
    return line, two.returncode


@pytest.mark.slow
def test_unwritable_run_folder_under_nproc_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder\n")
    line, code = _same_as_one_process(tmp_path / "a-file" / "run")
    assert code == 1 and "Not a directory" in line


@pytest.mark.slow
def test_locked_run_folder_under_nproc_is_one_line(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    with locked(run):  # another mamlpp run trains in this folder
        line, code = _same_as_one_process(run.root)
    assert code == 2 and "is in use by another mamlpp process" in line


@pytest.mark.slow
def test_bad_world_size_is_one_line_under_nproc_and_under_torchrun(tmp_path: Path) -> None:
    """4 tasks per batch on 3 processes: through ``--nproc 3``, and as 3 ranks started the way
    torchrun starts them, where every rank exits with 2, no traceback, and only rank 0 prints."""
    out = tmp_path / "run"  # the tiny options have 4 tasks per batch
    three = run_group(_train(out, "--nproc", "3"), _one_process_env(), timeout=120)
    assert three.returncode == 2  # a configuration error, as in one process
    assert "tasks_per_batch=4 is not divisible by 3 processes" in _one_error_line(three)
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    ranks = start_ranks(_train(out), 3, **pipes)
    codes = wait_all(ranks, timeout=120)
    outputs = [(rank.stdout.read(), rank.stderr.read()) for rank in ranks]
    assert codes == [2, 2, 2], outputs
    assert outputs[0][0] == "" and outputs[0][1].startswith("mamlpp: error: train.tasks_per")
    assert len(outputs[0][1].strip().splitlines()) == 1, outputs[0]
    assert outputs[1:] == [("", ""), ("", "")], "only rank 0 prints"
    assert not out.exists()


@pytest.mark.slow
def test_a_peer_lost_before_any_checkpoint_gives_no_resume_hint(tmp_path: Path) -> None:
    """Rank 1 joins the job and vanishes at once: rank 0 says so in one line, and does not
    offer --resume, since there is nothing to resume."""
    from distributed_helpers import free_port

    port, out = free_port(), tmp_path / "run"
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    vanish = "import os, torch.distributed as d; d.init_process_group('gloo'); os._exit(3)"
    ranks = [
        subprocess.Popen(_train(out), env=rank_env(0, 2, port), start_new_session=True, **pipes),
        subprocess.Popen(
            [sys.executable, "-c", vanish], env=rank_env(1, 2, port), start_new_session=True
        ),
    ]
    codes = wait_all(ranks, timeout=120)
    err = ranks[0].stderr.read()
    assert codes == [1, 3], err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mamlpp: error: another process"), err
    assert "--resume" not in lines[0]


def _quality_script():
    """benchmarks/distributed_quality.py, a script outside the library, loaded as a module."""
    return load_script("benchmarks/distributed_quality.py", "distributed_quality")


def test_quality_benchmark_dry_run_plans_the_runs_and_writes_nothing(tmp_path, capsys) -> None:
    script = _quality_script()
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = ["--seeds", "2", "--nprocs", "1,2", "--epochs", "10", "--data-dir", "DATA"]
    assert script.main([*argv, "--out", str(out), "--runs", str(runs), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    commands = [line for line in lines if " -m mamlpp train " in line]
    assert len(commands) == 4  # seeds 0 and 1 x 1 and 2 processes
    for seed, nproc, command in zip((0, 0, 1, 1), (1, 2, 1, 2), commands, strict=True):
        assert f"--out {runs / f'seed{seed}-nproc{nproc}'} " in command
        assert f"train.seed={seed} " in command and "train.epochs=10 " in command
        assert "meta.first_order_epochs=5 " in command and "meta.msl_epochs=1 " in command
        assert "--data-dir DATA" in command and "--preset quickstart" in command
        assert command.endswith("--nproc 2") == (nproc == 2)
    assert lines[-1] == f"would write {out / 'results.md'} and {out / 'results.json'}"
    assert not out.exists() and not runs.exists()
    assert script.parse_args(["--seeds", "4,7"]).seeds == [4, 7]
    for bad in (["--seeds", "0"], ["--seeds", "1,1"], ["--nprocs", "two"], ["--epochs", "0"]):
        with pytest.raises(SystemExit):
            script.parse_args(bad)


def test_quality_benchmark_tables_mean_spread_and_paired_difference() -> None:
    script = _quality_script()
    runs = [
        {"seed": s, "nproc": g, "test_accuracy": a, "test_ci95": 0.01, "wall_time_s": 100.0}
        for s, g, a in [(0, 1, 0.90), (0, 2, 0.92), (1, 1, 0.80), (1, 2, 0.79)]
    ]
    summary = script.aggregate(runs, [1, 2])
    one, two = summary["by_nproc"]["1"], summary["by_nproc"]["2"]
    assert one["runs"] == 2 and abs(one["mean"] - 0.85) < 1e-12 and one["min"] == 0.80
    assert abs(two["mean"] - 0.855) < 1e-12 and two["max"] == 0.92
    paired = summary["paired"]["2"]
    assert abs(paired["mean_difference"] - 0.005) < 1e-12
    assert abs(paired["max_abs_difference"] - 0.02) < 1e-12
