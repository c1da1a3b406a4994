"""Exact resume: a run SIGKILLed at arbitrary moments and continued with --resume ends bitwise
identical (CPU) to an uninterrupted run, and its metrics file has no gaps or duplicates."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mamlpp.run.run_dir import TIMING_FIELDS, read_metrics

# Tiny synthetic run: 3 epochs x 6 iterations, a checkpoint every 2 iterations; epoch 1 first
# order, then second order; MSL switches off after epoch 2.
TINY = [
    "train.epochs=3",
    "train.iterations_per_epoch=6",
    "train.tasks_per_batch=2",
    "train.log_every=2",
    "train.checkpoint_every=2",
    "train.threads=1",
    "model.channels=4",
    "meta.first_order_epochs=1",
    "meta.msl_epochs=2",
    "eval.val_tasks=6",
    "eval.test_tasks=6",
    "eval.batch_size=6",
    "eval.top_k=2",
]


def _command(out: Path, resume: bool) -> list[str]:
    command = [sys.executable, "-m", "mamlpp", "train", "--preset", "synthetic", "--out", str(out)]
    command += ["--quiet", "--device", "cpu"]
    for assignment in TINY:
        command += ["--set", assignment]
    return command + (["--resume"] if resume else [])


def _env() -> dict[str, str]:
    # One thread everywhere: deterministic and no oversubscription on a 2-core machine.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _train_lines(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in read_metrics(path)]


def _kill_when(process: subprocess.Popen, ready, delay: float, timeout: float = 60.0) -> bool:
    """SIGKILL ``process`` ``delay`` seconds after ``ready()`` holds; False if it ended first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            return False
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("training made no progress")
        time.sleep(0.005)
    time.sleep(delay)
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGKILL)
    process.wait()
    return True


def _assert_same_tensors(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:  # numbers, strings, None: Adam's lr, betas, step counts must match exactly too
        assert type(a) is type(b) and a == b, f"{where}: {a!r} != {b!r}"


def test_the_state_comparison_sees_every_leaf() -> None:
    same = {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1}]}
    _assert_same_tensors(same, same, "optimizer")
    for other in (
        {"state": {0: {"step": torch.tensor(4.0)}}, "param_groups": [{"lr": 0.1}]},
        {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.2}]},
        {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": "0.1"}]},
        {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": ({"lr": 0.1},)},
    ):
        with pytest.raises(AssertionError):
            _assert_same_tensors(same, other, "optimizer")


@pytest.mark.slow
def test_sigkill_and_resume_is_bitwise_identical(tmp_path: Path) -> None:
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(_command(reference, False), env=_env(), check=True, capture_output=True)

    latest = killed / "checkpoints" / "latest.pt"
    metrics = killed / "metrics.jsonl"

    def lines_at_least(count: int):
        return lambda: len(read_metrics(metrics)) >= count

    # The run writes 12 metrics lines (3 epochs x (3 train + 1 val)); a checkpoint follows each
    # train line. Kill right after line 1 (usually before the first checkpoint exists), then at
    # random moments shortly after lines 4 (epoch 1's validation), 7 and 9 (second order).
    rng = random.Random(1234)
    kills = 0
    for attempt, target in enumerate((1, 4, 7, 9)):
        process = subprocess.Popen(
            _command(killed, resume=attempt > 0),
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        delay = 0.0 if attempt == 0 else rng.uniform(0.0, 0.1)
        kills += _kill_when(process, lines_at_least(target), delay)
    process = subprocess.run(
        _command(killed, resume=True), env=_env(), capture_output=True, timeout=120
    )
    assert process.returncode == 0, process.stderr.decode()
    assert kills >= 3, "the test did not interrupt the run often enough to mean anything"

    ref_state = torch.load(reference / "checkpoints" / "latest.pt", weights_only=True)
    got_state = torch.load(latest, weights_only=True)
    for part in ("model", "optimizer"):
        _assert_same_tensors(ref_state[part], got_state[part], part)
    assert got_state["progress"] == ref_state["progress"]
    assert got_state["history"] == ref_state["history"]
    # The same top-k epoch checkpoints, with the same weights.
    ref_epochs = sorted(p.name for p in (reference / "checkpoints").glob("epoch-*.pt"))
    got_epochs = sorted(p.name for p in (killed / "checkpoints").glob("epoch-*.pt"))
    assert got_epochs == ref_epochs and len(got_epochs) == 2
    for name in ref_epochs:
        a = torch.load(reference / "checkpoints" / name, weights_only=True)
        b = torch.load(killed / "checkpoints" / name, weights_only=True)
        _assert_same_tensors(a["model"], b["model"], name)
    # Every metrics line exactly once, with the same values.
    assert _train_lines(metrics) == _train_lines(reference / "metrics.jsonl")
    assert not list((killed / "checkpoints").glob(".*.tmp"))
