"""The one picture reader (mamlpp.data.picture.read_picture), property-based: random sizes, modes
(1, L, LA, P, RGB, RGBA, I;16), formats (PNG, JPEG, BMP, GIF, TIFF, WebP) and EXIF orientations
1-8 decode to the picture a person sees: upright, transparency composited onto white, 16-bit
grey scaled to 8 bits. The reference is built from the generated arrays with numpy, not by the
reader: exact for lossless formats, a tolerance for JPEG and lossy WebP."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mamlpp.data import picture
from mamlpp.data.images import Preprocessing, list_images
from mamlpp.data.picture import MAX_PIXELS, PictureTooLarge, read_picture
from mamlpp.errors import DataError

# Formats each mode can be written in without Pillow changing the pixels (JPEG and lossy WebP
# change them a little: compared with a tolerance).
FORMATS = {
    "1": ["PNG", "BMP", "GIF", "TIFF"],
    "L": ["PNG", "JPEG", "BMP", "GIF", "TIFF"],
    "LA": ["PNG", "TIFF"],
    "P": ["PNG", "BMP", "GIF", "TIFF"],
    "RGB": ["PNG", "JPEG", "BMP", "TIFF", "WEBP", "WEBP-lossy"],
    "RGBA": ["PNG", "TIFF", "WEBP", "WEBP-lossy"],
    "I;16": ["PNG", "TIFF"],
}
EXIF_FORMATS = ("PNG", "JPEG", "WEBP", "WEBP-lossy", "TIFF")  # where an orientation is stored
LOSSY = ("JPEG", "WEBP-lossy")


def upright(stored: np.ndarray, orientation: int) -> np.ndarray:
    """What a viewer shows of ``stored`` [H, W, ...] with EXIF ``orientation`` (the EXIF
    specification's wording in the comments)."""
    if orientation == 2:  # mirrored horizontally
        return stored[:, ::-1]
    if orientation == 3:  # rotated 180
        return stored[::-1, ::-1]
    if orientation == 4:  # mirrored vertically
        return stored[::-1]
    if orientation == 5:  # mirrored horizontally, then rotated 270 clockwise
        return np.rot90(stored[:, ::-1], 1)
    if orientation == 6:  # rotated 90 clockwise
        return np.rot90(stored, -1)
    if orientation == 7:  # mirrored horizontally, then rotated 90 clockwise
        return np.rot90(stored[:, ::-1], -1)
    if orientation == 8:  # rotated 270 clockwise
        return np.rot90(stored, 1)
    return stored


def on_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``colour`` [H, W, C] over a white page with ``alpha`` [H, W], rounded to the nearest."""
    c = colour.astype(np.float64)
    a = alpha.astype(np.float64)[..., None] / 255
    return np.floor(c * a + 255 * (1 - a) + 0.5).astype(np.uint8)


@st.composite
def pictures(draw):
    """(PIL image to store, format, orientation, reference [H, W, 3] upright RGB, grey?)."""
    mode = draw(st.sampled_from(sorted(FORMATS)))
    fmt = draw(st.sampled_from(FORMATS[mode]))
    smallest = 16 if fmt in LOSSY else 1  # lossy coders average tiny pictures into one colour
    width, height = draw(st.integers(smallest, 24)), draw(st.integers(smallest, 24))
    orientation = draw(st.integers(1, 8)) if fmt in EXIF_FORMATS else 1
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    shape = (height, width)
    if fmt in LOSSY:  # smooth content, so that a tolerance still catches a wrong orientation
        blocks = rng.integers(0, 256, (2, 2, 4), dtype=np.uint8)
        rows = np.arange(height) * 2 // height
        cols = np.arange(width) * 2 // width
        base = blocks[rows][:, cols]
    else:
        base = rng.integers(0, 256, (*shape, 4), dtype=np.uint8)
    transparency = None
    if mode == "1":
        bits = base[..., 0] > 127
        image = Image.fromarray(bits)
        ref = np.repeat(np.where(bits, 255, 0).astype(np.uint8)[..., None], 3, -1)
    elif mode == "L":
        image = Image.fromarray(base[..., 0])
        ref = np.repeat(base[..., :1], 3, -1)
    elif mode == "LA":
        image = Image.fromarray(np.ascontiguousarray(base[..., [0, 3]]))  # LA
        ref = np.repeat(on_white(base[..., :1], base[..., 3]), 3, -1)
    elif mode == "RGB":
        image = Image.fromarray(base[..., :3])
        ref = base[..., :3]
    elif mode == "RGBA":
        image = Image.fromarray(base)  # RGBA
        ref = on_white(base[..., :3], base[..., 3])
    elif mode == "I;16":
        values = rng.integers(0, 65536, shape, dtype=np.uint16)
        image = Image.fromarray(values)  # I;16
        ref = np.repeat(np.floor(values / 257 + 0.5).astype(np.uint8)[..., None], 3, -1)
    else:  # P: up to 16 colours, one of them transparent in the formats that store it
        colours = rng.integers(0, 256, (16, 3), dtype=np.uint8)
        index = (base[..., 0] % 16).astype(np.uint8)
        image = _palette_image(index)
        image.putpalette(colours.flatten().tolist())
        ref = colours[index]
        if fmt in ("PNG", "GIF") and draw(st.booleans()):
            transparency = int(index.flat[0])
            ref = ref.copy()
            ref[index == transparency] = 255
    grey = mode in ("1", "L", "LA", "I;16")
    stored = image if orientation == 1 else _stored_for(image, orientation)
    return stored, fmt, orientation, upright_ref(ref, 1), grey, transparency


def _stored_for(image: Image.Image, orientation: int) -> Image.Image:
    """The stored picture whose upright view (with ``orientation``) is ``image``: the inverse
    of :func:`upright`, found by trying (the eight maps form a group)."""
    array = np.asarray(image)
    for candidate in _all_maps(array):
        if np.array_equal(upright(candidate, orientation), array):
            candidate = np.ascontiguousarray(candidate)
            if image.mode != "P":
                out = Image.fromarray(candidate)
                assert out.mode == image.mode
                return out
            out = _palette_image(candidate)
            out.putpalette(image.getpalette())
            return out
    raise AssertionError("no inverse found")


def _palette_image(index: np.ndarray) -> Image.Image:
    height, width = index.shape
    return Image.frombytes("P", (width, height), np.ascontiguousarray(index).tobytes())


def _all_maps(array: np.ndarray) -> list[np.ndarray]:
    return [
        m(array)
        for m in (
            lambda a: a,
            lambda a: a[:, ::-1],
            lambda a: a[::-1, ::-1],
            lambda a: a[::-1],
            lambda a: np.rot90(a[:, ::-1], 1),
            lambda a: np.rot90(a, -1),
            lambda a: np.rot90(a[:, ::-1], -1),
            lambda a: np.rot90(a, 1),
        )
    ]


def upright_ref(ref: np.ndarray, orientation: int) -> np.ndarray:
    return upright(ref, orientation)


def encode(image: Image.Image, fmt: str, orientation: int, transparency: int | None) -> bytes:
    out = io.BytesIO()
    options: dict = {}
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        if fmt == "TIFF":
            options["tiffinfo"] = {0x0112: orientation}
        else:
            options["exif"] = exif.tobytes()
    if transparency is not None:
        options["transparency"] = transparency
    if fmt == "JPEG":
        options.update(quality=95, subsampling=0)
    if fmt == "WEBP":
        options["lossless"] = True
    if fmt == "WEBP-lossy":
        options["quality"] = 95
    image.save(out, "WEBP" if fmt.startswith("WEBP") else fmt, **options)
    return out.getvalue()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pictures())
def test_every_picture_decodes_to_what_a_person_sees(case) -> None:
    stored, fmt, orientation, ref, grey, transparency = case
    data = encode(stored, fmt, orientation, transparency)
    seen = read_picture(data, "generated")
    assert seen.mode == ("L" if grey else "RGB")
    got = np.asarray(seen.convert("RGB"))
    assert got.shape == ref.shape, (fmt, orientation, got.shape, ref.shape)
    if fmt in LOSSY:
        error = np.abs(got.astype(int) - ref.astype(int)).mean()
        assert error <= 16, (fmt, orientation, error)  # measured: at most 14
        for other in _all_maps(ref):  # and nearer the upright picture than to any other view
            if other.shape == ref.shape and np.abs(other.astype(int) - ref).mean() > 3 * error:
                assert np.abs(got.astype(int) - other).mean() > error, (fmt, orientation)
    else:
        assert np.array_equal(got, ref), (fmt, stored.mode, orientation)


@settings(max_examples=40, deadline=None)
@given(case=pictures())
def test_a_pil_image_and_a_file_read_the_same(case, tmp_path_factory) -> None:
    stored, fmt, orientation, _, _, transparency = case
    data = encode(stored, fmt, orientation, transparency)
    path = tmp_path_factory.mktemp("pic") / f"p.{fmt.split('-')[0].lower()}"
    path.write_bytes(data)
    from_bytes = np.asarray(read_picture(data))
    assert np.array_equal(np.asarray(read_picture(path)), from_bytes)
    if fmt == "TIFF" and orientation != 1:
        return  # Pillow 13 drops the orientation of a TIFF opened by name as it decodes it
    with Image.open(path) as opened:  # what mamlpp.load callers pass
        assert np.array_equal(np.asarray(read_picture(opened)), from_bytes)


def test_a_black_glyph_on_transparency_is_black_on_white() -> None:
    glyph = np.zeros((28, 28, 2), dtype=np.uint8)  # black everywhere, transparent ...
    glyph[10:18, 12:16, 1] = 255  # ... except an opaque black bar
    out = io.BytesIO()
    Image.fromarray(glyph, "LA").save(out, "PNG")
    pixels = Preprocessing(28, 1, (0.0,), (1.0,)).pixels(out.getvalue())
    assert pixels[0, 0, 0] == 255 and pixels[0, 12, 13] == 0  # not all black (item 4)


def test_a_sideways_phone_photo_is_read_upright() -> None:
    upright_picture = np.zeros((40, 20, 3), dtype=np.uint8)  # tall: a person standing
    upright_picture[:10] = (255, 0, 0)  # red head at the top
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: the viewer turns it 90 degrees clockwise
    out = io.BytesIO()
    Image.fromarray(np.rot90(upright_picture, 1).copy()).save(out, "JPEG", exif=exif.tobytes())
    seen = read_picture(out.getvalue())
    assert seen.size == (20, 40)  # item 3: upright, as the page's thumbnail shows it
    assert np.asarray(seen)[2, 10, 0] > 200 and np.asarray(seen)[35, 10, 0] < 60


def test_the_project_limit_comes_before_pillows_bomb_check() -> None:
    # 14000 x 14000 is over twice Pillow's own limit: Pillow would refuse it while reading the
    # header with its "decompression bomb" error; the project's 40 MP message must come first.
    out = io.BytesIO()
    Image.new("1", (14000, 14000)).save(out, "PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no Pillow warning either
        with pytest.raises(PictureTooLarge, match=r"more than the limit of 40,000,000 pixels"):
            read_picture(out.getvalue(), "big.png")
    medium = io.BytesIO()  # between Pillow's warning (89 MP) and error thresholds
    Image.new("1", (10000, 10000)).save(medium, "PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(PictureTooLarge, match=r"10000x10000 pixels, more than the limit"):
            read_picture(medium.getvalue(), "medium.png")
    assert MAX_PIXELS == 40_000_000


def test_the_size_is_checked_before_decoding(monkeypatch) -> None:
    out = io.BytesIO()
    Image.new("L", (7000, 7000)).save(out, "PNG")  # 49 MP
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self))
    with pytest.raises(PictureTooLarge):
        read_picture(out.getvalue())
    assert not decoded


def test_one_list_of_formats_every_folder_reads(tmp_path) -> None:
    for name, fmt in [
        ("a.png", "PNG"),
        ("b.BMP", "BMP"),
        ("c.webp", "WEBP"),
        ("d.gif", "GIF"),
        ("e.tif", "TIFF"),
        ("f.tiff", "TIFF"),
        ("g.jpeg", "JPEG"),
    ]:
        Image.new("RGB", (4, 4)).save(tmp_path / name, fmt)
    (tmp_path / "notes.txt").write_text("not a picture")
    (tmp_path / ".hidden.png").write_bytes(b"")
    skipped: list = []
    found = list_images(tmp_path, skipped)
    assert [p.name for p in found] == [
        "a.png",
        "b.BMP",
        "c.webp",
        "d.gif",
        "e.tif",
        "f.tiff",
        "g.jpeg",
    ]
    assert [p.name for p in skipped] == ["notes.txt"]
    for suffix in (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"):
        assert suffix in picture.PICTURE_SUFFIXES


def test_a_grey_lossy_webp_is_not_colour() -> None:
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(grey).convert("RGB").save(out, "WEBP", quality=50)
    seen = read_picture(out.getvalue())
    rgb = np.asarray(seen).astype(int)
    assert (rgb[..., 0] != rgb[..., 1]).any()  # the format did move the channels apart ...
    converted: list[str] = []
    Preprocessing(28, 1, (0.0,), (1.0,)).pixels(out.getvalue(), "grey.webp", converted=converted)
    assert converted == []  # ... but it is no colour picture made grey (item 26)
    colour = np.zeros((32, 32, 3), dtype=np.uint8)
    colour[..., 0] = 200
    out = io.BytesIO()
    Image.fromarray(colour).save(out, "WEBP", quality=50)
    Preprocessing(28, 1, (0.0,), (1.0,)).pixels(out.getvalue(), "red.webp", converted=converted)
    assert converted == ["red.webp"]


def test_an_unreadable_picture_is_one_line() -> None:
    with pytest.raises(DataError, match=r"^unreadable image x\.png: ") as error:
        read_picture(b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "x.png")
    assert "\n" not in str(error.value)
