"""``mamlpp adapt --export-classifier CLASSIFIER.onnx``: the model adapted to the support
folder, written as a standalone ONNX classifier (:mod:`mamlpp.run.onnx_export`, docs/onnx.md)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mamlpp.errors import ConfigError

if TYPE_CHECKING:  # imported on use: `mamlpp --help` stays free of torch
    import torch

    from mamlpp.run.predictor import FewShotPredictor


def classifier_path(value: str | None) -> Path | None:
    """The checked ``--export-classifier`` path (before anything is computed), or None; the
    onnx package must be installed."""
    if value is None:
        return None
    path = Path(value)
    if path.suffix.lower() != ".onnx":
        raise ConfigError(f"--export-classifier must end in .onnx, got {path.name}")
    if not path.parent.is_dir():
        raise ConfigError(f"--export-classifier folder {path.parent} does not exist")
    from mamlpp.run.onnx_export import require_onnx

    require_onnx()
    return path


def write_classifier(
    path: Path,
    predictor: FewShotPredictor,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    classes: list[str],
    notes: list[str],
    source: str,
) -> None:
    """Adapt once to the prepared support set and write the ONNX file; says what it wrote."""
    from mamlpp.run.onnx_export import classifier_from_prepared

    classifier = classifier_from_prepared(
        predictor, support_x, support_y, classes, notes, source=source
    )
    classifier.to_onnx(path)
    size = path.stat().st_size / 1e6
    print(
        f"wrote {path} ({size:.2f} MB): a {len(classes)}-class classifier "
        f"({', '.join(classes)}); input float32 [N, {predictor.preprocessing.channels}, "
        f"{predictor.preprocessing.image_size}, {predictor.preprocessing.image_size}] in 0..1, "
        "output probabilities (docs/onnx.md)"
    )
