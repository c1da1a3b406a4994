"""``mamlpp ablate``: the arguments (the work is :mod:`mamlpp.studies.ablate.command`)."""

from __future__ import annotations

import argparse

from mamlpp.cli.options import add_data_options
from mamlpp.data.table import ABLATION_DATASETS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ablate",
        help="the paper's ablation grid over seeds at an equal budget, aggregated",
        description="Train every variant of the ablation grid (MAML, MAML + each technique, "
        "MAML++ with transductive or per-step BN, first-order MAML) for each seed at the same "
        "budget on the same fixed test tasks, then write OUT/results.md, results.json and "
        "plots. Re-running continues: finished runs are skipped, interrupted ones resume.",
    )
    parser.add_argument(
        "--dataset", default="omniglot", help=f"one of {', '.join(ABLATION_DATASETS)}"
    )
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--budget",
        type=int,
        metavar="ITERS",
        help="meta-iterations per run, a multiple of the preset's epochs (default: the "
        "preset's, 100 x 500 for the paper presets); iterations per epoch = ITERS / epochs",
    )
    budget.add_argument(
        "--time-budget",
        type=float,
        metavar="SECONDS",
        help="instead of --budget: measure this device's speed and train each run for at "
        "most about SECONDS (training and validation; the test comes after)",
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument(
        "--variants", default="all", help="comma-separated subset of the grid (see --list)"
    )
    parser.add_argument("--out", metavar="DIR", help="default: runs/ablate-<task>-<budget>")
    parser.add_argument("--val-tasks", type=int, help="validation tasks (default: the preset's)")
    parser.add_argument("--test-tasks", type=int, default=600, help="fixed test tasks (600)")
    parser.add_argument("--tasks-per-batch", type=int, default=8, help="tasks per meta-batch")
    parser.add_argument("--top-k", type=int, help="test ensemble size (default: the preset's)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="extra override for every run (repeatable), e.g. --set model.channels=32",
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (1)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads per run (0: the preset's; with --jobs N, cores / N)",
    )
    add_data_options(parser)  # --data-dir, --no-download, --device: as `mamlpp train`'s
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--list", action="store_true", help="print the grid and exit")
    parser.add_argument(
        "--dry-run", action="store_true", help="check the arguments, print the runs, train nothing"
    )
    parser.add_argument(
        "--aggregate-only",
        metavar="OUT",
        help="only (re)write OUT/results.md, results.json and the plots from its runs",
    )
    parser.set_defaults(handler=_ablate)


def _ablate(args: argparse.Namespace) -> int:
    from mamlpp.studies.ablate.command import ablate

    return ablate(args)
