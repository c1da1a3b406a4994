"""``mamlpp train``: meta-train an experiment, on one process or data-parallel through torchrun.

Handlers import the library inside the function: ``mamlpp --help`` and ``--version`` build every
parser without importing torch (about 1.5 s on a 2-core CPU).
"""

from __future__ import annotations

import argparse

from mamlpp.cli.options import add_data_options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="meta-train a preset (default: quickstart), then evaluate on the test split",
        description="Meta-train, validating after every epoch, then test the top-k ensemble. "
        "Config precedence: --preset, then --config FILE.toml, then --set overrides.",
    )
    parser.add_argument("--preset", help="a named experiment (see `mamlpp presets`)")
    parser.add_argument("--config", metavar="FILE.toml", help="TOML file of config overrides")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable), e.g. --set train.epochs=10",
    )
    parser.add_argument(
        "--out", metavar="RUN_DIR", help="run folder (default: runs/<preset>-<timestamp>)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its checkpoint, on the data it was trained on "
        "(other data is refused: see data.json)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--nproc",
        type=int,
        metavar="G",
        help="data-parallel on G processes of this machine: launches torchrun for you "
        "(one per GPU on CUDA; see docs/distributed.md)",
    )
    add_data_options(parser)
    parser.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from mamlpp.run.training import TrainOptions, train_from_options

    options = TrainOptions(
        preset=args.preset,
        config_file=args.config,
        overrides=tuple(args.set),
        out=args.out,
        resume=args.resume,
        quiet=args.quiet,
        device=args.device,
        data_dir=args.data_dir,
        download=not args.no_download,
    )
    if args.nproc is not None and args.nproc != 1:
        from mamlpp.cli.launch import launch_torchrun

        return launch_torchrun(args.nproc, options)
    train_from_options(options)
    return 0
