"""Nothing of a run is overwritten by accident, and a run's data record and JSON stay sound:
`train --out` refuses a folder of the user's own files, `export` and `adapt --out` refuse the
run's records and checkpoints (also through a symbolic link), a data.json without a valid record
falls back to the checkpoints', and no NaN reaches any JSON file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import train_tiny
from PIL import Image

from mamlpp.cli.main import main
from mamlpp.run.data_record import run_record
from mamlpp.run.run_dir import RunDir


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("safety") / "run"
    assert train_tiny(out) == 0
    return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("mamlpp: error: ") and "\n" not in err, err
    return err


def _task(root: Path) -> tuple[Path, Path]:
    for c in range(5):
        folder = root / "support" / f"c{c}"
        folder.mkdir(parents=True)
        Image.fromarray(np.full((28, 28), 40 * c, dtype=np.uint8)).save(folder / "a.png")
    (root / "query").mkdir()
    Image.fromarray(np.full((28, 28), 90, dtype=np.uint8)).save(root / "query" / "q.png")
    return root / "support", root / "query"


# -- item 1: train --out into a folder that is not a run -----------------------------------------


def test_train_refuses_a_folder_of_own_files_and_writes_nothing(tmp_path: Path, capsys) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.toml").write_text("# my own notes\n")
    (mine / "summary.json").write_text('{"mine": true}\n')
    before = _snapshot(mine)
    assert train_tiny(mine) == 2
    err = _error_line(capsys)
    assert f"--out {mine} is not empty (config.toml, summary.json)" in err
    assert "not a mamlpp run folder" in err
    assert _snapshot(mine) == before
    assert sorted(p.name for p in mine.iterdir()) == ["config.toml", "summary.json"]
    # Also with --resume: a folder that is no run is not continued either.
    assert main(["train", "--out", str(mine), "--resume", "--device", "cpu", "--quiet"]) == 2
    assert "is not empty" in _error_line(capsys)
    assert _snapshot(mine) == before


def test_train_still_takes_an_empty_folder_and_continues_a_run(
    trained: Path, tmp_path: Path, capsys
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train_tiny(empty, "train.epochs=1") == 0
    assert (empty / "summary.json").is_file()
    assert train_tiny(trained) == 2  # a run without --resume: the refusal of before
    assert "already holds a run" in _error_line(capsys)


# -- item 2: export and adapt --out into a run's records or checkpoints --------------------------


@pytest.mark.parametrize(
    "target", ["checkpoints/latest.pt", "checkpoints/epoch-0002.pt", "checkpoints/new.safetensors"]
)
def test_export_refuses_the_runs_checkpoints(trained: Path, target: str, capsys) -> None:
    before = _snapshot(trained)
    assert main(["export", str(trained), str(trained / target)]) == 2
    err = _error_line(capsys)
    assert f"would overwrite its checkpoints/ folder of the run {trained.resolve()}" in err
    assert _snapshot(trained) == before


@pytest.mark.parametrize("record", ["data.json", "summary.json", "config.toml", "metrics.jsonl"])
def test_adapt_out_refuses_the_runs_records(trained: Path, record: str, tmp_path, capsys) -> None:
    support, query = _task(tmp_path)
    out = trained / record
    before = _snapshot(trained)
    args = ["adapt", str(trained), "--support", str(support), "--query", str(query)]
    code = main([*args, "--out", str(out)])
    err = _error_line(capsys)
    assert code == 2
    if out.suffix in (".csv", ".json"):
        assert f"would overwrite its record {record} of the run {trained.resolve()}" in err
    assert _snapshot(trained) == before


def test_outputs_through_a_symbolic_link_are_refused(trained: Path, tmp_path: Path, capsys) -> None:
    support, query = _task(tmp_path)
    link = tmp_path / "elsewhere"
    link.symlink_to(trained / "checkpoints", target_is_directory=True)
    before = _snapshot(trained)
    assert main(["export", str(trained), str(link / "latest.pt")]) == 2
    assert "would overwrite its checkpoints/ folder" in _error_line(capsys)
    file_link = tmp_path / "predictions.json"
    file_link.symlink_to(trained / "summary.json")
    args = ["adapt", str(trained), "--support", str(support), "--query", str(query)]
    assert main([*args, "--out", str(file_link)]) == 2
    assert "would overwrite its record summary.json" in _error_line(capsys)
    from mamlpp.run.output_guard import run_file_of

    dotted = trained / "checkpoints" / ".." / "data.json"
    assert run_file_of(dotted) == (trained.resolve(), "its record data.json")
    assert _snapshot(trained) == before


def test_outputs_beside_the_records_are_written(trained: Path, tmp_path: Path, capsys) -> None:
    support, query = _task(tmp_path)
    model = trained.parent / "model.safetensors"
    assert main(["export", str(trained), str(model)]) == 0
    inside = trained / "predictions.csv"  # in the run folder, but none of its records
    args = ["adapt", str(trained), "--support", str(support), "--query", str(query)]
    assert main([*args, "--out", str(inside)]) == 0
    assert inside.is_file() and model.is_file()
    inside.unlink()


# -- item 7: a data.json without a valid record ---------------------------------------------------


@pytest.mark.parametrize("content", ["{}", '{"fingerprint": "x"}', "[1, 2]", '{"splits": {}}'])
def test_an_invalid_data_json_falls_back_to_the_checkpoints(trained, tmp_path, content) -> None:
    import shutil

    from mamlpp.run.checkpoint import load_checkpoint

    run = RunDir(tmp_path / "copy")
    shutil.copytree(trained, run.root)
    good = json.loads(run.data.read_text())
    run.data.write_text(content)
    state = load_checkpoint(run.latest)
    assert run_record(run, state) == state["data"]
    assert run_record(run, state)["fingerprint"] == good["fingerprint"]
    assert run_record(run, None) is None  # nothing valid anywhere: not checked (with a note)


# -- item 25: no NaN in any JSON ------------------------------------------------------------------


def _strict(text: str):
    def refuse(constant: str):
        raise AssertionError(f"{constant} in JSON")

    return json.loads(text, parse_constant=refuse)


def test_one_evaluation_task_writes_null_not_nan(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert train_tiny(out, "eval.val_tasks=1", "eval.test_tasks=1", "eval.batch_size=1") == 0
    summary = _strict((out / "summary.json").read_text())
    assert summary["test_ci95"] is None and summary["test_tasks"] == 1
    for line in (out / "metrics.jsonl").read_text().splitlines():
        _strict(line)
    assert main(["evaluate", str(out), "--device", "cpu", "--tasks", "1"]) == 0
    written = _strict((out / "eval-test-top2-1.json").read_text())
    assert written["ci95"] is None
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0


def test_json_text_is_strict_and_writes_null() -> None:
    from mamlpp.run.run_dir import json_text

    record = {"a": math.nan, "b": [math.inf, 1.5, {"c": -math.inf}], "d": (2.0, math.nan)}
    assert _strict(json_text(record)) == {
        "a": None,
        "b": [None, 1.5, {"c": None}],
        "d": [2.0, None],
    }


def test_every_score_has_a_record_of_its_own_that_outputs_may_not_replace(tmp_path: Path) -> None:
    """`mamlpp evaluate`'s record names (RunDir.eval_record, also read by the benchmark
    scripts): each protocol, way of scoring and data gets its own file, and every one of them is
    a record of the run that `export` and `adapt --out` refuse to overwrite."""
    from mamlpp.run.output_guard import run_file_of

    run = RunDir(tmp_path)
    run.config.write_text("")
    run.metrics.write_text("")  # a folder training has touched
    names = {
        run.eval_record(split, 3, 600, one_at_a_time=single, episodes=episodes, other_data=data)
        for split in ("val", "test")
        for single in (False, True)
        for episodes in (None, "random")
        for data in (None, "0123abcd")
    }
    assert len(names) == 16
    assert run.eval_record("test", 3, 600, one_at_a_time=True, episodes="random").name == (
        "eval-test-top3-600-single-random.json"
    )
    assert run.eval_record("val", 1, 8, other_data="0123abcd").name == (
        "eval-val-top1-8-otherdata-0123abcd.json"
    )
    assert all(run_file_of(path) is not None for path in names)
