"""``POST /classifier`` of ``mamlpp serve``: the same form as ``POST /predict`` (the
``support.<class name>`` files; ``query`` files may be sent and are not used), answered with the
model adapted to that support set as one ONNX file (:mod:`mamlpp.run.onnx_export`,
docs/onnx.md). The route (in :mod:`mamlpp.serve.app`) applies /predict's limits and errors; a
server without the onnx package, or a model that cannot be exported, answers 501."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi.responses import Response

from mamlpp.run.onnx_export import classifier_from_prepared, require_onnx
from mamlpp.run.predictor import FewShotPredictor

FILENAME = "classifier.onnx"
# What /classifier answers, as OpenAPI describes it (its request body is /predict's form without
# the query field: serve.app.form_body).
RESPONSES: dict[str, Any] = {
    "200": {
        "description": "the ONNX classifier",
        "content": {"application/octet-stream": {"schema": {"type": "string"}}},
    }
}


def classifier_bytes(
    predictor: FewShotPredictor, support: dict[str, list[bytes]], labels: Sequence[str]
) -> bytes:
    """The ONNX file of ``predictor`` adapted to ``support`` ({class: encoded images}).
    Raises :class:`~mamlpp.errors.InputError` for images the model cannot use and
    :class:`~mamlpp.errors.ConfigError` for what cannot be exported (no onnx package too)."""
    require_onnx()
    sx, sy, classes, notes = predictor.prepare_support(support, labels=labels)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / FILENAME
        classifier = classifier_from_prepared(
            predictor, sx, sy, classes, notes, source=predictor.origin
        )
        classifier.to_onnx(path)
        return path.read_bytes()


def classifier_response(data: bytes) -> Response:
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{FILENAME}"'},
    )
