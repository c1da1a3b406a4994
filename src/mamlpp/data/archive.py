"""Zip archives: open with clear errors, and extract only entries that stay inside the target."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from mamlpp.errors import DataError


def open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError:
        raise DataError(f"missing file {path}") from None
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(
            f"{path} is not a readable zip archive ({error}); delete it and download it again"
        ) from None


def member_parts(name: str, archive: Path | str) -> tuple[str, ...]:
    """The path components of a zip entry, refusing any entry that could escape the target folder.

    Refused: absolute paths, Windows drive letters or backslash paths, and ``..`` components.
    ``zipfile`` would silently rewrite such names; we stop instead, because an archive that
    contains them is not the archive we meant to download.
    """
    normalised = name.replace("\\", "/")
    path = PurePosixPath(normalised)
    if (
        normalised.startswith("/")
        or (len(normalised) > 1 and normalised[1] == ":")
        or ".." in path.parts
    ):
        raise DataError(
            f"refusing zip entry {name!r} in {archive}: it would escape the target folder"
        )
    return tuple(part for part in path.parts if part not in ("", "."))


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    try:
        return archive.read(info)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise DataError(f"corrupt entry {info.filename!r} in {archive.filename}: {error}") from None


def extract_zip(zip_path: Path, target_dir: Path) -> list[Path]:
    """Extract ``zip_path`` into ``target_dir`` all-or-nothing; return the top-level paths made.

    Every entry is checked before anything is written. Files are extracted into a temporary
    folder inside ``target_dir`` and the top-level entries are then renamed into place, so an
    error (bad entry, corrupt data, full disk) leaves ``target_dir`` as it was. Existing
    top-level entries of the same name are replaced.
    """
    zip_path, target_dir = Path(zip_path), Path(target_dir)
    with open_zip(zip_path) as archive:
        members = [(info, member_parts(info.filename, zip_path)) for info in archive.infolist()]
        target_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=target_dir))
        try:
            root = staging.resolve()
            for info, parts in members:
                if not parts:
                    continue
                out = staging.joinpath(*parts)
                # Belt and braces: the resolved path must stay under the staging folder.
                if root not in out.resolve().parents and out.resolve() != root:
                    raise DataError(
                        f"refusing zip entry {info.filename!r} in {zip_path}: it "
                        "would escape the target folder"
                    )
                if info.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(out, "wb") as dst:
                    try:
                        shutil.copyfileobj(src, dst, 1 << 20)
                    except (zipfile.BadZipFile, OSError, EOFError) as error:
                        raise DataError(
                            f"corrupt entry {info.filename!r} in {zip_path}: {error}"
                        ) from None
            made = []
            for child in sorted(staging.iterdir()):
                dest = target_dir / child.name
                if dest.is_dir() and not dest.is_symlink():
                    shutil.rmtree(dest)
                elif dest.exists() or dest.is_symlink():
                    dest.unlink()
                os.replace(child, dest)
                made.append(dest)
            return made
        finally:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(staging)
