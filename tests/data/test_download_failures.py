"""A failed download leaves nothing behind and says how to get the files by hand: CIFAR-100 (the
archive and the folder it goes in), the folders that were there before are kept, and Omniglot
gives the same hint."""

from __future__ import annotations

from pathlib import Path

import pytest

import mamlpp.data.sources as sources
from mamlpp.cli.main import main
from mamlpp.data.sources import RemoteFile


def test_offline_cifar_download_leaves_nothing_and_says_how_to_get_it(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    # A port nothing listens on: the connection is refused, as offline.
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/cifar-100-python.tar.gz"
    monkeypatch.setattr(
        sources, "CIFAR100_FILE", RemoteFile("cifar-100-python.tar.gz", (url,), md5="0" * 32)
    )
    data = tmp_path / "data"
    assert main(["data", "download", "cifar-fs", "--data-dir", str(data)]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("mamlpp: error: ")
    assert "cannot download" in err[0]
    # The hint names the file to fetch by hand and where it goes.
    assert "cifar-100-python.tar.gz" in err[0].split("):", 1)[-1]
    assert str(data / "cifar100") in err[0]
    assert not data.exists()  # neither cifar100/ nor the data folder this command made


def test_a_failed_download_keeps_folders_that_were_there(tmp_path: Path, monkeypatch) -> None:
    mine = tmp_path / "cifar100"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")

    def offline(url, dest, **kwargs):
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        raise sources.DataError("offline")

    monkeypatch.setattr(sources, "download_file", offline)
    with pytest.raises(sources.DataError):
        sources.download_cifar100(tmp_path, progress=False)
    assert (mine / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    (empty / "cifar100").mkdir(parents=True)
    with pytest.raises(sources.DataError):
        sources.download_cifar100(empty, progress=False)
    assert (empty / "cifar100").is_dir()  # there before the command: kept
    with pytest.raises(sources.DataError):
        sources.download_mini_imagenet(tmp_path / "new" / "deeper", progress=False)
    assert not (tmp_path / "new").exists()


def test_offline_omniglot_download_gives_the_hint_too(tmp_path: Path, monkeypatch, capsys) -> None:
    def offline(url, dest, **kwargs):
        raise sources.DataError(f"cannot download {url}: offline")

    monkeypatch.setattr(sources, "download_file", offline)
    assert main(["data", "download", "omniglot", "--data-dir", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "put images_background.zip and images_evaluation.zip" in err[0]
