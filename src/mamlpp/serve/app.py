"""The HTTP API and page of ``mamlpp serve``: one trained
:class:`~mamlpp.run.predictor.FewShotPredictor`, loaded once, behind FastAPI.

Endpoints (docs/serve.md has curl examples)::

    GET  /health    {"status": "ok"} (HEAD /health and HEAD / answer 200 too)
    GET  /model     what the model takes: ways, shots, image_size, channels, bn_mode, ...
    POST /predict   multipart/form-data (field names below) -> classes and probabilities
    POST /classifier  the same form -> the model adapted to it as an ONNX file (classifier.py)
    GET  /          the page (static/index.html, app.js, style.css)

``POST /predict`` fields: ``support.<class name>`` (one or more image files per class: repeat the
field; classes keep the order of their first field) and ``query`` (one or more image files to
classify: repeat the field). The answer::

    {"classes": [...], "batch_dependent": bool, "notes": [...],
     "predictions": [{"file", "predicted", "probability", "probabilities": {class: p}}, ...]}

Every error is ``{"error": "<one sentence>"}`` with a 4xx status (5xx for a server fault).

Uploads are read into memory, never onto disk, by a streaming multipart parser that enforces
:class:`Limits` as the bytes arrive, before any image is decoded. At most
``Limits.max_concurrent`` requests are read, decoded and predicted at once; the others wait (their
bodies unread) up to ``Limits.queue_timeout_s`` and are then answered 503 with ``Retry-After``,
so the server's memory stays under :func:`memory_ceiling` whatever the number of clients. Within
those, the model itself is run by one request at a time (a lock), because
:meth:`~mamlpp.run.predictor.FewShotPredictor.predict_prepared` sets torch's process-wide thread
count while it runs. Every image is read by :func:`mamlpp.data.picture.read_picture`, as the
other entry points read it (EXIF orientation, transparency on white).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from mamlpp.data.picture import MAX_PIXELS, PictureTooLarge, picture_size
from mamlpp.errors import ConfigError, DataError, MamlppError
from mamlpp.run.predictor import FewShotPredictor, InputError, colour_note
from mamlpp.serve.classifier import RESPONSES as CLASSIFIER_RESPONSES
from mamlpp.serve.classifier import classifier_bytes, classifier_response

SUPPORT_PREFIX = "support."
QUERY_FIELD = "query"


def form_body(with_query: bool) -> dict[str, Any]:
    """The multipart request body as OpenAPI describes it: ``support.<class name>`` files, and
    with ``with_query`` the ``query`` files (/predict; /classifier takes the support only)."""
    files = {"type": "array", "items": {"type": "string", "format": "binary"}}
    schema: dict[str, Any] = {"type": "object", "patternProperties": {r"^support\..+$": files}}
    if with_query:
        schema["properties"] = {QUERY_FIELD: files}
    content = {"multipart/form-data": {"schema": schema}}
    return {"requestBody": {"required": True, "content": content}}


MIB = 1024 * 1024

STATIC_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The page loads nothing from elsewhere; images are shown from local blob: URLs.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """What one ``POST /predict`` may send (checked while the upload arrives), and how many
    requests are served at once."""

    max_files: int = 64  # support and query files together (form fields of any kind)
    max_file_bytes: int = 10 * MIB  # one file, encoded
    max_request_bytes: int = 50 * MIB  # the whole request body
    max_pixels: int = MAX_PIXELS  # one image's width x height (read from its header)
    max_class_name: int = 200  # characters
    max_concurrent: int = 2  # requests read, decoded and predicted at once
    queue_timeout_s: float = 30.0  # how long a request waits for a turn before its 503


# Bytes one image may take per pixel while it is read and brought to the model's size: measured
# 8 for RGBA and RGB PNGs, 7 for P with transparency, 6 for LA and I;16, 1 for L (peak RSS in a
# fresh process, benchmarks/serve_load.py), counted as 24 to leave room for formats not measured.
DECODE_BYTES_PER_PIXEL = 24
# The body of a request is held twice at most: as parsed parts and as the task's image bytes.
BODY_COPIES = 2


def memory_ceiling(limits: Limits, base_bytes: int) -> int:
    """The most memory the server needs, in bytes, whatever the number of clients: the process
    with its model loaded (``base_bytes``) plus, for each of ``max_concurrent`` requests, its body
    (held twice) and one decoded image at the pixel limit (images are decoded one at a time;
    what is kept of each is the model-sized input, negligible beside it). Waiting requests hold
    no body: it is read only once their turn comes."""
    per_request = (
        BODY_COPIES * limits.max_request_bytes + DECODE_BYTES_PER_PIXEL * limits.max_pixels
    )
    return base_bytes + limits.max_concurrent * per_request


class ApiError(Exception):
    """A request the API refuses: ``status`` and a one-sentence ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class Busy(ApiError):
    """Every slot was taken for ``queue_timeout_s``: 503 with a Retry-After."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            503,
            f"the server is busy with other requests; try again in {retry_after} seconds",
        )
        self.retry_after = retry_after


class Slots:
    """At most ``count`` requests at once. A threading semaphore polled from the event loop:
    it works across the loops of test clients and holds no worker thread while waiting."""

    POLL_S = 0.02

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {count}")
        self._free = threading.BoundedSemaphore(count)

    async def acquire(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self._free.acquire(blocking=False):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(self.POLL_S)
        return True

    def release(self) -> None:
        self._free.release()


def _size(n: int) -> str:
    return f"{n / MIB:g} MiB" if n >= MIB else f"{n} bytes"


# ------------------------------------------------------------------------------ multipart


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None  # None: a plain field (no filename parameter)
    data: bytearray = field(default_factory=bytearray)


def _field_text(raw: bytes) -> str:
    """A name or file name from Content-Disposition: UTF-8 (what browsers and curl send), with
    the escapes browsers use for a quote and line breaks undone."""
    text = raw.decode("utf-8", errors="replace")
    return text.replace("%22", '"').replace("%0D", "\r").replace("%0A", "\n")


class _FormCollector:
    """Callbacks of python-multipart's streaming parser: collect parts in memory, within limits."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.parts: list[_Part] = []
        self.fields = 0  # parts of any kind
        self.finished = False
        self._part = _Part()
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._end,
            "on_end": self._finish,
        }

    def _begin(self) -> None:
        self._part = _Part()
        self._disposition = b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.strip().lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise ApiError(400, "every part of the form needs a name (Content-Disposition name=)")
        self._part.name = _field_text(options[b"name"])
        if b"filename" in options:
            self._part.filename = _field_text(options[b"filename"])
        self.fields += 1
        if self.fields > self.limits.max_files:
            most = self.limits.max_files
            if self._part.filename is None:  # a text field pushed the count over
                raise ApiError(413, f"too many form fields: at most {most} fields per request")
            raise ApiError(413, f"too many files: at most {most} images per request")

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if len(part.data) + (end - start) > self.limits.max_file_bytes:
            label = f"{part.filename!r}" if part.filename else f"in field {part.name!r}"
            raise ApiError(
                413,
                f"file {label} is larger than the limit of "
                f"{_size(self.limits.max_file_bytes)} per file",
            )
        part.data += data[start:end]

    def _end(self) -> None:
        self.parts.append(self._part)

    def _finish(self) -> None:
        self.finished = True


