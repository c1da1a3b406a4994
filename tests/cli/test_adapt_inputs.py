"""The rough edges of `adapt`, `evaluate` and `export` on input they do not expect are one-line
errors or notes: --top-k 0, a folder that is not a run, a file that is not a model, a support
file given for a support folder, and colour images made grey (the command and the predictor)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import train_tiny
from PIL import Image

from mamlpp.cli.main import main


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rough") / "run"
    assert train_tiny(out) == 0
    return out


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("mamlpp: error: ") and "\n" not in err, err
    return err


def _grey(path: Path, value: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((28, 28), value, dtype=np.uint8)).save(path)
    return path


def _colour(path: Path, rgb: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (28, 28), color=rgb).save(path)
    return path


@pytest.fixture
def task(tmp_path: Path) -> tuple[Path, Path]:
    """Five grey support classes of one image each, and a folder of two grey queries."""
    for c in range(5):
        _grey(tmp_path / "support" / f"c{c}" / "a.png", 40 * c)
    for q in range(2):
        _grey(tmp_path / "query" / f"q{q}.png", 100 + q)
    return tmp_path / "support", tmp_path / "query"


def test_adapt_refuses_top_k_0_as_export_does(run: Path, task, tmp_path: Path, capsys) -> None:
    support, query = task
    out = tmp_path / "p.json"
    args = ["adapt", str(run), "--support", str(support), "--query", str(query)]
    assert main([*args, "--top-k", "0", "--out", str(out)]) == 2
    assert "--top-k must be >= 1, got 0" in _error_line(capsys)
    assert not out.exists()
    assert main(["export", str(run), str(tmp_path / "m.pt"), "--top-k", "0"]) == 2
    assert "--top-k must be >= 1, got 0" in _error_line(capsys)


def test_not_a_run_folder_is_a_usage_error(tmp_path: Path, task, capsys) -> None:
    support, query = task
    empty = tmp_path / "empty"
    empty.mkdir()
    commands = [
        ["evaluate", str(empty), "--device", "cpu"],
        ["adapt", str(empty), "--support", str(support), "--query", str(query)],
        ["export", str(empty), str(tmp_path / "m.pt")],
    ]
    for args in commands:
        assert main(args) == 2, args
        assert f"{empty} is not a mamlpp run folder (no config.toml)" in _error_line(capsys)


@pytest.mark.parametrize("content", [b"", b"just some text\n", None])
def test_a_file_that_is_not_a_model_says_why(content, task, tmp_path: Path, capsys) -> None:
    support, query = task
    model = tmp_path / "model.bin"
    if content is None:
        _grey(model.with_suffix(".png"), 0).rename(model)  # an image given as the model
    else:
        model.write_bytes(content)
    assert main(["adapt", str(model), "--support", str(support), "--query", str(query)]) != 0
    err = _error_line(capsys)
    reason = re.search(rf"cannot read model file {re.escape(str(model))}: (.*)$", err)
    assert reason and len(reason.group(1).strip()) > 10, err
    assert "torch" in reason.group(1)


def test_a_support_file_is_not_a_support_folder(run: Path, task, capsys) -> None:
    support, query = task
    image = next((support / "c0").iterdir())
    assert main(["adapt", str(run), "--support", str(image), "--query", str(query)]) == 2
    err = _error_line(capsys)
    assert f"--support {image} is a file, not a folder of class folders" in err
    assert "does not exist" not in err


def test_colour_images_made_grey_are_one_note(run: Path, task, capsys) -> None:
    support, query = task
    _colour(support / "c1" / "a.png", (200, 30, 30))
    _colour(support / "c2" / "a.png", (10, 200, 30))
    _colour(query / "q0.png", (10, 30, 200))
    _colour(query / "q1.png", (90, 90, 90))  # RGB, but grey: nothing lost, not counted
    assert main(["adapt", str(run), "--support", str(support), "--query", str(query)]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "colour" in line]
    assert len(notes) == 1, notes
    assert notes[0].startswith("note: 3 colour images were converted to grey")
    assert str(support / "c1" / "a.png") in notes[0]


def test_predictor_notes_colour_and_cleans_pillow_messages(run: Path) -> None:
    from mamlpp.errors import InputError
    from mamlpp.run.predictor import FewShotPredictor

    predictor = FewShotPredictor.from_run(run)
    grey = [Image.fromarray(np.full((28, 28), 50 * c, dtype=np.uint8)) for c in range(5)]
    red = Image.new("RGB", (28, 28), color=(255, 0, 0))
    result = predictor.adapt_and_predict({f"c{c}": [grey[c]] for c in range(5)}, [red, red])
    assert result.notes == [
        "2 colour images were converted to grey, as the model takes grey images: "
        "query image 0, query image 1"
    ]
    plain = predictor.adapt_and_predict({f"c{c}": [grey[c]] for c in range(5)}, grey[0])
    assert plain.notes == []
    support: dict = {f"c{c}": [grey[c]] for c in range(5)}
    support["c4"] = [b"not an image"]
    with pytest.raises(InputError) as caught:
        predictor.adapt_and_predict(support, grey[0])
    assert str(caught.value) == "unreadable image support image 4: cannot identify image file"
