"""``mamlpp ablate`` behind its arguments: the plan they ask for, a dry run, and the runner's
call."""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path
from typing import Any

from mamlpp.data.files import data_dir
from mamlpp.data.table import dataset
from mamlpp.errors import ConfigError, MamlppError
from mamlpp.run.build import resolve_device
from mamlpp.run.presets import MAML_META
from mamlpp.studies.ablate.aggregate import aggregate
from mamlpp.studies.ablate.grid import GRID, Variant, parse_variants
from mamlpp.studies.ablate.plan import (
    DATASETS,
    PLAN_FILE,
    SHARED_OPTIONS,
    Plan,
    base_config,
    base_preset,
    is_finished,
    merge_plan,
    read_plan,
    run_config,
    train_argv,
    write_plan,
)
from mamlpp.studies.ablate.runner import run_ablation, threads_per_run
from mamlpp.util.format import did_you_mean, plural


def parse_seeds(text: str) -> list[int]:
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() for part in parts):
        raise ConfigError(f"--seeds expects comma-separated non-negative integers, got {text!r}")
    seeds = [int(part) for part in parts]
    if len(set(seeds)) != len(seeds):  # "1,01" too
        raise ConfigError(f"--seeds lists a seed twice: {text!r}")
    return seeds


def make_plan(args: argparse.Namespace) -> Plan:
    """The plan of a ``mamlpp ablate`` invocation (not yet merged with OUT's)."""
    if args.dataset not in DATASETS:
        hint = did_you_mean(args.dataset, DATASETS)
        raise ConfigError(
            f"--dataset must be one of {', '.join(DATASETS)}, got {args.dataset!r}{hint}"
        )
    numbers = {name: getattr(args, name) for name in (*SHARED_OPTIONS, "budget", "jobs")}
    for name, value in numbers.items():
        if name != "dataset" and value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.time_budget is not None and not args.time_budget > 0:
        raise ConfigError(f"--time-budget must be > 0 seconds, got {args.time_budget:g}")
    if args.threads < 0:
        raise ConfigError(f"--threads must be >= 0, got {args.threads}")
    plan = Plan(
        **{name: getattr(args, name) for name in SHARED_OPTIONS},
        base_preset=base_preset(args.dataset, args.ways, args.shots),
        epochs=0,  # the preset's, below
        budget=None,
        sets=list(args.set),
        variants=[v.name for v in parse_variants(args.variants)],
        seeds=parse_seeds(args.seeds),
        time_budget_s=args.time_budget,
    )
    base = base_config(plan)  # validates --set too
    plan.epochs = base.train.epochs
    if args.time_budget is None:
        budget = args.budget
        if budget is None:
            budget = base.train.epochs * base.train.iterations_per_epoch
        if budget < plan.epochs:
            raise ConfigError(
                f"--budget {budget} is below the preset's {plan.epochs} epochs: the budget "
                "shortens each epoch (iterations per epoch = budget / epochs), so it needs at "
                f"least one iteration per epoch (--budget {plan.epochs} or more)"
            )
        if budget % plan.epochs:
            low = budget // plan.epochs * plan.epochs
            raise ConfigError(
                f"--budget {budget} is not a multiple of the preset's {plan.epochs} epochs "
                f"(iterations per epoch = budget / epochs); use {low} or {low + plan.epochs}"
            )
        plan.budget = budget
    return plan


def default_out(plan: Plan) -> Path:
    size = f"b{plan.budget}" if plan.budget is not None else f"t{plan.time_budget_s:g}s"
    return Path("runs") / f"ablate-{plan.dataset}-{plan.ways}w{plan.shots}s-{size}"


def _list() -> None:
    print("The ablation grid (each variant over plain MAML; on values from the MAML++ preset):")
    for variant in GRID:
        extra = ", ".join(f"{k}={v}" for k, v in variant.fixed.items())
        techniques = " ".join(variant.techniques) or "-"
        print(f"  {variant.name:<20} {techniques:<26} {extra}")
    off = ", ".join(f"{k}={v}" for k, v in MAML_META.items())
    print(f"MAML (all off): {off}, bn_mode=transductive, second_order=True")


