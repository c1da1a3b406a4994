"""docs/onnx.md's onnxruntime example, run literally (the code block under its marker) on PNG
files: it must print the class and probability mamlpp gives for that image alone, for Omniglot's
preprocessing (grey, nearest neighbour, 1 bit per pixel), a grey model given a colour PNG, and an
RGB model given a PNG of another size (bilinear resize)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mamlpp.run.build import build_learner
from mamlpp.run.datasource import preprocessing_for
from mamlpp.run.experiment import build_config
from mamlpp.run.predictor import FewShotPredictor

pytest.importorskip("onnxruntime", reason='pip install "mamlpp[onnx]"')

DOC = Path(__file__).resolve().parents[2] / "docs" / "onnx.md"
MARKER = "<!-- classify.py:"
WAYS = 5


def example_code() -> str:
    """The ```python block right after the marker comment in docs/onnx.md."""
    text = DOC.read_text(encoding="utf-8")
    after = text[text.index(MARKER) :]
    start = after.index("```python\n") + len("```python\n")
    return after[start : after.index("```\n", start)]


def test_the_example_is_about_ten_lines() -> None:
    code = [line for line in example_code().splitlines() if line.strip()]
    assert len(code) <= 15, code  # 12 lines and the imports
    imported = {line.split()[1].rstrip(",") for line in code if line.startswith("import ")}
    assert imported <= {"json", "sys", "numpy", "onnxruntime"}  # and PIL below
    assert all("mamlpp" not in line and "torch" not in line for line in code)


def _png(path: Path, size: tuple[int, int], mode: str, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    shape = size[::-1] if mode == "L" else (*size[::-1], 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


@pytest.mark.parametrize(
    ("dataset", "model_mode", "file_mode", "file_size"),
    [
        ("omniglot", "L", "L", (105, 105)),  # Omniglot's own rule, on a 105x105 grey PNG
        ("folder-grey", "L", "RGB", (40, 33)),  # a colour PNG for a grey model
        ("folder-rgb", "RGB", "RGB", (41, 30)),  # an RGB model, bilinear resize
    ],
)
def test_the_doc_example_prints_mamlpp_own_answer(
    dataset, model_mode, file_mode, file_size, tmp_path, monkeypatch, capsys
) -> None:
    data = {"dataset": "omniglot"} if dataset == "omniglot" else {"dataset": "folder"}
    if dataset.startswith("folder"):
        data["channels"] = dataset.removeprefix("folder-")
    config = build_config({"data": data, "model": {"channels": 8}})
    channels = 1 if model_mode == "L" else 3
    predictor = FewShotPredictor(
        config, [build_learner(config, channels)], preprocessing_for(config.data, channels)
    )
    support = {
        f"class {i}": [_png(tmp_path / f"s{i}.png", file_size, file_mode, i)] for i in range(WAYS)
    }
    path = tmp_path / "classifier.onnx"
    predictor.adapt(support).to_onnx(path)
    script = tmp_path / "classify.py"
    script.write_text(example_code(), encoding="utf-8")
    for seed in (10, 11):
        query = _png(tmp_path / f"q{seed}.png", file_size, file_mode, seed)
        expected = predictor.adapt_and_predict(support, [query])
        monkeypatch.setattr(sys, "argv", [str(script), str(path), str(query)])
        runpy.run_path(str(script), run_name="__main__")
        printed = capsys.readouterr().out.strip()
        name, _, probability = printed.rpartition(" ")
        assert name == expected.predicted[0], printed
        assert abs(float(probability) - expected.confidence[0]) <= 1e-5, printed
