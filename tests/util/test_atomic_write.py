"""An atomic write that fails names the file asked for, not its temporary file."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import mamlpp.util.atomic as atomic
from mamlpp.util.atomic import atomic_write


def test_a_failed_atomic_write_names_the_target_not_the_temporary(
    tmp_path: Path, monkeypatch
) -> None:
    real_open = os.open
    target = tmp_path / "ro" / "p.csv"
    target.parent.mkdir()

    def read_only(path, flags, *args, **kwargs):
        if str(path).endswith(".tmp"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(atomic.os, "open", read_only)
    with pytest.raises(PermissionError) as info:
        with atomic_write(target) as handle:
            handle.write(b"x")
    assert str(info.value.filename) == str(target)
    assert info.value.errno == errno.EACCES and info.value.strerror == os.strerror(errno.EACCES)
    assert ".tmp" not in str(info.value)


def test_a_failed_rename_names_the_target(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "p.csv"

    def busy(src, dst):
        raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(src), None, str(dst))

    monkeypatch.setattr(atomic.os, "replace", busy)
    with pytest.raises(OSError) as info:
        with atomic_write(target) as handle:
            handle.write(b"x")
    assert str(info.value.filename) == str(target) and info.value.errno == errno.EBUSY
    assert ".tmp" not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone
