"""Episode sampler throughput: tasks per second on one CPU core (or on a GPU).

    python benchmarks/sampler_speed.py                       # real Omniglot, 20-way 1-shot
    python benchmarks/sampler_speed.py --ways 5 --targets 15 --device cuda

Prints one line per (split, batch size) and writes the numbers as JSON (default
runs/benchmarks/sampler_speed.json). The target is >= 5,000 Omniglot 20-way 1-shot tasks/s on one
core when sampled in batches. Each figure is the median of ``--repeats`` timed runs of at least
``--seconds`` each; task ids never repeat, as in training.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from mamlpp.data import EpisodeSampler, find_omniglot, load_omniglot, make_synthetic

TARGET_TASKS_PER_SECOND = 5000
REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        default=str(REPO.parent / "shared" / "data" / "omniglot"),
        help="Omniglot folder (falls back to synthetic data if absent)",
    )
    parser.add_argument("--cache-dir", default=str(REPO / "runs" / "cache"))
    parser.add_argument("--ways", type=int, default=20)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--targets", type=int, default=1)
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 64, 256, 1024])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=1.0, help="minimum time per run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=str(REPO / "runs" / "benchmarks" / "sampler_speed.json"))
    return parser.parse_args(argv)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tasks_per_second(sampler: EpisodeSampler, batch: int, seconds: float, repeats: int) -> float:
    device = sampler.device
    next_id = 0
    sampler.sample(range(batch))  # warm-up (allocations, kernels)
    rates = []
    for _ in range(repeats):
        synchronise(device)
        start, done = time.perf_counter(), 0
        while True:
            ids = torch.arange(next_id, next_id + batch, device=device)
            sampler.sample(ids)
            next_id += batch
            done += batch
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                synchronise(device)
                rates.append(done / (time.perf_counter() - start))
                break
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    source = find_omniglot(args.data) if Path(args.data).exists() else None
    if source is not None:
        splits = load_omniglot(source, cache_dir=args.cache_dir)
        dataset = "omniglot (reference split)"
    else:
        print(f"Omniglot not found at {args.data}; using synthetic data", file=sys.stderr)
        splits = make_synthetic(classes=(1150, 50, 423))
        dataset = "synthetic"
    shape = f"{args.ways}-way {args.shots}-shot, {args.targets} target(s) per class"
    print(f"{dataset}, {shape}, device {device}, {args.threads} thread(s)")
    results = []
    for name in ("train", "test"):
        sampler = EpisodeSampler(
            splits[name], args.ways, args.shots, args.targets, seed=0, device=device
        )
        for batch in args.batches:
            rate = tasks_per_second(sampler, batch, args.seconds, args.repeats)
            results.append(
                {
                    "split": name,
                    "rotate": sampler.rotate,
                    "batch": batch,
                    "tasks_per_second": round(rate, 1),
                    "ms_per_batch": round(1000 * batch / rate, 4),
                }
            )
            print(
                f"  {name:5s} (rotate={str(sampler.rotate):5s}) batch {batch:5d}: "
                f"{rate:10.0f} tasks/s  ({1000 * batch / rate:.3f} ms per batch)"
            )
    batched = [r["tasks_per_second"] for r in results if r["batch"] >= 64]
    best = max(batched) if batched else max(r["tasks_per_second"] for r in results)
    worst_batched = min(batched) if batched else best
    verdict = "PASS" if worst_batched >= TARGET_TASKS_PER_SECOND else "FAIL"
    print(
        f"slowest batched (>= 64 tasks) rate: {worst_batched:.0f} tasks/s; target "
        f"{TARGET_TASKS_PER_SECOND}: {verdict}"
    )
    report = {
        "benchmark": "sampler_speed",
        "dataset": dataset,
        "ways": args.ways,
        "shots": args.shots,
        "targets": args.targets,
        "device": str(device),
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "target_tasks_per_second": TARGET_TASKS_PER_SECOND,
        "slowest_batched_tasks_per_second": worst_batched,
        "verdict": verdict,
        "results": results,
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
