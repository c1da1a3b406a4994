"""`mamlpp serve`'s HTTP API through FastAPI's TestClient, on a small model trained in seconds on
real Omniglot (as tests/cli/test_adapt.py does): the happy path, every refused input as a 4xx
with one sentence, concurrent requests, equality with `mamlpp adapt`, the page's files, and the
command's own errors. The helpers it shares with other tests are in tests/serve_helpers.py."""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from own_images_helpers import write_classes
from PIL import Image
from serve_helpers import Images, form, held_out_characters, make_task, serving, train_tiny_run

from mamlpp.cli.main import main
from mamlpp.run.predictor import FewShotPredictor

pytest.importorskip("fastapi", reason='the serve extra is missing: pip install "mamlpp[serve]"')
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx: pip install httpx")
with warnings.catch_warnings():  # newer Starlette prefers httpx2 and says so on import
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from mamlpp.serve.app import Limits, create_app  # noqa: E402

WAYS = 5


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def run_dir(omniglot_dir, tmp_path_factory) -> Path:
    return train_tiny_run(omniglot_dir, tmp_path_factory.mktemp("serve-run"))


@pytest.fixture(scope="module")
def characters(omniglot_dir) -> dict[str, dict[str, bytes]]:
    return held_out_characters(omniglot_dir)


@pytest.fixture(scope="module")
def predictor(run_dir) -> FewShotPredictor:
    return FewShotPredictor.from_run(run_dir)


@pytest.fixture(scope="module")
def client(predictor) -> TestClient:
    return TestClient(create_app(predictor))


@pytest.fixture(scope="module")
def task(characters) -> tuple[dict[str, Images], Images]:
    # Classes deliberately not in name order: the answer keeps the order of the fields.
    names = sorted(characters)[:WAYS][::-1]
    return make_task(characters, names, shots=1, queries=2)


