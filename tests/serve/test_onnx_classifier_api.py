"""`POST /classifier` of `mamlpp serve` through FastAPI's TestClient: the same form as /predict
answered with an ONNX file whose onnxruntime probabilities equal /predict's for each query image
sent alone; the same refusals as /predict; 501 in one sentence without the onnx package."""

from __future__ import annotations

import io
import json
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from mamlpp.run.build import build_learner
from mamlpp.run.datasource import preprocessing_for
from mamlpp.run.experiment import build_config
from mamlpp.run.predictor import FewShotPredictor

pytest.importorskip("fastapi", reason='the serve extra is missing: pip install "mamlpp[serve]"')
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx: pip install httpx")
ort = pytest.importorskip("onnxruntime", reason='pip install "mamlpp[onnx]"')
with warnings.catch_warnings():  # newer Starlette prefers httpx2 and says so on import
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from mamlpp.serve.app import Limits, create_app  # noqa: E402

WAYS = 5
NAMES = ["zebra", "cat with spaces", "ünïcode", 'a "quoted" one', "ant"]  # not in name order


def _png(seed: int, size: tuple[int, int] = (37, 29), mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def predictor() -> FewShotPredictor:
    """A fresh 5-way model on 28x28 grey images (the API's plumbing, not accuracy)."""
    config = build_config({"data": {"dataset": "folder"}, "model": {"channels": 8}})
    learner = build_learner(config, 1)
    predictor = FewShotPredictor(config, [learner], preprocessing_for(config.data, 1))
    predictor.origin = "model.safetensors"
    return predictor


@pytest.fixture(scope="module")
def client(predictor) -> TestClient:
    return TestClient(create_app(predictor, Limits(max_files=12)))


def support_fields(shots: int = 1) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [
        (f"support.{name}", (f"{i}-{k}.png", _png(10 * i + k), "image/png"))
        for i, name in enumerate(NAMES)
        for k in range(shots)
    ]


def test_the_file_equals_predict_for_each_image_alone(client, predictor) -> None:
    queries = [(f"q{i}.png", _png(100 + i, mode="L" if i else "RGB")) for i in range(3)]
    query_fields = [("query", (name, data, "image/png")) for name, data in queries]
    # The query fields of /predict's form may be sent too: they are not used.
    response = client.post("/classifier", files=support_fields(2) + query_fields[:1])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    disposition = response.headers["content-disposition"]
    assert disposition == 'attachment; filename="classifier.onnx"'
    session = ort.InferenceSession(response.content, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == NAMES  # the order of the first fields
    assert json.loads(meta["support_images"]) == dict.fromkeys(NAMES, 2)
    assert meta["source"] == "model.safetensors"

    for name, data in queries:
        answer = client.post("/predict", files=[*support_fields(2), ("query", (name, data))])
        assert answer.status_code == 200, answer.text
        (expected,) = answer.json()["predictions"]
        pixels = predictor.preprocessing.pixels(data).astype(np.float32) / 255
        row = session.run(None, {"image": pixels[None]})[0][0]
        wanted = [expected["probabilities"][c] for c in NAMES]
        np.testing.assert_allclose(row, wanted, rtol=0, atol=1e-5)


def _error(response, status: int, text: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and "\n" not in body["error"], body
    assert text in body["error"], body


@pytest.mark.parametrize(
    ("fields", "status", "text"),
    [
        (lambda s: s[:4], 400, "the support set has 4 classes, but the model was trained for 5"),
        (
            lambda s: [*s, ("support.zebra", ("bad.png", b"not a png", "image/png"))],
            400,
            "unreadable image 'bad.png' of class 'zebra'",
        ),  # fmt: skip
        (lambda s: [("query", ("q.png", _png(1), "image/png"))], 400, "no support images"),
        (lambda s: [*s, ("picture", ("x.png", _png(1), "image/png"))], 400, "unknown form field"),
        (lambda s: s * 3, 413, "too many files: at most 12 images per request"),
    ],
)
def test_the_refusals_of_predict(client, fields, status, text) -> None:
    _error(client.post("/classifier", files=fields(support_fields())), status, text)


def test_other_content_types_and_methods(client) -> None:
    _error(client.post("/classifier", json={"support": []}), 415, "multipart/form-data")
    _error(client.get("/classifier"), 405, "GET is not allowed on /classifier")


def test_without_onnx_the_server_says_how_to_install_it(client, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    _error(client.post("/classifier", files=support_fields()), 501, 'pip install "mamlpp[onnx]"')


def test_the_page_has_the_download_button(client) -> None:
    page = client.get("/").text
    assert 'id="download-classifier"' in page
    script = client.get("/static/app.js").text
    assert 'fetch("/classifier"' in script
