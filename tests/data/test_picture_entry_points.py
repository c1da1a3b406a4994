"""Every way a picture reaches a model goes through the one reader,
mamlpp.data.picture.read_picture: folder training, `mamlpp adapt`, `mamlpp serve` and the
Python API (mamlpp.load objects). And what that gives each of them: EXIF orientation, white under
transparency, every format in a query folder (with a note naming what was skipped)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_model_helpers import WAYS, png, untrained_predictor

from mamlpp.cli.main import main
from mamlpp.data.folder import load_folder_dataset
from mamlpp.data.images import Preprocessing


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """The labels of every picture read_picture is asked for (it still reads them)."""
    from mamlpp.data import picture

    seen: list[str] = []
    real = picture.read_picture

    def recording(source, label=None, **options):
        seen.append(str(label))
        return real(source, label, **options)

    monkeypatch.setattr(picture, "read_picture", recording)
    return seen


def glyph(size: int = 28) -> np.ndarray:
    pixels = np.full((size, size), 255, dtype=np.uint8)
    pixels[6:22, 12:16] = 0
    pixels[6:10, 8:20] = 0
    return pixels


def write_folder(root, fmt_of_class):
    for i, fmt in enumerate(fmt_of_class):
        folder = root / f"c{i}"
        folder.mkdir(parents=True)
        for j in range(2):
            Image.fromarray(np.roll(glyph(), 3 * i + j, axis=1)).save(folder / f"{j}.{fmt}")
    return root


def test_folder_training_reads_through_the_one_reader(tmp_path, reads) -> None:
    root = write_folder(tmp_path / "data", ["png", "bmp", "webp", "gif", "tif", "tiff", "png"])
    (root / "c0" / "README.txt").write_text("notes")
    notes: list[str] = []
    splits = load_folder_dataset(
        root,
        Preprocessing(28, 1, (0.0,), (1.0,)),
        val_fraction=0.15,
        test_fraction=0.15,
        cache_dir=tmp_path / "cache",
        say=notes.append,
    )
    assert sum(len(s.images) for s in splits.values()) == 14  # every format, none skipped
    assert len(reads) == 14 and all(label.startswith(str(root)) for label in reads)
    assert len(notes) == 1 and "README.txt" in notes[0] and "skipped" in notes[0]


def test_the_api_reads_through_the_one_reader(reads) -> None:
    predictor = untrained_predictor()
    support = {f"c{i}": [png(value=40 * i)] for i in range(WAYS)}
    query = [png(), Image.fromarray(glyph())]
    predictor.adapt_and_predict(support, query)
    assert len(reads) == WAYS + 2


def test_adapt_reads_through_the_one_reader_and_every_query_format(tmp_path, reads, capsys) -> None:
    model = tmp_path / "model.safetensors"
    untrained_predictor().export(model)
    support = write_folder(tmp_path / "support", ["png"] * WAYS)
    query = tmp_path / "query"
    query.mkdir()
    for fmt in ("png", "bmp", "webp", "gif", "tif"):  # item 5: four of these vanished
        Image.fromarray(glyph()).save(query / f"q.{fmt}")
    (query / "notes.txt").write_text("x")
    out = tmp_path / "p.json"
    assert (
        main(
            [
                "adapt",
                str(model),
                "--support",
                str(support),
                "--query",
                str(query),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    import json

    files = [p["file"] for p in json.loads(out.read_text())["predictions"]]
    assert sorted(f.rsplit(".", 1)[1] for f in files) == ["bmp", "gif", "png", "tif", "webp"]
    assert len(reads) == 2 * WAYS + 5
    err = capsys.readouterr().err
    assert "note: 1 file was skipped" in err and "notes.txt" in err


def test_serve_reads_through_the_one_reader(reads) -> None:
    pytest.importorskip("fastapi")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from fastapi.testclient import TestClient

    from mamlpp.serve.app import create_app

    client = TestClient(create_app(untrained_predictor()))
    fields = [(f"support.c{i}", (f"s{i}.png", png(value=40 * i), "image/png")) for i in range(WAYS)]
    fields.append(("query", ("q.png", png(), "image/png")))
    assert client.post("/predict", files=fields).status_code == 200
    assert len(reads) == WAYS + 1


def encoded(pixels: np.ndarray, orientation: int = 1) -> bytes:
    out = io.BytesIO()
    options = {}
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    Image.fromarray(pixels).save(out, "PNG", **options)
    return out.getvalue()


def test_a_sideways_picture_predicts_as_the_upright_one() -> None:
    predictor = untrained_predictor()
    support = {f"c{i}": [encoded(np.roll(glyph(), 4 * i, axis=0))] for i in range(WAYS)}
    upright = glyph()
    sideways = encoded(np.rot90(upright, 1).copy(), orientation=6)  # item 3
    a = predictor.adapt_and_predict(support, [encoded(upright)]).probabilities
    b = predictor.adapt_and_predict(support, [sideways]).probabilities
    assert torch.equal(a, b)


def test_a_glyph_on_transparency_predicts_as_on_white() -> None:
    predictor = untrained_predictor()
    support = {f"c{i}": [encoded(np.roll(glyph(), 4 * i, axis=0))] for i in range(WAYS)}
    on_white = encoded(glyph())
    alpha = np.where(glyph() == 0, 255, 0).astype(np.uint8)
    transparent = encoded(np.stack([np.zeros_like(alpha), alpha], -1))  # LA: black glyph, item 4
    black = encoded(np.zeros((28, 28), dtype=np.uint8))
    a = predictor.adapt_and_predict(support, [on_white]).probabilities
    b = predictor.adapt_and_predict(support, [transparent]).probabilities
    c = predictor.adapt_and_predict(support, [black]).probabilities
    assert torch.equal(a, b) and not torch.equal(b, c)
