"""HTTP downloads that resume, verify and never leave a half-written file under the real name.

The bytes go to ``<dest>.part``; the part file is renamed onto ``dest`` only after the whole body
arrived and its md5 matched. A later call resumes a kept ``.part`` with an HTTP ``Range`` request,
or starts again from zero when the server ignores ranges.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from mamlpp.data.files import file_digest, make_dirs
from mamlpp.errors import DataError
from mamlpp.util.progress import progress_bar

USER_AGENT = "mamlpp-data/0.1 (+https://github.com/)"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class ChecksumError(DataError):
    """The downloaded bytes are not the expected file (md5 or size mismatch); they were deleted."""


class _Interrupted(Exception):
    """The body stopped early; the part file is kept for a resume."""


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    md5: str | None = None,
    *,
    progress: bool = True,
    expected_size: int | None = None,
    retries: int = 2,
    timeout: float = 60.0,
    chunk_size: int = 1 << 16,
) -> Path:
    """Download ``url`` to ``dest`` atomically, resuming a previous partial download.

    ``retries`` extra attempts are made (each resuming) when the connection drops mid-transfer.
    A checksum or size mismatch deletes the downloaded bytes and raises :class:`DataError`.
    An existing ``dest`` is kept if it matches ``md5`` (or if no md5 is given).
    """
    dest = Path(dest)
    if dest.is_file():
        if md5 is None or file_digest(dest, "md5") == md5:
            return dest
        dest.unlink()  # a stale or damaged earlier file; fetch it again
    make_dirs(dest.parent)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch_into(url, part, progress=progress, timeout=timeout, chunk_size=chunk_size)
            break
        except _Interrupted as why:
            if attempt == retries:
                raise DataError(
                    f"download of {url} was interrupted ({why}); run the command "
                    f"again to resume from {part}"
                ) from None
    size = part.stat().st_size
    if expected_size is not None and size != expected_size:
        part.unlink()
        raise ChecksumError(
            f"size mismatch for {url}: expected {expected_size} bytes, got {size}; "
            "the bad download was deleted"
        )
    if md5 is not None:
        actual = file_digest(part, "md5")
        if actual != md5:
            part.unlink()
            raise ChecksumError(
                f"checksum mismatch for {url}: expected md5 {md5}, got {actual}; "
                "the bad download was deleted"
            )
    os.replace(part, dest)
    return dest


def _fetch_into(url: str, part: Path, *, progress: bool, timeout: float, chunk_size: int) -> None:
    """One HTTP request appending to (or restarting) ``part``; _Interrupted on a short body."""
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http/https only)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            # Range not satisfiable: the part file already holds the whole body (or is junk);
            # the checksum after this decides, and a failure there deletes it.
            return
        raise DataError(f"download of {url} failed: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        raise DataError(f"cannot download {url}: {reason}") from None

    with contextlib.closing(response):
        status = getattr(response, "status", 200)
        length = response.headers.get("Content-Length")
        body_size = int(length) if length and length.isdigit() else None
        if status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                offset = 0  # a range we did not ask for: restart cleanly (below, with "wb")
                response.close()
                part.unlink(missing_ok=True)
                return _fetch_into(
                    url, part, progress=progress, timeout=timeout, chunk_size=chunk_size
                )
        elif offset:
            offset = 0  # the server ignored Range and sends everything: start the file again
        total = offset + body_size if body_size is not None else None
        received = offset
        name = part.name.removesuffix(".part")
        bar = progress_bar(total, name, "B", initial=offset, enabled=progress)
        try:
            with open(part, "ab" if offset else "wb") as out:
                while True:
                    try:
                        block = response.read(chunk_size)
                    except (OSError, http.client.HTTPException) as error:  # timeouts are OSErrors
                        raise _Interrupted(
                            f"{error.__class__.__name__} after {received} bytes"
                            f"{f' of {total}' if total else ''}"
                        ) from None
                    if not block:
                        break
                    out.write(block)
                    received += len(block)
                    bar.update(len(block))
        finally:
            bar.close()
        if total is not None and received < total:
            raise _Interrupted(f"connection closed after {received} of {total} bytes")
