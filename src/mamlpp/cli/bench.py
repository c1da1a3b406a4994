"""``mamlpp bench``: seconds per meta-iteration of each execution path, FLOP rate, memory
(the measurement itself is :mod:`mamlpp.studies.bench`, imported when the command runs; the
options' defaults are those of :class:`~mamlpp.studies.bench_configs.BenchOptions`)."""

from __future__ import annotations

import argparse

from mamlpp.studies.bench_configs import CONFIGS, BenchOptions

DEFAULT = BenchOptions()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--configs",
        default=",".join(DEFAULT.configs),
        help=f"comma-separated, or 'all'; known: {', '.join(CONFIGS)}",
    )
    parser.add_argument(
        "--device",
        default=DEFAULT.device,
        help="auto (CUDA when available), cpu or cuda",
    )
    parser.add_argument(
        "--paths",
        default=",".join(DEFAULT.paths),
        help="comma-separated: batched, batched-ckpt, vmap, loop, and on CUDA graph (batched "
        "inside a CUDA graph), graph-loop, graph-vmap",
    )
    parser.add_argument(
        "--modes",
        default=",".join(DEFAULT.modes),
        help="comma-separated: fp32, tf32 (CUDA only), bf16",
    )
    parser.add_argument(
        "--iters",
        type=int,
        default=DEFAULT.iters,
        help="timed meta-iterations per path (median reported)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=DEFAULT.warmup,
        help="untimed meta-iterations before timing",
    )
    parser.add_argument(
        "--no-grad-check",
        dest="grad_check",
        action="store_false",
        help="skip comparing each path's meta-gradients with the float64 loop path",
    )
    parser.add_argument(
        "--memory", action="store_true", help="peak memory per path (CPU: in fresh processes)"
    )
    parser.add_argument(
        "--memory-sweep",
        metavar="CONFIG",
        default=DEFAULT.memory_sweep,
        help="peak memory over steps x tasks for one config (CUDA)",
    )
    parser.add_argument(
        "--eval-tasks",
        type=int,
        default=DEFAULT.eval_tasks,
        help="also time the evaluation of this many tasks of --eval-config",
    )
    parser.add_argument(
        "--eval-config",
        default=DEFAULT.eval_config,
        choices=sorted(CONFIGS),
        metavar="CONFIG",
        help="a --configs name: the config whose evaluation --eval-tasks times (default: "
        "%(default)s)",
    )
    parser.add_argument("--threads", type=int, default=DEFAULT.threads, help="torch CPU threads")
    parser.add_argument(
        "--json", metavar="FILE", default=DEFAULT.json, help="write the report here"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the arguments and print the plan without measuring",
    )


def options_from(args: argparse.Namespace) -> BenchOptions:
    """The parsed command line as the benchmark's options (lists split at commas; ``--configs
    all``: every config)."""
    configs = tuple(CONFIGS) if args.configs == "all" else tuple(args.configs.split(","))
    return BenchOptions(
        configs=configs,
        device=args.device,
        paths=tuple(args.paths.split(",")),
        modes=tuple(args.modes.split(",")),
        iters=args.iters,
        warmup=args.warmup,
        grad_check=args.grad_check,
        memory=args.memory,
        memory_sweep=args.memory_sweep,
        eval_tasks=args.eval_tasks,
        eval_config=args.eval_config,
        threads=args.threads,
        json=args.json,
        dry_run=args.dry_run,
    )


def _bench(args: argparse.Namespace) -> int:
    from mamlpp.studies.bench import main

    return main(options_from(args))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="time one meta-iteration per path against the matmul rate"
    )
    add_arguments(parser)
    parser.set_defaults(handler=_bench)
