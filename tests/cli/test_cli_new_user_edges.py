"""Edges a new user met, each now one clear line or the documented behaviour: the techniques
listed are those that acted, tracebacks became one-line errors, Ctrl-C says how to continue,
`--nproc` above the cores is noted, `mamlpp.load` takes a run folder, `--top-k` above the kept
checkpoints is noted, `data info` previews other splits, and small output fixes (sizes, the
grad_clip spelling, torchrun's temporary folders, CSV cells that a spreadsheet would run)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import train_tiny
from core_helpers import tiny_tasks
from PIL import Image

from mamlpp.cli.main import main


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny run whose derivative-order annealing never acts (second order from epoch 50)."""
    out = tmp_path_factory.mktemp("edges") / "tiny"
    assert train_tiny(out, "meta.first_order_epochs=50") == 0
    return out


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("mamlpp: error: ") and "\n" not in err, err
    return err


def _task(root: Path, names=("c0", "c1", "c2", "c3", "c4")) -> tuple[Path, Path]:
    for c, name in enumerate(names):
        folder = root / "support" / name
        folder.mkdir(parents=True)
        Image.fromarray(np.full((28, 28), 40 * c, dtype=np.uint8)).save(folder / "a.png")
    (root / "query").mkdir()
    for q in range(2):
        Image.fromarray(np.full((28, 28), 90 + q, dtype=np.uint8)).save(root / "query" / f"{q}.png")
    return root / "support", root / "query"


# -- item 6: the techniques that acted ------------------------------------------------------------


def test_report_and_model_list_only_the_techniques_that_acted(run: Path, tmp_path: Path) -> None:
    summary = json.loads((run / "summary.json").read_text())
    assert "DA" not in summary["techniques"]
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    row = next(
        line
        for line in (tmp_path / "report" / "report.md").read_text().splitlines()
        if line.startswith(f"| {run.name} ")
    )
    assert " ".join(summary["techniques"]) in row and "DA" not in row
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from mamlpp.run.predictor import FewShotPredictor
    from mamlpp.serve.app import create_app

    with TestClient(create_app(FewShotPredictor.from_run(run))) as client:
        assert client.get("/model").json()["techniques"] == summary["techniques"]


# -- item 12: tracebacks that became one line -----------------------------------------------------


def test_a_model_file_whose_preprocessing_disagrees_is_one_line(run, tmp_path, capsys) -> None:
    model = tmp_path / "m.pt"
    assert main(["export", str(run), str(model)]) == 0
    record = torch.load(model, weights_only=True)
    record["preprocessing"]["image_size"] = 32  # the network was built for 28
    torch.save(record, model)
    support, query = _task(tmp_path)
    capsys.readouterr()
    assert main(["adapt", str(model), "--support", str(support), "--query", str(query)]) == 2
    err = _error_line(capsys)
    assert f"model file {model} is inconsistent: its preprocessing makes 32x32 images" in err


def test_report_on_a_summary_that_is_not_a_run_summary(run, tmp_path, capsys) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "summary.json").write_text('{"accuracy": 0.9}\n')
    assert main(["report", str(copy), "--out", str(tmp_path / "r")]) == 1
    err = _error_line(capsys)
    assert f"{copy / 'summary.json'} is not a mamlpp run summary (no test_accuracy" in err


@pytest.mark.parametrize("outputs", [3, 7])
def test_a_network_with_the_wrong_number_of_outputs(outputs: int) -> None:
    from mamlpp import MAMLpp, MetaConfig
    from mamlpp.errors import ConfigError

    network = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(16 * 16, outputs, dtype=torch.float64)
    )
    learner = MAMLpp(network, MetaConfig(num_inner_steps=1, first_order_epochs=0))
    sx, sy, qx, qy = tiny_tasks(ways=5)
    for call in (
        lambda: learner.meta_loss(sx, sy, qx, qy),
        lambda: learner.adapt_and_predict(sx, sy, qx),
    ):
        with pytest.raises(ConfigError) as caught:
            call()
        assert str(caught.value) == (
            f"the network gives {outputs} outputs per example, but the tasks have 5 classes: its "
            "last layer needs one output per class (the ways of the tasks, data.ways)"
        )


