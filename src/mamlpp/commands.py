"""``mamlpp train | evaluate | presets | report``: argument parsing and one handler each.

Handlers only translate arguments into calls of :mod:`mamlpp.train`, :mod:`mamlpp.evaluate`,
:mod:`mamlpp.presets` and :mod:`mamlpp.report`; user errors are raised as
:class:`~mamlpp.errors.MamlppError` and printed as one line by :mod:`mamlpp.cli`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import ConfigError
from .format import plural


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_train(subparsers)
    _register_evaluate(subparsers)
    _register_presets(subparsers)
    _register_report(subparsers)


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


# ------------------------------------------------------------------------------ train


def _register_train(subparsers: argparse._SubParsersAction) -> None:
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
        "--resume", action="store_true", help="continue the run in --out from its checkpoint"
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
    from .datasource import load_splits
    from .distributed import check_divisible, init_from_env, launched_by_torchrun
    from .presets import describe_config, resolve_config
    from .runs import RunDir, default_run_dir
    from .train import check_run_folder, resolve_device, run_training

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
        run_training(
            config, run, splits, device, resume=args.resume, progress=not args.quiet, dist=dist
        )
    except BaseException:
        if dist is not None:
            dist.shutdown(orderly=False)  # a peer may be gone: never wait for it
        raise
    if dist is not None:
        dist.shutdown()
    return 0


def _launch_torchrun(args: argparse.Namespace, config, run, device) -> int:
    """``mamlpp train --nproc G ...`` = ``torchrun --standalone --nproc_per_node=G -m mamlpp
    train ...`` with the same options (and the run folder fixed before the launch)."""
    import subprocess

    import torch

    from .distributed import check_divisible, launched_by_torchrun
    from .runs import RunDir, default_run_dir
    from .train import check_run_folder

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
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={nproc}", "-m", "mamlpp", "train", *forwarded]
    print(f"launching {nproc} processes: torchrun {' '.join(command[3:])}", flush=True)
    return subprocess.call(command)


# ------------------------------------------------------------------------------ evaluate


def _register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a run's top-k checkpoint ensemble on fixed tasks",
        description="Mean accuracy and a 95% confidence interval over fixed tasks, averaging "
        "the logits of the top-k checkpoints by validation accuracy. Writes "
        "RUN_DIR/eval-<split>-top<k>-<tasks>.json.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--split", choices=("val", "test"), default="test")
    parser.add_argument(
        "--tasks",
        type=int,
        help="number of fixed tasks (default: the run's eval setting, 600 in the paper presets)",
    )
    parser.add_argument(
        "--top-k", type=int, help="checkpoints in the ensemble (default: the run's eval.top_k)"
    )
    add_data_options(parser)
    parser.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    from .data import EpisodeSampler
    from .datasource import load_splits
    from .evaluate import ensemble_paths, evaluate, load_member
    from .runs import read_run_config, require_run_dir, write_json
    from .train import build_learner, resolve_device

    run = require_run_dir(args.run_dir)
    config = read_run_config(run)
    e, d = config.eval, config.data
    tasks = (
        args.tasks
        if args.tasks is not None
        else (e.test_tasks if args.split == "test" else e.val_tasks)
    )
    top_k = args.top_k if args.top_k is not None else e.top_k
    if tasks < 1 or top_k < 1:
        raise ConfigError(f"--tasks and --top-k must be >= 1, got {tasks} and {top_k}")
    device = resolve_device(args.device)
    paths = ensemble_paths(run, top_k)
    splits = load_splits(d, args.data_dir, download=not args.no_download, progress=False)
    split = splits[args.split]
    seed = e.test_seed if args.split == "test" else e.val_seed
    sampler = EpisodeSampler(split, d.ways, d.shots, d.targets, seed, device)
    template = build_learner(config, split.image_shape[0], device)
    members = [load_member(template, p, device) for p in paths]
    threads = torch.get_num_threads()
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    try:
        result = evaluate(members, sampler, tasks, e.batch_size)
    finally:
        torch.set_num_threads(threads)
    names = ", ".join(p.name for p in paths)
    if len(paths) < top_k:
        print(f"note: only {plural(len(paths), 'checkpoint')} kept in {run.checkpoints}")
    print(f"{args.split}: {result.describe()} [{names}]")
    out = run.root / f"eval-{args.split}-top{top_k}-{tasks}.json"
    write_json(
        out,
        {
            "split": args.split,
            "accuracy": result.accuracy,
            "ci95": result.ci95,
            "loss": result.loss,
            "num_tasks": result.num_tasks,
            "ensemble_size": result.ensemble_size,
            "checkpoints": [p.name for p in paths],
            "per_task_accuracies": result.per_task_accuracies,
        },
    )
    return 0


# ------------------------------------------------------------------------------ presets


def _register_presets(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("presets", help="list the named experiments")
    parser.set_defaults(handler=_presets)


def _presets(args: argparse.Namespace) -> int:
    from .presets import PRESETS, describe

    for name in PRESETS:
        print(describe(name))
    return 0


# ------------------------------------------------------------------------------ report


def _register_report(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="plots and a Markdown summary of one or more runs",
        description="PNG plots (accuracy and loss curves, learned inner learning rates, MSL "
        "weights, per-step BN gamma) and report.md with a table of the runs.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="where to write (default: RUN_DIR/report for one run, ./report for several)",
    )
    parser.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from .report import make_report

    runs = [Path(p) for p in args.run_dirs]
    out = Path(args.out) if args.out else (runs[0] / "report" if len(runs) == 1 else Path("report"))
    markdown = make_report(runs, out)
    print(f"report: {markdown}", file=sys.stdout)
    return 0
