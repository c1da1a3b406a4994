"""What every dataset's splits share: their names, and the folder of the split files shipped
with the package (``splits/<dataset>/...``)."""

from __future__ import annotations

from pathlib import Path

from mamlpp.errors import DataError

SPLITS_DIR = Path(__file__).resolve().parent / "splits"
SPLIT_NAMES = ("train", "val", "test")


def read_lines(path: Path) -> list[str]:
    """The non-blank lines of a split file, stripped."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise DataError(f"cannot read split file {path}: {error.strerror or error}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]
