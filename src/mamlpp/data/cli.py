"""``mamlpp data ...`` sub-commands (filled in by the data module)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="download and prepare datasets")
    parser.set_defaults(handler=None)
