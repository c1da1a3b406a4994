"""A tiny synthetic run through the command line, shared by the CLI and run-folder tests."""

from __future__ import annotations

from pathlib import Path

from mamlpp.cli.main import main

# Seconds on a CPU: 2 epochs x 2 iterations x 2 tasks, 4 filters, 4 evaluation tasks.
TINY = [
    "train.epochs=2",
    "train.iterations_per_epoch=2",
    "train.tasks_per_batch=2",
    "train.log_every=1",
    "model.channels=4",
    "eval.val_tasks=4",
    "eval.test_tasks=4",
    "eval.batch_size=4",
    "eval.top_k=2",
    "train.threads=1",
]


def train_tiny(out: Path, *settings: str) -> int:
    """``mamlpp train --preset synthetic`` at the TINY settings (then ``settings``) into ``out``;
    the exit code."""
    args = ["train", "--preset", "synthetic", "--out", str(out), "--device", "cpu", "--quiet"]
    for assignment in [*TINY, *settings]:
        args += ["--set", assignment]
    return main(args)
