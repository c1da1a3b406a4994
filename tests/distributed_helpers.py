"""Processes of a data-parallel job started by the tests: gloo on 127.0.0.1, a free port.

``python tests/distributed_helpers.py OUT`` (with torchrun's variables RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT in the environment) trains the tiny synthetic problem of
:func:`train_tiny` through :class:`mamlpp.engine.collectives.Distributed` and saves this rank's
final
state to ``OUT/rank<R>.pt``. The tests run the same function in one process and compare.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import signal
import socket
import subprocess
import sys
from pathlib import Path

import torch

SRC = Path(__file__).resolve().parents[1] / "src"
THIS = Path(__file__).resolve()

# 3 epochs x 2 iterations: epoch 0 first order with MSL, epoch 1 second order with MSL,
# epoch 2 second order without MSL; the outer lr (CA) changes every epoch; LSLR, per-step BN
# statistics and weights all on. 4 tasks per meta-batch (2 per rank with 2 ranks).
EPOCHS, ITERATIONS, TASKS = 3, 2, 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int) -> dict[str, str]:
    """The environment torchrun gives rank ``rank`` (single node), one thread per process."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        # A rank that waits for a dead or diverged peer gives up soon instead of after 30 min.
        "MAMLPP_DIST_TIMEOUT": "60",
    }


def start_ranks(command: list[str], world: int, **popen) -> list[subprocess.Popen]:
    """Start ``command`` once per rank, as torchrun would on one node (each in its own
    process group, so :func:`wait_all` can stop it with everything it started)."""
    port = free_port()
    return [
        subprocess.Popen(command, env=rank_env(rank, world, port), start_new_session=True, **popen)
        for rank in range(world)
    ]


def run_group(command: list[str], env: dict[str, str], timeout: float = 300.0):
    """``subprocess.run`` whose timeout also stops the grandchildren (torchrun's workers)."""
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def read_only(command: list[str], folder: Path) -> list[str]:
    """``command`` (``python -m mamlpp ...``) run so that every attempt to create, write,
    rename or delete anything under ``folder`` is reported on stderr as ``WROTE <path>``."""
    assert command[1:3] == ["-m", "mamlpp"]
    return [command[0], str(THIS), "read-only", str(folder), *command[3:]]


def _report_writes_under(folder: str) -> None:
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = any(c in (mode or "") for c in "wax+") or bool((flags or 0) & writes)
            paths = [path] if writing else []
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.truncate", "os.chmod"):
            paths = [args[0]]
        elif event in ("os.rename", "os.replace", "os.link", "os.symlink"):
            paths = [args[0], args[1]]
        else:
            return
        for path in paths:
            if isinstance(path, str | bytes | os.PathLike):
                text = os.fsdecode(os.path.abspath(path))
                if text == folder or text.startswith(folder + os.sep):
                    sys.stderr.write(f"WROTE {text} ({event})\n")

    sys.addaudithook(hook)


def wait_all(processes: list[subprocess.Popen], timeout: float = 120.0) -> list[int]:
    codes = []
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in processes:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
            raise
        codes.append(process.returncode)
    return codes


