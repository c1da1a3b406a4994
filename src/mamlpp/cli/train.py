"""``mamlpp train``: meta-train an experiment, on one process or data-parallel through torchrun.

Handlers import the library inside the function: ``mamlpp --help`` and ``--version`` build every
parser without importing torch (about 1.5 s on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mamlpp.cli.options import add_data_options
from mamlpp.errors import ConfigError


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
    from mamlpp.cli.launch import checkpoint_kept_hint, launch_torchrun
    from mamlpp.engine.collectives import check_divisible, init_from_env, launched_by_torchrun
    from mamlpp.engine.job_errors import DistributedError
    from mamlpp.run.build import resolve_device
    from mamlpp.run.datasource import load_splits
    from mamlpp.run.lifecycle import check_run_folder, resume_hint
    from mamlpp.run.presets import describe_config, resolve_config
    from mamlpp.run.run_dir import RunDir, default_run_dir
    from mamlpp.run.training import run_training

    if args.resume and not args.out:
        raise ConfigError("--resume needs --out RUN_DIR (the run folder to continue)")
    run = RunDir(Path(args.out)) if args.out else None
    config_file = args.config
    if run is not None and args.resume and config_file is None and args.preset is None:
        if run.config.is_file():
            config_file = run.config  # continue with the run's own resolved config
    config = resolve_config(args.preset, config_file, args.set)
    device = resolve_device(args.device)
    if args.nproc is not None and args.nproc != 1:
        return launch_torchrun(args, config, run, device)
    if launched_by_torchrun():  # before joining the job: a bad size fails fast on every rank
        check_divisible(config.train.tasks_per_batch, int(os.environ["WORLD_SIZE"]))
    dist = init_from_env(device)  # None unless started by torchrun with several processes
    try:
        if dist is not None:
            device = dist.device
        writer = dist is None or dist.is_writer

        def choose_folder() -> RunDir:  # on rank 0 only under torchrun: one folder, one clock
            chosen = run if run is not None else RunDir(default_run_dir(config.preset))
            check_run_folder(chosen, args.resume, config)  # before any data is loaded
            return chosen

        run = choose_folder() if dist is None else dist.from_writer(choose_folder)
        if writer:
            world = f" on {dist.world_size} processes ({dist.backend})" if dist else ""
            verb = "resuming" if args.resume and run.config.is_file() else "run"
            print(f"{verb} {run.root}{world}: {describe_config(config)}")

        def load():
            progress = not args.quiet and writer
            return load_splits(
                config.data, args.data_dir, download=not args.no_download, progress=progress
            )

        splits = load() if dist is None else dist.local_first(load)
        started: list = []  # the trainer, once training starts (for the Ctrl-C hint)
        on_start = started.append
        try:
            run_training(
                config,
                run,
                splits,
                device,
                resume=args.resume,
                progress=not args.quiet,
                dist=dist,
                on_start=on_start,
            )
        except KeyboardInterrupt:
            if not started or not writer:
                raise
            trainer = started[0]
            hint = resume_hint(
                run, trainer.step, trainer.saved_step, config.train.iterations_per_epoch
            )
            raise KeyboardInterrupt(hint) from None
    except BaseException as error:
        if dist is not None:
            dist.abandon(error)  # a peer may be gone: wait for none, but tell them why
            lost = isinstance(error, DistributedError) and not error.reported_elsewhere
            hint = checkpoint_kept_hint(run) if lost and dist.is_writer and run is not None else ""
            if hint:
                raise DistributedError(f"{error}{hint}") from None
        raise
    if dist is not None:
        dist.shutdown()
    return 0