def test_a_checkpoint_that_does_not_fit_says_why(run, tmp_path, capsys) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    config = copy / "config.toml"
    config.write_text(config.read_text().replace("channels = 4", "channels = 6", 1))
    assert main(["evaluate", str(copy), "--device", "cpu"]) == 1
    err = _error_line(capsys)
    assert "does not fit this model: size mismatch for " in err
    assert "in the checkpoint" in err and "in the model" in err


# -- items 17-23 ----------------------------------------------------------------------------------


def test_load_takes_a_run_folder(run: Path, tmp_path: Path) -> None:
    import mamlpp

    predictor = mamlpp.load(run)  # as every command takes it: the best checkpoint
    assert isinstance(predictor, mamlpp.FewShotPredictor)
    assert predictor.sources == mamlpp.FewShotPredictor.from_run(run).sources
    with pytest.raises(mamlpp.MamlppError, match="is not a mamlpp run folder"):
        mamlpp.load(tmp_path)


def test_batch_dependent_for_takes_the_queries_or_their_count(run: Path) -> None:
    from mamlpp.run.predictor import FewShotPredictor

    predictor = FewShotPredictor.from_run(run)
    queries = torch.rand(3, 1, 28, 28)
    assert predictor.batch_dependent_for(queries) is True  # as README and serve.md write it
    assert predictor.batch_dependent_for(queries[:1]) is False
    assert predictor.batch_dependent_for(queries[0]) is False  # one image [C, S, S]
    assert predictor.batch_dependent_for(3) is True and predictor.batch_dependent_for(1) is False
    assert predictor.batch_dependent_for([queries[0], queries[1]]) is True
    with pytest.raises(TypeError):
        predictor.batch_dependent_for(torch.rand(28, 28))


def test_ctrl_c_says_how_to_continue_and_what_is_lost(tmp_path, monkeypatch, capsys) -> None:
    from mamlpp.run.trainer import Trainer

    original, calls = Trainer.train_step, []

    def interrupted_at_the_fourth(self, epoch):
        calls.append(epoch)
        if len(calls) == 4:  # epoch 1 done and saved (2 iterations), 1 more done
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_step", interrupted_at_the_fourth)
    out = tmp_path / "run"
    assert train_tiny(out) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"mamlpp: interrupted; continue with `mamlpp train --out {out} --resume`; it starts from "
        "the last checkpoint (the end of epoch 1): the 1 iteration(s) since are run again"
    )
    monkeypatch.setattr(Trainer, "train_step", original)
    assert main(["train", "--out", str(out), "--resume", "--device", "cpu", "--quiet"]) == 0


def test_resume_hint_before_any_checkpoint_and_mid_epoch() -> None:
    from mamlpp.run.lifecycle import resume_hint
    from mamlpp.run.run_dir import RunDir

    run = RunDir(Path("runs/x"))
    assert "no checkpoint was written yet" in resume_hint(run, 3, None, 10)
    assert "(3 done are lost)" in resume_hint(run, 3, None, 10)
    assert "(epoch 2, iteration 5): the 2 iteration(s)" in resume_hint(run, 17, 15, 10)
    assert "(the end of epoch 2): nothing is lost" in resume_hint(run, 20, 20, 10)


def test_nproc_above_the_cores_is_noted(tmp_path, monkeypatch, capsys) -> None:
    import os
    import subprocess

    started = []

    class Launched:  # torchrun is not started: the note comes before the launch
        def __init__(self, command):
            started.append(command)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def wait(self):
            return 0

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(subprocess, "Popen", Launched)
    args = ["train", "--preset", "synthetic", "--out", str(tmp_path / "r"), "--device", "cpu"]
    assert main([*args, "--nproc", "4", "--set", "train.tasks_per_batch=4"]) == 0
    out = capsys.readouterr().out
    assert (
        "note: --nproc 4 on the CPU, but this machine has 2 CPU cores: the 4 processes share "
        "them, so this is slower than --nproc 2" in out
    )
    assert len(started) == 1
    assert main([*args, "--nproc", "2", "--set", "train.tasks_per_batch=4"]) == 0
    assert "note: --nproc" not in capsys.readouterr().out


