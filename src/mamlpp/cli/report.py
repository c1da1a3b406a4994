"""``mamlpp report``: plots and a Markdown summary of one or more runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="plots and a Markdown summary of one or more runs",
        description="PNG plots (accuracy and loss curves, learned inner learning rates, MSL "
        "weights, per-step BN gamma) and report.md with a table of the runs.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="where to write (default: RUN_DIR/report for one run, ./report for several)",
    )
    parser.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from mamlpp.studies.report import make_report

    runs = [Path(p) for p in args.run_dirs]
    out = Path(args.out) if args.out else (runs[0] / "report" if len(runs) == 1 else Path("report"))
    markdown = make_report(runs, out)
    print(f"report: {markdown}", file=sys.stdout)
    return 0
