"""`mamlpp train` as a data-parallel job: 2 ranks (gloo, 127.0.0.1, a free port) equal one
process, write one run folder, fail cleanly when a rank is killed and resume exactly."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from distributed_helpers import (
    free_port,
    rank_env,
    read_only,
    run_group,
    start_ranks,
    wait_all,
)

from mamlpp.cli.main import main
from mamlpp.run.run_dir import TIMING_FIELDS, read_metrics

# 3 epochs x 4 iterations of 4 tasks: epoch 1 first order, MSL off after epoch 2, the outer lr
# changes every epoch. 7 validation and 9 test tasks: uneven blocks over 2 ranks. All epoch
# checkpoints are kept (top_k=3), so any epoch is a resume point.
TINY = [
    "train.epochs=3",
    "train.iterations_per_epoch=4",
    "train.tasks_per_batch=4",
    "train.log_every=2",
    "train.checkpoint_every=2",
    "train.threads=1",
    "model.channels=4",
    "meta.first_order_epochs=1",
    "meta.msl_epochs=2",
    "eval.val_tasks=7",
    "eval.test_tasks=9",
    "eval.batch_size=4",
    "eval.top_k=3",
]


def _train(out: Path, *extra: str) -> list[str]:
    command = [sys.executable, "-m", "mamlpp", "train", "--preset", "synthetic", "--out", str(out)]
    command += ["--quiet", "--device", "cpu"]
    for assignment in TINY:
        command += ["--set", assignment]
    return command + list(extra)


def _one_process_env() -> dict[str, str]:
    env = rank_env(0, 1, 0)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        env.pop(name)
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The same tiny run by one process and by 2 ranks."""
    base = tmp_path_factory.mktemp("dist-cli")
    one = run_group(_train(base / "one"), _one_process_env())
    assert one.returncode == 0, one.stderr[-3000:]
    # Rank 1 reports any attempt to create, write, rename or delete in the run folder.
    port, pipes = free_port(), {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    pipes["start_new_session"] = True  # wait_all stops the whole group on a timeout
    command = _train(base / "two")
    ranks = [
        subprocess.Popen(command, env=rank_env(0, 2, port), **pipes),
        subprocess.Popen(read_only(command, base / "two"), env=rank_env(1, 2, port), **pipes),
    ]
    (code0, code1) = wait_all(ranks, timeout=300)
    (out0, err0), (out1, err1) = ((r.stdout.read(), r.stderr.read()) for r in ranks)
    assert (code0, code1) == (0, 0), (err0[-3000:], err1[-3000:])
    assert "on 2 processes (gloo)" in out0 and "test:" in out0
    assert out1 == "", "only rank 0 prints"
    assert "WROTE" not in err1, err1
    return {"one": base / "one", "two": base / "two", "base": base}


def _assert_close(a: dict, b: dict, tolerance: float) -> None:
    """Every stored tensor of two model states (the library keeps dead conv biases exactly
    still, so nothing is left out)."""
    assert a.keys() == b.keys()
    for part in ("conv0.bias", "inner_lrs", "bn0.weight", "running_mean", "running_var"):
        assert any(k.endswith(part) for k in a), part
    worst = {k: float((a[k].double() - b[k].double()).abs().max()) for k in a}
    assert max(worst.values()) <= tolerance, sorted(worst.items(), key=lambda kv: -kv[1])[:5]


def _metrics(folder: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k not in TIMING_FIELDS}
        for r in read_metrics(folder / "metrics.jsonl")
    ]


