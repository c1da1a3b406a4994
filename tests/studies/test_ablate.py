"""`mamlpp ablate` on the file-free synthetic dataset: the grid's configurations, aggregation
against the runs' own summaries, identical test tasks across variants, resume, worker processes,
time budgets, argument errors; and the study scripts' dry runs."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from script_helpers import load_script

from mamlpp.cli.main import main
from mamlpp.run.experiment import build_config, read_toml
from mamlpp.studies import ablate

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "--dataset",
    "synthetic",
    "--budget",
    "10",  # the synthetic preset has 5 epochs: 2 iterations each
    "--tasks-per-batch",
    "2",
    "--val-tasks",
    "4",
    "--test-tasks",
    "6",
    "--top-k",
    "2",
    "--set",
    "model.channels=4",
    "--set",
    "eval.batch_size=6",
    "--set",
    "train.log_every=1",
    "--device",
    "cpu",
    "--quiet",
]
VARIANTS = ["--variants", "maml,maml++", "--seeds", "0,1"]


def _ablate(out: Path, *extra: str) -> int:
    return main(["ablate", *TINY, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    """maml and maml++ x seeds 0 and 1, each trained by a `mamlpp train --resume` worker."""
    out = tmp_path_factory.mktemp("ablate") / "grid"
    assert _ablate(out, *VARIANTS) == 0
    return out


def _summary(out: Path, folder: str, seed: int) -> dict:
    return json.loads((out / folder / f"seed{seed}" / "summary.json").read_text())


@pytest.mark.slow
def test_runs_use_the_grid_configs_and_the_budget(grid) -> None:
    out = grid
    for folder, techniques in (("maml", []), ("mamlpp", list(ablate.TECHNIQUES))):
        for seed in (0, 1):
            run = out / folder / f"seed{seed}"
            config = build_config(read_toml(run / "config.toml"))
            assert config.techniques == techniques
            assert config.train.seed == seed
            # the budget shortens the epoch; the preset's 5 epochs (and schedules) are kept
            assert (config.train.epochs, config.train.iterations_per_epoch) == (5, 2)
            assert config.meta.bn_mode == "transductive" and config.meta.second_order
            assert _summary(out, folder, seed)["iterations"] == 10
            record = json.loads((run / "ablate.json").read_text())
            assert record["status"] == "complete" and record["command"].startswith(
                "mamlpp train --preset synthetic"
            )
    maml_pp = build_config(read_toml(out / "mamlpp" / "seed0" / "config.toml"))
    assert maml_pp.meta.first_order_epochs == 3 and maml_pp.meta.msl_epochs == 2  # preset's


def test_every_variant_switches_exactly_its_techniques() -> None:
    plan = ablate.Plan(
        dataset="omniglot",
        ways=5,
        shots=1,
        base_preset="omniglot-5w1s",
        epochs=100,
        budget=1000,
        tasks_per_batch=8,
        val_tasks=20,
        test_tasks=600,
        top_k=3,
        sets=[],
        variants=[v.name for v in ablate.GRID],
        seeds=[0],
    )
    seen = {}
    for variant in ablate.GRID:
        config = ablate.run_config(plan, variant, 0)
        assert config.techniques == list(variant.techniques), variant.name
        assert (config.train.epochs, config.train.iterations_per_epoch) == (100, 10)
        assert config.eval.test_seed == 2 and config.eval.test_tasks == 600
        seen[variant.name] = config
    assert not seen["fomaml"].meta.second_order and seen["maml"].meta.second_order
    assert seen["maml++/per_step-bn"].meta.bn_mode == "per_step"
    assert seen["maml++"].meta.bn_mode == "transductive"
    assert seen["maml++-support-bn"].meta.bn_mode == "support"
    assert seen["maml+bnrs"].meta.bn_mode == "per_step"  # alone, BNRS must reach an output
    assert seen["maml+da"].meta.first_order_epochs == 50  # the preset's (paper text) value
    for name, config in seen.items():  # nothing but [meta] differs between variants
        for section in ("data", "model", "train", "eval"):
            assert getattr(config, section) == getattr(seen["maml"], section), name


@pytest.mark.slow
def test_aggregation_matches_the_run_summaries(grid) -> None:
    out = grid
    results = json.loads((out / "results.json").read_text())
    rows = {row["name"]: row for row in results["variants"]}
    assert list(rows) == ["maml", "maml++"]
    markdown = (out / "results.md").read_text()
    for name, folder in (("maml", "maml"), ("maml++", "mamlpp")):
        summaries = [_summary(out, folder, seed) for seed in (0, 1)]
        accuracies = [s["test_accuracy"] for s in summaries]
        row = rows[name]
        assert row["seeds_complete"] == [0, 1]
        assert row["mean_test_accuracy"] == pytest.approx(statistics.fmean(accuracies))
        assert row["std_test_accuracy"] == pytest.approx(statistics.stdev(accuracies))
        assert row["mean_test_ci95"] == pytest.approx(
            statistics.fmean(s["test_ci95"] for s in summaries)
        )
        assert row["mean_wall_time_s"] == pytest.approx(
            statistics.fmean(s["wall_time_s"] for s in summaries)
        )
        assert row["mean_iterations_per_second"] == pytest.approx(
            statistics.fmean(s["iterations_per_second"] for s in summaries)
        )
        mean = 100 * statistics.fmean(accuracies)
        std = 100 * statistics.stdev(accuracies)
        line = next(x for x in markdown.splitlines() if x.startswith(f"| `{name}` |"))
        assert f"{mean:.2f} ± {std:.2f}" in line and "2/2" in line
        for accuracy in accuracies:
            assert f"{100 * accuracy:.2f}" in line
    delta = rows["maml++"]["mean_test_accuracy"] - rows["maml"]["mean_test_accuracy"]
    assert rows["maml++"]["delta_vs_maml"] == pytest.approx(delta)
    assert f"({100 * delta:+.2f} pp" in markdown
    assert "--variants maml,maml++ --set model.channels=4" in results["command"]
    for plot in ("test-accuracy.png", "val-accuracy.png", "report/report.md"):
        assert (out / plot).is_file() and plot in markdown
    # one chart set per variant: the two variants' report plots do not overwrite each other
    charts = sorted(p.name for p in (out / "report").glob("*-inner-lrs.png"))
    assert len(charts) == 2


@pytest.mark.slow
def test_all_variants_see_identical_test_tasks(grid) -> None:
    out = grid
    from mamlpp.data import EpisodeSampler, load_dataset
    from mamlpp.run.evaluate import task_fingerprint

    split = load_dataset("synthetic", image_size=28)["test"]
    expected = task_fingerprint(EpisodeSampler(split, 5, 1, 1, seed=2), 6)
    for folder in ("maml", "mamlpp"):
        for seed in (0, 1):  # each run records the tasks its own trainer was tested on
            assert _summary(out, folder, seed)["test_fingerprint"] == expected
    results = json.loads((out / "results.json").read_text())
    tests = results["test_tasks"]
    assert tests["identical"] and tests["runs_checked"] == 4 and tests["fingerprints"] == [expected]
    assert "Same test tasks in all 4 finished runs" in (out / "results.md").read_text()
    # the fingerprint does see a different task set
    assert task_fingerprint(EpisodeSampler(split, 5, 1, 1, seed=3), 6) != expected


@pytest.mark.slow
def test_rerun_skips_finished_runs_and_aggregate_only_rewrites(grid, capsys) -> None:
    out = grid
    runs = [p for p in out.rglob("*") if p.is_file() and p.relative_to(out).parts[0] != "report"]
    before = {p: p.read_bytes() for p in runs if "seed" in p.relative_to(out).as_posix()}
    assert _ablate(out, *VARIANTS) == 0
    printed = capsys.readouterr().out
    assert printed.count("skipping") == 4 and "epoch 1/5" not in printed
    after = {p: p.read_bytes() for p in before}
    assert after == before  # no run folder changed
    (out / "results.md").unlink()
    assert main(["ablate", "--aggregate-only", str(out)]) == 0
    assert "| `maml++` |" in (out / "results.md").read_text()
    plan = json.loads((out / "ablation.json").read_text())
    assert len(plan["sessions"]) == 2


@pytest.mark.slow
def test_an_interrupted_ablation_resumes_to_the_same_result(grid, tmp_path, capsys) -> None:
    """A run interrupted after epoch 2 (trained here with the library, as a killed worker
    leaves it) is continued by the re-run's worker and ends where an uninterrupted run ends."""
    out = grid
    from mamlpp.data import load_dataset
    from mamlpp.run.run_dir import RunDir
    from mamlpp.run.trainer import Trainer
    from mamlpp.run.training import run_training

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy2(out / "ablation.json", resumed / "ablation.json")
    config = ablate.run_config(ablate.read_plan(out), ablate.VARIANTS["maml"], 0)
    run = resumed / "maml" / "seed0"
    original = Trainer._end_epoch

    def interrupted(self):
        original(self)
        if self.epoch == 2:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "_end_epoch", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_training(config, RunDir(run), load_dataset("synthetic"), torch.device("cpu"))
    assert not (run / "summary.json").exists() and (run / "checkpoints" / "latest.pt").is_file()
    capsys.readouterr()
    assert _ablate(resumed, "--variants", "maml", "--seeds", "0") == 0
    printed = capsys.readouterr().out
    assert "epoch 3/5" in printed and "epoch 2/5" not in printed  # continued, not restarted
    mine, reference = _summary(resumed, "maml", 0), _summary(out, "maml", 0)
    assert mine["test_accuracy"] == reference["test_accuracy"]
    assert mine["test_loss"] == reference["test_loss"]
    a = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["model"]
    b = torch.load(out / "maml" / "seed0" / "checkpoints" / "latest.pt", weights_only=True)
    assert all(torch.equal(a[k], b["model"][k]) for k in a)


