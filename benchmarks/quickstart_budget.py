"""The study behind the ``quickstart`` preset: how best to spend 10 CPU minutes on Omniglot
5-way 1-shot MAML++ (docs/results/quickstart-10min).

Three steps, each a subcommand; every training is a ``mamlpp`` command, printed before it runs.

``candidates``: each named candidate (``CANDIDATES`` below; ``NAME@SECONDS`` for another budget)
    trained by ``mamlpp ablate --time-budget SECONDS --variants maml++`` into ``RUNS/NAME``,
    then its checkpoint ensemble scored on 600 validation tasks with ``mamlpp evaluate --split
    val`` (the score the choice is made by). Finished candidates are skipped.
``seeds``: ``mamlpp train`` as a new user types it (seed 0: no options at all; other seeds:
    ``--set train.seed=N``), timed from the command line; ``command.json`` in the run folder
    records the command, its wall time and the commit.
``aggregate``: results.json, results.md and the charts, drawn by ``quickstart_budget_results.py``
    beside this script (which ``tools/publish_results.py regenerate`` also uses).

Timed runs need the machine to themselves: run nothing else meanwhile.

    python benchmarks/quickstart_budget.py candidates --runs RUNS c32-t1 c32-t2 ...
    python benchmarks/quickstart_budget.py seeds --seeds 0,1,2 --out SEED_RUNS
    python benchmarks/quickstart_budget.py aggregate --runs RUNS --seed-runs SEED_RUNS/* \\
        --out docs/results/quickstart-10min
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import quickstart_budget_results as budget  # beside this script: on sys.path when run

from mamlpp.run.run_dir import RunDir
from mamlpp.studies.ablate.aggregate import environment

BUDGET_S = 540  # training and validation; start-up, data and the test fit in the other minute
REFERENCE = "c32-t1"  # the previous quickstart: 32 filters, one thread
# Candidate -> its --set overrides over the omniglot-5w1s preset (64 filters, 8 tasks, 5 steps,
# meta lr 1e-3, inner lr 0.1, MSL over 10 epochs, first order for 50 of 100 epochs).
LR3 = ["model.channels=32", "train.threads=2", "meta.meta_lr=0.003"]
CANDIDATES: dict[str, list[str]] = {
    # One change at a time from the previous quickstart: threads, then the meta learning rate;
    # the rest on top of the best learning rate (a greedy search, in the order run).
    "c32-t1": ["model.channels=32", "train.threads=1"],
    "c32-t2": ["model.channels=32", "train.threads=2"],
    "c32-t2-lr3": LR3,
    "c32-t2-lr6": ["model.channels=32", "train.threads=2", "meta.meta_lr=0.006"],
    "c64-t2-lr3": ["model.channels=64", "train.threads=2", "meta.meta_lr=0.003"],
    "c32-t2-lr3-b4": [*LR3, "train.tasks_per_batch=4"],
    "c32-t2-lr3-fo80": [*LR3, "meta.first_order_epochs=80"],
    "c32-t2-lr3-s3": [*LR3, "meta.num_inner_steps=3"],
}
# Every run: no mid-epoch checkpoints and a quiet log, as the quickstart preset has.
SHARED = ["train.checkpoint_every=0", "train.log_every=100"]


def _run(argv: list[str]) -> float:
    print("+ " + shlex.join(argv), flush=True)
    start = time.perf_counter()
    subprocess.run(argv, check=True)
    return time.perf_counter() - start


def candidates(runs: Path, names: Sequence[str], data_dir: str | None) -> None:
    data = ["--data-dir", data_dir] if data_dir else []
    for name in names:
        family, seconds = budget.family_and_budget(name)
        if family not in CANDIDATES:
            raise SystemExit(f"unknown candidate {family!r} (known: {', '.join(CANDIDATES)})")
        folder = runs / name
        if RunDir(folder / "mamlpp" / "seed0").eval_record("val", 3, 600).is_file():
            print(f"{name}: finished, skipped")
            continue
        sets = [arg for s in [*SHARED, *CANDIDATES[family]] for arg in ("--set", s)]
        _run(
            [
                "mamlpp", "ablate", "--dataset", "omniglot", "--ways", "5", "--shots", "1",
                "--time-budget", seconds or str(BUDGET_S), "--variants", "maml++",
                "--seeds", "0", "--val-tasks", "50", "--test-tasks", "600", "--top-k", "3",
                "--quiet", *sets, *data, "--out", str(folder),
            ]
        )  # fmt: skip
        run = str(folder / "mamlpp" / "seed0")
        _run(["mamlpp", "evaluate", run, "--split", "val", "--tasks", "600", *data])


def _commit() -> str | None:
    done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or None


def seeds(out: Path, seed_list: Sequence[int]) -> None:
    """``mamlpp train`` per seed, timed as a whole. Seed 0 is the README's command itself, with
    no option at all (its folder is the new ``runs/quickstart-<time>``, linked as
    ``out/seed0``); other seeds add ``--set train.seed=N --out out/seedN``."""
    out.mkdir(parents=True, exist_ok=True)
    for seed in seed_list:
        link = out / f"seed{seed}"
        if (link / "command.json").is_file():
            print(f"seed {seed}: finished, skipped")
            continue
        if seed == 0:
            argv = ["mamlpp", "train"]
            before = set(Path("runs").glob("quickstart-*"))
            wall = _run(argv)
            (folder,) = set(Path("runs").glob("quickstart-*")) - before
            link.symlink_to(folder.resolve())
        else:
            argv = ["mamlpp", "train", "--set", f"train.seed={seed}", "--out", str(link)]
            wall = _run(argv)
        shown = shlex.join(argv).replace(str(out), "OUT")  # no machine paths in what is published
        record = {"seed": seed, "command": shown, "wall_s": wall, "commit": _commit()}
        (link / "command.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        print(f"seed {seed}: {wall:.0f} s", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/quickstart_budget.py")
    sub = parser.add_subparsers(dest="command", required=True)
    cand = sub.add_parser("candidates", help="train and score candidates")
    cand.add_argument("--runs", type=Path, required=True)
    cand.add_argument("--data-dir")
    cand.add_argument("names", nargs="+", help="NAME or NAME@SECONDS")
    seed = sub.add_parser("seeds", help="`mamlpp train` per seed, timed")
    seed.add_argument("--out", type=Path, required=True)
    seed.add_argument("--seeds", default="0,1,2")
    agg = sub.add_parser("aggregate", help="results.json, results.md and charts")
    agg.add_argument("--runs", type=Path, required=True)
    agg.add_argument("--seed-runs", type=Path, nargs="*", default=[])
    agg.add_argument("--out", type=Path, required=True)
    agg.add_argument("--conditions", default="", help="a sentence: what else ran meanwhile")
    args = parser.parse_args(argv)
    if args.command == "candidates":
        candidates(args.runs, args.names, args.data_dir)
    elif args.command == "seeds":
        seeds(args.out, [int(s) for s in args.seeds.split(",")])
    else:
        folders = sorted(p for p in args.runs.iterdir() if (p / "ablation.json").is_file())
        results = budget.collect(
            folders,
            budget_s=BUDGET_S,
            reference=REFERENCE,
            seed_runs=args.seed_runs,
            environment=environment(),
            conditions=args.conditions,
        )
        for path in budget.write(results, args.out):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
