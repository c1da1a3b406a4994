"""Fuzz GET /health, GET /model and POST /predict from the app's own OpenAPI schema with
Schemathesis, in process (its ASGI transport, no network server), for a bounded number of
examples per operation: no answer is a 5xx, and every 4xx is {"error": one sentence}. The schema
sends its image fields as text (it cannot name a file field whose name is a pattern), so damaged
pictures (cut short, bytes flipped, random bytes) are sent as files by a Hypothesis test beside
it: a 4xx, never a 5xx."""

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


def _encoded(fmt: str) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGBA" if fmt in ("PNG", "WEBP", "TIFF") else "RGB", (12, 9), (9, 99, 199, 128)).save(
        out, fmt
    )
    return out.getvalue()


VALID = {fmt: _encoded(fmt) for fmt in ("PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP")}


def damaged_files():
    """Valid small pictures cut short, with bytes flipped, or random bytes."""
    from hypothesis import strategies as st

    def damage(data: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
        out = bytearray(data[: max(1, len(data) - cut)])
        for where, value in flips:
            out[where % len(out)] = value
        return bytes(out)

    mutated = st.builds(
        damage,
        st.sampled_from(sorted(VALID.values(), key=len)),
        st.integers(0, 64),
        st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    )
    return st.one_of(mutated, st.binary(max_size=256), st.sampled_from(list(VALID.values())))


def test_damaged_pictures_are_a_4xx_never_a_5xx() -> None:
    from hypothesis import given
    from hypothesis import strategies as st

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from fastapi.testclient import TestClient
    http = TestClient(schema.app)  # the fuzzed app, in process

    @settings(max_examples=80, deadline=None, derandomize=True)
    @given(st.lists(damaged_files(), min_size=6, max_size=6))
    def check(files: list[bytes]) -> None:
        fields = [(f"support.c{i}", (f"s{i}", data)) for i, data in enumerate(files[:5])]
        fields.append(("query", ("q", files[5])))
        response = http.post("/predict", files=fields)
        assert response.status_code in (200, 400, 413), response.text
        if response.status_code != 200:
            message = response.json()["error"]
            assert "\n" not in message and message.strip(), message

    check()