def _assert_same_metrics(a: list[dict], b: list[dict], tolerance: float) -> None:
    assert len(a) == len(b) and len(a) == 3 * 3  # 2 train lines + 1 val line per epoch
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], str | bool) or x[key] is None:
                assert x[key] == y[key], key
                continue
            assert torch.allclose(
                torch.tensor(x[key], dtype=torch.float64),
                torch.tensor(y[key], dtype=torch.float64),
                rtol=0,
                atol=tolerance,
            ), (x["kind"], x["step"], key, x[key], y[key])


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.slow
def test_two_ranks_train_like_one_process_into_one_run_folder(runs) -> None:
    one, two = runs["one"], runs["two"]
    a = torch.load(one / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(two / "checkpoints" / "latest.pt", weights_only=True)
    _assert_close(a["model"], b["model"], 1e-5)
    assert a["progress"] == b["progress"] and a["world_size"] == 1 and b["world_size"] == 2
    _assert_same_metrics(_metrics(one), _metrics(two), 1e-5)
    # Sharded validation and test: the same accuracies and 95% CIs as one process.
    assert [h[1] for h in a["history"]] == [h[1] for h in b["history"]]
    sa, sb = (json.loads((f / "summary.json").read_text()) for f in (one, two))
    assert (sa["test_accuracy"], sa["test_ci95"], sa["test_tasks"]) == (
        sb["test_accuracy"],
        sb["test_ci95"],
        sb["test_tasks"],
    )
    assert sb["world_size"] == 2
    # One writer: exactly the files of a one-process run, nothing else anywhere.
    assert _files(two) == _files(one)
    assert sorted(p.name for p in runs["base"].iterdir()) == ["one", "two"]


@pytest.mark.slow
def test_sigkill_of_one_rank_fails_cleanly_and_resume_under_torchrun_is_exact(runs) -> None:
    out = runs["base"] / "killed"
    ranks = start_ranks(_train(out), 2, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while len(read_metrics(metrics)) < 4:  # into epoch 2 (second order), after a checkpoint
        assert ranks[0].poll() is None and time.monotonic() < deadline, "no progress"
        time.sleep(0.01)
    ranks[1].send_signal(signal.SIGKILL)
    wait_all(ranks, timeout=60)  # the survivor notices and stops by itself
    err = ranks[0].stderr.read()
    assert ranks[0].returncode == 1, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mamlpp: error: another process"), err
    assert "--resume" in lines[0]
    # No half-written checkpoint: no temporaries, and every checkpoint loads.
    assert not list((out / "checkpoints").glob(".*.tmp"))
    for path in (out / "checkpoints").glob("*.pt"):
        torch.load(path, weights_only=True)
    assert torch.load(out / "checkpoints" / "latest.pt", weights_only=True)["progress"]["step"] < 12
    # Continue through the shortcut, which launches torchrun itself.
    done = run_group(_train(out, "--resume", "--nproc", "2"), _one_process_env())
    assert done.returncode == 0, done.stderr[-3000:]
    want = torch.load(runs["two"] / "checkpoints" / "latest.pt", weights_only=True)
    got = torch.load(out / "checkpoints" / "latest.pt", weights_only=True)
    for part in ("model", "optimizer"):
        assert _flat(got[part]).keys() == _flat(want[part]).keys()
        assert all(torch.equal(x, _flat(want[part])[k]) for k, x in _flat(got[part]).items()), part
    assert got["history"] == want["history"]
    assert _metrics(out) == _metrics(runs["two"])
    assert _files(out) == _files(runs["two"])


@pytest.mark.slow
def test_two_nodes_meet_by_torchruns_c10d_rendezvous_and_train_like_one_process(runs) -> None:
    """The multi-node command of docs/distributed.md, as two "nodes" on this machine: two
    torchrun launchers (one process each) find each other through torchrun's c10d rendezvous,
    not through the variables a single launcher sets. Which launcher hosts rank 0 is the
    rendezvous's choice; the run equals one process and has one writer."""
    out, port = runs["base"] / "two-nodes", free_port()
    rendezvous = ["--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d"]
    rendezvous += [f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=mamlpp-test"]
    command = [sys.executable, "-m", "torch.distributed.run", *rendezvous, *_train(out)[1:]]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    nodes = [
        subprocess.Popen(command, env=_one_process_env(), start_new_session=True, **pipes)
        for _ in range(2)
    ]
    codes = wait_all(nodes, timeout=300)
    outputs = [(node.stdout.read(), node.stderr.read()) for node in nodes]
    assert codes == [0, 0], [err[-2000:] for _, err in outputs]
    printed = [text for text, _ in outputs if text]
    assert len(printed) == 1 and "on 2 processes (gloo)" in printed[0], "only rank 0 prints"
    a = torch.load(runs["one"] / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(out / "checkpoints" / "latest.pt", weights_only=True)
    _assert_close(a["model"], b["model"], 1e-5)
    assert b["world_size"] == 2
    _assert_same_metrics(_metrics(runs["one"]), _metrics(out), 1e-5)
    assert _files(out) == _files(runs["one"])


def _flat(tree, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a nested dict/list by its path."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    out: dict[str, torch.Tensor] = {}
    for key, value in items:
        if isinstance(value, dict | list | tuple | torch.Tensor):
            out.update(_flat(value, f"{prefix}.{key}"))
    return out


@pytest.mark.slow
def test_a_run_of_two_ranks_resumes_in_one_process(runs) -> None:
    """Task ids, not the process count, fix the training stream: the state 2 ranks saved after
    epoch 1 continues in one process to the one-process result."""
    out = runs["base"] / "regrouped"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy(runs["two"] / "config.toml", out / "config.toml")
    shutil.copy(runs["two"] / "metrics.jsonl", out / "metrics.jsonl")  # truncated on resume
    shutil.copy(runs["two"] / "checkpoints" / "epoch-0001.pt", out / "checkpoints" / "latest.pt")
    done = run_group(_train(out, "--resume"), _one_process_env())
    assert done.returncode == 0, done.stderr[-3000:]
    a = torch.load(runs["one"] / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(out / "checkpoints" / "latest.pt", weights_only=True)
    _assert_close(a["model"], b["model"], 1e-5)
    assert b["world_size"] == 1
    _assert_same_metrics(_metrics(runs["one"]), _metrics(out), 1e-5)


def test_meta_batch_not_divisible_by_processes(tmp_path, capsys, monkeypatch) -> None:
    """A one-line error (exit 2) before anything starts: from --nproc, and from each rank of
    a torchrun job (before it waits for the others)."""
    out = tmp_path / "run"
    args = ["train", "--preset", "synthetic", "--out", str(out), "--device", "cpu"]
    args += ["--set", "train.tasks_per_batch=4"]
    assert main([*args, "--nproc", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tasks_per_batch=4 is not divisible by 3 processes" in err[0]
    for name, value in rank_env(1, 3, free_port()).items():
        if name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("MAMLPP_DIST_TIMEOUT", "10")  # without the early check: fail, not hang
    assert main(args) == 2  # no peer is running: it must not wait for one
    assert capsys.readouterr().err == ""  # rank 1 is silent: rank 0 prints the error once
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not divisible by 3 processes" in err[0]
    assert not out.exists()