def assert_error(response, status: int, pattern: str) -> str:
    """A refusal: ``status`` and exactly ``{"error": one sentence}`` matching ``pattern``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"], body
    message = body["error"]
    assert isinstance(message, str) and message.strip() and "\n" not in message, message
    assert re.search(pattern, message), message
    return message


# ------------------------------------------------------------------------------ the API


def test_health_and_model(client, predictor) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/model").json()
    assert info["ways"] == WAYS and info["shots"] == 1
    assert info["image_size"] == 28 and info["channels"] == 1
    assert info["bn_mode"] == "transductive" and info["batch_dependent"] is True
    assert info["dataset"] == "folder"
    assert info["techniques"] == predictor.config.active_techniques and "MSL" in info["techniques"]
    assert info["checkpoints"] == predictor.sources and len(info["checkpoints"]) == 1
    assert info["limits"]["max_files"] == 64


def test_predict_returns_every_class_probability_per_query(client, task, predictor) -> None:
    support, query = task
    response = client.post("/predict", files=form(support, query))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["classes"] == list(support)  # the order of the fields, not sorted
    assert body["batch_dependent"] is True and body["notes"] == []
    assert [p["file"] for p in body["predictions"]] == [file for file, _ in query]
    for prediction in body["predictions"]:
        probabilities = prediction["probabilities"]
        assert list(probabilities) == body["classes"]
        assert abs(sum(probabilities.values()) - 1) < 1e-5
        best = max(probabilities, key=probabilities.__getitem__)
        assert prediction["predicted"] == best
        assert prediction["probability"] == probabilities[best]
    # The same answer as the library on the same bytes.
    direct = predictor.adapt_and_predict(
        {c: [data for _, data in images] for c, images in support.items()},
        [data for _, data in query],
    )
    got = torch.tensor(
        [[p["probabilities"][c] for c in body["classes"]] for p in body["predictions"]]
    )
    assert torch.equal(got, direct.probabilities)


def test_shot_counts_unlike_training_come_back_as_notes(client, characters) -> None:
    support, query = make_task(characters, sorted(characters)[:WAYS], shots=3, queries=1)
    body = client.post("/predict", files=form(support, query)).json()
    assert any("3 support images per class" in note for note in body["notes"]), body


def test_class_names_keep_spaces_quotes_and_accents(client, characters) -> None:
    names = ['say "hi"', "Größe 2", "a b", "x.y", "back\\slash"]
    chosen = sorted(characters)[:WAYS]
    support, query = make_task(characters, chosen)
    renamed = dict(zip(names, support.values(), strict=True))
    body = client.post("/predict", files=form(renamed, query)).json()
    assert body["classes"] == names, body


def test_probabilities_equal_mamlpp_adapt(run_dir, client, characters, tmp_path, capsys) -> None:
    """Same images through `mamlpp adapt --out x.json`, the API, and the API on the exported
    model: the same probabilities (`adapt` orders classes by folder name)."""
    names = sorted(characters)[3:8]
    support, query = make_task(characters, names, shots=2, queries=2, offset=4)
    folder = tmp_path / "support"
    write_classes(folder, {c: dict(images) for c, images in support.items()})
    query_files = []
    for file, data in query:
        path = tmp_path / "query" / file
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        query_files.append(str(path))
    out = tmp_path / "x.json"
    args = ["adapt", str(run_dir), "--support", str(folder), "--query", *query_files]
    assert main([*args, "--out", str(out)]) == 0
    capsys.readouterr()
    record = json.loads(out.read_text())
    ordered = {c: sorted(support[c]) for c in sorted(support)}  # adapt's order: sorted names
    body = client.post("/predict", files=form(ordered, query)).json()
    assert body["classes"] == record["classes"]

    def matrix(predictions) -> torch.Tensor:
        rows = [[p["probabilities"][c] for c in record["classes"]] for p in predictions]
        return torch.tensor(rows, dtype=torch.float64)

    expected = matrix(record["predictions"])
    assert torch.allclose(matrix(body["predictions"]), expected, rtol=0, atol=1e-6)
    assert [p["predicted"] for p in body["predictions"]] == [
        p["predicted"] for p in record["predictions"]
    ]
    model = tmp_path / "model.pt"
    assert main(["export", str(run_dir), str(model)]) == 0
    capsys.readouterr()
    exported = TestClient(create_app(FewShotPredictor.from_file(model)))
    again = exported.post("/predict", files=form(ordered, query)).json()
    assert torch.allclose(matrix(again["predictions"]), expected, rtol=0, atol=1e-6)


def test_concurrent_requests_each_get_their_own_answer(client, characters) -> None:
    names = sorted(characters)
    tasks = []
    for i in range(8):  # different classes, class orders, shots and queries
        classes = [names[(i + j) % len(names)] for j in range(WAYS)]
        if i % 2:
            classes.reverse()
        tasks.append(form(*make_task(characters, classes, shots=1 + i % 2, queries=1 + i % 3)))
    alone = [client.post("/predict", files=fields).json() for fields in tasks]
    assert len({json.dumps(a["classes"]) for a in alone}) == 8
    threads_before = torch.get_num_threads()
    start = threading.Barrier(8)

    def request(fields):
        start.wait()
        return client.post("/predict", files=fields)

    for _ in range(2):
        with ThreadPoolExecutor(max_workers=8) as pool:
            together = list(pool.map(request, tasks))
        assert [r.status_code for r in together] == [200] * 8
        assert [r.json() for r in together] == alone  # exactly the single-request answers
    assert torch.get_num_threads() == threads_before  # the model's thread setting is undone


def test_uploads_stay_in_memory(client, task, monkeypatch) -> None:
    """A 2 MB upload (Starlette's own form parser would spool it to a temporary file) is
    answered with every way of making a temporary file broken."""
    import tempfile

    import starlette.formparsers

    def refuse(*args, **kwargs):
        raise AssertionError("a temporary file was opened")

    for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", refuse)
    noise = torch.randint(0, 256, (1500, 1500), dtype=torch.uint8, generator=torch.Generator())
    buffer = io.BytesIO()
    Image.fromarray(noise.numpy()).save(buffer, format="PNG")
    assert buffer.tell() > 2_000_000
    support, query = task
    response = client.post("/predict", files=form(support, [("noise.png", buffer.getvalue())]))
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["file"] == "noise.png"


# ------------------------------------------------------------------------------ refusals


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 255).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("change", "status", "pattern"),
    [
        pytest.param(
            lambda s, q: (dict(list(s.items())[:4]), q),
            400,
            r"^the support set has 4 classes, but the model was trained for 5-way tasks",
            id="four-classes",
        ),
        pytest.param(
            lambda s, q: ({**s, "extra": s[next(iter(s))]}, q),
            400,
            r"the support set has 6 classes",
            id="six-classes",
        ),
        pytest.param(
            lambda s, q: ({**s, next(iter(s)): [("bad.png", b"\x89PNG\r\n\x1a\n broken")]}, q),
            400,
            r"^unreadable image 'bad\.png' of class '.+': cannot identify image file$",
            id="unreadable-support",
        ),
        pytest.param(
            lambda s, q: (s, [*q, ("notes.txt", b"just text")]),
            400,
            r"^unreadable image 'notes\.txt' \(query\)",
            id="unreadable-query",
        ),
        pytest.param(
            lambda s, q: ({**s, next(iter(s)): [("", b"")]}, q),
            400,
            r"^support class '.+' has no images$",
            id="empty-class",
        ),
        pytest.param(lambda s, q: (s, []), 400, r"^no query images", id="no-query"),
        pytest.param(lambda s, q: ({}, q), 400, r"^no support images", id="no-support"),
        pytest.param(
            lambda s, q: ({**s, "": s[next(iter(s))]}, q),
            400,
            r"needs a class name after 'support\.'",
            id="unnamed-class",
        ),
        pytest.param(
            lambda s, q: (s, q * 7),  # 5 support + 70 query files
            413,
            r"^too many files: at most 64 images per request$",
            id="too-many-files",
        ),
        pytest.param(
            # Not an image at all: refused for its size, before anything tries to decode it.
            lambda s, q: (s, [("huge.png", b"\0" * (10 * 1024 * 1024 + 1))]),
            413,
            r"^file 'huge\.png' is larger than the limit of 10 MiB per file$",
            id="file-too-large",
        ),
        pytest.param(
            lambda s, q: (s, [(f"big{i}.png", b"\0" * (9 * 1024 * 1024)) for i in range(6)]),
            413,
            r"^the request is larger than the limit of 50 MiB$",
            id="request-too-large",
        ),
        pytest.param(
            lambda s, q: (s, [("wide.png", _png(8000, 5001))]),
            413,
            r"^image 'wide\.png' \(query\) is 8000x5001 pixels, more than the limit",
            id="too-many-pixels",
        ),
    ],
)
def test_bad_input_is_a_4xx_with_one_sentence(client, task, change, status, pattern) -> None:
    support, query = change(*task)
    assert_error(client.post("/predict", files=form(support, query)), status, pattern)


def test_unknown_fields_and_malformed_bodies_are_refused(client, task) -> None:
    fields = form(*task)
    assert_error(
        client.post("/predict", files=[*fields, ("image", ("a.png", b"x", "image/png"))]),
        400,
        r"^unknown form field 'image': send images as 'support\.<class name>' and 'query' files$",
    )
    assert_error(
        client.post("/predict", json={"query": []}), 415, r"multipart/form-data .*application/json"
    )
    headers = {"content-type": "multipart/form-data"}
    assert_error(client.post("/predict", content=b"x", headers=headers), 400, "no boundary")
    headers = {"content-type": "multipart/form-data; boundary=xyz"}
    truncated = b'--xyz\r\nContent-Disposition: form-data; name="query"; filename="a"\r\n\r\nab'
    assert_error(
        client.post("/predict", content=truncated, headers=headers), 400, "closing boundary"
    )
    assert_error(
        client.post("/predict", content=b"garbage" * 10, headers=headers),
        400,
        "not valid multipart/form-data",
    )


def test_framework_errors_have_the_same_shape(client) -> None:
    # Routing and method errors: one sentence too (a missing content type: the 415 of
    # tests/serve/test_predict_content_type.py).
    assert_error(client.get("/nowhere"), 404, r"^there is no /nowhere here")
    assert_error(client.delete("/model"), 405, r"^DELETE is not allowed on /model$")
    assert_error(client.get("/predict"), 405, r"^GET is not allowed on /predict$")
    assert_error(client.get("/static/../app.py"), 404, r"there is no")
    assert_error(client.get("/static/secret.txt"), 404, r"there is no /static/secret\.txt here")


def test_a_streamed_body_is_cut_off_at_the_request_limit(predictor, task) -> None:
    """Without a Content-Length (chunked upload) the limit is counted as the bytes arrive."""
    small = TestClient(create_app(predictor, Limits(max_request_bytes=20_000)))
    fields = form(*task)
    assert small.post("/predict", files=fields).status_code == 200  # about 8 kB
    head = b'--b\r\nContent-Disposition: form-data; name="query"; filename="a.png"\r\n\r\n'
    body = head + b"x" * 30_000

    def chunks():
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    headers = {"content-type": "multipart/form-data; boundary=b"}
    response = small.post("/predict", content=chunks(), headers=headers)
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert_error(response, 413, r"^the request is larger than the limit of 20000 bytes$")


# ------------------------------------------------------------------------------ the page


def test_the_page_and_its_files_are_served(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    html = page.text
    assert '<script src="/static/app.js"' in html and 'href="/static/style.css"' in html
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
        assert len(response.text) > 1000
    everything = html + client.get("/static/app.js").text + client.get("/static/style.css").text
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", everything)  # nothing external
    assert "support." in client.get("/static/app.js").text  # the page posts the API's fields
    schema = client.get("/openapi.json").json()
    assert "multipart/form-data" in schema["paths"]["/predict"]["post"]["requestBody"]["content"]


# ------------------------------------------------------------------------------ the command


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("mamlpp: error: ") and "\n" not in err, err
    return err


def test_serve_without_the_extra_says_how_to_install_it(run_dir, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)  # `import fastapi` now fails
    assert main(["serve", str(run_dir)]) == 2
    assert 'pip install "mamlpp[serve]"' in _one_line(capsys)


def test_serve_argument_errors(run_dir, tmp_path, capsys) -> None:
    model = tmp_path / "model.pt"
    assert main(["export", str(run_dir), str(model)]) == 0
    capsys.readouterr()
    cases = [
        (["--port", "70000"], 2, r"--port must be between 0 and 65535, got 70000"),
        (["--top-k", "0"], 2, r"--top-k must be >= 1, got 0"),
        ([], 2, r"nowhere does not exist", tmp_path / "nowhere"),
        (["--top-k", "2"], 2, r"--top-k applies to run folders", model),
        ([], 2, r"is not a mamlpp run folder", tmp_path),  # a usage error
    ]
    for extra, code, pattern, *where in cases:
        target = where[0] if where else run_dir
        assert main(["serve", str(target), *extra]) == code, extra
        assert re.search(pattern, _one_line(capsys)), extra
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", str(run_dir), "--port", "eighty"])
    assert exit_info.value.code == 2
    assert "invalid int value: 'eighty'" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(run_dir), "--port", str(port)]) == 2
        assert re.search(rf"cannot listen on 127\.0\.0\.1 port {port}: ", _one_line(capsys))


@pytest.mark.slow
def test_the_command_module_imports_neither_torch_nor_fastapi() -> None:
    code = (
        "import argparse, sys\n"
        "from mamlpp.cli import serve\n"
        "serve.register(argparse.ArgumentParser().add_subparsers())\n"
        "print(sorted(m for m in ('torch', 'fastapi', 'uvicorn', 'mamlpp.serve') "
        "if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_mamlpp_serve_answers_over_http(run_dir, client, task) -> None:
    """The real command: a subprocess on 127.0.0.1 and a free port, the same answers as the
    in-process app; it is always stopped."""
    import httpx

    with serving(run_dir) as url:
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(url + "model").json() == client.get("/model").json()
        fields = form(*task)
        remote = httpx.post(url + "predict", files=fields, timeout=60)
        assert remote.status_code == 200, remote.text
        assert remote.json() == client.post("/predict", files=fields).json()
        page = httpx.get(url)
        assert page.status_code == 200 and "Few-shot predictions" in page.text
