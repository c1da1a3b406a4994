"""``mamlpp data download NAME`` and ``mamlpp data info NAME``."""

from __future__ import annotations

import argparse
import sys
import time

from mamlpp.data.files import ENV_VAR
from mamlpp.errors import DataError

DOWNLOADABLE = ("omniglot", "mini-imagenet", "cifar-fs", "fc100", "cifar-100", "tiered-imagenet")
DATA_DIR_HELP = f"data folder (default: ${ENV_VAR}, else ~/.cache/mamlpp)"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data", help="download and inspect datasets", description="Download and inspect datasets."
    )
    commands = parser.add_subparsers(dest="data_command", metavar="ACTION")
    parser.set_defaults(handler=lambda args: _usage(parser))

    download = commands.add_parser(
        "download",
        help="fetch a dataset into the data folder (md5-verified, resumable)",
        description="Fetch a dataset into the data folder. Interrupted downloads resume.",
    )
    download.add_argument("name", choices=DOWNLOADABLE)
    download.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)
    download.set_defaults(handler=run_download)

    from mamlpp.data.table import DATASETS

    info = commands.add_parser(
        "info",
        help="load a dataset (preprocessing it once) and show its splits",
        description="Load a dataset, building its cache if needed, and print its splits.",
    )
    info.add_argument("name", choices=DATASETS)
    info.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)
    info.set_defaults(handler=run_info)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def run_download(args: argparse.Namespace) -> int:
    from mamlpp.data.files import data_dir
    from mamlpp.data.sources import download_cifar100, download_mini_imagenet, download_omniglot
    from mamlpp.data.tiered import how_to_get

    if args.name == "tiered-imagenet":
        folder = data_dir(args.data_dir) / "tiered-imagenet"
        raise DataError(how_to_get(folder))
    fetch = {
        "omniglot": download_omniglot,
        "mini-imagenet": download_mini_imagenet,
        "cifar-fs": download_cifar100,  # CIFAR-FS and FC100 are class splits of CIFAR-100
        "fc100": download_cifar100,
        "cifar-100": download_cifar100,
    }[args.name]
    folder = fetch(args.data_dir, progress=True)
    print(f"{args.name} is ready in {folder}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from mamlpp.data.table import load_dataset

    opts = {} if args.name in ("synthetic", "cifar-fs", "fc100") else {"progress": True}
    start = time.perf_counter()
    if args.name == "folder":  # the default preprocessing of data.dataset = "folder"
        from mamlpp.run.datasource import load_splits
        from mamlpp.run.experiment import DataSection

        splits = load_splits(DataSection(dataset="folder"), args.data_dir)
    else:
        splits = load_dataset(args.name, args.data_dir, **opts)
    seconds = time.perf_counter() - start
    first = next(iter(splits.values()))
    print(f"dataset: {first.meta.get('dataset', args.name)}")
    print(f"source:  {first.meta.get('source', '?')}")
    print(f"cache:   {first.meta.get('cache', '?')}")
    for split in splits.values():
        print(f"  {split.describe()}")
    print(f"loaded in {seconds:.2f} s")
    return 0
