"""A technique switched on that never acts in a run of the configured length is worked out from
the configuration, warned about before training, and left out of summary.json."""

from __future__ import annotations

import json
from pathlib import Path

from cli_helpers import train_tiny

from mamlpp.run.experiment import build_config


def test_idle_techniques_are_worked_out_from_the_run_length() -> None:
    everything = ["MSL", "DA", "BNRS", "BNWB", "LSLR", "CA"]
    assert build_config({}).active_techniques == everything  # 100 epochs, DA from epoch 50
    short = build_config({"train": {"epochs": 20}})  # meta.first_order_epochs = 50
    assert short.techniques == everything
    assert short.active_techniques == ["MSL", "BNRS", "BNWB", "LSLR", "CA"]
    why = short.idle_techniques()["DA"]
    assert "meta.first_order_epochs=50 >= train.epochs=20" in why
    assert "set meta.first_order_epochs below 20" in why
    one_step = build_config({"meta": {"num_inner_steps": 1}})
    assert "MSL" not in one_step.active_techniques
    flat_lr = build_config({"meta": {"meta_lr_min": 1e-3}})
    assert "CA" not in flat_lr.active_techniques
    assert "CA" not in build_config({"train": {"epochs": 1}}).active_techniques
    # MSL over more epochs than the run: active, but it never finishes annealing (a warning).
    long_msl = build_config({"train": {"epochs": 5}, "meta": {"msl_epochs": 10}})
    assert "MSL" in long_msl.active_techniques
    assert any("meta.msl_epochs=10 > train.epochs=5" in w for w in long_msl.schedule_warnings())
    assert build_config({}).schedule_warnings() == []


def test_training_warns_and_the_summary_lists_active_techniques(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    settings = ["meta.first_order_epochs=50", "meta.meta_lr_min=0.001", "meta.msl_epochs=5"]
    assert train_tiny(out, *settings) == 0
    printed = capsys.readouterr().out.splitlines()
    warnings = [line for line in printed if line.startswith("warning: ")]
    assert len(warnings) == 3, printed
    assert any(
        "derivative-order annealing never switches to second order: meta.first_order_epochs=50 "
        ">= train.epochs=2" in w
        for w in warnings
    )
    assert any("cosine annealing never changes the outer learning rate" in w for w in warnings)
    assert any("multi-step loss never finishes annealing" in w for w in warnings)
    assert printed.index(warnings[-1]) < min(
        i for i, line in enumerate(printed) if line.startswith("epoch ")
    )  # before training
    summary = json.loads((out / "summary.json").read_text())
    assert summary["techniques"] == ["MSL", "BNRS", "BNWB", "LSLR"]