def train_tiny(
    dtype: torch.dtype, task_reduction: str, dist=None, sync_in_graph: bool = True
) -> tuple[dict, list[dict]]:
    """Train the tiny problem; returns the learner's state dict and per-iteration metrics.

    The tasks of global iteration g are ``g*B .. g*B+B-1`` of the counter-based sampler; under
    ``dist`` this rank takes its block of them, exactly as the trainer does. ``sync_in_graph``:
    the fused step, or its two phases with the collectives between them (after the replay).
    """
    from mamlpp import MAMLpp, MetaConfig, TaskBatch
    from mamlpp.data import EpisodeSampler, load_dataset
    from mamlpp.engine.step_runner import MetaStepRunner
    from mamlpp.nn.conv4 import conv4_for

    splits = load_dataset("synthetic", classes=(20, 5, 5), samples_per_class=4, image_size=16)
    sampler = EpisodeSampler(splits["train"], 3, 1, 2, seed=7)
    config = MetaConfig(
        num_inner_steps=2,
        msl_epochs=2,
        first_order_epochs=1,
        total_epochs=EPOCHS,
        meta_lr=1e-2,  # large steps, so that any difference between the runs shows
        task_reduction=task_reduction,
    )
    torch.manual_seed(0)
    learner = MAMLpp(conv4_for(3, 1, 16, channels=4), config).to(dtype)
    step = MetaStepRunner(learner, sync=dist, sync_in_graph=sync_in_graph)
    history = []
    for g in range(EPOCHS * ITERATIONS):
        ids = torch.arange(g * TASKS, (g + 1) * TASKS)
        if dist is not None:
            ids = dist.shard(ids)
        sx, sy, qx, qy = sampler.sample(ids)
        metrics = step(TaskBatch(sx.to(dtype), sy, qx.to(dtype), qy), g // ITERATIONS)
        history.append({k: v.tolist() for k, v in metrics.items()})
    return learner.state_dict(), history


def evaluate_tiny(state: dict, shards=None):
    """A float32 learner (the sampler's dtype) holding ``state``, evaluated on 9 validation
    tasks, 4 per batch (with 2 processes the blocks are 4 and 5 tasks: uneven on purpose)."""
    from mamlpp.data import EpisodeSampler, load_dataset
    from mamlpp.run.evaluate import evaluate

    splits = load_dataset("synthetic", classes=(20, 5, 5), samples_per_class=4, image_size=16)
    sampler = EpisodeSampler(splits["val"], 3, 1, 2, seed=1)
    learner = tiny_eval_learner()
    learner.load_state_dict(state)
    return evaluate(learner, sampler, tasks=9, batch_size=4, shards=shards)


def tiny_eval_learner():
    """The float32 learner of the tiny problem, freshly initialised (seed 0)."""
    from mamlpp import MAMLpp, MetaConfig
    from mamlpp.nn.conv4 import conv4_for

    torch.manual_seed(0)
    config = MetaConfig(num_inner_steps=2, total_epochs=EPOCHS)
    return MAMLpp(conv4_for(3, 1, 16, channels=4), config)


def _main(out: Path) -> None:
    from dataclasses import asdict

    from mamlpp.engine.collectives import init_from_env

    torch.set_num_threads(1)
    dist = init_from_env(torch.device("cpu"))
    results = {
        (str(dtype), reduction): train_tiny(dtype, reduction, dist)
        for dtype in (torch.float64, torch.float32)
        for reduction in ("mean", "sum")
    }
    # The collectives after the replay (two phases), as gloo on CUDA or NCCL without capture.
    results["after-replay"] = train_tiny(torch.float64, "mean", dist, sync_in_graph=False)
    state = results[(str(torch.float64), "mean")][0]
    results["evaluation"] = asdict(evaluate_tiny(state, dist))
    dist.shutdown()
    results["threads_after_shutdown"] = thread_names()
    torch.save(results, out / f"rank{dist.rank}.pt")


def thread_names() -> list[str] | None:
    """The names of this process's threads (Linux: /proc/self/task), or None elsewhere."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return None
    names = []
    for task in tasks.iterdir():
        with contextlib.suppress(OSError):  # a thread that ended while listed
            names.append((task / "comm").read_text().strip())
    return sorted(names)


if __name__ == "__main__":
    if sys.argv[1] == "read-only":  # python THIS read-only FOLDER <mamlpp arguments>
        _report_writes_under(os.path.abspath(sys.argv[2]))
        sys.argv = ["mamlpp", *sys.argv[3:]]
        runpy.run_module("mamlpp", run_name="__main__", alter_sys=True)
    else:
        _main(Path(sys.argv[1]))
