"""Where data lives, and writing files so that an interruption never leaves half a file behind."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from mamlpp.errors import DataError

ENV_VAR = "MAMLPP_DATA"
DEFAULT_DATA_DIR = Path("~/.cache/mamlpp")


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The data folder: ``--data-dir`` if given, else ``$MAMLPP_DATA``, else ``~/.cache/mamlpp``.

    Nothing is created here; writers create the folders they need.
    """
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return DEFAULT_DATA_DIR.expanduser()


def find_in_usual_folders(
    root: str | os.PathLike[str] | None,
    folder_names: Sequence[str],
    holds_dataset: Callable[[Path], bool],
) -> Path | None:
    """The first of ``root`` (default: :func:`data_dir`) and ``root/<each of folder_names>``
    that is a folder ``holds_dataset`` accepts; None if there is none."""
    base = data_dir(root)
    for candidate in (base, *(base / name for name in folder_names)):
        if candidate.is_dir() and holds_dataset(candidate):
            return candidate
    return None


def make_dirs(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create folder {path}: {error.strerror or error}") from None


def is_writable_dir(path: Path) -> bool:
    """True if ``path`` is meant to be written and a file can really be created there.

    A folder whose permission bits allow nobody to write (e.g. a shared read-only data folder) is
    treated as read-only even for root, who could write anyway; os.access alone is also wrong on
    some network mounts, hence the real test file.
    """
    if not path.is_dir() or not path.stat().st_mode & 0o222:
        return False
    try:
        fd, tmp = tempfile.mkstemp(prefix=".mamlpp-write-test.", dir=path)
    except OSError:
        return False
    os.close(fd)
    os.unlink(tmp)
    return True


def file_digest(path: Path, algorithm: str = "md5") -> str:
    """The hex digest of the file's bytes (``md5``, ``sha256``, ... as hashlib names them)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()
