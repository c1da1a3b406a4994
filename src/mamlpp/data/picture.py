"""Reading one picture as a person sees it: the single reader behind folder datasets,
``mamlpp adapt``, ``mamlpp serve`` and the Python API (``mamlpp.load``), so a file gives the
same pixels whichever way it reaches a model.

:func:`read_picture` (a path, encoded bytes or a PIL image -> a decoded PIL image, mode ``"L"``
or ``"RGB"``):

* bounds the pixel count with the project's limit (:data:`MAX_PIXELS`, 40 MP) from the file's
  header, before anything is decoded; a larger picture is a :class:`PictureTooLarge` error
  (``mamlpp serve`` answers it with 413). Pillow's own decompression-bomb check (a warning above
  ``Image.MAX_IMAGE_PIXELS``, 89 MP by default, an error above twice that) fires while the
  header is read, so it can only meet pictures that are over this limit anyway: its warning is
  silenced and its error reported as the same :class:`PictureTooLarge`;
* applies the EXIF orientation (tag 274), as :func:`PIL.ImageOps.exif_transpose` does, so a
  phone photo stored sideways is read upright, as viewers and the page's thumbnails show it;
* composites transparency onto white (modes LA, RGBA, PA, P or L/RGB with a transparent colour),
  as a viewer shows a transparent picture on a white page: a black glyph on a transparent
  background reads as black on white, not as black on black;
* maps 16-bit grey (``I;16``, ``I``) to 8 bits by scaling (65535 -> 255), not clipping;
* reads the first frame of every format this Pillow can decode (:data:`PICTURE_SUFFIXES`, the
  one list of file types that folders are searched for).
"""

from __future__ import annotations

import inspect
import io
import os
import re
import warnings
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np
from PIL import Image, ImageChops, ImageFile

from mamlpp.errors import DataError

# The project's bound on one picture's width x height (`mamlpp serve` documents it as its 413).
MAX_PIXELS = 40_000_000
# Channels of one pixel may differ by this much and the picture still counts as grey: lossy
# WebP stores colour as subsampled YUV, so a grey picture decodes with R, G, B 1-2 apart.
GREY_TOLERANCE = 2
# Bumped when the reader's output changes, so caches of decoded folders are rebuilt.
READER_VERSION = 2

PictureSource = str | os.PathLike | bytes | Image.Image

