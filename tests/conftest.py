"""Shared test fixtures: where the real data lives, and float64 helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# CI and the developers' machines keep ../shared beside the checkout; MAMLPP_SHARED overrides it.
SHARED_DIR = Path(os.environ.get("MAMLPP_SHARED", REPO_ROOT.parent / "shared"))
OMNIGLOT_DIR = SHARED_DIR / "data" / "omniglot"
MINIIMAGENET_DIR = SHARED_DIR / "data" / "miniimagenet"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return SHARED_DIR


@pytest.fixture(scope="session")
def omniglot_dir() -> Path:
    if not (OMNIGLOT_DIR / "images_background.zip").exists():
        pytest.fail(f"real Omniglot expected at {OMNIGLOT_DIR} (set MAMLPP_SHARED)")
    return OMNIGLOT_DIR
