"""The scripts behind Lake's challenge (benchmarks/lake_study.py and benchmarks/lake_preset.py,
outside the library): the commands they run, every candidate's settings valid for
`mamlpp ablate`, the choice made on validation only, and the preset's table over seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_helpers import load_script

from mamlpp.run.presets import get_preset, resolve_config

study = load_script("benchmarks/lake_study.py", "lake_study_test")
preset = load_script("benchmarks/lake_preset.py", "lake_preset_test")


@pytest.mark.parametrize("name", sorted(study.CANDIDATES))
def test_every_candidate_is_a_valid_config(name: str) -> None:
    config = resolve_config("omniglot-lake-20w1s", overrides=study.CANDIDATES[name])
    assert config.data.dataset == "omniglot-lake"
    # The ablation's MAML++ variant refuses a config with a technique switched off.
    assert set(config.techniques) == {"MSL", "DA", "BNRS", "BNWB", "LSLR", "CA"}


def test_the_study_prints_the_ablation_and_both_scores(tmp_path: Path, capsys) -> None:
    study.main(["candidates", "--runs", str(tmp_path), "--dry-run", "wg-bl@300"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("+ mamlpp ablate --dataset omniglot-lake --ways 20 --shots 1")
    assert "--time-budget 300" in lines[0] and "data.resample=bilinear" in lines[0]
    assert lines[1].endswith("--split val --tasks 600 --top-k 3 --one-at-a-time")
    assert lines[2].endswith("--split val --tasks 600 --top-k 3")
    assert not any(tmp_path.iterdir())


def _record(path: Path, accuracy: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"accuracy": accuracy, "ci95": 0.01}))


def test_the_study_chooses_on_validation_never_on_test(tmp_path: Path) -> None:
    for name, val, test in (("base@600", 0.70, 0.90), ("wg@600", 0.75, 0.60)):
        run = tmp_path / "runs" / name / "mamlpp" / "seed0"
        _record(run / "eval-val-top3-600-single.json", val)
        _record(run / "eval-test-top3-600-single.json", test)
    study.table(tmp_path / "runs", tmp_path / "out", "test conditions")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["chosen"] == "wg@600"  # the better validation score, the worse test score


def test_the_preset_exists_and_the_script_trains_each_seed(tmp_path: Path, capsys) -> None:
    assert get_preset(preset.PRESET).tree["data"]["dataset"] == "omniglot-lake"
    preset.main(["train", "--runs", str(tmp_path), "--seeds", "0", "1", "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        f"+ mamlpp train --preset {preset.PRESET} --set train.seed=0 --out {tmp_path}/seed0 --quiet"
    )
    evaluate = f"+ mamlpp evaluate {tmp_path}/seed0 --split test --tasks 600 --top-k 3"
    validate = evaluate.replace("--split test", "--split val")
    assert lines[1] == f"{validate} --one-at-a-time"
    assert lines[2] == f"{evaluate} --one-at-a-time"
    assert lines[3] == f"{evaluate} --one-at-a-time --episodes random"
    assert "train.seed=1" in lines[4]
    # A step whose output exists is skipped: a seed trained but not scored is only scored.
    (tmp_path / "seed0").mkdir()
    (tmp_path / "seed0" / "wall.json").write_text('{"train_command_s": 1.0}')
    _record(tmp_path / "seed0" / "eval-val-top3-600-single.json", 0.5)
    _record(tmp_path / "seed0" / "eval-test-top3-600-single.json", 0.5)
    preset.main(["train", "--runs", str(tmp_path), "--seeds", "0", "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "seed 0: trained, training skipped",
        f"{evaluate} --one-at-a-time --episodes random",
    ]


def test_an_interrupted_seed_is_resumed_and_its_time_adds_the_checkpoints(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    run = tmp_path / "seed1"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest.pt").write_bytes(b"")
    val = [{"kind": "val", "epoch": e, "accuracy": 0.5, "wall_s": 40.0 * e} for e in (1, 2, 3, 4)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in val))
    commands: list[list[str]] = []

    def run_for_1000_s(argv: list[str], dry_run: bool) -> float:
        commands.append(argv)
        return 1000.0

    monkeypatch.setattr(preset, "_run", run_for_1000_s)
    preset.main(["train", "--runs", str(tmp_path), "--seeds", "1"])
    assert capsys.readouterr().out.splitlines()[0] == "seed 1: interrupted after 4 epochs, resumed"
    assert commands[0] == ["mamlpp", "train", "--resume", "--out", str(run), "--quiet"]
    assert [argv[1] for argv in commands] == ["train", "evaluate", "evaluate", "evaluate"]
    # 160 s recorded by the checkpoint's last epoch, plus the resumed command's 1000 s.
    wall = json.loads((run / "wall.json").read_text())
    assert wall == {"train_command_s": 1160.0, "resumed_after_s": 160.0}


def test_the_table_leaves_out_a_seed_still_training(tmp_path: Path, capsys) -> None:
    for seed in (0, 1):
        run = tmp_path / "runs" / f"seed{seed}"
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "latest.pt").write_bytes(b"")
        _record(run / "eval-test-top3-600-single.json", 0.75)
    (tmp_path / "runs" / "seed0" / "summary.json").write_text(
        json.dumps({"iterations": 7000, "test_accuracy": 0.8, "test_ci95": 0.01})
    )
    preset.table(tmp_path / "runs", tmp_path / "out", "test conditions")
    assert capsys.readouterr().out.startswith("seed1: training not finished, left out")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [row["seed"] for row in results["rows"]] == [0]
    assert "| mean of 1 |" in (tmp_path / "out" / "results.md").read_text()


def test_a_variant_of_the_preset_is_trained_with_its_overrides_in_its_own_folder(
    tmp_path: Path, capsys
) -> None:
    runs = tmp_path / "aug"
    argv = ["train", "--runs", str(runs), "--seeds", "0", "--set", "data.augment_rotation=10"]
    preset.main([*argv, "--dry-run"])
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"+ mamlpp train --preset {preset.PRESET} --set train.seed=0 ")
    assert "--set data.augment_rotation=10 --out" in first
    assert not runs.exists()  # a dry run writes nothing
    preset._keep_settings(runs, ["data.augment_rotation=10"], dry_run=False)
    assert preset._settings(runs) == ["data.augment_rotation=10"]
    # The same folder refuses other overrides (the preset itself included) with one line.
    for other in ([], ["--set", "data.augment_rotation=5"]):
        with pytest.raises(SystemExit, match="use another --runs folder"):
            preset.main(["train", "--runs", str(runs), "--seeds", "0", *other, "--dry-run"])
    (runs / "seed0").mkdir()
    _record(runs / "seed0" / "eval-val-top3-600-single.json", 0.75)
    preset.table(runs, tmp_path / "out", "test conditions")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["set"] == ["data.augment_rotation=10"]
    assert results["rows"][0]["val_single"]["error"] == pytest.approx(25.0)
    table = (tmp_path / "out" / "results.md").read_text()
    assert table.startswith(
        f"# Lake's Omniglot one-shot challenge: `{preset.PRESET}` with `data.augment_rotation=10`"
    )
    assert "| 0 | — | — | 25.00 ± 1.00 | — | — | — |" in table


def test_the_preset_table_has_each_seed_and_the_mean(tmp_path: Path) -> None:
    for seed, single, batch in ((0, 0.90, 0.92), (1, 0.80, 0.84)):
        run = tmp_path / "runs" / f"seed{seed}"
        _record(run / "eval-test-top3-600-single.json", single)
        _record(run / "eval-test-top3-600-single-random.json", single + 0.05)
        summary = {"iterations": 1000, "test_accuracy": batch, "test_ci95": 0.01}
        (run / "summary.json").write_text(json.dumps(summary))
        (run / "wall.json").write_text(json.dumps({"train_command_s": 3000.0}))
        val = [
            {"kind": "val", "epoch": e, "accuracy": 0.5 + 0.1 * e, "wall_s": 60.0 * e}
            for e in (1, 2)
        ]
        (run / "metrics.jsonl").write_text("".join(json.dumps(v) + "\n" for v in val))
    preset.table(tmp_path / "runs", tmp_path / "out", "test conditions")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["mean_error"] == pytest.approx({"single": 15.0, "batch": 12.0, "across": 10.0})
    assert [r["train_command_min"] for r in results["rows"]] == [50.0, 50.0]
    table = (tmp_path / "out" / "results.md").read_text()
    # No validation scores in these runs: that column's mean is left out, not made up.
    assert "| mean of 2 | | | — | 15.00 | 12.00 | 10.00 |" in table
    assert "(val-error-vs-minutes.png)" in table
    assert preset._validation_curve(tmp_path / "runs" / "seed0") == (
        [1.0, 2.0],
        pytest.approx([40.0, 30.0]),
    )
    assert (tmp_path / "out" / "val-error-vs-minutes.png").stat().st_size > 1000
