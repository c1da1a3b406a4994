"""`mamlpp train --nproc 2` leaves no empty ``torchelastic_*`` folder in the temporary folder
(torchrun makes one per job)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_nproc_leaves_no_empty_torchelastic_folder(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    command = [sys.executable, "-m", "mamlpp", "train", "--preset", "synthetic", "--nproc", "2"]
    command += ["--out", str(tmp_path / "run"), "--device", "cpu", "--quiet"]
    for assignment in (
        "train.epochs=1",
        "train.iterations_per_epoch=2",
        "train.tasks_per_batch=2",
        "train.log_every=1",
        "train.threads=1",
        "model.channels=4",
        "eval.val_tasks=2",
        "eval.test_tasks=2",
        "eval.batch_size=2",
        "eval.top_k=1",
    ):
        command += ["--set", assignment]
    env = {**os.environ, "TMPDIR": str(temp)}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR"):
        env.pop(name, None)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "run" / "summary.json").is_file()
    assert not list(temp.glob("torchelastic_*")), sorted(p.name for p in temp.iterdir())
