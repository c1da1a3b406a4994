"""``mamlpp bench``: seconds per meta-iteration of each execution path, FLOP rate, memory
(the measurement itself is :mod:`mamlpp.studies.bench`, imported when the command runs)."""

from __future__ import annotations

import argparse

from mamlpp.studies.bench_configs import CONFIGS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--configs",
        default="omniglot-20w1s",
        help=f"comma-separated, or 'all'; known: {', '.join(CONFIGS)}",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when available), cpu or cuda",
    )
    parser.add_argument(
        "--paths",
        default="batched,loop",
        help="comma-separated: batched, batched-ckpt, vmap, loop, and on CUDA graph (batched "
        "inside a CUDA graph), graph-loop, graph-vmap",
    )
    parser.add_argument(
        "--modes", default="fp32", help="comma-separated: fp32, tf32 (CUDA only), bf16"
    )
    parser.add_argument(
        "--iters", type=int, default=20, help="timed meta-iterations per path (median reported)"
    )
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed meta-iterations before timing"
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
        default=None,
        help="peak memory over steps x tasks for one config (CUDA)",
    )
    parser.add_argument(
        "--eval-tasks",
        type=int,
        default=0,
        help="also time the evaluation of this many tasks of --eval-config",
    )
    parser.add_argument(
        "--eval-config",
        default="omniglot-20w1s",
        choices=sorted(CONFIGS),
        metavar="CONFIG",
        help="a --configs name: the config whose evaluation --eval-tasks times (default: "
        "%(default)s)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", metavar="FILE", default=None, help="write the report here")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the arguments and print the plan without measuring",
    )


def _bench(args: argparse.Namespace) -> int:
    from mamlpp.studies.bench import main

    return main(args)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="time one meta-iteration per path against the matmul rate"
    )
    add_arguments(parser)
    parser.set_defaults(handler=_bench)
