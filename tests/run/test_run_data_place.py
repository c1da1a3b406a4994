"""`evaluate` finds and checks a run's data before it builds anything: the folder data.json
records is used without --data-dir, other images are refused from their listing (no cache
written into them, no "test split has only ..." from building their splits), and a
preprocessing that could not serve later (ImageNet statistics on grey images) is refused before
training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from own_images_helpers import omniglot_characters, write_classes

from mamlpp.cli.main import main

SETTINGS = {
    "data.dataset": "folder",
    "data.val_fraction": 0.2,  # 30 classes: 18 train, 6 val, 6 test
    "data.test_fraction": 0.2,
    "model.channels": 4,
    "train.epochs": 1,
    "train.iterations_per_epoch": 2,
    "train.tasks_per_batch": 2,
    "train.log_every": 1,
    "eval.val_tasks": 4,
    "eval.test_tasks": 4,
    "eval.batch_size": 4,
    "eval.top_k": 1,
    "train.threads": 1,
}


def _args(data: Path, out: Path, **extra) -> list[str]:
    args = ["train", "--preset", "synthetic", "--data-dir", str(data), "--out", str(out)]
    for key, value in {**SETTINGS, **extra}.items():
        args += ["--set", f"{key}={value}"]
    return [*args, "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def folders(omniglot_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A flat folder of 30 Omniglot characters (10 images each), and one of 10 other
    characters (its test split: 2 classes, fewer than the 5 ways)."""
    root = tmp_path_factory.mktemp("data")
    zip_path = omniglot_dir / "images_background.zip"
    first = write_classes(root / "first", omniglot_characters(zip_path, 30), limit=10)
    small = write_classes(root / "small", omniglot_characters(zip_path, 10, skip=30), limit=10)
    return first, small


@pytest.fixture(scope="module")
def trained(folders, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "flat"
    assert main(_args(folders[0], run)) == 0
    return run


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("mamlpp: error: ") and "\n" not in err, err
    return err


def test_evaluate_checks_other_images_before_building_or_caching(
    trained: Path, folders, capsys
) -> None:
    small = folders[1]
    before = sorted(p.name for p in small.iterdir())
    code = main(["evaluate", str(trained), "--data-dir", str(small), "--device", "cpu"])
    err = _error_line(capsys)
    assert code == 2, err
    assert f"{trained} was trained on folder data in {folders[0].resolve()}" in err
    assert "pass --allow-other-data" in err
    assert "only" not in err  # not the split's complaint: the data check came first
    assert sorted(p.name for p in small.iterdir()) == before  # no cache written into it


def test_evaluate_uses_the_recorded_folder(trained: Path, folders, monkeypatch, capsys) -> None:
    monkeypatch.delenv("MAMLPP_DATA", raising=False)
    assert main(["evaluate", str(trained), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert (
        f"note: using the run's data folder {folders[0].resolve()} (recorded in data.json)" in out
    )
    written = json.loads((trained / "eval-test-top1-4.json").read_text())
    assert written["own_data"] is True


def test_evaluate_names_a_recorded_folder_that_is_gone(
    trained: Path, folders, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.delenv("MAMLPP_DATA", raising=False)
    moved = tmp_path / "moved"
    shutil.copytree(folders[0], moved)
    run = tmp_path / "run"
    assert main(_args(moved, run)) == 0
    shutil.rmtree(moved)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--device", "cpu"]) == 2
    err = _error_line(capsys)
    assert f"the run was trained on the images in {moved.resolve()} (data.json)" in err
    assert "--data-dir" in err


def test_imagenet_statistics_on_grey_images_are_refused_before_training(
    folders, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "grey-imagenet"
    assert main(_args(folders[0], run, **{"data.normalize": "imagenet"})) == 2
    err = _error_line(capsys)
    assert "data.normalize=imagenet needs RGB images, but every image is grey" in err
    assert "data.channels=rgb" in err
    assert not (run / "metrics.jsonl").exists() and not (run / "checkpoints").exists()
    fixed = {"data.normalize": "imagenet", "data.channels": "grey"}
    assert main(_args(folders[0], tmp_path / "grey", **fixed)) == 2
    assert "data.normalize=imagenet needs data.channels=rgb" in _error_line(capsys)


@pytest.mark.slow
def test_imagenet_statistics_with_rgb_serve_everywhere(folders, tmp_path: Path, capsys) -> None:
    """The way the refusal offers: the grey images trained as RGB export and adapt."""
    run = tmp_path / "rgb-imagenet"
    rgb = {"data.normalize": "imagenet", "data.channels": "rgb"}
    assert main(_args(folders[0], run, **rgb)) == 0
    record = json.loads((run / "data.json").read_text())
    assert record["preprocessing"]["channels"] == 3  # recorded as used
    assert main(["export", str(run), str(tmp_path / "m.safetensors")]) == 0
    support = tmp_path / "support"
    classes = sorted(p for p in folders[0].iterdir() if p.is_dir())[:5]
    for folder in classes:
        shutil.copytree(folder, support / folder.name)
    query = next(classes[0].iterdir())
    args = ["--support", str(support), "--query", str(query)]
    assert main(["adapt", str(tmp_path / "m.safetensors"), *args]) == 0
    assert main(["adapt", str(run), *args]) == 0


@pytest.mark.parametrize("content", ["{}", '{"dataset": "folder"}'])
def test_an_emptied_data_json_does_not_turn_the_check_off(
    trained: Path, folders, tmp_path: Path, content: str, capsys
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "data.json").write_text(content)  # what a mistaken --out could have left
    other = tmp_path / "other"
    shutil.copytree(folders[0], other)
    shutil.rmtree(sorted(p for p in other.iterdir() if p.is_dir())[0])  # one class fewer
    code = main(["evaluate", str(run), "--data-dir", str(other), "--device", "cpu"])
    err = _error_line(capsys)
    assert code == 2 and f"{run} was trained on folder data in {folders[0].resolve()}" in err
    resume = _args(other, run)
    assert main([*resume, "--resume"]) == 2
    assert "a run continues on the data it started on" in _error_line(capsys)