async def read_form(request: Request, limits: Limits) -> list[_Part]:
    """The parts of a multipart/form-data request, read into memory within ``limits``."""
    kind, options = parse_options_header(request.headers.get("content-type"))
    if kind != b"multipart/form-data":
        shown = kind.decode("latin-1") or "nothing"
        raise ApiError(
            415,
            f"send the images as multipart/form-data (curl -F or a browser FormData), not {shown}",
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise ApiError(400, "the multipart/form-data content type has no boundary parameter")
    too_large = ApiError(
        413, f"the request is larger than the limit of {_size(limits.max_request_bytes)}"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_request_bytes:
        raise too_large  # refused before reading the body
    collector = _FormCollector(limits)
    try:
        parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    except FormParserError:  # e.g. longer than the parser allows (256 characters)
        raise ApiError(
            400,
            f"the multipart/form-data boundary is not valid ({len(boundary)} characters; "
            "RFC 2046 allows 1 to 70)",
        ) from None
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limits.max_request_bytes:
                raise too_large
            try:
                parser.write(chunk)
            except FormParserError:
                raise ApiError(400, "the request body is not valid multipart/form-data") from None
    except ClientDisconnect:
        raise ApiError(400, "the client went away before the request body was complete") from None
    parser.finalize()
    if not collector.finished:
        raise ApiError(400, "the multipart/form-data body ended before its closing boundary")
    return collector.parts


# ------------------------------------------------------------------------------ the task


@dataclass
class _Task:
    support: dict[str, list[bytes]]  # class -> encoded images, in the order of first field
    support_labels: list[str]  # one per support image, flattened in class order
    query: list[bytes]
    query_files: list[str]
    query_labels: list[str]


def build_task(parts: list[_Part], limits: Limits, need_query: bool = True) -> _Task:
    """Support classes and query images from the form's parts; empty file fields (a browser's
    file input with nothing chosen) are skipped, so a class of only those is empty."""
    support: dict[str, list[bytes]] = {}
    names: dict[str, list[str]] = {}
    query: list[bytes] = []
    query_files: list[str] = []
    for part in parts:
        empty = not part.data and not part.filename
        named = part.name.startswith(SUPPORT_PREFIX) or part.name == QUERY_FIELD
        if part.filename is None and part.data and named:
            # text, not a file: it must neither be decoded nor count as a class
            raise ApiError(
                400,
                f"form field {part.name[:60]!r} is text, not a file: send images as files "
                f"(curl -F '{part.name[:60]}=@image.png')",
            )
        if part.name.startswith(SUPPORT_PREFIX):
            name = part.name[len(SUPPORT_PREFIX) :]
            if not name.strip():
                raise ApiError(
                    400, "a support field needs a class name after 'support.', e.g. support.cat"
                )
            if len(name) > limits.max_class_name:
                raise ApiError(
                    400,
                    f"class name {name[:40]!r}... is longer than "
                    f"{limits.max_class_name} characters",
                )
            support.setdefault(name, [])
            names.setdefault(name, [])
            if not empty:
                support[name].append(bytes(part.data))
                names[name].append(part.filename or f"#{len(names[name]) + 1}")
        elif part.name == QUERY_FIELD:
            if not empty:
                query.append(bytes(part.data))
                query_files.append(part.filename or f"query #{len(query)}")
        else:
            raise ApiError(
                400,
                f"unknown form field {part.name[:60]!r}: send images as "
                f"'{SUPPORT_PREFIX}<class name>' and '{QUERY_FIELD}' files",
            )
    if not support:
        raise ApiError(
            400,
            f"no support images: send each class's images as '{SUPPORT_PREFIX}<class name>' files",
        )
    if need_query and not query:
        raise ApiError(400, f"no query images: send the images to classify as '{QUERY_FIELD}'")
    support_labels = [f"{file!r} of class {name!r}" for name in support for file in names[name]]
    query_labels = [f"{file!r} (query)" for file in query_files]
    return _Task(support, support_labels, query, query_files, query_labels)


def _check_pixels(images: list[bytes], labels: list[str], limits: Limits) -> None:
    """Refuse an image whose header declares too many pixels, before any image is decoded (a
    file that cannot be opened is left to the predictor, which names the problem)."""
    for data, label in zip(images, labels, strict=True):
        try:
            picture_size(data, label, limits.max_pixels)
        except PictureTooLarge as error:
            raise ApiError(413, _clean(str(error))) from None
        except DataError:
            continue


_BYTES_REPR = re.compile(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def _clean(message: str) -> str:
    """An image error without PIL's ``<_io.BytesIO object at 0x...>`` (uploads have no path)."""
    return _BYTES_REPR.sub("", message)


# ------------------------------------------------------------------------------ the app


class _Service:
    """The predictor and what every request shares: one lock around the model."""

    def __init__(self, predictor: FewShotPredictor, limits: Limits) -> None:
        self.predictor = predictor
        self.limits = limits
        self.lock = threading.Lock()
        self.slots = Slots(limits.max_concurrent)

    def model_info(self) -> dict[str, Any]:
        p = self.predictor
        return {
            "ways": p.ways,
            "shots": p.shots,
            "image_size": p.preprocessing.image_size,
            "channels": p.preprocessing.channels,
            "resize": p.preprocessing.resize,  # False: images must already be image_size
            "bn_mode": p.config.meta.bn_mode,
            "batch_dependent": p.batch_dependent,
            "techniques": list(p.config.active_techniques),  # those that took effect
            "dataset": p.config.data.dataset,
            "checkpoints": list(p.sources),
            "limits": asdict(self.limits),
        }

    def predict(self, task: _Task) -> dict[str, Any]:
        """Runs in a worker thread: decode (concurrently), then the model (one at a time)."""
        flat = [image for images in task.support.values() for image in images]
        _check_pixels(flat, task.support_labels, self.limits)
        _check_pixels(task.query, task.query_labels, self.limits)
        p = self.predictor
        try:
            converted: list[str] = []  # colour images made grey: one note for the request
            sx, sy, classes, notes = p.prepare_support(
                task.support, labels=task.support_labels, converted=converted
            )
            qx = p.prepare_query(task.query, labels=task.query_labels, converted=converted)
            notes += colour_note(converted)
        except InputError as error:
            raise ApiError(400, _clean(str(error))) from None
        with self.lock:
            probabilities = p.predict_prepared(sx, sy, qx)
        rows = probabilities.tolist()
        return {
            "classes": classes,
            "batch_dependent": p.batch_dependent_for(len(qx)),
            "notes": notes,
            "predictions": [
                {
                    "file": file,
                    "predicted": classes[max(range(len(row)), key=row.__getitem__)],
                    "probability": max(row),
                    "probabilities": dict(zip(classes, row, strict=True)),
                }
                for file, row in zip(task.query_files, rows, strict=True)
            ],
        }

    def classifier(self, task: _Task) -> bytes:
        """POST /classifier in a worker thread: /predict's checks, then adapt and export (the
        model one request at a time)."""
        flat = [image for images in task.support.values() for image in images]
        _check_pixels(flat, task.support_labels, self.limits)
        try:
            with self.lock:
                return classifier_bytes(self.predictor, task.support, task.support_labels)
        except InputError as error:
            raise ApiError(400, _clean(str(error))) from None
        except ConfigError as error:
            raise ApiError(501, f"this server cannot write the classifier: {error}") from None


def _static_files() -> dict[str, bytes]:
    folder = resources.files("mamlpp.serve").joinpath("static")
    return {name: folder.joinpath(name).read_bytes() for name in STATIC_TYPES}


def _validation_sentence(error: RequestValidationError) -> str:
    problems = list(error.errors())
    if not problems:
        return "invalid request"
    first = problems[0]
    where = [str(p) for p in first.get("loc", ())]
    place = " ".join([where[0], ".".join(where[1:])]).strip() if where else "request"
    message = str(first.get("msg", "is invalid")).rstrip(".")
    message = message[:1].lower() + message[1:]
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    return f"invalid request: {place}: {message}{more}"


async def _discard_body(request: Request, limits: Limits) -> None:
    """Read and drop a refused request's body (up to the request limit), without keeping it."""
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limits.max_request_bytes:
                return
    except ClientDisconnect:
        return


def create_app(predictor: FewShotPredictor, limits: Limits | None = None) -> FastAPI:
    """The API and page for ``predictor`` (loaded by the caller, once)."""
    # The parser's own messages ("Skipping data after last boundary", ...) would reach the
    # server log; every problem it finds is answered to the client as a 400 instead.
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    service = _Service(predictor, limits or Limits())
    static = _static_files()
    app = FastAPI(
        title="mamlpp serve",
        summary="Few-shot predictions of a trained MAML++ model",
        docs_url=None,  # the interactive docs load scripts from a CDN; /openapi.json stays
        redoc_url=None,
    )
    app.state.service = service

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        headers = {"Retry-After": str(error.retry_after)} if isinstance(error, Busy) else None
        return _error(error.status, error.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_sentence(error))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 404:
            message = f"there is no {request.url.path} here (try GET /, /model or POST /predict)"
        elif error.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(error.detail).rstrip(".")
        return _error(error.status_code, message, getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def _fault(request: Request, error: Exception) -> JSONResponse:
        log.exception("error while answering %s %s", request.method, request.url.path)
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        return _error(500, f"internal error: {detail}")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.head("/health", include_in_schema=False)
    async def health_head() -> Response:
        return Response(media_type="application/json")

    @app.get("/model")
    async def model() -> dict[str, Any]:
        return service.model_info()

    @app.post("/predict", openapi_extra=form_body(with_query=True))
    async def predict(request: Request) -> dict[str, Any]:
        """Adapt to the ``support.<class name>`` images and classify the ``query`` images."""
        # No Header() parameter: read_form answers a missing or wrong content type with a 415.
        async with slot(request) as limits:
            parts = await read_form(request, limits)
            task = build_task(parts, limits)
            del parts
            try:
                return await run_in_threadpool(service.predict, task)
            except MamlppError as error:  # not the caller's fault (InputError became ApiError)
                raise ApiError(500, f"the model failed: {error}") from None

    @app.post(
        "/classifier",
        response_class=Response,
        openapi_extra={**form_body(with_query=False), "responses": CLASSIFIER_RESPONSES},
    )
    async def classifier(request: Request) -> Response:
        """The model adapted to the ``support.<class name>`` images, as an ONNX file."""
        async with slot(request) as limits:  # as /predict: the same slots, limits and 415
            parts = await read_form(request, limits)
            task = build_task(parts, limits, need_query=False)
            del parts
            return classifier_response(await run_in_threadpool(service.classifier, task))

    @contextlib.asynccontextmanager
    async def slot(request: Request) -> AsyncIterator[Limits]:
        """One of the server's few slots for decoding and adapting, held for the whole request
        (its body is read inside it): a request that waits longer than the queue timeout is
        answered 503 with Retry-After. Bounds memory whatever the number of clients."""
        limits = service.limits
        if not await service.slots.acquire(limits.queue_timeout_s):
            await _discard_body(request, limits)  # so the client reads the answer, not a reset
            raise Busy(max(1, math.ceil(limits.queue_timeout_s / 4)))
        try:
            yield limits
        finally:
            service.slots.release()

    def _static(name: str) -> Response:
        if name not in static:
            raise ApiError(404, f"there is no /static/{name[:60]} here")
        return Response(static[name], media_type=STATIC_TYPES[name], headers=PAGE_HEADERS)

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return _static("index.html")

    @app.head("/", include_in_schema=False)
    async def page_head() -> Response:
        return _static("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        return _static(name)

    return app
