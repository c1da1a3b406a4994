"""data/files.py's shared helpers: the usual-folders search both ImageNet finders use, and the
file digest the downloads check (hashlib.file_digest)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from mamlpp.data.files import file_digest, find_in_usual_folders
from mamlpp.data.miniimagenet import find_mini_imagenet
from mamlpp.data.tiered import find_tiered_imagenet


def test_the_root_comes_first_then_the_usual_folders_in_order(tmp_path: Path) -> None:
    for name in ("b", "a"):
        (tmp_path / name).mkdir()
    (tmp_path / "a" / "mark").touch()
    (tmp_path / "b" / "mark").touch()

    def marked(folder: Path) -> bool:
        return (folder / "mark").is_file()

    assert find_in_usual_folders(tmp_path, ("a", "b"), marked) == tmp_path / "a"
    assert find_in_usual_folders(tmp_path, ("b", "a"), marked) == tmp_path / "b"
    (tmp_path / "mark").touch()
    assert find_in_usual_folders(tmp_path, ("a", "b"), marked) == tmp_path
    assert find_in_usual_folders(tmp_path, ("c",), lambda folder: False) is None
    (tmp_path / "file").touch()  # a file of that name is not a folder to look in
    assert find_in_usual_folders(tmp_path / "file", (), lambda folder: True) is None


def test_both_imagenet_finders_look_in_their_usual_folders(tmp_path: Path) -> None:
    assert find_mini_imagenet(tmp_path) is None and find_tiered_imagenet(tmp_path) is None
    mini = tmp_path / "miniimagenet"
    for split in ("train", "val", "test"):
        (mini / split).mkdir(parents=True)
    tiered = tmp_path / "tiered-imagenet"
    for split in ("train", "val", "test"):
        (tiered / split).mkdir(parents=True)
    assert find_mini_imagenet(tmp_path) == mini
    assert find_tiered_imagenet(tmp_path) == tiered


def test_file_digest_is_the_digest_of_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = bytes(range(256)) * 5000  # larger than one read
    path.write_bytes(data)
    assert file_digest(path) == hashlib.md5(data).hexdigest()
    assert file_digest(path, "sha256") == hashlib.sha256(data).hexdigest()