def ablate(args: argparse.Namespace) -> int:
    if args.aggregate_only:
        out = Path(args.aggregate_only)
        print(f"results: {out / 'results.md'} ({_count(aggregate(out))})")
        return 0
    if args.list:
        _list()
        return 0
    asked = make_plan(args)
    out = Path(args.out) if args.out else default_out(asked)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    plan = merge_plan(read_plan(out), asked, out)
    variants, seeds = asked.variant_list(), asked.seeds
    if args.dry_run:
        return _dry_run(plan, out, variants, seeds, args)
    start, started_at = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    print(f"ablation {out}: {len(variants)} variants x {len(seeds)} seeds; {plan.command(out)}")
    try:
        failed = run_ablation(
            plan,
            out,
            variants,
            seeds,
            jobs=args.jobs,
            device=args.device,
            data_dir=args.data_dir,
            download=not args.no_download,
            threads=args.threads,
            progress=not args.quiet,
        )
    finally:  # the session is recorded however it ended
        if (out / PLAN_FILE).is_file():
            stored = read_plan(out) or plan
            stored.sessions.append(
                {
                    "started": started_at,
                    "elapsed_s": round(time.perf_counter() - start, 1),
                    "jobs": args.jobs,
                    "device": args.device,
                    "threads": args.threads,
                    "runs": [f"{v.name}/seed{s}" for v in variants for s in seeds],
                }
            )
            write_plan(out, stored)
    print(f"results: {out / 'results.md'} ({_count(aggregate(out))})", flush=True)
    if failed:
        more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
        raise MamlppError(
            f"{plural(len(failed), 'run')} failed: {', '.join(failed[:3])}{more}; see their "
            "ablate.json and train.log, or re-run to retry"
        )
    return 0


def _count(results: dict[str, Any]) -> str:
    runs = [r for v in results["variants"] for r in v["runs"]]
    done = sum(r["status"] == "complete" for r in runs)
    return f"{done}/{len(runs)} runs complete"


def _dry_run(
    plan: Plan, out: Path, variants: list[Variant], seeds: list[int], args: argparse.Namespace
) -> int:
    """Print what would run (and check every run's configuration); write nothing."""
    threads = threads_per_run(args.threads, args.jobs)
    # --device cuda is printed as asked: a study for a GPU machine can be checked on a laptop.
    device = "cuda" if args.device == "cuda" else resolve_device(args.device)
    print(f"dry run: {plan.command(out)}")
    if plan.budget is None:
        print(
            f"budget: measured at the start for {plan.time_budget_s:g} s on {device} "
            f"({plan.epochs} epochs; the commands below show 1 iteration per epoch)"
        )
    else:
        print(
            f"budget: {plan.budget} meta-iterations = {plan.epochs} epochs x "
            f"{plan.iterations_per_epoch} x {plan.tasks_per_batch} tasks"
        )
    print(f"device {device}, jobs {args.jobs}, threads per run {threads or 'preset default'}")
    print(_data_note(plan.dataset, args.data_dir))
    probe = plan.probe()
    finished = 0
    for variant in variants:
        for seed in seeds:
            run_config(probe, variant, seed, threads)  # raises on any bad configuration
            done = is_finished(out, variant, seed)
            finished += done
            argv = train_argv(probe, variant, seed, out, threads)
            state = "finished, skipped" if done else "to run"
            print(f"{variant.name} seed {seed} ({state}): {shlex.join(['mamlpp', *argv])}")
    todo = len(variants) * len(seeds) - finished
    print(f"{todo} to run, {finished} finished; results would go to {out / 'results.md'}")
    return 0


def _data_note(name: str, data_dir_arg: str | None) -> str:
    """Where the data would come from (the dry run only reports; it never downloads)."""
    files = dataset(name).files
    if files is None:
        return f"data: generated in memory ({name})"
    root = data_dir(data_dir_arg)
    found = files.locate(root)
    if found is None:
        return f"data: {name} NOT found in {root} (a real run downloads it unless --no-download)"
    return f"data: {name} found in {found}"
