"""The ``mamlpp`` command.

Each command is a module of :mod:`mamlpp.cli` with a ``register(subparsers)`` function, so this
file only wires them together and turns
:class:`~mamlpp.errors.MamlppError` into a one-line message and an exit code (2 for
configuration errors, 1 otherwise).
"""

from __future__ import annotations

import argparse
import os
import sys

from mamlpp.cli import (
    ablate,
    adapt,
    bench,
    data,
    evaluate,
    export,
    presets,
    report,
    serve,
    train,
)
from mamlpp.errors import ConfigError, MamlppError
from mamlpp.version import __version__

# One module a command, in the order `mamlpp --help` lists them. Each imports only argparse-level
# code at the top, so `mamlpp --help` and `mamlpp --version` run without importing torch.
COMMANDS = (data, bench, train, evaluate, presets, report, ablate, adapt, export, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mamlpp",
        description="MAML++ few-shot learning: train, evaluate, benchmark and report.",
    )
    parser.add_argument("--version", action="version", version=f"mamlpp {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except MamlppError as error:
        if not _left_to_another_process(error):
            print(f"mamlpp: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt as interrupt:
        if not _peer_rank():  # Ctrl-C reaches every process of a job: rank 0 says it
            hint = f"; {interrupt}" if str(interrupt) else ""  # train: how to continue
            print(f"mamlpp: interrupted{hint}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `mamlpp presets | head`: the reader went away; exit quietly like other Unix tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as error:  # a full disk, a read-only or unreadable folder: one line, no trace
        where = f": {error.filename}" if error.filename else ""
        print(f"mamlpp: error: {error.strerror or error}{where}", file=sys.stderr)
        return 1


def _peer_rank() -> bool:
    """True in a process that torchrun started with a rank other than 0."""
    return "WORLD_SIZE" in os.environ and os.environ.get("RANK", "0") != "0"


def _left_to_another_process(error: MamlppError) -> bool:
    """Whether another process of a data-parallel job prints ``error``'s line, so that this one
    only exits with its code (docs/distributed.md): an error marked ``reported_elsewhere`` (a
    peer's own error, read from the job's store, or rank 0's broadcast), and otherwise a
    configuration error on a rank other than 0 (the configuration is the same everywhere, so
    rank 0 meets it too). Any other error of such a rank may be its own (its node's data) and
    is printed."""
    marked = getattr(error, "reported_elsewhere", None)
    if marked is not None:
        return bool(marked)
    return _peer_rank() and isinstance(error, ConfigError)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
