"""The one atomic file write of the project (checkpoints, JSON, metrics, config, data caches).

Readers see the old file or the new one, whole, never a mixture: the bytes go to a temporary
file beside the target (same folder, so the rename is atomic), which is flushed and fsynced,
renamed onto the target with ``os.replace``, and the folder is fsynced so the rename survives
a crash. On any error the temporary file is deleted and the old file stays, and an ``OSError``
names the target file (the one asked for), not the temporary one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "wb", encoding: str | None = None
) -> Iterator[IO[Any]]:
    """``with atomic_write(path) as handle: ...`` writes ``path`` atomically and durably."""
    path = Path(path)
    # Hidden ".<name>.<random>.tmp" (remove_stale_temporaries finds leftovers of a kill);
    # O_EXCL with mode 0o666 keeps the usual umask permissions (mkstemp's 0600 would make a
    # shared data cache unreadable to other users).
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with open(fd, mode, encoding=encoding) as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    except OSError as error:  # a read-only or missing folder, a full disk: say which file
        renamed = _about_target(error, tmp, path)
        if renamed is error:
            raise
        raise renamed from error
    fsync_dir(path.parent)


def _about_target(error: OSError, tmp: Path, path: Path) -> OSError:
    """``error`` as an error about ``path``, the file the caller asked for, where it names the
    temporary file (or no file, as a failed write does): same class, errno and strerror, and
    ``path`` as its only filename. Any other error (one the caller's own code raised about
    another file, one without an errno) is returned as it is."""
    ours = {str(tmp), str(path), "None"}
    if error.errno is None or not {str(error.filename), str(error.filename2)} <= ours:
        return error
    renamed = OSError(error.errno, error.strerror, str(path))  # the errno picks the subclass
    return renamed if isinstance(renamed, type(error)) else error


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
