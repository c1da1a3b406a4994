"""Options several commands share."""

from __future__ import annotations

import argparse


def add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder holding the datasets (default: $MAMLPP_DATA, else ~/.cache/mamlpp)",
    )
    parser.add_argument(
        "--no-download", action="store_true", help="fail instead of downloading missing data"
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
