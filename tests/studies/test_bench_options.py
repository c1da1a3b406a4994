"""The meta-step benchmark called without the command line: its options dataclass and the
command line that builds it."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from mamlpp.cli.bench import add_arguments, options_from
from mamlpp.studies import bench
from mamlpp.studies.bench_configs import CONFIGS, BenchOptions


def _parsed(*argv: str) -> BenchOptions:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return options_from(parser.parse_args(list(argv)))


def test_the_command_lines_defaults_are_the_options_defaults() -> None:
    assert _parsed() == BenchOptions()
    assert _parsed("--configs", "all").configs == tuple(CONFIGS)
    options = _parsed("--configs", "tiny,tiny-fo", "--no-grad-check", "--json", "r.json")
    assert options.configs == ("tiny", "tiny-fo") and options.paths == ("batched", "loop")
    assert not options.grad_check and options.json == "r.json"
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.iters = 1  # type: ignore[misc]


def test_unknown_names_are_one_line_errors_without_the_command_line() -> None:
    from mamlpp.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown path\(s\) \['nope'\]"):
        bench.run(BenchOptions(configs=("tiny",), paths=("nope",), device="cpu"))
