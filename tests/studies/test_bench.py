"""The benchmark harness runs on a tiny configuration and emits valid JSON (figures unchecked)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mamlpp.cli.main import main


@pytest.mark.slow
def test_bench_cli_writes_json_report(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            "--configs",
            "tiny,tiny-fo",
            "--paths",
            "batched,batched-ckpt,loop",
            "--iters",
            "2",
            "--warmup",
            "1",
            "--eval-tasks",
            "4",
            "--eval-config",
            "tiny",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["matmul_tflops"] > 0
    assert [r["config"]["name"] for r in report["results"]] == ["tiny", "tiny-fo"]
    for entry in report["results"]:
        assert entry["gflop"] > 0
        assert set(entry["paths"]) == {"batched/fp32", "batched-ckpt/fp32", "loop/fp32"}
        for timing in entry["paths"].values():
            assert timing["median_s"] > 0 and timing["iters"] == 2
            assert 0 < timing["fraction_of_matmul"]
            # Every path computes the same meta-gradient as the float64 loop path.
            errors = timing["grad_errors_f64"]
            assert errors["all"]["rel_error"] < 1e-4 and errors["all"]["cosine"] > 0.9999
            assert {"conv weights", "batch norm", "head", "inner lrs"} <= set(errors)
    assert report["evaluation_s"]["seconds"] > 0
    assert "tiny" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_script_and_cpu_memory_probe(tmp_path):
    out = tmp_path / "b.json"
    subprocess.run(
        [
            sys.executable,
            "benchmarks/meta_step.py",
            "--configs",
            "tiny",
            "--paths",
            "batched",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--memory",
            "--no-grad-check",
            "--json",
            str(out),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    report = json.loads(out.read_text())
    memory = report["results"][0]["peak_memory_gb"]
    assert set(memory) == {"batched", "batched-ckpt", "loop"}
    # Measured, not a placeholder: a real peak above the set-up (an earlier version read 0)
    # and sane for this tiny problem.
    assert all(0 < v < 1 for v in memory.values()), memory


def test_bench_rejects_unknown_config(capsys):
    assert main(["bench", "--configs", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark config" in err and err.count("\n") == 1


@pytest.mark.slow
def test_flop_count_matches_spec_for_omniglot_20w1s():
    """The FLOP counter charges the known 185 GFLOP for Omniglot 20-way 1-shot (MSL on)."""
    import torch

    from mamlpp.studies.bench import CONFIGS, build_problem, count_flops

    learner, batch = build_problem(CONFIGS["omniglot-20w1s"], torch.device("cpu"))
    # Count on 1 of 8 tasks (the count is linear in tasks) to keep the test fast.
    batch = tuple(t[:1] for t in batch)
    assert count_flops(learner, batch) * 8 / 1e9 == pytest.approx(185, rel=0.01)


@pytest.mark.slow
def test_gpu_check_script_arguments_are_valid(tmp_path):
    """benchmarks/gpu_check.sh in dry-run mode: every bench invocation parses and validates."""
    result = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", str(tmp_path)],
        env={**__import__("os").environ, "DRY_RUN": "1", "PYTHON": sys.executable},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("plan: device cuda") == 3
    assert "gpu_check done" in result.stdout


@pytest.mark.slow
def test_gpu_tests_script_names_every_cuda_only_test():
    """benchmarks/gpu_tests.sh runs the CUDA-only tests by name: on this machine they are
    collected and skipped (a renamed test would be 'not found', a new one missing here)."""
    import os
    import re
    from pathlib import Path

    script = Path("benchmarks/gpu_tests.sh").read_text()
    named = set(re.findall(r'"(tests/[\w/]+\.py::\w+)"', script))
    result = subprocess.run(
        ["bash", "benchmarks/gpu_tests.sh"],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
    )
    expected = "4 passed" if __import__("torch").cuda.is_available() else "4 skipped"
    assert result.returncode == 0 and expected in result.stdout, result.stdout + result.stderr
    # Every test that skips for want of CUDA is in the script.
    skip_without_cuda = re.compile(
        r"skipif\(not torch\.cuda\.is_available\(\).*\n(?:@.*\n)*def (\w+)"
    )
    cuda_only = {
        f"{path.as_posix()}::{match.group(1)}"
        for path in Path("tests").rglob("test_*.py")
        for match in skip_without_cuda.finditer(path.read_text())
    }
    assert named == cuda_only and len(named) == 4
