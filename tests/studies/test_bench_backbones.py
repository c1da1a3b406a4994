"""`mamlpp bench` on ResNet-12 and on the generic path: cost, checkpointing, first order."""

from __future__ import annotations

import json

import pytest

from mamlpp.cli.main import main
from mamlpp.nn.module_backbone import ModuleBackbone
from mamlpp.studies.bench import CONFIGS


@pytest.mark.slow
def test_resnet12_bench_with_and_without_checkpointing(tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", "--configs", "tiny-resnet12,tiny-resnet12-fo", "--paths"]
    args += ["batched,batched-ckpt,loop", "--iters", "1", "--warmup", "0", "--json", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    for entry in report["results"]:
        assert entry["config"]["backbone"] == "resnet12" and entry["gflop"] > 0
        for key in ("batched/fp32", "batched-ckpt/fp32", "loop/fp32"):
            errors = entry["paths"][key]["grad_errors_f64"]
            # Checkpointed and first-order meta-gradients equal the float64 loop path's.
            assert errors["all"]["rel_error"] < 1e-4, key
    second, first = report["results"]
    assert first["config"]["second_order"] is False
    assert first["gflop"] < second["gflop"]  # first order skips the second-order terms


def test_paper_scale_configs_for_the_generic_path_and_resnet12():
    assert CONFIGS["omniglot-20w1s-module"].backbone == "conv4-module"
    assert CONFIGS["mini-imagenet-5w1s-resnet12"].channels == 64  # 64-160-320-640
    import torch

    from mamlpp.studies.bench import build_problem

    learner, batch = build_problem(CONFIGS["tiny"], torch.device("cpu"))
    assert not isinstance(learner.backbone, ModuleBackbone)
