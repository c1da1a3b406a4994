"""Data-parallel scaling: seconds per meta-iteration with 1..G processes (engine.collectives).

Each process runs the trainer's outer step (:class:`mamlpp.engine.step_runner.MetaStepRunner`
with the :class:`~mamlpp.engine.collectives.Distributed` sync: its B/G tasks, one all-reduce of
the gradients, a gather of the BN statistics, the same Adam step) on fixed random episodes of a
preset's shapes; the sampler is not timed. Rank 0 reports the median over timed iterations of the
slowest rank (a barrier closes every iteration).

    # CPU: 1 and 2 processes, one thread each (torchrun is started for G > 1)
    python benchmarks/distributed_scaling.py --preset omniglot-5w1s --nprocs 1,2 --threads 1
    # GPUs: see benchmarks/distributed_gpu.sh (one process per GPU, NCCL, CUDA graphs)

Results go to stdout (one line per G) and, with --json FILE, to a JSON list.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def worker(args: argparse.Namespace) -> None:
    """One process of the job (or the only one when G = 1)."""
    import torch

    from mamlpp.core.types import TaskBatch
    from mamlpp.engine.collectives import init_from_env, sync_in_graph
    from mamlpp.engine.step_runner import MetaStepRunner
    from mamlpp.run.build import build_learner
    from mamlpp.run.presets import resolve_config

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = resolve_config(args.preset, None, args.set)
    dist = init_from_env(device)
    device = dist.device if dist is not None else device
    world, rank = (1, 0) if dist is None else (dist.world_size, dist.rank)
    d, t = config.data, config.train
    channels = 3 if d.dataset == "mini-imagenet" else 1
    learner = build_learner(config, channels, device)
    step = MetaStepRunner(
        learner,
        precision=t.precision if device.type == "cuda" else "fp32",
        sync=dist,
        sync_in_graph=sync_in_graph(t.graph_sync, None if dist is None else dist.backend),
    )
    local = t.tasks_per_batch // world  # B % G is checked by the launcher
    generator = torch.Generator().manual_seed(rank)
    shape = (channels, d.image_size, d.image_size)
    sx = torch.rand(local, d.ways * d.shots, *shape, generator=generator).to(device)
    qx = torch.rand(local, d.ways * d.targets, *shape, generator=generator).to(device)
    sy = torch.arange(d.ways, device=device).repeat_interleave(d.shots).expand(local, -1)
    qy = torch.arange(d.ways, device=device).repeat_interleave(d.targets).expand(local, -1)
    epoch = args.epoch  # which schedule: first/second order, MSL on/off

    def sync_all() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if dist is not None:
            dist.barrier()

    for _ in range(args.warmup):  # includes CUDA-graph capture on a GPU
        step(TaskBatch(sx, sy.contiguous(), qx, qy.contiguous()), epoch)
    sync_all()
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        step(TaskBatch(sx, sy.contiguous(), qx, qy.contiguous()), epoch)
        sync_all()
        times.append(time.perf_counter() - start)
    if rank == 0:
        record = {
            "preset": args.preset,
            "processes": world,
            "threads_per_process": torch.get_num_threads() if device.type == "cpu" else None,
            "device": str(device) if dist is None else f"{device.type} x {world}",
            "backend": None if dist is None else dist.backend,
            "path": step.path,
            "graph_sync": step.describe()["graph_sync"],
            "tasks_per_batch": t.tasks_per_batch,
            "second_order": learner.second_order_at(epoch),
            "seconds_per_iteration": statistics.median(times),
            "iterations_timed": len(times),
        }
        print("RESULT " + json.dumps(record), flush=True)
    if dist is not None:
        dist.shutdown()


def launch(args: argparse.Namespace, nproc: int) -> dict:
    """Run the worker with ``nproc`` processes (torchrun for more than one); its record."""
    forwarded = ["--worker", "--preset", args.preset, "--device", args.device]
    forwarded += ["--iters", str(args.iters), "--warmup", str(args.warmup)]
    forwarded += ["--epoch", str(args.epoch), "--threads", str(args.threads)]
    for assignment in args.set:
        forwarded += ["--set", assignment]
    script = str(Path(__file__).resolve())
    if nproc == 1:
        command = [sys.executable, script, *forwarded]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += [f"--nproc_per_node={nproc}", script, *forwarded]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads or 1)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"{nproc} processes failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="omniglot-5w1s")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--nprocs", default="1,2", help="process counts, e.g. 1,2,4,8")
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (CPU)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--epoch", type=int, default=60, help="schedule epoch (60: 2nd order)")
    parser.add_argument("--json", metavar="FILE", help="also write the records here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    records = []
    for nproc in (int(n) for n in args.nprocs.split(",")):
        record = launch(args, nproc)
        base = records[0]["seconds_per_iteration"] if records else record["seconds_per_iteration"]
        record["speedup_vs_first"] = base / record["seconds_per_iteration"]
        records.append(record)
        print(
            f"{args.preset}: {nproc} process(es) x {record['threads_per_process'] or '-'} "
            f"thread(s) on {record['device']} ({record['path']}, collectives "
            f"{record['graph_sync']}): "
            f"{record['seconds_per_iteration'] * 1e3:.1f} ms/iteration, "
            f"speed-up {record['speedup_vs_first']:.2f}x",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
