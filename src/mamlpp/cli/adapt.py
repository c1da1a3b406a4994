"""``mamlpp adapt``: predict the classes of new images from a labelled support folder (through
:class:`mamlpp.run.predictor.FewShotPredictor`).

Every input is read and checked before anything is computed or written, so a usage error (wrong
number of classes, an empty class folder, an unreadable image, an image that cannot be brought to
the trained size or channels) is one line, exit code 2, and no output file.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mamlpp.cli.classifier import classifier_path, write_classifier
from mamlpp.errors import ConfigError, DataError, InputError
from mamlpp.util.atomic import atomic_write
from mamlpp.util.format import plural

if TYPE_CHECKING:  # imported by the handlers: `mamlpp --help` stays free of torch
    from mamlpp.run.predictor import FewShotPredictor, Prediction

OUTPUT_SUFFIXES = (".csv", ".json")


def register(subparsers: argparse._SubParsersAction) -> None:
    adapt = subparsers.add_parser(
        "adapt",
        help="classify new images after adapting to a labelled support folder",
        description="Adapt a trained model to SUPPORT/<class>/* (N classes, K images each) and "
        "print the predicted class of every query image; --out writes every class's "
        "probability as CSV or JSON.",
    )
    adapt.add_argument("model", metavar="RUN_DIR", help="a run folder, or a file from `export`")
    adapt.add_argument("--support", required=True, metavar="DIR", help="DIR/<class>/<images>")
    adapt.add_argument(
        "--query",
        nargs="+",
        metavar="PATH",
        help="image files or folders (optional with --export-classifier)",
    )
    adapt.add_argument("--out", metavar="FILE.csv|FILE.json", help="write all probabilities")
    adapt.add_argument(
        "--top-k",
        type=int,
        metavar="K",
        help="average the top-k checkpoints by validation accuracy (run folders; default 1)",
    )
    adapt.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    adapt.add_argument(
        "--export-classifier",
        metavar="CLASSIFIER.onnx",
        help="write the model adapted to --support as one ONNX classifier (docs/onnx.md)",
    )
    adapt.set_defaults(handler=run_adapt)


# ------------------------------------------------------------------------------ inputs


def support_images(folder: str | Path, skipped: list[Path] | None = None) -> dict[str, list[Path]]:
    """``{class name: image files}`` of ``folder/<class>/``, classes sorted by name (the rule
    of folder datasets: hidden entries skipped, an empty class refused, files that are not
    pictures appended to ``skipped``)."""
    from mamlpp.data.folder import class_files

    root = Path(folder)
    if root.is_file():
        raise InputError(
            f"--support {root} is a file, not a folder of class folders (give DIR holding "
            "DIR/<class>/<images>, one sub-folder per class)"
        )
    if not root.is_dir():
        raise InputError(f"support folder {root} does not exist")
    try:
        return class_files(root, skipped)
    except DataError as error:
        raise InputError(f"support: {error}") from None


def query_images(paths: list[str], skipped: list[Path] | None = None) -> list[Path]:
    """Query files in the order given; a folder contributes its pictures (every format Pillow
    reads), sorted; its other files are appended to ``skipped``."""
    from mamlpp.data.images import list_images

    files: list[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            found = list_images(path, skipped)
            if not found:
                raise InputError(f"query folder {path} has no images")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"query image {path} does not exist")
    return files


def _load_predictor(model: str, top_k: int | None, device: str) -> FewShotPredictor:
    from mamlpp.run.build import resolve_device
    from mamlpp.run.predictor import FewShotPredictor

    where = resolve_device(device)
    path = Path(model)
    if path.is_file():
        if top_k is not None:
            raise ConfigError("--top-k applies to run folders; an exported model keeps its own")
        return FewShotPredictor.from_file(path, where)
    return FewShotPredictor.from_run(path, 1 if top_k is None else top_k, where)


# ------------------------------------------------------------------------------ outputs


def _table(files: list[Path], prediction: Prediction) -> str:
    labels = [str(f) for f in files]
    width = max(len("file"), *(len(s) for s in labels))
    cls_width = max(len("predicted"), *(len(c) for c in prediction.classes))
    lines = [f"{'file':<{width}}  {'predicted':<{cls_width}}  probability"]
    for label, name, p in zip(labels, prediction.predicted, prediction.confidence, strict=True):
        lines.append(f"{label:<{width}}  {name:<{cls_width}}  {p:.4f}")
    return "\n".join(lines)


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection): such a
# text cell (a file or class name) is written with a leading ' so that it stays text.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(text: str) -> str:
    """``text`` safe to open in a spreadsheet: prefixed with ``'`` if it starts like a
    formula (docs/own-data.md)."""
    return f"'{text}" if text.startswith(_FORMULA_START) else text


def _csv_text(files: list[Path], prediction: Prediction) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["file", "predicted", "probability", *(f"p[{c}]" for c in prediction.classes)]
    writer.writerow([csv_cell(cell) for cell in header])
    rows = zip(files, prediction.predicted, prediction.confidence, strict=True)
    for (file, name, p), probs in zip(rows, prediction.probabilities.tolist(), strict=True):
        writer.writerow([csv_cell(str(file)), csv_cell(name), repr(p), *(repr(v) for v in probs)])
    return buffer.getvalue()


def _json_record(
    files: list[Path], prediction: Prediction, predictor: FewShotPredictor, model: str
) -> dict:
    return {
        "model": model,
        "checkpoints": predictor.sources,
        "classes": prediction.classes,
        "batch_dependent": prediction.batch_dependent,
        "notes": prediction.notes,
        "predictions": [
            {
                "file": str(file),
                "predicted": name,
                "probability": p,
                "probabilities": dict(zip(prediction.classes, probs, strict=True)),
            }
            for file, name, p, probs in zip(
                files,
                prediction.predicted,
                prediction.confidence,
                prediction.probabilities.tolist(),
                strict=True,
            )
        ],
    }


def _write_atomic(path: Path, text: str) -> None:
    try:
        with atomic_write(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as error:
        raise InputError(f"cannot write {path}: {error.strerror or error}") from None


# ------------------------------------------------------------------------------ handlers


def run_adapt(args: argparse.Namespace) -> int:
    from mamlpp.data.images import skipped_note
    from mamlpp.run.output_guard import check_output_path
    from mamlpp.run.predictor import Prediction, colour_note
    from mamlpp.run.run_dir import json_text

    if args.top_k is not None and args.top_k < 1:  # as `mamlpp export` refuses it
        raise ConfigError(f"--top-k must be >= 1, got {args.top_k}")
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ConfigError(f"--out must end in .csv or .json, got {out.name}")
    if out is not None and not out.parent.is_dir():
        raise ConfigError(f"--out folder {out.parent} does not exist")
    classifier = classifier_path(args.export_classifier)
    if args.query is None and (classifier is None or out is not None):
        raise ConfigError(
            "give --query images to classify"
            + ("" if out is not None else ", or --export-classifier FILE.onnx")
        )
    for path, option in ((out, "--out"), (classifier, "--export-classifier")):
        if path is not None:
            check_output_path(path, option)
    skipped: list[Path] = []  # files in the folders that are not pictures: one note
    support = support_images(args.support, skipped)
    files = query_images(args.query or [], skipped)
    predictor = _load_predictor(args.model, args.top_k, args.device)
    converted: list[str] = []  # colour images made grey: one note for support and query
    sx, sy, names, notes = predictor.prepare_support(
        support, labels=[str(f) for fs in support.values() for f in fs], converted=converted
    )
    labels = [str(f) for f in files]
    qx = predictor.prepare_query(files, labels, converted=converted) if files else None
    notes += colour_note(converted)
    notes += [note for note in [skipped_note(skipped)] if note is not None]
    if classifier is not None:  # every input was read and checked first
        write_classifier(classifier, predictor, sx, sy, names, notes, args.model)
    if qx is None:  # only the classifier was asked for
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        return 0
    notes.append(predictor.query_note(len(qx)))  # whether predictions depend on the batch
    if args.top_k is not None and len(predictor.members) < args.top_k:  # as evaluate says it
        kept = plural(len(predictor.members), "checkpoint")
        notes.append(f"--top-k {args.top_k}, but only {kept} kept in {args.model}/checkpoints")
    dependent = predictor.batch_dependent_for(len(qx))
    prediction = Prediction(names, predictor.predict_prepared(sx, sy, qx), notes, dependent)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    members = len(predictor.members)
    if members > 1:
        print(f"ensemble of {members} checkpoints: {', '.join(predictor.sources)}")
    print(_table(files, prediction))
    if out is not None:
        if out.suffix.lower() == ".csv":
            _write_atomic(out, _csv_text(files, prediction))
        else:
            record = _json_record(files, prediction, predictor, args.model)
            _write_atomic(out, json_text(record, indent=2, sort_keys=False) + "\n")
        print(f"probabilities of all {len(names)} classes in {out}")
    return 0
