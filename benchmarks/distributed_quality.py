"""Equal final quality on 1 and 2 processes: seeds x process counts of a short real run.

docs/distributed.md says what data parallelism keeps: every outer step equals the one-process
step up to rounding, but float32 trajectories that sum in another order drift apart, so two
runs with 1 and 2 processes end with different (not worse) weights. What a user cares about is
the final quality, and this measures it: for each seed S and process count G, one
``mamlpp train --preset quickstart`` run (Omniglot 5-way 1-shot, shortened to ``--epochs``, the
schedules scaled with it: MSL over the first 10% of the epochs, first order over the first
half, as in the preset's 100 epochs), one thread per process; then each run's test accuracy and
95% CI from its ``summary.json``, and per process count the mean, spread and range over seeds.

    # the study: 3 seeds x {1, 2} processes, 36 epochs of 15 iterations each (about 17 min on
    # a busy 2-core CPU: a run ~3 min on 1 process, ~2.6 min on 2; first order until epoch 18)
    python benchmarks/distributed_quality.py --seeds 0,1,2 --nprocs 1,2 --epochs 36 \\
        --data-dir /path/to/data    # the folder holding omniglot/images_*.zip
    # what it would run, without running or writing anything
    python benchmarks/distributed_quality.py --dry-run

Writes ``OUT/results.md`` (the tables) and ``OUT/results.json`` (every run, the settings, the
commit and the machine); default OUT: docs/results/distributed-quality. The run folders go to
``--runs`` (default runs/distributed-quality, not committed) and are kept: a finished run
(with summary.json) is reused and an unfinished one resumed when the script runs again with
the same settings; delete the folder to start over.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "results" / "distributed-quality"
DEFAULT_RUNS = ROOT / "runs" / "distributed-quality"


def _ints(text: str, what: str, count_means_range: bool = False) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; with ``count_means_range`` a single ``"3"`` is 0, 1, 2."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be integers separated by commas") from None
    if not values:
        raise argparse.ArgumentTypeError(f"{what} is empty")
    if count_means_range and "," not in text:
        if values[0] < 1:
            raise argparse.ArgumentTypeError(f"{what}: a count must be >= 1")
        return list(range(values[0]))
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{what} repeats a value: {text}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/distributed_quality.py",
        description="Test accuracy of N seeds x {1, 2} processes of a short Omniglot run.",
    )
    parser.add_argument(
        "--seeds",
        type=lambda t: _ints(t, "--seeds", count_means_range=True),
        default=[0, 1, 2],
        help="train.seed values, e.g. 0,1,2; a single number N means 0..N-1 (default 0,1,2)",
    )
    parser.add_argument(
        "--nprocs",
        type=lambda t: _ints(t, "--nprocs"),
        default=[1, 2],
        help="process counts, e.g. 1,2 (default); each must divide train.tasks_per_batch (8)",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="folder for results.md and results.json"
    )
    parser.add_argument(
        "--runs", type=Path, default=DEFAULT_RUNS, help="folder for the run folders (kept)"
    )
    parser.add_argument("--data-dir", help="folder holding omniglot/ (mamlpp train --data-dir)")
    parser.add_argument("--preset", default="quickstart", help="a 100-epoch preset to shorten")
    parser.add_argument("--epochs", type=int, default=36, help="epochs of each run (default 36)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="an extra mamlpp train override for every run (after the script's own)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the runs and write nothing")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    if any(g < 1 for g in args.nprocs):
        parser.error("--nprocs must be >= 1")
    return args


def run_folder(args: argparse.Namespace, seed: int, nproc: int) -> Path:
    return args.runs / f"seed{seed}-nproc{nproc}"


def train_command(args: argparse.Namespace, seed: int, nproc: int) -> list[str]:
    """The ``mamlpp train`` of one run (``--resume`` added when its folder was started)."""
    overrides = [
        f"train.epochs={args.epochs}",
        f"meta.msl_epochs={max(1, round(args.epochs * 0.1))}",
        f"meta.first_order_epochs={round(args.epochs * 0.5)}",
        f"train.seed={seed}",
        "train.threads=1",
        *args.set,
    ]
    command = [sys.executable, "-m", "mamlpp", "train", "--preset", args.preset]
    command += ["--out", str(run_folder(args, seed, nproc)), "--device", "cpu", "--quiet"]
    for assignment in overrides:
        command += ["--set", assignment]
    if args.data_dir is not None:
        command += ["--data-dir", args.data_dir]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    return command


def one_run(args: argparse.Namespace, seed: int, nproc: int) -> dict[str, Any]:
    """Train (or reuse, or resume) one run; its numbers from summary.json."""
    folder = run_folder(args, seed, nproc)
    summary_path = folder / "summary.json"
    command = train_command(args, seed, nproc)
    reused = summary_path.is_file()
    seconds = None
    if not reused:
        if folder.exists():
            command.append("--resume")
        args.runs.mkdir(parents=True, exist_ok=True)
        log = args.runs / f"seed{seed}-nproc{nproc}.log"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        src = str(ROOT / "src")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        start = time.monotonic()
        with log.open("w", encoding="utf-8") as out:
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        seconds = time.monotonic() - start
        if done.returncode != 0:
            tail = log.read_text(encoding="utf-8").splitlines()[-15:]
            print("\n".join(tail), file=sys.stderr)
            raise SystemExit(f"run seed {seed}, {nproc} process(es) failed: see {log}")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    return {
        "seed": seed,
        "nproc": nproc,
        "world_size": summary.get("world_size"),
        "test_accuracy": summary["test_accuracy"],
        "test_ci95": summary["test_ci95"],
        "test_tasks": summary["test_tasks"],
        "best_val_epoch": summary.get("best_val_epoch"),
        "best_val_accuracy": summary.get("best_val_accuracy"),
        "techniques": summary.get("techniques"),
        "iterations": summary.get("iterations"),
        "wall_time_s": seconds if seconds is not None else summary.get("wall_time_s"),
        "reused": reused,
        "folder": str(folder),
        "command": shlex.join(command),
    }


def aggregate(runs: list[dict[str, Any]], nprocs: list[int]) -> dict[str, Any]:
    """Per process count: mean, sample std, range and mean CI of the test accuracy; and the
    paired difference to the first process count (same seed)."""
    by_g: dict[str, Any] = {}
    for g in nprocs:
        acc = [r["test_accuracy"] for r in runs if r["nproc"] == g]
        by_g[str(g)] = {
            "runs": len(acc),
            "mean": statistics.fmean(acc),
            "std": statistics.stdev(acc) if len(acc) > 1 else None,
            "min": min(acc),
            "max": max(acc),
            "mean_ci95": statistics.fmean(r["test_ci95"] for r in runs if r["nproc"] == g),
            "mean_wall_time_s": statistics.fmean(r["wall_time_s"] for r in runs if r["nproc"] == g),
        }
    base = nprocs[0]
    paired = {}
    for g in nprocs[1:]:
        acc = {(r["seed"], r["nproc"]): r["test_accuracy"] for r in runs}
        diffs = [acc[(s, g)] - acc[(s, base)] for s, n in acc if n == base and (s, g) in acc]
        paired[str(g)] = {
            "versus": base,
            "seeds": len(diffs),
            "mean_difference": statistics.fmean(diffs),
            "max_abs_difference": max(abs(d) for d in diffs),
        }
    return {"by_nproc": by_g, "paired": paired}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def markdown(result: dict[str, Any]) -> str:
    s, agg = result["settings"], result["summary"]
    lines = [
        "# Final quality with 1 and 2 processes (data parallel)",
        "",
        f"Written by `benchmarks/distributed_quality.py` on {result['date']}, commit "
        f"`{result['commit']}`{' (uncommitted changes)' if result['dirty'] else ''}; "
        f"{result['environment']['cpus']} CPUs, torch {result['environment']['torch']}. "
        "Do not edit by hand.",
        "",
        f"Preset `{s['preset']}` shortened to {s['epochs']} epochs, seeds "
        f"{', '.join(map(str, s['seeds']))}, one thread per process; test accuracy (%) over "
        f"{result['runs'][0]['test_tasks']} test tasks of the top-k ensemble "
        "(`summary.json`).",
        "",
        "| processes | runs | test accuracy, mean ± std | min – max | mean 95% CI | mean wall "
        "time |",
        "|---|---|---|---|---|---|",
    ]
    for g, row in agg["by_nproc"].items():
        spread = f" ± {_pct(row['std'])}" if row["std"] is not None else ""
        lines.append(
            f"| {g} | {row['runs']} | {_pct(row['mean'])}{spread} | {_pct(row['min'])} – "
            f"{_pct(row['max'])} | ± {_pct(row['mean_ci95'])} | {row['mean_wall_time_s']:.0f} s |"
        )
    lines += ["", "| seed | " + " | ".join(f"{g} process(es)" for g in s["nprocs"]) + " |"]
    lines.append("|---" * (len(s["nprocs"]) + 1) + "|")
    for seed in s["seeds"]:
        cells = []
        for g in s["nprocs"]:
            run = next(r for r in result["runs"] if r["seed"] == seed and r["nproc"] == g)
            cells.append(f"{_pct(run['test_accuracy'])} ± {_pct(run['test_ci95'])}")
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    for g, pair in agg["paired"].items():
        lines += [
            "",
            f"{g} processes minus {pair['versus']}, same seed: mean "
            f"{100 * pair['mean_difference']:+.2f} pp, largest |difference| "
            f"{100 * pair['max_abs_difference']:.2f} pp over {pair['seeds']} seeds.",
        ]
    lines += ["", "Command:", "", "```bash", result["command"], "```", ""]
    return "\n".join(lines)


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def environment() -> dict[str, Any]:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = [(seed, g) for seed in args.seeds for g in args.nprocs]
    if args.dry_run:
        for seed, g in plan:
            print(shlex.join(train_command(args, seed, g)))
        print(f"would write {args.out / 'results.md'} and {args.out / 'results.json'}")
        return 0
    env = environment()
    runs = []
    for seed, g in plan:
        print(f"seed {seed}, {g} process(es) ...", flush=True)
        run = one_run(args, seed, g)
        runs.append(run)
        how = "reused" if run["reused"] else f"{run['wall_time_s']:.0f} s"
        print(f"  test {_pct(run['test_accuracy'])}% ± {_pct(run['test_ci95'])}% ({how})")
    env["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    argv_text = sys.argv[1:] if argv is None else argv
    result = {
        "kind": "distributed-quality",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "HEAD") or "unknown",
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "command": shlex.join(["python", "benchmarks/distributed_quality.py", *argv_text]),
        "settings": {
            "preset": args.preset,
            "epochs": args.epochs,
            "seeds": args.seeds,
            "nprocs": args.nprocs,
            "set": args.set,
        },
        "environment": env,
        "runs": runs,
        "summary": aggregate(runs, args.nprocs),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    text = markdown(result)
    (args.out / "results.md").write_text(text, encoding="utf-8")
    print()
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
