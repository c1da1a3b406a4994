"""``mamlpp train``: meta-train an experiment, on one process or data-parallel through torchrun.

Handlers import the library inside the function: ``mamlpp --help`` and ``--version`` build every
parser without importing torch (about 1.5 s on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
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
    from mamlpp.engine.distributed import (
        DistributedError,
        check_divisible,
        init_from_env,
        launched_by_torchrun,
    )
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
        return _launch_torchrun(args, config, run, device)
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
            if lost and dist.is_writer and run is not None and _resumable(run):
                hint = "the last checkpoint is kept: continue with --resume"
                raise DistributedError(f"{error}; {hint}") from None
        raise
    if dist is not None:
        dist.shutdown()
    return 0


def _launch_torchrun(args: argparse.Namespace, config, run, device) -> int:
    """``mamlpp train --nproc G ...`` = ``torchrun --standalone --nproc_per_node=G -m mamlpp
    train ...`` with the same options (and the run folder fixed before the launch).

    torchrun runs in a child process through :func:`_torchrun_agent`: the ranks print the job's
    one error line themselves, and this process exits with the code one process would have
    (2 for a configuration error), without torchrun's traceback and failure report."""

    import signal

    import torch

    from mamlpp.engine.distributed import DistributedError, check_divisible, launched_by_torchrun
    from mamlpp.engine.elastic_temp import removing_empty_elastic_folders
    from mamlpp.run.lifecycle import check_run_folder
    from mamlpp.run.run_dir import RunDir, default_run_dir

    nproc = args.nproc
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    if launched_by_torchrun():
        raise ConfigError("--nproc launches torchrun itself; under torchrun leave it out")
    check_divisible(config.train.tasks_per_batch, nproc)
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise ConfigError(
            f"--nproc {nproc} on CUDA needs {nproc} GPUs; this machine has "
            f"{torch.cuda.device_count()} (one process per GPU)"
        )
    cores = os.cpu_count() or 1
    if device.type == "cpu" and nproc > cores:
        print(
            f"note: --nproc {nproc} on the CPU, but this machine has {cores} CPU cores: the "
            f"{nproc} processes share them, so this is slower than --nproc {cores}",
            flush=True,
        )
    if run is None:
        run = RunDir(default_run_dir(config.preset))
    check_run_folder(run, args.resume, config)  # before any data is loaded or downloaded
    forwarded = ["--out", str(run.root), "--device", args.device]
    for flag, value in (("--preset", args.preset), ("--config", args.config)):
        if value is not None:
            forwarded += [flag, str(value)]
    for assignment in args.set:
        forwarded += ["--set", assignment]
    if args.data_dir is not None:
        forwarded += ["--data-dir", args.data_dir]
    forwarded += [f for f, on in (("--resume", args.resume), ("--quiet", args.quiet)) if on]
    forwarded += ["--no-download"] if args.no_download else []
    agent = "import sys; from mamlpp.cli.train import _torchrun_agent as run; "
    agent += "sys.exit(run(sys.argv[1:]))"
    command = [sys.executable, "-c", agent, "--standalone"]
    command += [f"--nproc_per_node={nproc}", "-m", "mamlpp", "train", *forwarded]
    print(f"launching {nproc} processes: torchrun {' '.join(command[3:])}", flush=True)
    with removing_empty_elastic_folders(), subprocess.Popen(command) as process:
        try:
            code = process.wait()
        except KeyboardInterrupt:  # Ctrl-C reached every process: torchrun stops the ranks
            code = process.wait()
    code = 128 - code if code < 0 else code  # torchrun itself killed by a signal
    if code <= 128 or code in (128 + signal.SIGINT, 128 + signal.SIGPIPE):
        return code  # success, the ranks said what went wrong, Ctrl-C or a closed pipe
    # Every rank that failed was killed by a signal: nobody has said anything yet.
    try:
        name = signal.Signals(code - 128).name
    except ValueError:
        name = f"signal {code - 128}"
    message = f"a process of the distributed job was killed by {name}"
    if name == "SIGKILL":
        message += " (out of memory?)"
    if _resumable(run):
        message += "; the last checkpoint is kept: continue with --resume"
    raise DistributedError(message)


def _resumable(run) -> bool:
    """Whether ``--resume`` can continue the run folder: it holds a checkpoint."""
    return run.latest.is_file() or bool(run.epoch_checkpoints())


def _torchrun_agent(argv: list[str]) -> int:
    """``torchrun ARGV`` in this process (the child that ``--nproc`` starts), as an exit code.

    Instead of torchrun's traceback and failure report: the first positive exit code of a
    failed rank (by rank), since a rank that exits with one has printed why (mamlpp's one line,
    or a Python traceback) and its peers exit quietly with the same code; when every failed rank
    was killed by a signal, 128 + that signal (not SIGTERM, which torchrun sends to the others),
    for the launcher to explain. torchrun's own log lines are shown only with ``LOGLEVEL`` set.
    """
    import logging
    import signal

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if "LOGLEVEL" not in os.environ:
        logging.disable(logging.ERROR)
    try:
        run(parse_args(argv))
    except ChildFailedError as failed:
        codes = [failure.exitcode for _, failure in sorted(failed.failures.items())]
        printed = [code for code in codes if code > 0]
        if printed:
            return printed[0]
        killed = [-code for code in codes if code < 0 and -code != signal.SIGTERM]
        return 128 + (killed[0] if killed else signal.SIGTERM)
    except SignalException as stopped:  # the launcher itself was interrupted or stopped
        return 128 + int(stopped.sigval)
    return 0