@pytest.mark.slow
def test_parallel_worker_processes_give_the_same_results(grid, tmp_path) -> None:
    out = grid
    parallel = tmp_path / "parallel"
    assert _ablate(parallel, "--variants", "maml", "--seeds", "0,1", "--jobs", "2") == 0
    for seed in (0, 1):
        run = parallel / "maml" / f"seed{seed}"
        assert (run / "train.log").is_file() and "test:" in (run / "train.log").read_text()
        config = build_config(read_toml(run / "config.toml"))
        assert config.train.threads == max(1, (os.cpu_count() or 1) // 2)
        assert _summary(parallel, "maml", seed)["test_accuracy"] == pytest.approx(
            _summary(out, "maml", seed)["test_accuracy"]
        )
    results = json.loads((parallel / "results.json").read_text())
    assert results["variants"][0]["seeds_complete"] == [0, 1]


@pytest.mark.slow
def test_a_failed_run_is_recorded_and_reported(grid, tmp_path, capsys) -> None:
    """A worker that fails (its folder holds another variant's run, which `mamlpp train
    --resume` refuses) is recorded with the worker's own error in its ablate.json, results.json
    and results.md; the ablation still aggregates, then exits 1 naming the run."""
    out = tmp_path / "failing"
    run = out / "maml" / "seed0"
    run.mkdir(parents=True)
    for name in ("config.toml", "metrics.jsonl"):
        shutil.copy2(grid / "mamlpp" / "seed0" / name, run / name)
    assert _ablate(out, "--variants", "maml", "--seeds", "0") == 1
    assert capsys.readouterr().err == (
        "mamlpp: error: 1 run failed: maml seed 0; see their ablate.json and train.log, or "
        "re-run to retry\n"
    )
    status = json.loads((run / "ablate.json").read_text())["status"]
    assert status.startswith("failed: cannot resume: the config differs from the run's in meta.")
    results = json.loads((out / "results.json").read_text())
    assert results["variants"][0]["runs"][0]["status"] == status
    assert results["variants"][0]["seeds_complete"] == []
    assert (
        f"| `maml` | none (MAML) | 0/1 | - | (reference) | ({status}) |"
        in (out / "results.md").read_text()
    )


def test_time_calls_discards_warm_up_and_times_each_call(monkeypatch) -> None:
    from mamlpp.studies.ablate import calibration

    clock = {"now": 0.0, "calls": 0}

    def step() -> None:
        clock["calls"] += 1
        clock["now"] += 10.0 if clock["calls"] <= 2 else 0.25  # two slow warm-up calls

    monkeypatch.setattr(calibration.time, "perf_counter", lambda: clock["now"])
    times = calibration.time_calls(step, warmup=2, repeats=3, device=torch.device("cpu"))
    assert clock["calls"] == 5 and times == [0.25, 0.25, 0.25]


def test_calibration_times_the_training_step_of_a_real_trainer(monkeypatch) -> None:
    """The budget comes from Trainer.train_step (what an epoch calls; on CUDA a graph replay)
    per schedule regime, after the warm-up calls, and from a validation after its warm-up."""
    from mamlpp.data import load_dataset
    from mamlpp.run.trainer import Trainer
    from mamlpp.studies.ablate import calibration

    clock = {"now": 0.0}
    steps: list[tuple[int, int]] = []
    validations: list[int] = []

    def train_step(self, epoch):
        steps.append((epoch, self.iteration))
        first_of_regime = len([e for e, _ in steps if e == epoch]) == 1
        clock["now"] += 10.0 if first_of_regime else 0.25

    def validate(self):
        validations.append(1)
        clock["now"] += 10.0 if len(validations) == 1 else 1.0

    monkeypatch.setattr(Trainer, "train_step", train_step)
    monkeypatch.setattr(Trainer, "validate", validate)
    monkeypatch.setattr(calibration.time, "perf_counter", lambda: clock["now"])
    plan = ablate.Plan(
        dataset="synthetic",
        ways=5,
        shots=1,
        base_preset="synthetic",
        epochs=5,
        budget=None,
        tasks_per_batch=2,
        val_tasks=4,
        test_tasks=6,
        top_k=2,
        sets=["model.channels=4"],
        variants=["maml++"],
        seeds=[0],
        time_budget_s=1000.0,
    )
    splits = load_dataset("synthetic")
    budget, measured = ablate.calibrate(
        plan, [ablate.VARIANTS["maml++"]], splits, torch.device("cpu")
    )
    # Synthetic MAML++: MSL for epochs 0-1, first order until epoch 3: three regimes, each one
    # warm-up call (eager CPU path) and three timed calls on successive tasks.
    assert [e for e, _ in steps] == [0] * 4 + [2] * 4 + [3] * 4
    assert [i for _, i in steps] == list(range(12))
    cost = measured["variants"]["maml++"]
    assert {r["s_per_it"] for r in cost["regimes"].values()} == {0.25} and cost["val_s"] == 1.0
    # (1000 s x 0.9 safety - 5 validations x 1 s) / (5 epochs x 0.25 s) = 716 per epoch
    assert cost["iterations_per_epoch"] == 716 and budget == 716 * 5


def test_budget_lands_nearest_the_target_time_and_never_beyond_it() -> None:
    from mamlpp.studies.ablate.calibration import iterations_per_epoch

    # 100 epochs of 1 s per iteration (summed over epochs: 100 s), validations 10 s in all.
    # Target 0.9 x 800 = 720 s: (720 - 10) / 100 = 7.1 -> 7; 0.9 x 850 = 765: 7.55 -> 8 (810 s,
    # within 850; rounding down would give 710 s, 84% of the budget).
    assert iterations_per_epoch(800, 0.9, 100.0, 10.0) == 7
    assert iterations_per_epoch(850, 0.9, 100.0, 10.0) == 8
    # Nearest would pass the budget itself (8 x 100 + 10 > 805): one fewer.
    assert iterations_per_epoch(805, 0.99, 100.0, 10.0) == 7
    assert iterations_per_epoch(50, 0.9, 100.0, 10.0) == 0  # too short: the caller says so


def test_warm_up_covers_the_cuda_graph_capture() -> None:
    from types import SimpleNamespace

    from mamlpp.studies.ablate.calibration import warmup_calls

    eager = SimpleNamespace(step_runner=SimpleNamespace(warmup_steps=3, use_cuda_graph=False))
    assert warmup_calls(eager) == 1
    fast = SimpleNamespace(step_runner=SimpleNamespace(warmup_steps=3, use_cuda_graph=True))
    assert warmup_calls(fast) == 5  # 3 eager warm-ups, the capture, one replay


@pytest.mark.slow
def test_time_budget_is_measured_and_kept(tmp_path, capsys) -> None:
    out = tmp_path / "timed"
    args = ["ablate", *[a for a in TINY if a not in ("--budget", "10")], "--out", str(out)]
    args += ["--variants", "fomaml", "--seeds", "0", "--time-budget", "4"]
    assert main(args) == 0
    plan = json.loads((out / "ablation.json").read_text())
    assert plan["budget"] % 5 == 0 and plan["budget"] >= 5
    assert plan["calibration"]["variants"]["fomaml"]["iterations_per_epoch"] >= 1
    assert _summary(out, "fomaml", 0)["iterations"] == plan["budget"]
    assert "calibration fomaml:" in capsys.readouterr().out
    assert main(args) == 0  # a re-run keeps the measured budget and skips the finished run
    assert "skipping fomaml seed 0" in capsys.readouterr().out
    assert json.loads((out / "ablation.json").read_text())["budget"] == plan["budget"]
    too_short = ["ablate", *args[1:-2], "--time-budget", "0.0001"]
    too_short[too_short.index("--out") + 1] = str(tmp_path / "short")
    assert main(too_short) == 2
    assert "is too short" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--budget", "3"], "--budget 3 is below the preset's 5 epochs"),
        (["--budget", "12"], "--budget 12 is not a multiple of the preset's 5 epochs"),
        (
            ["--variants", "maml,maml+msll"],
            "unknown variant 'maml+msll' (did you mean 'maml+msl'?)",
        ),
        (["--seeds", "0,x"], "--seeds expects comma-separated non-negative integers"),
        (["--seeds", "1,01"], "--seeds lists a seed twice"),
        (["--dataset", "omniglott"], "(did you mean 'omniglot'?)"),
        (["--jobs", "0"], "--jobs must be >= 1"),
        (["--test-tasks", "0"], "--test-tasks must be >= 1"),
        (["--time-budget", "-5"], "--time-budget must be > 0"),
        (["--set", "model.chanels=4"], "unknown key model.chanels in --set"),
        (["--set", "meta.msl=false"], "variant maml++ should switch on MSL DA BNRS BNWB LSLR CA"),
        (["--device", "tpu"], "--device must be auto, cpu or cuda"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, extra, message) -> None:
    out = tmp_path / "bad"
    if "--time-budget" in extra:  # instead of --budget
        args = ["ablate", *TINY[:2], *TINY[4:], "--out", str(out), *VARIANTS, *extra]
        assert main(args) == 2
    else:
        assert _ablate(out, *VARIANTS, *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("mamlpp: error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (out / "maml").exists()  # nothing trained


@pytest.mark.slow
def test_a_folder_keeps_its_settings(grid, tmp_path, capsys) -> None:
    out = grid
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy2(out / "ablation.json", copy / "ablation.json")
    assert _ablate(copy, *VARIANTS, "--val-tasks", "5") == 2
    assert "holds an ablation with val_tasks=4, not 5" in capsys.readouterr().err
    assert _ablate(copy, *VARIANTS, "--budget", "20") == 2
    assert "holds an ablation with budget=10, not 20" in capsys.readouterr().err
    # --time-budget on a folder with a budget continues it with that budget (nothing measured)
    timed = ["ablate", *TINY[:2], *TINY[4:], "--out", str(copy), *VARIANTS, "--time-budget", "4"]
    assert main([*timed, "--dry-run"]) == 0
    assert "budget: 10 meta-iterations = 5 epochs x 2 x 2 tasks" in capsys.readouterr().out
    # a dry run of the finished grid lists its runs as finished
    assert _ablate(out, *VARIANTS, "--dry-run") == 0
    printed = capsys.readouterr().out
    assert printed.count("(finished, skipped): mamlpp train") == 4
    assert "0 to run, 4 finished" in printed
    assert main(["ablate", "--aggregate-only", str(tmp_path / "nothing")]) == 2
    assert "is not an ablation folder" in capsys.readouterr().err


def test_dry_run_and_list_train_nothing(tmp_path, capsys) -> None:
    out = tmp_path / "dry"
    assert _ablate(out, "--variants", "all", "--seeds", "0,1", "--dry-run") == 0
    printed = capsys.readouterr().out
    assert not out.exists()
    assert printed.count("(to run): mamlpp train --preset synthetic") == 22
    assert "maml++/per_step-bn seed 1" in printed and "meta.bn_mode=per_step" in printed
    assert main(["ablate", "--list"]) == 0
    listing = capsys.readouterr().out
    assert all(v.name in listing for v in ablate.GRID)


def _publisher():
    """tools/publish_results.py, a script outside the library, loaded as a module."""
    return load_script("tools/publish_results.py", "publish_results")


def test_published_gpu_lines_judge_each_setting_against_its_own_target() -> None:
    results = _publisher()

    def study(ways: int, accuracy: float) -> dict:
        run = {"device": "cuda:0"}
        plus = {"name": "maml++", "mean_test_accuracy": accuracy, "mean_test_ci95": 0.003}
        settings = {"ways": ways, "shots": 1, "budget": 30000, "time_budget_s": 240}
        return {
            "variants": [{**plus, "runs": [run]}],
            "settings": settings,
            "environment": {"gpu": "NVIDIA H100"},
            "test_tasks": {"count": 600},
        }

    lines = results._gpu_lines({"g5": study(5, 0.9930), "g20": study(20, 0.9710)})
    assert len(lines) == 2
    assert "5-way 1-shot" in lines[0] and "Target >= 99.40%: NOT met" in lines[0]
    assert "20-way 1-shot" in lines[1] and "Target >= 97.00%: met" in lines[1]
    assert "97.65%" in lines[1] and "time budget 240 s" in lines[1]


@pytest.mark.slow
def test_publish_copies_studies_and_fills_the_results_section(grid, tmp_path) -> None:
    results = _publisher()
    out = grid
    doc = tmp_path / "reproduce.md"
    doc.write_text(f"# How\n\n{results.BEGIN}\nplaceholder\n{results.END}\n\nafter\n")
    dest = tmp_path / "results"
    code = results.main(
        [
            "publish",
            "--dest",
            str(dest),
            "--study",
            f"syn={out}",
            "--command",
            f"mamlpp ablate --data-dir {tmp_path / 'data'} --out {out}",
            "--fill",
            str(doc),
        ]
    )
    assert code == 0
    data = json.loads((out / "results.json").read_text())
    published = (dest / "syn" / "results.json").read_text()
    assert json.loads(published.replace("STUDY_DIR", str(out.parent))) == data
    # No folder of this machine in anything published: placeholders instead.
    for path in [doc, *dest.rglob("*.md"), *dest.rglob("*.json"), *dest.rglob("*.txt")]:
        assert str(tmp_path) not in path.read_text() and str(out.parent) not in path.read_text()
    assert "--data-dir DATA_DIR --out STUDY_DIR/" in doc.read_text()
    assert (dest / "syn" / "test-accuracy.png").is_file()
    assert (dest / "syn" / "report" / "report.md").is_file()
    assert not list((dest / "syn").rglob("*.pt"))  # results only, no checkpoints
    section = (dest / "RESULTS.md").read_text()
    filled = doc.read_text()
    assert "placeholder" not in filled and filled.endswith("after\n")
    for row in data["variants"]:
        mean, std = row["mean_test_accuracy"], row["std_test_accuracy"]
        assert f"{100 * mean:.2f} ± {100 * std:.2f}" in section
        assert f"{100 * mean:.2f} ± {100 * std:.2f}" in filled
    assert "[results/syn/results.md](results/syn/results.md)" in filled  # relative to the doc
    assert "has not been run for these results" in section  # no GPU study
    provenance = (dest / "PROVENANCE.md").read_text()
    assert (
        "--data-dir DATA_DIR --out STUDY_DIR/grid" in provenance and torch.__version__ in provenance
    )
    assert "* Published: " in provenance
    # Rewriting the text from what is published is not a new publication, and says so.
    assert results.main(["regenerate", "--dest", str(dest)]) == 0
    assert "* Regenerated: " in (dest / "PROVENANCE.md").read_text()
    assert (dest / "RESULTS.md").read_text() == section
    assert data["environment"]["cpu_count"] == os.cpu_count()
    missing = tmp_path / "plain.md"
    missing.write_text("no markers\n")
    assert results.main(["regenerate", "--dest", str(dest), "--fill", str(missing)]) == 1
    # The README gets the short form: the tables, then a link to the speed and commands.
    readme = tmp_path / "README.md"
    readme.write_text(f"{results.BEGIN}\n{results.END}\n")
    assert results.main(["regenerate", "--dest", str(dest), "--fill", str(readme)]) == 0
    short = readme.read_text()
    assert "### Speed" in section and "### Speed" not in short and "mamlpp ablate" not in short
    assert f"{100 * mean:.2f} ± {100 * std:.2f}" in short
    assert "[results/RESULTS.md](results/RESULTS.md)" in short
    # A study of another kind (its own results.md) is not taken for an ablation.
    other = dest / "distributed-quality"
    other.mkdir()
    (other / "results.json").write_text('{"kind": "distributed-quality"}')
    assert results.main(["regenerate", "--dest", str(dest)]) == 0
    assert (dest / "RESULTS.md").read_text() == section


def _script(name: str, out: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable, **env}
    return subprocess.run(
        ["bash", str(REPO / "benchmarks" / name), str(out)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )


@pytest.mark.slow
def test_gpu_repro_dry_run(tmp_path) -> None:
    done = _script("gpu_repro.sh", tmp_path / "gpu")
    assert done.returncode == 0, done.stderr
    # Both settings, 4 minutes of training each, 600 test tasks.
    assert done.stdout.count("--time-budget 240") == 2 and "--test-tasks 600" in done.stdout
    assert "--ways 5 " in done.stdout and "--ways 20 " in done.stdout
    assert "maml++ seed 0 (to run)" in done.stdout and "device cuda" in done.stdout
    assert not (tmp_path / "gpu").exists()
    shorter = _script("gpu_repro.sh", tmp_path / "gpu", TRAIN_SECONDS="300")
    assert "--time-budget 300" in shorter.stdout


@pytest.mark.slow
def test_cpu_study_dry_run(tmp_path) -> None:
    done = _script("cpu_study.sh", tmp_path / "study", DOCS_DIR=str(tmp_path / "docs"))
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "--budget 1000 --seeds 0,1,2 --variants maml,maml++,fomaml" in text
    assert "--budget 500 --seeds 0 --variants " + ",".join(v.name for v in ablate.GRID) in text
    assert text.count("(to run): mamlpp train --preset omniglot-5w1s") == 9 + 11
    assert "train.iterations_per_epoch=10" in text and "train.iterations_per_epoch=5" in text
    assert "device cpu, jobs 2, threads per run 1" in text
    assert "paths ['batched', 'loop']" in text
    assert f"would write {tmp_path / 'docs' / 'PROVENANCE.md'}" in text
    assert not (tmp_path / "study").exists() and not (tmp_path / "docs").exists()
    bad = _script("cpu_study.sh", tmp_path / "study", MAIN_BUDGET="1050")
    assert bad.returncode == 2 and "not a multiple" in bad.stderr
