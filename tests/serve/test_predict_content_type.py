"""``POST /predict`` refuses a body that is not multipart/form-data with a 415 and one sentence,
whether the Content-Type is wrong or missing (a declared header parameter once turned the
missing case into FastAPI's 422). The refusal comes before the model is used, so an untrained
learner of the synthetic preset stands behind the app."""

from __future__ import annotations

import re
import warnings

import pytest

pytest.importorskip("fastapi", reason='the serve extra is missing: pip install "mamlpp[serve]"')
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx: pip install httpx")
with warnings.catch_warnings():  # newer Starlette prefers httpx2 and says so on import
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from mamlpp.run.build import build_learner  # noqa: E402
from mamlpp.run.datasource import preprocessing_for  # noqa: E402
from mamlpp.run.predictor import FewShotPredictor  # noqa: E402
from mamlpp.run.presets import resolve_config  # noqa: E402
from mamlpp.serve.app import create_app  # noqa: E402

SENTENCE = r"^send the images as multipart/form-data \(curl -F or a browser FormData\), not "


@pytest.fixture(scope="module")
def client() -> TestClient:
    config = resolve_config("synthetic", None, ["model.channels=8"])
    learner = build_learner(config, in_channels=1)
    predictor = FewShotPredictor(config, [learner], preprocessing_for(config.data, channels=1))
    return TestClient(create_app(predictor))


def _refused(response, shown: str) -> None:
    assert response.status_code == 415, response.text
    message = response.json()["error"]
    assert re.match(SENTENCE + re.escape(shown) + "$", message), message


def test_a_request_without_a_content_type_gets_the_415_sentence(client) -> None:
    response = client.post("/predict")
    assert "content-type" not in {k.lower() for k in response.request.headers}
    _refused(response, "nothing")


@pytest.mark.parametrize(
    ("content_type", "shown"),
    [("text/plain", "text/plain"), ("application/json; charset=utf-8", "application/json")],
)
def test_a_wrong_content_type_gets_the_415_sentence(client, content_type, shown) -> None:
    _refused(client.post("/predict", content=b"x", headers={"content-type": content_type}), shown)


def test_the_schema_asks_for_a_multipart_body_not_a_content_type_parameter(client) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/predict"]["post"]
    assert "multipart/form-data" in operation["requestBody"]["content"]
    assert not [p for p in operation.get("parameters", []) if p["name"].lower() == "content-type"]
