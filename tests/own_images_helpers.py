"""Folder trees of real Omniglot characters, written from the official zips, for the tests of
folder datasets and ``mamlpp adapt``."""

from __future__ import annotations

import zipfile
from pathlib import Path


def omniglot_characters(zip_path: Path, count: int, skip: int = 0) -> dict[str, dict[str, bytes]]:
    """``{"Alphabet_characterNN": {"XXXX_YY.png": png bytes}}`` of ``count`` characters in name
    order, after skipping the first ``skip``."""
    with zipfile.ZipFile(zip_path) as archive:
        members = sorted(n for n in archive.namelist() if n.endswith(".png"))
        names = sorted({"_".join(n.split("/")[1:3]) for n in members})[skip : skip + count]
        wanted = set(names)
        out: dict[str, dict[str, bytes]] = {name: {} for name in names}
        for member in members:
            parts = member.split("/")
            key = f"{parts[1]}_{parts[2]}"
            if key in wanted:
                out[key][parts[3]] = archive.read(member)
    return out


def write_classes(root: Path, classes: dict[str, dict[str, bytes]], limit: int | None = None):
    """``root/<class>/<file>`` for each class (at most ``limit`` images each)."""
    for name, files in classes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for file_name in sorted(files)[:limit]:
            (folder / file_name).write_bytes(files[file_name])
    return root
