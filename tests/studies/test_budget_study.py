"""The time-budget study behind the quickstart preset (benchmarks/quickstart_budget_results.py,
a script outside the library): read from run folders, choose by validation (never by test),
render, redraw from results.json alone, the publishing tool's section, and the script that runs
the study."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from script_helpers import REPO, load_script

from mamlpp.errors import MamlppError

budget = load_script("benchmarks/quickstart_budget_results.py", "quickstart_budget_results_test")


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def fake_candidate(
    root: Path, name: str, *, val: float, test: float, iterations: int, seconds: float = 540
) -> Path:
    """The files of a finished `mamlpp ablate --time-budget` folder that the study reads."""
    folder = root / name
    sets = ["train.checkpoint_every=0", "train.log_every=100", f"model.channels={iterations}"]
    regimes = {"msl=True,second_order=False": {"s_per_it": 0.2, "epochs": 10}}
    _write(
        folder / "ablation.json",
        {
            "sets": sets,
            "time_budget_s": seconds,
            "calibration": {"variants": {"maml++": {"regimes": regimes}}},
        },
    )
    run = folder / "mamlpp" / "seed0"
    _write(
        run / "summary.json",
        {
            "iterations": iterations,
            "epochs": 100,
            "best_val_accuracy": val + 0.02,
            "test_accuracy": test,
            "test_ci95": 0.01,
            "test_tasks": 600,
            "ensemble_size": 3,
            "fit_time_s": seconds * 0.9,
            "wall_time_s": seconds,
        },
    )
    _write(run / "eval-val-top3-600.json", {"accuracy": val, "ci95": 0.012, "num_tasks": 600})
    _write(run / "ablate.json", {"command": f"mamlpp train --out {name}"})
    lines = [
        {"kind": "train", "epoch": 1},
        {"kind": "val", "epoch": 1, "accuracy": val - 0.1, "wall_s": 30.0},
        {"kind": "val", "epoch": 2, "accuracy": val, "wall_s": 60.0},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder


def fake_seed_run(root: Path, seed: int, test: float) -> Path:
    folder = root / f"seed{seed}"
    _write(
        folder / "summary.json",
        {"iterations": 2000, "test_accuracy": test, "test_ci95": 0.01, "test_tasks": 600},
    )
    command = "mamlpp train" + (f" --set train.seed={seed}" if seed else "")
    _write(folder / "command.json", {"seed": seed, "command": command, "wall_s": 530.0})
    return folder


@pytest.fixture
def study(tmp_path: Path) -> dict:
    runs = tmp_path / "runs"
    folders = [
        fake_candidate(runs, "old", val=0.90, test=0.905, iterations=1500),
        # The best test accuracy but not the best validation: must not be chosen.
        fake_candidate(runs, "lucky", val=0.92, test=0.97, iterations=1800),
        fake_candidate(runs, "best", val=0.95, test=0.94, iterations=2300),
        fake_candidate(runs, "best@120", val=0.80, test=0.81, iterations=300, seconds=120),
        fake_candidate(runs, "best@1200", val=0.97, test=0.965, iterations=5000, seconds=1200),
    ]
    seeds = [fake_seed_run(tmp_path / "seeds", s, t) for s, t in ((0, 0.95), (1, 0.96))]
    return budget.collect(
        folders, budget_s=540, reference="old", seed_runs=seeds, environment={"cpu_count": 2}
    )


def test_chosen_by_validation_never_by_test(study: dict) -> None:
    assert study["chosen"] == "best"  # "lucky" has the higher test accuracy, lower validation
    # Candidates at other budgets do not compete, however good.
    assert budget.choose(study["candidates"], 1200)["name"] == "best@1200"


def test_rows_hold_what_the_folders_say(study: dict) -> None:
    best = next(c for c in study["candidates"] if c["name"] == "best")
    assert best["sets"] == ["model.channels=2300"]  # bookkeeping sets left out
    assert best["iterations"] == 2300 and best["val_accuracy"] == 0.95
    assert best["ms_per_iteration"] == {"msl=True,second_order=False": pytest.approx(200.0)}
    assert best["val_curve"] == [[0.5, pytest.approx(0.85)], [1.0, 0.95]]
    assert [r["seed"] for r in study["seed_runs"]] == [0, 1]


def test_render_reports_the_numbers(study: dict) -> None:
    text = budget.render(study)
    assert "`best` (chosen)" in text and "`old` (reference)" in text
    # The finding is computed: +5.00 pp validation and +3.50 pp test over the reference.
    assert "+5.00 pp validation accuracy (+3.50 pp test)" in text
    # Every pair differing in one setting, once, from the side nearer the reference (a tie:
    # from the better one); the largest validation gain leads the finding.
    changes = budget.single_changes(study)
    pairs = [(c["from"], c["to"]) for c in changes]
    assert pairs == [("old", "best"), ("old", "lucky"), ("best", "lucky")]
    assert "`model.channels=2300` (`old` -> `best`: +5.00 pp validation, +3.50 pp test)" in text
    assert "Mean over 2 seeds: **95.50%**" in text
    assert "`best@120`" not in text.split("## What more")[0]  # not at the study's budget
    assert "| `best` | 2 min | 300 |" in text and "| `best` | 20 min | 5000 |" in text
    assert "mamlpp train --out lucky" in text


def test_redraw_needs_only_results_json(study: dict, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "published"
    written = budget.write(study, out)
    assert {p.name for p in written} >= {"results.md", budget.PLOT, budget.CURVES}
    first = (out / "results.md").read_text()
    (out / "results.md").unlink()
    budget.redraw(out)
    assert (out / "results.md").read_text() == first
    _write(tmp_path / "other" / "results.json", {"kind": "ablation"})
    with pytest.raises(MamlppError, match="not a time-budget study"):
        budget.redraw(tmp_path / "other")


def test_unfinished_folder_is_a_clear_error(tmp_path: Path) -> None:
    folder = fake_candidate(tmp_path, "x", val=0.9, test=0.9, iterations=10)
    (folder / "mamlpp" / "seed0" / "summary.json").unlink()
    with pytest.raises(MamlppError, match="has not finished"):
        budget.collect_candidate(folder)
    with pytest.raises(MamlppError, match="not an ablation folder"):
        budget.collect_candidate(tmp_path / "missing")


def test_publisher_redraws_it_and_puts_it_in_the_results_section(study, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    publisher = load_script("tools/publish_results.py", "publish_results_budget")
    dest = tmp_path / "results"
    budget.write(study, dest / "quickstart-10min")
    (dest / "quickstart-10min" / "results.md").unlink()
    _write(dest / "ablation-study" / "results.json", {"kind": "ablation"})
    section = publisher.results_section(
        {}, [], [], base="docs/results/", budget_studies={"quickstart-10min": study}
    )
    assert "### quickstart-10min: the quickstart's settings" in section
    assert "**95.50%** mean test accuracy" in section
    assert "docs/results/quickstart-10min/results.md" in section
    assert publisher._kind(dest / "quickstart-10min") == budget.KIND
    assert publisher._kind(dest / "ablation-study") == "ablation"
    assert publisher._kind(tmp_path) is None


def test_curve_of_a_run_older_than_wall_s_comes_from_its_log(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"kind": "val", "accuracy": 0.7}) + "\n")
    (run / "train.log").write_text(
        "run ...\n"
        "epoch 1/100: val 68.00% +- 5.60% (95% CI over 50 tasks) | loss 0.947 | lr 1.00e-03,"
        " 1st order | 6 s\n"
        "epoch 2/100: val 72.40% +- 4.62% (95% CI over 50 tasks) | loss 0.859 | lr 1.00e-03,"
        " 1st order | 12 s\n"
    )
    assert budget.val_curve(run) == [[0.1, pytest.approx(0.68)], [0.2, pytest.approx(0.724)]]


def test_quickstart_is_the_studys_chosen_candidate() -> None:
    """The published study's chosen run, as `mamlpp ablate` trained it, resolves to the
    `quickstart` preset (up to how often it logs)."""
    import shlex

    from mamlpp.run.presets import resolve_config

    published = REPO / "docs" / "results" / "quickstart-10min"
    results = json.loads((published / "results.json").read_text(encoding="utf-8"))
    (chosen,) = [c for c in results["candidates"] if c["name"] == results["chosen"]]
    argv = shlex.split(chosen["command"])
    preset = argv[argv.index("--preset") + 1]
    sets = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--set"]
    studied = resolve_config(preset, None, [*sets, "train.log_every=1"])
    quickstart = resolve_config("quickstart", None, ["train.log_every=1"])
    assert studied.data == quickstart.data and studied.model == quickstart.model
    assert studied.meta == quickstart.meta and studied.eval == quickstart.eval
    assert studied.train == quickstart.train


@pytest.mark.slow
def test_the_study_script_aggregates_run_folders(tmp_path: Path) -> None:
    """`python benchmarks/quickstart_budget.py aggregate`, as its docstring runs it: the script
    finds its results module beside it and writes the published files."""
    pytest.importorskip("matplotlib")
    runs = tmp_path / "runs"
    fake_candidate(runs, "c32-t1", val=0.90, test=0.91, iterations=1500)  # its reference
    fake_candidate(runs, "c32-t2", val=0.93, test=0.92, iterations=1900)
    seed = fake_seed_run(tmp_path / "seeds", 0, 0.95)
    out = tmp_path / "published"
    argv = ["aggregate", "--runs", str(runs), "--seed-runs", str(seed), "--out", str(out)]
    script = REPO / "benchmarks" / "quickstart_budget.py"
    done = subprocess.run(
        [sys.executable, str(script), *argv], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    written = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert written["kind"] == budget.KIND and written["chosen"] == "c32-t2"
    assert "`c32-t2` (chosen)" in (out / "results.md").read_text(encoding="utf-8")
