"""`mamlpp` user errors: one line on stderr, exit code 2 for configuration, 1 for data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mamlpp.data.sources as sources
from mamlpp.cli.main import main
from mamlpp.errors import DataError
from mamlpp.run.presets import PRESETS


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("mamlpp: error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "data.wayz=5"], "unknown key data.wayz"),
        (["--set", "train.epochs=many"], "train.epochs must be an integer"),
        (["--set", "meta.msl=yes"], "meta.msl must be true or false"),
        (["--set", "meta.adapt_bn_affine=true"], "needs per_step_bn_affine=False"),
        (["--set", "meta.meta_lr_min=0.1"], "meta.meta_lr_min must lie in"),
        (["--set", "train.log_every=4", "--set", "train.checkpoint_every=6"], "multiple"),
        (["--set", "oops"], "--set expects section.key=value"),
        (["--preset", "omniglot-5w2s"], "unknown preset"),
        (["--resume"], "--resume needs --out"),
        (["--device", "tpu"], "--device must be auto, cpu or cuda"),
    ],
)
def test_config_errors_exit_2_with_one_line(args, message, capsys, tmp_path: Path) -> None:
    out = [] if "--resume" in args else ["--out", str(tmp_path / "run")]
    assert main(["train", *out, *args]) == 2
    assert message in _error(capsys)
    assert not (tmp_path / "run").exists(), "nothing is written for a rejected config"


def test_bad_config_file(tmp_path: Path, capsys) -> None:
    file = tmp_path / "bad.toml"
    file.write_text("[train]\nepochz = 3\n")
    assert main(["train", "--config", str(file), "--out", str(tmp_path / "run")]) == 2
    assert "unknown key train.epochz" in _error(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(tmp_path: Path, capsys) -> None:
    assert main(["train", "--device", "cuda", "--out", str(tmp_path / "r")]) == 2
    assert "no CUDA device" in _error(capsys)


def test_missing_omniglot_with_no_download(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        main(["train", "--data-dir", str(empty), "--no-download", "--out", str(tmp_path / "run")])
        == 1
    )
    err = _error(capsys)
    for hint in ("--data-dir", "MAMLPP_DATA", "--preset synthetic", str(empty)):
        assert hint in err


def test_offline_download_failure_names_the_ways_out(tmp_path: Path, capsys, monkeypatch):
    calls = []

    def offline(root, progress=True, folder=None):
        calls.append(Path(root))
        raise DataError(
            "cannot download https://raw.githubusercontent.com/x/images_background.zip: "
            "[Errno -3] Temporary failure in name resolution; cannot download https://..."
        )

    monkeypatch.setattr(sources, "download_omniglot", offline)
    empty = tmp_path / "data"
    assert main(["train", "--data-dir", str(empty), "--out", str(tmp_path / "run")]) == 1
    captured = capsys.readouterr()
    assert calls == [empty]
    assert "Omniglot is not in" in captured.out and "downloading" in captured.out  # announced
    err = captured.err.strip()
    assert err.startswith("mamlpp: error: cannot download Omniglot") and "\n" not in err
    for hint in ("--data-dir", "MAMLPP_DATA", "--preset synthetic", "name resolution"):
        assert hint in err


def test_corrupt_download_is_reported_as_such(tmp_path: Path, capsys, monkeypatch) -> None:
    def corrupt(root, progress=True, folder=None):
        raise DataError("checksum mismatch for https://x/images_background.zip: expected md5 a")

    monkeypatch.setattr(sources, "download_omniglot", corrupt)
    assert main(["train", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run")]) == 1
    assert "checksum mismatch" in _error(capsys)


def test_presets_lists_every_preset(capsys) -> None:
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(PRESETS)
    by_name = {line.split()[0]: line for line in lines}
    assert "omniglot" in by_name["omniglot-20w5s"] and "20-way 5-shot" in by_name["omniglot-20w5s"]
    assert "MSL DA BNRS BNWB LSLR CA" in by_name["mini-imagenet-5w1s"]
    assert "plain MAML" in by_name["mini-imagenet-5w1s-maml"]
    assert "100x500" in by_name["omniglot-5w1s"] and "10 min" in by_name["quickstart"]


def test_evaluate_and_report_need_a_run_folder(tmp_path: Path, capsys) -> None:
    assert main(["evaluate", str(tmp_path)]) == 2  # a usage error
    assert "not a mamlpp run folder" in _error(capsys)
    assert main(["report", str(tmp_path)]) == 2
    assert "not a mamlpp run folder" in _error(capsys)
