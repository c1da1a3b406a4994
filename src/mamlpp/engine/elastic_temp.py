"""torchrun leaves a ``torchelastic_*`` folder in the temporary folder for every job, empty when
the job went well: ``mamlpp train --nproc`` removes the ones its job made, and only while they
hold no file (a failed rank's error file is kept)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

PATTERN = "torchelastic_*"


def _holds_files(folder: Path) -> bool:
    return any(files for _, _, files in os.walk(folder))


@contextlib.contextmanager
def removing_empty_elastic_folders(temp: str | Path | None = None) -> Iterator[None]:
    """Remove, on the way out, the ``torchelastic_*`` folders of ``temp`` (default: the
    temporary folder) that appeared inside the block and hold no file."""
    root = Path(temp if temp is not None else tempfile.gettempdir())
    before = set(root.glob(PATTERN))
    try:
        yield
    finally:
        for folder in set(root.glob(PATTERN)) - before:
            if folder.is_dir() and not folder.is_symlink() and not _holds_files(folder):
                shutil.rmtree(folder, ignore_errors=True)
