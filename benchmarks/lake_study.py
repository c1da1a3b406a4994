"""The study behind a preset for Lake's Omniglot one-shot challenge (dataset ``omniglot-lake``):
within-alphabet, drawer-disjoint 20-way 1-shot tasks on the 20 evaluation alphabets, the error
counted one query image at a time (support-set batch-norm statistics).

Three steps, each a subcommand; every training and evaluation is a ``mamlpp`` command, printed
before it runs.

``candidates``: each named candidate (``CANDIDATES``; ``NAME@SECONDS`` for another budget) trained
    by ``mamlpp ablate --dataset omniglot-lake --ways 20 --shots 1 --time-budget SECONDS
    --variants maml++`` into ``RUNS/NAME`` (the ablation measures the machine's speed for the
    candidate and sets the iterations to fit the budget), then scored on 600 fixed validation
    tasks of the held-out background alphabets, one query at a time and as a batch. The choice
    is made on validation only.
``test``: the same scores on the 600 fixed test tasks of the evaluation alphabets, for every
    finished candidate (published beside the validation scores; never used to choose).
``table``: results.json and results.md in ``--out`` from the run folders' evaluation records.

Budgets are CPU time on an idle 2-core machine: run nothing else meanwhile, and say so in
``--conditions``.

    python benchmarks/lake_study.py candidates --runs RUNS --data-dir DIR base wg aug wg-aug
    python benchmarks/lake_study.py test --runs RUNS --data-dir DIR
    python benchmarks/lake_study.py table --runs RUNS --out docs/results/omniglot-lake
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mamlpp.run.run_dir import RunDir

BUDGET_S = 900  # first searches: 15 CPU-minutes of training and validation
# Over the omniglot-lake-20w1s preset (the paper's Omniglot settings), the quickstart's choices
# (32 filters, meta lr 3e-3, 3 inner steps, two threads) as the base. No iterations per epoch:
# the ablation's --time-budget sets them from the measured speed.
BASE = [
    "model.channels=32",
    "meta.meta_lr=0.003",
    "meta.num_inner_steps=3",
    "train.threads=2",
    "train.checkpoint_every=0",
    "train.log_every=100",
]
WITHIN = ["data.train_episodes=within-group"]
# Koch et al. (2015) on 105x105 Omniglot: rotation +-10 deg, shear +-0.3 rad (about 17 deg),
# scale 0.8-1.2, shift +-2 px; here a milder shift at 28x28.
AUGMENT = [
    "data.augment_rotation=10",
    "data.augment_shear=15",
    "data.augment_scale=0.2",
    "data.augment_translate=0.05",
]
# Antialiased (grey) shrinking of the 105x105 drawings instead of the reference's 1-bit nearest
# neighbour, which drops thin strokes at 28x28.
BILINEAR = ["data.resample=bilinear"]
# "-so": second order after one first-order epoch (the ablation's MAML++ variant keeps DA on, so
# not 0).
SHORT_SCHEDULE = ["train.epochs=20", "meta.msl_epochs=2", "meta.first_order_epochs=10"]
CANDIDATES: dict[str, list[str]] = {
    "base": BASE,
    "px56": [*BASE, "data.image_size=56"],
    "wg": [*BASE, *WITHIN],
    "aug": [*BASE, *AUGMENT],
    "wg-aug": [*BASE, *WITHIN, *AUGMENT],
    "wg-aug-rot": [*BASE, *WITHIN, *AUGMENT, "data.rotate=yes"],
    "wg-aug-c64": [*BASE, *WITHIN, *AUGMENT, "model.channels=64"],
    "wg-aug-s5": [*BASE, *WITHIN, *AUGMENT, "meta.num_inner_steps=5"],
    "wg-aug-px56": [*BASE, *WITHIN, *AUGMENT, "data.image_size=56"],
    "wg-aug-so": [*BASE, *WITHIN, *AUGMENT, "meta.first_order_epochs=1"],
    "wg-aug-support": [*BASE, *WITHIN, *AUGMENT, "meta.bn_mode=support"],
    "bl": [*BASE, *BILINEAR],
    "wg-bl": [*BASE, *WITHIN, *BILINEAR],
    "wg-bl-so": [*BASE, *WITHIN, *BILINEAR, "meta.first_order_epochs=1"],
    "wg-bl-c64": [*BASE, *WITHIN, *BILINEAR, "model.channels=64"],
    # In the preset's first-order phase (epochs 1-50) validation error stopped falling from
    # about epoch 25 (one seed's rose): second order from epoch 11 instead.
    "wg-bl-c64-fo10": [
        *BASE,
        *WITHIN,
        *BILINEAR,
        "model.channels=64",
        "meta.first_order_epochs=10",
    ],
    # Quarter turns per class in training (the reference's augmentation of its Omniglot train
    # split): four orientations of every background character.
    "wg-bl-rot": [*BASE, *WITHIN, *BILINEAR, "data.rotate=yes"],
    "wg-bl-s5": [*BASE, *WITHIN, *BILINEAR, "meta.num_inner_steps=5"],
    "wg-bl-w5": [*BASE, *WITHIN, *BILINEAR, "data.ways=5"],
    # 56x56 costs four times as much per image: 20 epochs (not 100) keep the 50 validation
    # tasks per epoch from eating the budget; MSL and first-order epochs scaled with them.
    "wg-bl-px56": [*BASE, *WITHIN, *BILINEAR, "data.image_size=56", *SHORT_SCHEDULE],
    "wg-bl-e20": [*BASE, *WITHIN, *BILINEAR, *SHORT_SCHEDULE],
}
TOP_K = 3


def _run(argv: list[str], dry_run: bool) -> None:
    print("+ " + shlex.join(argv), flush=True)
    if not dry_run:
        subprocess.run(argv, check=True)


def _family(name: str) -> tuple[str, str | None]:
    family, _, seconds = name.partition("@")
    if family not in CANDIDATES:
        raise SystemExit(f"unknown candidate {family!r} (known: {', '.join(CANDIDATES)})")
    return family, seconds or None


def _run_folder(runs: Path, name: str) -> Path:
    return runs / name / "mamlpp" / "seed0"  # the ablation names the maml++ variant mamlpp


def _scores(run: Path, split: str, data: list[str], dry_run: bool) -> None:
    """Both scores of one split: each query alone (the challenge's figure) and the batch."""
    for single in (["--one-at-a-time"], []):
        argv = ["mamlpp", "evaluate", str(run), "--split", split, "--tasks", "600"]
        _run([*argv, "--top-k", str(TOP_K), *single, *data], dry_run)


def candidates(runs: Path, names: Sequence[str], data: list[str], dry_run: bool) -> None:
    for name in names:
        family, seconds = _family(name)
        run = _run_folder(runs, name)
        if _eval_path(run, "val", single=True).is_file():
            print(f"{name}: finished, skipped")
            continue
        sets = [arg for s in CANDIDATES[family] for arg in ("--set", s)]
        argv = ["mamlpp", "ablate", "--dataset", "omniglot-lake", "--ways", "20", "--shots", "1"]
        argv += ["--time-budget", seconds or str(BUDGET_S), "--variants", "maml++", "--seeds"]
        argv += ["0", "--val-tasks", "50", "--test-tasks", "600", "--top-k", str(TOP_K)]
        _run([*argv, "--quiet", *sets, *data, "--out", str(runs / name)], dry_run)
        _scores(run, "val", data, dry_run)


def test(runs: Path, data: list[str], dry_run: bool) -> None:
    for folder in sorted(p for p in runs.iterdir() if p.is_dir()):
        run = _run_folder(runs, folder.name)
        if not _eval_path(run, "val", single=True).is_file():
            print(f"{folder.name}: not finished, skipped")
            continue
        _scores(run, "test", data, dry_run)


def _eval_path(run: Path, split: str, single: bool) -> Path:
    return RunDir(run).eval_record(split, TOP_K, 600, one_at_a_time=single)


def _error(run: Path, split: str, single: bool) -> dict[str, float] | None:
    path = _eval_path(run, split, single)
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    return {"error": 100 * (1 - record["accuracy"]), "ci95": 100 * record["ci95"]}


def table(runs: Path, out: Path, conditions: str) -> None:
    rows: list[dict[str, Any]] = []
    for folder in sorted(p for p in runs.iterdir() if p.is_dir()):
        run = _run_folder(runs, folder.name)
        family, seconds = _family(folder.name)
        summary_path = run / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        rows.append(
            {
                "name": folder.name,
                "settings": CANDIDATES[family],
                "budget_s": int(seconds or BUDGET_S),
                "iterations": summary.get("iterations"),
                **{
                    f"{split}_{how}": _error(run, split, how == "single")
                    for split in ("val", "test")
                    for how in ("single", "batch")
                },
            }
        )
    ranked = sorted((r for r in rows if r["val_single"]), key=lambda r: r["val_single"]["error"])
    results = {
        "conditions": conditions,
        "rows": rows,
        "chosen": ranked[0]["name"] if ranked else None,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

    def cell(value: dict[str, float] | None) -> str:
        return "—" if value is None else f"{value['error']:.2f} ± {value['ci95']:.2f}"

    lines = [
        "# Lake's Omniglot one-shot challenge: candidates",
        "",
        "Within-alphabet, drawer-disjoint 20-way 1-shot error (%, 95% CI over 600 fixed tasks).",
        "Validation: the 5 held-out background alphabets (the choice is made here); test: the 20",
        f"evaluation alphabets (never used to choose). {conditions}",
        "",
        "| candidate | budget | iterations | val, one at a time | val, batch "
        "| test, one at a time | test, batch |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r["val_single"]["error"] if r["val_single"] else 1e9):
        chosen = " (best on validation)" if r["name"] == results["chosen"] else ""
        lines.append(
            f"| `{r['name']}`{chosen} | {r['budget_s']} s | {r['iterations'] or '—'} | "
            f"{cell(r['val_single'])} | {cell(r['val_batch'])} | {cell(r['test_single'])} | "
            f"{cell(r['test_batch'])} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/lake_study.py")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("candidates", "test"):
        step = sub.add_parser(name)
        step.add_argument("--runs", type=Path, required=True)
        step.add_argument("--data-dir")
        step.add_argument("--dry-run", action="store_true", help="print the commands only")
        if name == "candidates":
            step.add_argument("names", nargs="+", help="NAME or NAME@SECONDS")
    tab = sub.add_parser("table")
    tab.add_argument("--runs", type=Path, required=True)
    tab.add_argument("--out", type=Path, required=True)
    tab.add_argument("--conditions", default="", help="a sentence: the machine and what ran")
    args = parser.parse_args(argv)
    if args.command == "table":
        table(args.runs, args.out, args.conditions)
        return 0
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    if args.command == "candidates":
        candidates(args.runs, args.names, data, args.dry_run)
    else:
        test(args.runs, data, args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
