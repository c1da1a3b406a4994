"""Checkpoint writes are atomic (old or new file, never a mixture) and load with weights_only."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import mamlpp.run.checkpoint as checkpoint
import mamlpp.util.atomic as atomic
from mamlpp.errors import MamlppError
from mamlpp.run.checkpoint import atomic_save, capture_rng, load_checkpoint, restore_rng


def _state(value: float) -> dict:
    return {"format": 1, "model": {"w": torch.full((256, 256), value)}, "value": value}


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "latest.pt"
    atomic_save(_state(1.0), path)

    def broken_save(obj, handle):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save(_state(2.0), path)
    assert load_checkpoint(path)["value"] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]  # no temporary left


def test_failed_rename_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "latest.pt"
    atomic_save(_state(1.0), path)

    def broken_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OSError, match="rename failed"):
        atomic_save(_state(2.0), path)
    assert load_checkpoint(path)["value"] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]


def test_data_is_synced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        kind = "dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file"
        events.append(f"fsync-{kind}")
        return real_fsync(fd)

    def replace(src, dst):
        events.append("replace")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    atomic_save(_state(3.0), tmp_path / "x.pt")
    if sys.platform.startswith("linux"):
        assert events == ["fsync-file", "replace", "fsync-dir"]
    else:
        assert events.index("replace") > events.index("fsync-file")


WRITER = textwrap.dedent(
    """
    import sys, torch
    from mamlpp.run.checkpoint import atomic_save
    path = sys.argv[1]
    a = {"format": 1, "model": {"w": torch.zeros(512, 512)}, "value": 0.0}
    b = {"format": 1, "model": {"w": torch.ones(512, 512)}, "value": 1.0}
    atomic_save(a, path)
    print("ready", flush=True)
    while True:
        atomic_save(b, path)
        atomic_save(a, path)
    """
)


@pytest.mark.slow
def test_sigkill_during_writes_leaves_a_whole_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "latest.pt"
    rng = random.Random(7)
    for _ in range(3):
        process = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
        )
        assert process.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.3))
        process.send_signal(signal.SIGKILL)
        process.wait()
        state = load_checkpoint(path)  # loads, with weights_only=True
        expected = torch.full((512, 512), state["value"])
        assert torch.equal(state["model"]["w"], expected)
    # A killed write may leave its temporary; resume removes it.
    checkpoint.remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]


def test_rng_states_round_trip_through_weights_only_load(tmp_path: Path) -> None:
    torch.manual_seed(11)
    np.random.seed(12)
    random.seed(13)
    atomic_save({"format": 1, "rng": capture_rng()}, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_unreadable_checkpoints_are_one_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    damaged = r"bad\.pt is damaged \(23 bytes, truncated or not a torch file: "
    with pytest.raises(MamlppError, match=damaged) as info:
        load_checkpoint(bad)
    assert "\n" not in str(info.value)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(MamlppError, match="not a mamlpp checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(MamlppError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