_ORIENTATION = 0x0112  # EXIF tag 274
_TRANSPOSE = {  # EXIF orientation -> the transposition that shows the picture upright
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
_ALPHA_MODES = ("LA", "La", "RGBA", "RGBa", "PA")
# Formats Pillow registers for reading but cannot decode on its own: it only identifies them
# (MPEG, IPTC) or needs an outside program (EPS: Ghostscript).
_UNDECODABLE = ("MPEG", "IPTC", "EPS")
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


class PictureTooLarge(DataError):
    """A picture over the pixel limit (refused from its header, before decoding)."""


def _readable_suffixes() -> tuple[str, ...]:
    Image.init()
    suffixes = set()
    for suffix, name in Image.registered_extensions().items():
        if name not in Image.OPEN or name in _UNDECODABLE:
            continue
        factory = Image.OPEN[name][0]
        if inspect.isclass(factory) and issubclass(factory, ImageFile.StubImageFile):
            continue  # a stub: needs a handler the application registers
        suffixes.add(suffix.lower())
    return tuple(sorted(suffixes))


# Every file type this Pillow decodes (".png", ".jpg", ".webp", ".bmp", ".gif", ".tif", ...):
# the one list that folder datasets and `mamlpp adapt --query FOLDER` look for.
PICTURE_SUFFIXES: tuple[str, ...] = _readable_suffixes()


def is_picture_file(path: Path) -> bool:
    """Whether ``path``'s suffix is one of :data:`PICTURE_SUFFIXES` (any case)."""
    return path.suffix.lower() in PICTURE_SUFFIXES


def too_large(label: str, width: int, height: int, limit: int) -> PictureTooLarge:
    return PictureTooLarge(
        f"image {label} is {width}x{height} pixels, more than the limit of {limit:,} pixels"
    )


def _bomb(label: str, error: Exception, limit: int) -> PictureTooLarge:
    found = _BOMB_PIXELS.search(str(error))
    count = f"{int(found.group(1)):,} pixels" if found else "more pixels than Pillow allows"
    return PictureTooLarge(f"image {label} has {count}, more than the limit of {limit:,} pixels")


def _unreadable(label: str, error: Exception) -> str:
    reason = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
    return f"unreadable image {label}: {reason}"


def _open(handle: BinaryIO, label: str, max_pixels: int) -> Image.Image:
    """The picture opened lazily (header only), its size checked against ``max_pixels``.
    Paths are opened by the caller as a file object: Pillow then treats files and bytes alike
    (decoding a TIFF opened by name, it drops its orientation tag without applying it)."""
    try:
        with warnings.catch_warnings():  # Pillow's bomb warning: this limit is lower, see above
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(handle)
    except Image.DecompressionBombError as error:
        raise _bomb(label, error, max_pixels) from None
    except MemoryError:
        raise
    except Exception as error:  # a damaged file makes Pillow raise many types (EOFError, ...)
        raise DataError(_unreadable(label, error)) from None
    width, height = opened.size
    if width * height > max_pixels:
        raise too_large(label, width, height, max_pixels)
    return opened


def _handle(source: str | os.PathLike | bytes, label: str) -> BinaryIO:
    if isinstance(source, bytes):
        return io.BytesIO(source)
    try:
        return open(Path(source), "rb")  # noqa: SIM115 (closed by the caller)
    except FileNotFoundError:
        raise DataError(f"image {label} does not exist") from None
    except OSError as error:
        raise DataError(f"unreadable image {label}: {error.strerror or error}") from None


def picture_size(
    source: PictureSource, label: str, max_pixels: int = MAX_PIXELS
) -> tuple[int, int]:
    """(width, height) of a picture as stored, from its header only (nothing is decoded); a
    picture over ``max_pixels`` is a :class:`PictureTooLarge` error."""
    if isinstance(source, Image.Image):
        width, height = source.size
        if width * height > max_pixels:
            raise too_large(label, width, height, max_pixels)
        return width, height
    with _handle(source, label) as handle:
        return _open(handle, label, max_pixels).size


def read_picture(
    source: PictureSource, label: str | None = None, *, max_pixels: int = MAX_PIXELS
) -> Image.Image:
    """The picture as a person sees it: decoded, upright, transparency on white; mode ``"L"``
    for grey sources (1, L, LA, I;16, ...) and ``"RGB"`` for the rest. See the module
    docstring. ``label`` names the picture in errors (one line, :class:`DataError`)."""
    name = label or (str(source) if isinstance(source, str | os.PathLike) else "image")
    if isinstance(source, Image.Image):
        picture_size(source, name, max_pixels)
        return _upright(source, name)
    with _handle(source, name) as handle:
        # may return the opened image itself, decoded: it no longer needs the file
        return _upright(_open(handle, name, max_pixels), name)


def _upright(image: Image.Image, label: str) -> Image.Image:
    try:
        orientation = _orientation(image)
        image.load()  # decodes now that the size is known to be within the limit
        tags = getattr(image, "tag_v2", None)
        if tags is not None and _ORIENTATION not in tags:
            orientation = 1  # Pillow turned this TIFF upright while decoding it
        flat = _flatten(image)
    except MemoryError:
        raise
    except Exception as error:  # as in _open: a damaged file, whatever Pillow raises for it
        raise DataError(_unreadable(label, error)) from None
    method = _TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    return flat.transpose(method) if method is not None else flat


def _orientation(image: Image.Image) -> object:
    """The EXIF orientation tag (1 when absent), read before decoding. A PNG whose EXIF follows
    its pixels is decoded by getexif() itself. A TIFF keeps the tag among its own; reading the
    EXIF now also lets Pillow, which turns TIFFs upright while decoding them, find it (it reads
    it from the file, which is closed by then when the TIFF was opened by name)."""
    exif = image.getexif()
    tags = getattr(image, "tag_v2", None)
    if tags is not None:
        return tags.get(_ORIENTATION, 1)
    return exif.get(_ORIENTATION, 1)


def _flatten(image: Image.Image) -> Image.Image:
    """Mode L or RGB, alpha composited onto white (the first frame of an animation)."""
    mode = image.mode
    if mode in ("L", "RGB") and "transparency" not in image.info:
        return image  # already what a person sees (no copy of a large picture)
    if mode.startswith("I;16") or mode == "I":
        # 16-bit grey: 0..65535 scaled to 0..255 with rounding (Pillow's own conversion clips)
        values = np.asarray(image)  # uint16 (I;16) or int32 (I) [H, W]
        grey8 = np.empty(values.shape, dtype=np.uint8)
        for rows in _row_blocks(*values.shape):
            grey8[rows] = (np.clip(values[rows].astype(np.int64), 0, 65535) + 128) // 257
        return Image.fromarray(grey8)
    grey = mode in _GREY_MODES or (mode == "P" and _grey_palette(image))
    has_alpha = mode in _ALPHA_MODES or "transparency" in image.info
    if not has_alpha:
        return image.convert("L" if grey else "RGB")
    # c * a + white * (1 - a), rounded (Pillow's paste with a mask: (c a + 255 (255 - a)) / 255
    # to the nearest, exactly), in C and without a full-size RGBA copy of a large picture
    with_alpha = image if mode in ("LA", "RGBA") else image.convert("LA" if grey else "RGBA")
    page = Image.new("L" if grey else "RGB", image.size, 255 if grey else (255, 255, 255))
    page.paste(with_alpha, mask=with_alpha)
    return page


def _row_blocks(height: int, width: int, pixels: int = 1 << 20) -> list[slice]:
    """Slices of rows of about ``pixels`` pixels each: numpy temporaries of a block stay a few
    MB however large the picture is."""
    step = max(1, pixels // max(1, width))
    return [slice(start, start + step) for start in range(0, height, step)]


def _grey_palette(image: Image.Image) -> bool:
    palette = image.getpalette() or []
    triples = np.asarray(palette[: len(palette) // 3 * 3]).reshape(-1, 3)
    return bool(len(triples)) and bool((triples == triples[:, :1]).all())


def is_grey(pixels: np.ndarray) -> bool:
    """Whether uint8 ``[..., 3]`` RGB pixels are grey: R, G, B within :data:`GREY_TOLERANCE`
    of each other everywhere (lossy formats leave grey pictures a level or two apart)."""
    flat = pixels.reshape(-1, pixels.shape[-1])
    for rows in _row_blocks(len(flat), 1):
        channels = flat[rows].astype(np.int16)
        if (channels.max(axis=-1) - channels.min(axis=-1)).max(initial=0) > GREY_TOLERANCE:
            return False
    return True


def has_colour(picture: Image.Image) -> bool:
    """Whether a picture from :func:`read_picture` holds colour (see :func:`is_grey`; computed
    by Pillow, band by band, for large pictures)."""
    if picture.mode != "RGB":
        return False
    r, g, b = picture.split()
    for one, other in ((r, g), (g, b), (r, b)):
        low, high = cast(tuple[int, int], ImageChops.difference(one, other).getextrema())
        if high > GREY_TOLERANCE:
            return True
    return False
