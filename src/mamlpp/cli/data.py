"""``mamlpp data download NAME`` and ``mamlpp data info NAME``: the names, the downloads and how
to load each dataset come from the dataset table (:mod:`mamlpp.data.table`)."""

from __future__ import annotations

import argparse
import sys
import time

from mamlpp.data import table
from mamlpp.data.files import ENV_VAR
from mamlpp.errors import ConfigError, DataError

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
    download.add_argument("name", choices=table.download_names())
    download.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)
    download.set_defaults(handler=run_download)

    info = commands.add_parser(
        "info",
        help="load a dataset (preprocessing it once) and show its splits",
        description="Load a dataset, building its cache if needed, and print its splits.",
        epilog="datasets:\n"
        + "\n".join(f"  {e.name:<17} {e.description}" for e in table.TABLE.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    info.add_argument("name", choices=tuple(table.DATASETS))
    info.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)
    _grouping_options(info)
    info.set_defaults(handler=run_info)


def _grouping_options(info: argparse.ArgumentParser) -> None:
    """Dataset folder: a run's data.groups, data.sources, data.source_pattern (docs/own-data.md)."""
    own = info.add_argument_group("own image folders (dataset folder)")
    own.add_argument(
        "--groups",
        choices=("none", "folders"),
        default="none",
        help="folders: DIR/<group>/<class>/ (default: none)",
    )
    own.add_argument(
        "--sources",
        choices=("none", "subfolders", "pattern"),
        default="none",
        help="where each image comes from: <class>/<source>/ sub-folders, or "
        "--source-pattern (default: none)",
    )
    own.add_argument(
        "--source-pattern",
        metavar="REGEX",
        default="",
        help="with --sources pattern: a regex whose one group is the source",
    )


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def run_download(args: argparse.Namespace) -> int:
    from mamlpp.data.download import ChecksumError
    from mamlpp.data.files import data_dir

    files = table.download_files(args.name)
    target = data_dir(args.data_dir) / files.folder
    if files.download is None:  # no public download: how to get the files by hand
        raise DataError(files.how_to_get(target))
    try:
        folder = files.downloader()(args.data_dir, progress=True)
    except ChecksumError:
        raise  # a corrupt download: said exactly, and fetching by hand is no answer to it
    except DataError as error:  # offline, refused, not found: the way to get them by hand
        raise DataError(files.download_failed(str(error), target)) from None
    print(f"{args.name} is ready in {folder}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    entry = table.dataset(args.name)
    start = time.perf_counter()
    if entry.own_images:  # prepared as the [data] keys' defaults prepare them
        from mamlpp.run.datasource import load_splits
        from mamlpp.run.experiment import DataSection

        data = DataSection(
            dataset=entry.name,
            groups=args.groups,
            sources=args.sources,
            source_pattern=args.source_pattern,
        )
        splits = load_splits(data, args.data_dir)
    elif (args.groups, args.sources, args.source_pattern) != ("none", "none", ""):
        raise ConfigError("--groups, --sources and --source-pattern apply to dataset folder only")
    else:
        splits = entry.load(args.data_dir, progress=True)
    seconds = time.perf_counter() - start
    first = next(iter(splits.values()))
    print(f"dataset: {first.meta.get('dataset', args.name)}")
    print(f"source:  {first.meta.get('source', '?')}")
    print(f"cache:   {first.meta.get('cache', '?')}")
    for split in splits.values():
        print(f"  {split.describe()}")
    print(f"loaded in {seconds:.2f} s")
    return 0
