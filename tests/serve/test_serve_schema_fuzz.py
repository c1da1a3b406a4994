"""Fuzz GET /health, GET /model and POST /predict from the app's own OpenAPI schema with
Schemathesis, in process (its ASGI transport, no network server), for a bounded number of
examples per operation: no answer is a 5xx, and every 4xx is {"error": one sentence}."""

from __future__ import annotations

import warnings

import pytest
from hypothesis import HealthCheck, settings
from tiny_model_helpers import untrained_predictor

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi", reason='the serve extra is missing: pip install "mamlpp[serve]"')

from schemathesis.checks import not_a_server_error  # noqa: E402

from mamlpp.serve.app import create_app  # noqa: E402

EXAMPLES = 60  # per operation: the three together run in about 10 s on a 2-core CPU

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(untrained_predictor()))


def one_sentence_4xx(ctx, response, case) -> bool | None:
    """A 4xx answer is exactly {"error": "<one line>"}."""
    if 400 <= response.status_code < 500:
        body = response.json()
        assert isinstance(body, dict) and list(body) == ["error"], body
        message = body["error"]
        assert isinstance(message, str) and message.strip(), body
        assert "\n" not in message and "Traceback" not in message, message
    return None


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same examples every run: a failure here is reproducible
)
def test_the_api_never_answers_5xx_and_every_4xx_is_one_sentence(case) -> None:
    response = case.call()
    case.validate_response(response, checks=[not_a_server_error, one_sentence_4xx])
