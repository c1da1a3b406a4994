"""Shared test fixtures: where the real data lives, and float64 helpers.

Tests that need the real data (Omniglot zips, the shared split files) look for it in
``$MAMLPP_SHARED`` (when set, it is the only shared folder consulted), else ``../shared`` beside
the checkout; Omniglot is also taken from the download cache (``$MAMLPP_DATA`` or
``~/.cache/mamlpp``, filled by ``mamlpp data download omniglot``). When the data is absent those
tests are skipped with a reason that says how to provide it, except under ``CI=true``: there a
missing dataset is a failure, so CI always runs every test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mamlpp.data import find_omniglot

REPO_ROOT = Path(__file__).resolve().parents[1]
HOW_TO = (
    "set MAMLPP_SHARED to the shared folder (holding data/omniglot/images_*.zip and the split "
    "files), or put it beside the checkout as ../shared"
)


def shared_folder() -> Path | None:
    """``$MAMLPP_SHARED`` if set (whether or not it exists), else ``../shared`` if present."""
    explicit = os.environ.get("MAMLPP_SHARED")
    if explicit:
        return Path(explicit) if Path(explicit).is_dir() else None
    beside = REPO_ROOT.parent / "shared"
    return beside if beside.is_dir() else None


def omniglot_folder() -> Path | None:
    """The shared copy of Omniglot, else the download cache's, else None."""
    shared = shared_folder()
    if shared is not None and (shared / "data" / "omniglot" / "images_background.zip").is_file():
        return shared / "data" / "omniglot"
    return find_omniglot(None)


def missing_data(what: str, how: str) -> None:
    """Skip (a fresh clone) or, under ``CI=true``, fail: CI must run every data test."""
    message = f"{what} not found: {how}"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    found = shared_folder()
    if found is None:
        missing_data("the shared data folder", HOW_TO)
    return found


@pytest.fixture(scope="session")
def omniglot_dir() -> Path:
    found = omniglot_folder()
    if found is None:
        missing_data("real Omniglot", f"{HOW_TO}; or run `mamlpp data download omniglot`")
    return found
