"""`mamlpp bench` explains the error of a gradient that is exactly zero (an absolute error, not
a relative error of zero) in its table and in the errors by group."""

from __future__ import annotations

import re

import pytest

from mamlpp.cli.main import main


@pytest.mark.slow
def test_bench_explains_the_error_of_an_exactly_zero_gradient(capsys) -> None:
    assert main(["bench", "--configs", "tiny", "--paths", "batched", "--iters", "1",
                 "--warmup", "0"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    groups = next(line for line in out.splitlines() if "by group" in line)
    bias = re.search(r"conv biases[^,]*", groups)
    assert bias is not None
    assert "exact gradient 0" in bias.group(0) and "absolute error" in bias.group(0)
    assert not re.search(r"conv biases \d", groups)  # no bare relative error of a zero


def test_gradient_errors_mark_the_groups_whose_exact_gradient_is_zero() -> None:
    import torch

    from mamlpp.studies.bench import format_table, gradient_errors

    reference = {
        "backbone.conv0.weight": torch.tensor([1.0, -2.0], dtype=torch.float64),
        "backbone.conv0.bias": torch.tensor([1e-18, -1e-18], dtype=torch.float64),
    }
    computed = {
        "backbone.conv0.weight": torch.tensor([1.0, -2.0], dtype=torch.float64),
        "backbone.conv0.bias": torch.tensor([3e-8, 4e-8], dtype=torch.float64),
    }
    errors = gradient_errors(computed, reference)
    assert errors["conv biases"]["exact_zero"] is True
    assert errors["conv biases"]["abs_error"] == pytest.approx(5e-8)
    assert errors["conv weights"]["exact_zero"] is False
    report = {
        "device": "cpu",
        "torch": "x",
        "matmul_tflops": 1.0,
        "results": [
            {
                "config": {"name": "t"},
                "gflop": 1.0,
                "paths": {
                    "batched/fp32": {
                        "median_s": 1.0,
                        "tflops": 1.0,
                        "fraction_of_matmul": 1.0,
                        "grad_errors_f64": errors,
                    }
                },
            }
        ],
    }
    table = format_table(report)
    assert "conv biases (exact gradient 0: absolute error 5.0e-08)" in table