def test_a_truncated_model_file_says_so(run: Path, tmp_path: Path, capsys) -> None:
    model = tmp_path / "m.pt"
    assert main(["export", str(run), str(model)]) == 0
    data = model.read_bytes()
    model.write_bytes(data[:-10])  # the zip's end cut off: torch says "[Errno 22] ..."
    support, query = _task(tmp_path)
    capsys.readouterr()
    assert main(["adapt", str(model), "--support", str(support), "--query", str(query)]) == 1
    err = _error_line(capsys)
    assert f"cannot read model file {model}: a truncated or damaged torch file" in err
    assert err.endswith("write it again with `mamlpp export`")


def test_top_k_above_the_kept_checkpoints_is_noted(run: Path, tmp_path: Path, capsys) -> None:
    kept = len(list((run / "checkpoints").glob("epoch-*.pt")))
    assert main(["export", str(run), str(tmp_path / "m.safetensors"), "--top-k", "9"]) == 0
    out = capsys.readouterr().out
    assert f"note: --top-k 9, but only {kept} checkpoints kept in {run}/checkpoints" in out
    support, query = _task(tmp_path)
    args = ["adapt", str(run), "--support", str(support), "--query", str(query), "--top-k", "9"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"note: --top-k 9, but only {kept} checkpoints kept in {run}/checkpoints" in err


def test_data_info_previews_other_splits_and_warns_of_few_classes(tmp_path, capsys) -> None:
    for c in range(10):
        folder = tmp_path / "images" / f"k{c}"
        folder.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((28, 28), 20 * c + i, dtype=np.uint8)).save(folder / f"{i}.png")
    info = ["data", "info", "folder", "--data-dir", str(tmp_path / "images")]
    assert main(info) == 0
    captured = capsys.readouterr()
    assert "warning: the test split has 2 classes, fewer than data.ways=5" in captured.err
    fractions = ["--set", "data.val_fraction=0.5", "--set", "data.test_fraction=0.3"]
    assert main([*info, *fractions, "--set", "data.ways=2"]) == 0
    captured = capsys.readouterr()
    assert "train" in captured.out and "warning" not in captured.err
    assert main([*info, "--set", "train.epochs=3"]) == 2
    assert "data info takes [data] settings only" in _error_line(capsys)


# -- item 26: small things ------------------------------------------------------------------------


def test_export_prints_a_readable_size(run: Path, tmp_path: Path, capsys) -> None:
    assert main(["export", str(run), str(tmp_path / "m.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "(0.0 MB)" not in out
    size = (tmp_path / "m.safetensors").stat().st_size
    assert f"({size / 1e3:.1f} KB)" in out


def test_grad_clip_message_spells_none_as_the_toml_does(tmp_path: Path, capsys) -> None:
    assert train_tiny(tmp_path / "r", "meta.grad_clip=-1") == 2
    err = _error_line(capsys)
    assert 'grad_clip must be > 0, or "none" for no clipping' in err


def test_empty_torchelastic_folders_are_removed(tmp_path: Path) -> None:
    from mamlpp.engine.elastic_temp import removing_empty_elastic_folders

    (tmp_path / "torchelastic_before").mkdir()  # not this job's: kept
    with removing_empty_elastic_folders(tmp_path):
        (tmp_path / "torchelastic_empty" / "none" / "attempt_0").mkdir(parents=True)
        (tmp_path / "torchelastic_failed" / "0").mkdir(parents=True)
        (tmp_path / "torchelastic_failed" / "0" / "error.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "torchelastic_before",
        "torchelastic_failed",
    ]


def test_csv_cells_that_start_like_a_formula_stay_text(run, tmp_path, capsys) -> None:
    support, query = _task(tmp_path, names=("=1+1", "+c1", "-c2", "@c3", "c4"))
    out = tmp_path / "p.csv"
    args = ["adapt", str(run), "--support", str(support), "--query", str(query)]
    assert main([*args, "--out", str(out)]) == 0
    rows = list(csv.reader(out.read_text().splitlines()))
    assert rows[0][3:] == ["p[+c1]", "p[-c2]", "p[=1+1]", "p[@c3]", "p[c4]"]  # by name
    for row in rows[1:]:
        assert not row[1].startswith(("=", "+", "-", "@"))
        assert row[1] in ("'=1+1", "'+c1", "'-c2", "'@c3", "c4")
    assert main([*args, "--out", str(tmp_path / "p.json")]) == 0
    record = json.loads((tmp_path / "p.json").read_text())
    assert record["classes"] == ["+c1", "-c2", "=1+1", "@c3", "c4"]  # JSON keeps the names
