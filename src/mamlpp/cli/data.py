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
    info.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="data.KEY=VALUE",
        help="a [data] setting as `train --set` takes it, to preview its splits before training, "
        "e.g. --set data.test_fraction=0.3 --set data.ways=20 (repeatable)",
    )
    info.set_defaults(handler=run_info)


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
    from mamlpp.run.experiment import build_config, parse_set

    entry = table.dataset(args.name)
    settings: dict = {"dataset": entry.name}
    spec = entry.preprocessing
    if spec is not None and spec.fixed_size:  # the size such a dataset's images have
        settings["image_size"] = spec.image_size
    for assignment in args.set:
        section, key, value = parse_set(assignment)
        if section != "data":
            raise ConfigError(f"data info takes [data] settings only, got --set {assignment}")
        settings[key] = value
    data = build_config({"data": settings}).data  # checked as `train` checks it
    start = time.perf_counter()
    if entry.own_images:  # prepared as the [data] keys (defaults, or --set) prepare them
        from mamlpp.run.datasource import load_splits

        splits = load_splits(data, args.data_dir)
    else:  # found, never downloaded; the size and resampling of the [data] keys
        from mamlpp.run.datasource import loader_options

        splits = entry.load(args.data_dir, progress=True, **loader_options(data))
    seconds = time.perf_counter() - start
    first = next(iter(splits.values()))
    print(f"dataset: {first.meta.get('dataset', args.name)}")
    print(f"source:  {first.meta.get('source', '?')}")
    print(f"cache:   {first.meta.get('cache', '?')}")
    for split in splits.values():
        print(f"  {split.describe()}")
    print(f"loaded in {seconds:.2f} s")
    for split in splits.values():  # as training would refuse it, before anyone trains
        if split.num_classes < data.ways:
            print(
                f"warning: the {split.name} split has {split.num_classes} classes, fewer than "
                f"data.ways={data.ways}: {data.ways}-way tasks cannot be drawn from it (add "
                "classes, change data.val_fraction/test_fraction, or lower data.ways)",
                file=sys.stderr,
            )
    return 0
