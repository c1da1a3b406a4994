"""benchmarks/lake_folder_check.py (outside the library): the folders it writes from the
Omniglot zips are ``omniglot-lake`` read through the image-folder path (the same pixels, names,
alphabets, drawers and test tasks), and its scoring points a copy of a run at them."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

import pytest
import torch
from script_helpers import load_script

from mamlpp.data.folder import load_folder_dataset
from mamlpp.data.images import Preprocessing
from mamlpp.data.omniglot import load_omniglot
from mamlpp.run.episodes import episode_sampler
from mamlpp.run.evaluate import task_fingerprint
from mamlpp.run.experiment import to_toml
from mamlpp.run.presets import resolve_config

check = load_script("benchmarks/lake_folder_check.py", "lake_folder_check_test")


@pytest.mark.slow
def test_the_lake_folders_are_omniglot_lake(omniglot_dir: Path, tmp_path: Path) -> None:
    check.main(["layout", "--data-dir", str(omniglot_dir), "--out", str(tmp_path / "f")])
    flat = sorted((tmp_path / "f" / "flat").iterdir())
    assert len(flat) == 964 and all(len(list(c.iterdir())) == 20 for c in flat)
    folders = load_folder_dataset(
        tmp_path / "f" / "lake",
        Preprocessing(28, 3, (0.0,) * 3, (1.0,) * 3, resample="bilinear"),
        auto_channels=True,
        groups="folders",
        sources="pattern",
        source_pattern=check.DRAWER_PATTERN,
    )
    builtin = load_omniglot(omniglot_dir, split="lake", resample="bilinear")
    for name, split in builtin.items():
        other = folders[name]
        assert other.class_names == split.class_names
        assert torch.equal(other.class_groups, split.class_groups)
        # Image by image in each class's order: pixels, and the drawer of each.
        assert torch.equal(other.images[other.class_images], split.images[split.class_images])
        assert other.image_sources is not None and split.image_sources is not None
        ours, theirs = other.image_sources, split.image_sources
        assert torch.equal(ours[other.class_images], theirs[split.class_images])
    # The scored copy's settings draw omniglot-lake's own test tasks, both protocols.
    config = resolve_config("omniglot-lake-hour")
    for episodes in check.PROTOCOLS:
        data = dataclasses.replace(config.data, eval_episodes=episodes)
        tasks = dataclasses.replace(config, data=data)
        fingerprints = {
            task_fingerprint(episode_sampler(tasks, s["test"], "test", config.eval.test_seed), 20)
            for s in (builtin, folders)
        }
        assert len(fingerprints) == 1


def _fake_run(root: Path, name: str = "trial", *extra: str) -> Path:
    run = root / name
    run.mkdir()
    config = resolve_config("quickstart", overrides=[*check.TRAIN_SETTINGS, *extra])
    (run / "config.toml").write_text(to_toml(config), encoding="utf-8")
    iterations = config.train.epochs * config.train.iterations_per_epoch
    (run / "summary.json").write_text(json.dumps({"iterations": iterations}))
    return run


def test_score_points_a_copy_at_the_lake_folders(tmp_path: Path, monkeypatch) -> None:
    run = _fake_run(tmp_path)
    before = (run / "config.toml").read_text(encoding="utf-8")
    commands: list[list[str]] = []
    monkeypatch.setattr(check, "_run", commands.append)
    check.main(["score", "--folders", str(tmp_path / "f"), str(run)])
    assert (run / "config.toml").read_text(encoding="utf-8") == before  # the run is untouched
    scored = tmp_path / "trial-lake"
    data = tomllib.loads((scored / "config.toml").read_text(encoding="utf-8"))["data"]
    assert (data["dataset"], data["groups"], data["sources"]) == ("folder", "folders", "pattern")
    assert data["source_pattern"] == check.DRAWER_PATTERN
    assert data["eval_episodes"] == "within-group"
    resolve_config(config_file=scored / "config.toml")  # still a valid configuration
    assert len(commands) == 4
    for argv in commands:
        assert argv[:3] == ["mamlpp", "evaluate", str(scored)]
        assert argv[-3:] == ["--data-dir", str(tmp_path / "f" / "lake"), "--allow-other-data"]
    protocols = [(a[a.index("--episodes") + 1], "--one-at-a-time" in a) for a in commands]
    assert sorted(protocols) == [
        ("random", False),
        ("random", True),
        ("within-group", False),
        ("within-group", True),
    ]


def _fake_records(run: Path, accuracies: list[float]) -> None:
    """The 4 evaluation records ``score`` leaves in the scored copy: within one alphabet and
    across alphabets, one at a time and as a batch."""
    scored = run.with_name(run.name + "-lake")
    scored.mkdir()
    names = [
        "eval-test-top3-600-single-otherdata-aa.json",
        "eval-test-top3-600-otherdata-aa.json",
        "eval-test-top3-600-single-random-otherdata-aa.json",
        "eval-test-top3-600-random-otherdata-aa.json",
    ]
    for name, accuracy in zip(names, accuracies, strict=True):
        record = {"accuracy": accuracy, "ci95": 0.01, "task_fingerprint": "f"}
        (scored / name).write_text(json.dumps(record))


def test_table_reads_the_scored_records_of_each_run(tmp_path: Path) -> None:
    short = _fake_run(tmp_path)
    long = _fake_run(tmp_path, "longer", "train.epochs=100")
    _fake_records(short, [0.6, 0.625, 0.8, 0.8125])
    _fake_records(long, [0.7, 0.75, 0.85, 0.875])
    out = tmp_path / "out"
    check.main(["table", str(short), str(long), "--out", str(out), "--conditions", "here"])
    results = json.loads((out / "results.json").read_text())
    assert [run["run"] for run in results["runs"]] == ["trial", "longer"]
    assert [run["training"]["iterations"] for run in results["runs"]] == [1500, 5000]
    assert results["runs"][1]["training"]["settings"][-1] == "train.epochs=100"
    errors = [
        {key: round(value["error"], 4) for key, value in run["test_error"].items()}
        for run in results["runs"]
    ]
    assert errors == [
        {
            "within-group_single": 40.0,
            "within-group_batch": 37.5,
            "random_single": 20.0,
            "random_batch": 18.75,
        },
        {
            "within-group_single": 30.0,
            "within-group_batch": 25.0,
            "random_single": 15.0,
            "random_batch": 12.5,
        },
    ]
    table = (out / "results.md").read_text()
    first = "| 1500 iterations (`train.epochs=30`) | within one alphabet"
    assert first in table and "| 40.00 ± 1.00 | 37.50 ± 1.00 |" in table
    second = "| 5000 iterations (`train.epochs=100`) | letters from any"
    assert second in table and "| 15.00 ± 1.00 | 12.50 ± 1.00 |" in table
