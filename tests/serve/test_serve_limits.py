"""`mamlpp serve` under load and at its edges, on an untrained model (plumbing only): bounded
concurrency with a clear 503, the project's pixel limit before Pillow's, a long multipart
boundary, HEAD requests, text fields, and a quiet log."""

from __future__ import annotations

import io
import logging
import re
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image
from tiny_model_helpers import WAYS, png, untrained_predictor

pytest.importorskip("fastapi", reason='the serve extra is missing: pip install "mamlpp[serve]"')
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from mamlpp.serve.app import Limits, create_app  # noqa: E402


@pytest.fixture(scope="module")
def predictor():
    return untrained_predictor()


@pytest.fixture(scope="module")
def client(predictor):
    return TestClient(create_app(predictor))


def task_fields(extra=()):
    fields = [(f"support.c{i}", (f"s{i}.png", png(value=40 * i), "image/png")) for i in range(WAYS)]
    return fields + [("query", ("q.png", png(), "image/png")), *extra]


def one_sentence(response, status: int, pattern: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"]
    message = body["error"]
    assert "\n" not in message and re.search(pattern, message), message
    return message


def test_a_long_multipart_boundary_is_a_400(client) -> None:
    boundary = "b" * 300  # item 10: was HTTP 500 and two tracebacks
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="query"; filename="q.png"\r\n\r\n'
    body = body.encode() + png() + f"\r\n--{boundary}--\r\n".encode()
    response = client.post(
        "/predict",
        content=body,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    one_sentence(response, 400, r"boundary is not valid \(300 characters")


def test_a_picture_over_the_limit_gets_the_projects_413(client) -> None:
    out = io.BytesIO()
    Image.new("1", (14000, 14000)).save(out, "PNG")  # item 16: Pillow's own bomb check fired
    extra = [("query", ("huge.png", out.getvalue(), "image/png"))]
    message = one_sentence(
        client.post("/predict", files=task_fields(extra)),
        413,
        r"^image 'huge\.png' \(query\) .*more than the limit of 40,000,000 pixels$",
    )
    assert "bomb" not in message


@pytest.mark.parametrize("path", ["/", "/health"])
def test_head_answers_200(client, path) -> None:
    response = client.head(path)  # item 26: was 405
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(
        "application/json" if path == "/health" else "text/html"
    )


def test_many_text_fields_are_too_many_fields_not_files(client) -> None:
    fields = {f"x{i}": "1" for i in range(1000)}  # item 26: said "too many files"
    response = client.post("/predict", data=fields, files=task_fields()[:1])
    one_sentence(response, 413, r"^too many form fields: at most 64 fields per request$")


def test_a_text_field_is_no_sixth_class(client) -> None:
    extra = [("support.c5", (None, b"hello"))]  # a text field, not a file (item 26)
    message = one_sentence(
        client.post("/predict", files=task_fields(extra)), 400, r"'support\.c5' is text"
    )
    assert "6 classes" not in message


def test_the_multipart_parsers_messages_stay_out_of_the_log(client, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    boundary = "xyz"
    body = f"--{boundary}XX\r\nnot a multipart body".encode()  # the parser logs, then raises
    response = client.post(
        "/predict",
        content=body,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    one_sentence(response, 400, "not valid multipart/form-data")
    noisy = [r for r in caplog.records if r.name.startswith(("python_multipart", "multipart"))]
    assert not noisy, [r.getMessage() for r in noisy]


def test_requests_beyond_the_slots_wait_then_get_a_503(predictor) -> None:
    app = create_app(predictor, Limits(max_concurrent=1, queue_timeout_s=0.5))
    service = app.state.service
    release = threading.Event()
    real = service.predict

    def slow(task):
        release.wait(10)
        return real(task)

    service.predict = slow
    client = TestClient(app)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(client.post, "/predict", files=task_fields())
        time.sleep(0.3)  # the first request holds the only slot
        second = client.post("/predict", files=task_fields())
        release.set()
        assert first.result().status_code == 200
    one_sentence(second, 503, r"^the server is busy with other requests; try again in \d+ seconds$")
    assert int(second.headers["retry-after"]) >= 1


def test_at_most_max_concurrent_requests_decode_and_predict_at_once(predictor) -> None:
    app = create_app(predictor, Limits(max_concurrent=2, queue_timeout_s=300))
    service = app.state.service
    lock, active, peak = threading.Lock(), [0], [0]
    real = service.predict

    def counted(task):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.05)
            return real(task)
        finally:
            with lock:
                active[0] -= 1

    service.predict = counted
    client = TestClient(app)
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: client.post("/predict", files=task_fields()), range(8)))
    assert [a.status_code for a in answers] == [200] * 8
    assert peak[0] == 2


def test_the_memory_ceiling_follows_the_limits() -> None:
    from mamlpp.serve.app import memory_ceiling

    limits = Limits()
    per_request = 2 * limits.max_request_bytes + 24 * limits.max_pixels
    assert memory_ceiling(limits, 300 << 20) == (300 << 20) + limits.max_concurrent * per_request
    assert memory_ceiling(Limits(max_concurrent=1), 0) < memory_ceiling(limits, 0)
