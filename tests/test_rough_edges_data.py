"""Rough edges ("Nothing silently wrong", item 8): a failed CIFAR download leaves nothing behind
and says how to get the archive by hand; old folder caches do not pile up; `mamlpp presets`
keeps its columns; `mamlpp bench` explains the error of a gradient that is exactly zero and
documents every option; an atomic write that fails names the file asked for."""

from __future__ import annotations

import argparse
import errno
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mamlpp.data.sources as sources
import mamlpp.util.atomic as atomic
from mamlpp.cli.main import main
from mamlpp.data.sources import RemoteFile
from mamlpp.util.atomic import atomic_write

# ----------------------------------------------------------------------------- 1. CIFAR download


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


# ----------------------------------------------------------------------------- 2. folder caches


def _images(root: Path, classes: int = 6, per_class: int = 2, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")


def _load(root: Path, image_size: int = 16, cache_dir: Path | None = None) -> Path:
    from mamlpp.data.folder import load_folder_dataset
    from mamlpp.run.datasource import preprocessing_for
    from mamlpp.run.experiment import DataSection

    prep = preprocessing_for(DataSection(dataset="folder", channels="rgb", image_size=image_size))
    splits = load_folder_dataset(
        root, prep, val_fraction=0.2, test_fraction=0.2, cache_dir=cache_dir
    )
    return Path(splits["train"].meta["cache"])


def _caches(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "mamlpp-folder-" in p.name)


def test_a_new_folder_cache_replaces_the_stale_ones(tmp_path: Path) -> None:
    root = tmp_path / "images"
    _images(root)
    # The user's own files that look a little like caches are never touched.
    mine = [".mamlpp-folder-notes.npz", "mamlpp-folder-16px-0123456789abcdef.npz", ".x.npz"]
    for name in mine:
        (root / name).write_bytes(b"mine")
    first = _load(root)
    assert first.parent == root and first.name.startswith(".mamlpp-folder-16px-")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / "class0" / "new.png")
    second = _load(root)  # the files changed: a new cache
    third = _load(root, image_size=12)  # the preprocessing changed: another one
    assert len({first, second, third}) == 3
    assert [p.name for p in root.iterdir() if p.name.startswith(".mamlpp-folder-")].count(
        third.name
    ) == 1
    assert _caches(root) == sorted([third.name, *mine[:2]])
    assert all((root / name).read_bytes() == b"mine" for name in mine)
    assert _load(root, image_size=12) == third  # read again, kept


def test_a_shared_cache_folder_keeps_other_folders_caches(tmp_path: Path) -> None:
    """In a cache folder that several image folders share, a cache name does not say whose it
    is: nothing is removed there."""
    shared = tmp_path / "cache"
    for name in ("a", "b"):
        _images(tmp_path / name, seed=len(name))
        _load(tmp_path / name, cache_dir=shared)
    assert len(_caches(shared)) == 2


# ----------------------------------------------------------------------------- 3. presets


def test_presets_descriptions_start_at_one_column(capsys) -> None:
    from mamlpp.run.presets import PRESETS

    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(PRESETS)
    # Each column (dataset, ways/shots, techniques, budget) starts at one place on every line,
    # after at least two spaces (one space separates words within a cell).
    starts = {tuple(m.start() for m in re.finditer(r"(?<=  )(?=\S)", line)) for line in lines}
    assert len(starts) == 1 and len(next(iter(starts))) == 4, starts


# ----------------------------------------------------------------------------- 4. bench


def test_bench_explains_the_error_of_an_exactly_zero_gradient(capsys) -> None:
    assert main(["bench", "--configs", "tiny", "--paths", "batched", "--iters", "1",
                 "--warmup", "0"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    groups = next(line for line in out.splitlines() if "by group" in line)
    bias = re.search(r"conv biases[^,]*", groups)
    assert bias is not None
    assert "exact gradient 0" in bias.group(0) and "absolute error" in bias.group(0)
    assert not re.search(r"conv biases \d", groups)  # no bare relative error of a zero


def test_gradient_errors_mark_the_groups_whose_exact_gradient_is_zero() -> None:
    import torch

    from mamlpp.studies.bench import format_table, gradient_errors

    reference = {
        "backbone.conv0.weight": torch.tensor([1.0, -2.0], dtype=torch.float64),
        "backbone.conv0.bias": torch.tensor([1e-18, -1e-18], dtype=torch.float64),
    }
    computed = {
        "backbone.conv0.weight": torch.tensor([1.0, -2.0], dtype=torch.float64),
        "backbone.conv0.bias": torch.tensor([3e-8, 4e-8], dtype=torch.float64),
    }
    errors = gradient_errors(computed, reference)
    assert errors["conv biases"]["exact_zero"] is True
    assert errors["conv biases"]["abs_error"] == pytest.approx(5e-8)
    assert errors["conv weights"]["exact_zero"] is False
    report = {
        "device": "cpu",
        "torch": "x",
        "matmul_tflops": 1.0,
        "results": [
            {
                "config": {"name": "t"},
                "gflop": 1.0,
                "paths": {
                    "batched/fp32": {
                        "median_s": 1.0,
                        "tflops": 1.0,
                        "fraction_of_matmul": 1.0,
                        "grad_errors_f64": errors,
                    }
                },
            }
        ],
    }
    table = format_table(report)
    assert "conv biases (exact gradient 0: absolute error 5.0e-08)" in table


def test_every_bench_option_has_help() -> None:
    from mamlpp.cli.bench import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    undocumented = [
        action.option_strings[0]
        for action in parser._actions
        if action.option_strings and not (action.help or "").strip()
    ]
    assert undocumented == []


# ----------------------------------------------------------------------------- 5. atomic write


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
