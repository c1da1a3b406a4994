"""The meta-step benchmark called without the command line: its options dataclass, the command
line that builds it, and the caller's global float flags left as they were."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch

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


@pytest.fixture
def float_flags():
    """PyTorch's global flags as this test found them, restored whatever it does."""
    flags = (
        (torch.backends.cuda.matmul, "allow_tf32"),
        (torch.backends.cudnn, "allow_tf32"),
        (torch.backends.cudnn, "benchmark"),
    )
    saved = [getattr(owner, name) for owner, name in flags]
    yield flags
    for (owner, name), value in zip(flags, saved, strict=True):
        setattr(owner, name, value)


def test_a_run_leaves_the_callers_tf32_and_cudnn_flags_as_it_found_them(
    float_flags, monkeypatch
) -> None:
    # The large matmul that rates the machine (seconds on a CPU) touches no flag: skipped.
    monkeypatch.setattr(bench, "matmul_rate", lambda device: 1e9)
    # Every flag set against PyTorch's default, so that a run restoring defaults is caught
    # (an earlier version ended with allow_tf32 = False).
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    options = BenchOptions(
        configs=("tiny",), device="cpu", paths=("batched",), iters=1, warmup=0, grad_check=False
    )
    report = bench.run(options)
    assert [entry["config"]["name"] for entry in report["results"]] == ["tiny"]
    assert set(report["results"][0]["paths"]) == {"batched/fp32"}
    assert torch.backends.cuda.matmul.allow_tf32 is True
    assert torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cudnn.benchmark is True
