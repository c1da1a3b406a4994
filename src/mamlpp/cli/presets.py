"""``mamlpp presets``: list the named experiments."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("presets", help="list the named experiments")
    parser.set_defaults(handler=_presets)


def _presets(args: argparse.Namespace) -> int:
    from mamlpp.run.presets import PRESETS, describe

    for name in PRESETS:
        print(describe(name))
    return 0
