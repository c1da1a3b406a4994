"""``POST /classifier`` of ``mamlpp serve``: the same form as ``POST /predict`` (the
``support.<class name>`` files; ``query`` files may be sent and are not used), answered with the
model adapted to that support set as one ONNX file (:mod:`mamlpp.run.onnx_export`,
docs/onnx.md). The same limits and errors as ``/predict``; a server without the onnx package,
or a model that cannot be exported, answers 501 with one sentence."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from fastapi.responses import Response

from mamlpp.errors import ConfigError, InputError
from mamlpp.serve.app import ApiError, _check_pixels, _clean, _Service, _Task

FILENAME = "classifier.onnx"
# The request body as OpenAPI describes it (as /predict's, the query field left out).
REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "patternProperties": {
                        r"^support\..+$": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                        }
                    },
                }
            }
        },
    },
    "responses": {
        "200": {
            "description": "the ONNX classifier",
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        }
    },
}


def classifier_file(service: _Service, task: _Task) -> bytes:
    """Runs in a worker thread: decode the support images, adapt once and export (the model
    one request at a time, as /predict)."""
    from mamlpp.run.onnx_export import classifier_from_prepared, require_onnx

    flat = [image for images in task.support.values() for image in images]
    _check_pixels(flat, task.support_labels, service.limits)
    p = service.predictor
    try:
        sx, sy, classes, notes = p.prepare_support(task.support, labels=task.support_labels)
    except InputError as error:
        raise ApiError(400, _clean(str(error))) from None
    try:
        require_onnx()
        with service.lock, tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / FILENAME
            classifier = classifier_from_prepared(p, sx, sy, classes, notes, source=p.origin)
            classifier.to_onnx(path)
            return path.read_bytes()
    except ConfigError as error:
        raise ApiError(501, f"this server cannot write the classifier: {error}") from None


def classifier_response(data: bytes) -> Response:
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{FILENAME}"'},
    )
