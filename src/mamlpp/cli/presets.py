"""``mamlpp presets``: list the named experiments."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("presets", help="list the named experiments")
    parser.set_defaults(handler=_presets)


def _presets(args: argparse.Namespace) -> int:
    from mamlpp.run.presets import listing

    for line in listing():
        print(line)
    return 0
