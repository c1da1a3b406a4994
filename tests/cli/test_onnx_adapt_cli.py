"""`mamlpp adapt RUN --support DIR --export-classifier FILE.onnx` on a run trained for seconds
on real Omniglot: the file's class names, source and checkpoints; onnxruntime on it equals
`mamlpp adapt --query` of each image alone (a single model and a top-2 ensemble); usage errors
are one line, exit code 2, and write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from own_images_helpers import omniglot_characters, write_classes

from mamlpp.cli.main import main
from mamlpp.run.predictor import FewShotPredictor

ort = pytest.importorskip("onnxruntime", reason='pip install "mamlpp[onnx]"')

WAYS = 5


@pytest.fixture(scope="module")
def run_dir(omniglot_dir, tmp_path_factory) -> Path:
    """MAML++ on 20 background characters, 2 epochs x 3 iterations, 8 filters (two checkpoints
    for a top-2 ensemble); plumbing, not accuracy."""
    characters = omniglot_characters(omniglot_dir / "images_background.zip", 30)
    names = sorted(characters)
    root = tmp_path_factory.mktemp("onnx-cli")
    for split, chosen in (("train", names[:20]), ("val", names[20:25]), ("test", names[25:])):
        write_classes(root / "data" / split, {n: characters[n] for n in chosen})
    run = root / "run"
    args = ["train", "--preset", "synthetic", "--data-dir", str(root / "data"), "--out", str(run)]
    settings = {
        "data.dataset": "folder",
        "model.channels": 8,
        "train.epochs": 2,
        "train.iterations_per_epoch": 3,
        "eval.val_tasks": 3,
        "eval.test_tasks": 3,
        "eval.top_k": 2,
    }
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    assert main([*args, "--quiet"]) == 0
    return run


@pytest.fixture(scope="module")
def task(omniglot_dir, tmp_path_factory) -> tuple[Path, list[Path]]:
    """support/<class>/ (1 image each) and 2 query PNGs of held-out characters."""
    characters = omniglot_characters(omniglot_dir / "images_evaluation.zip", WAYS, skip=100)
    root = tmp_path_factory.mktemp("onnx-cli-task")
    support = write_classes(root / "support", characters, limit=1)
    queries = []
    for i, name in enumerate(sorted(characters)[:2]):
        file = sorted(characters[name])[-1]
        queries.append(root / f"q{i}.png")
        queries[-1].write_bytes(characters[name][file])
    return support, queries


def _alone(run: Path, support: Path, query: Path, tmp: Path, *extra: str) -> dict:
    out = tmp / f"{query.stem}.json"
    args = ["adapt", str(run), "--support", str(support), "--query", str(query), "--out", str(out)]
    assert main([*args, *extra]) == 0
    (prediction,) = json.loads(out.read_text())["predictions"]
    return prediction


@pytest.mark.parametrize("top_k", [1, 2])
def test_the_exported_file_equals_mamlpp_adapt_on_each_image(
    run_dir, task, top_k, tmp_path, capsys
) -> None:
    support, queries = task
    path = tmp_path / "classifier.onnx"
    args = ["adapt", str(run_dir), "--support", str(support), "--export-classifier", str(path)]
    assert main([*args, "--top-k", str(top_k)]) == 0  # no --query needed
    assert f"wrote {path}" in capsys.readouterr().out

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    classes = sorted(p.name for p in support.iterdir())
    assert json.loads(meta["classes"]) == classes  # folder-name order, as mamlpp adapt
    assert meta["source"] == str(run_dir)
    predictor = FewShotPredictor.from_run(run_dir, top_k=top_k)
    assert json.loads(meta["checkpoints"]) == predictor.sources and len(predictor.sources) == top_k
    assert meta["resample"] == "bilinear" and meta["channels"] == "1"

    # The file's input: the pixels mamlpp prepares (105x105 PNGs resized to 28x28) / 255.
    x = np.stack([predictor.preprocessing.pixels(q) for q in queries]).astype(np.float32) / 255
    probabilities = session.run(None, {"image": x})[0]
    for query, row in zip(queries, probabilities, strict=True):
        top = ["--top-k", str(top_k)]
        expected = _alone(run_dir, support, query, tmp_path, *top)
        assert classes[int(row.argmax())] == expected["predicted"]
        wanted = [expected["probabilities"][c] for c in classes]
        np.testing.assert_allclose(row, wanted, rtol=0, atol=1e-5)
    capsys.readouterr()


def test_queries_and_the_classifier_in_one_call(run_dir, task, tmp_path, capsys) -> None:
    support, queries = task
    path, out = tmp_path / "c.onnx", tmp_path / "p.csv"
    args = ["adapt", str(run_dir), "--support", str(support), "--query", str(queries[0])]
    assert main([*args, "--out", str(out), "--export-classifier", str(path)]) == 0
    assert path.stat().st_size > 0 and out.read_text().startswith("file,predicted")
    printed = capsys.readouterr().out
    assert f"wrote {path}" in printed and str(queries[0]) in printed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--export-classifier", "{tmp}/c.txt"], r"--export-classifier must end in \.onnx"),
        (["--export-classifier", "{tmp}/missing/c.onnx"], "folder .* does not exist"),
        ([], r"give --query images to classify, or --export-classifier FILE\.onnx"),
        (["--out", "{tmp}/p.csv", "--export-classifier", "{tmp}/c.onnx"], "give --query"),
        (["--export-classifier", "{tmp}/c.onnx", "--support", "{few}"], "has 2 classes"),
    ],
)
def test_errors_are_one_line_and_write_nothing(
    run_dir, task, change, message, tmp_path, capsys
) -> None:
    import re

    few = tmp_path / "few"
    for name in sorted(p.name for p in task[0].iterdir())[:2]:
        (few / name).mkdir(parents=True)
        for image in (task[0] / name).iterdir():
            (few / name / image.name).write_bytes(image.read_bytes())
    extra = [a.format(tmp=tmp_path, few=few) for a in change]
    capsys.readouterr()
    assert main(["adapt", str(run_dir), "--support", str(task[0]), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mamlpp: error: ") and "\n" not in err, err
    assert re.search(message, err), err
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob("*.csv"))
