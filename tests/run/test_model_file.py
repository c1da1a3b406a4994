"""Exported model files: safetensors (the default) and the earlier .pt format load to the same
predictor, round trips are exact, and foreign or damaged files are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from serve_helpers import held_out_characters, make_task, train_tiny_run

import mamlpp
from mamlpp.cli.main import main
from mamlpp.run.model_file import METADATA_KEY, read_model


@pytest.fixture(scope="module")
def run_dir(omniglot_dir, tmp_path_factory) -> Path:
    return train_tiny_run(omniglot_dir, tmp_path_factory.mktemp("model-file"))


def _probabilities(predictor: mamlpp.FewShotPredictor, omniglot_dir: Path) -> torch.Tensor:
    characters = held_out_characters(omniglot_dir)
    support, query = make_task(characters, sorted(characters)[:5], queries=2)
    result = predictor.adapt_and_predict(
        {name: [png for _, png in images] for name, images in support.items()},
        [png for _, png in query],
    )
    return result.probabilities


def test_safetensors_and_pt_exports_give_identical_probabilities(
    run_dir: Path, omniglot_dir: Path, tmp_path: Path
) -> None:
    safe, legacy = tmp_path / "model.safetensors", tmp_path / "model.pt"
    assert main(["export", str(run_dir), str(safe)]) == 0
    assert main(["export", str(run_dir), str(legacy)]) == 0
    from_run = mamlpp.FewShotPredictor.from_run(run_dir)
    expected = _probabilities(from_run, omniglot_dir)
    assert torch.equal(_probabilities(mamlpp.load(safe), omniglot_dir), expected)
    assert torch.equal(_probabilities(mamlpp.load(legacy), omniglot_dir), expected)

    # The weights are plain safetensors that any reader opens; the rest is JSON metadata.
    tensors = load_file(str(safe))
    state = from_run.members[0].state_dict()
    assert set(tensors) == {f"member0/{name}" for name in state}
    for name, tensor in state.items():
        assert torch.equal(tensors[f"member0/{name}"], tensor)
    header_length = int.from_bytes(safe.read_bytes()[:8], "little")
    metadata = json.loads(safe.read_bytes()[8 : 8 + header_length])["__metadata__"]
    record = json.loads(metadata[METADATA_KEY])
    assert record["format"] == "mamlpp-model" and record["members"] == 1
    assert record["config"]["data"]["dataset"] == "folder"
    assert read_model(safe).config == read_model(legacy).config


def test_foreign_damaged_and_misnamed_model_files_are_one_line_errors(
    run_dir: Path, tmp_path: Path, capsys
) -> None:
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    with pytest.raises(mamlpp.MamlppError, match="neither safetensors nor a torch file"):
        mamlpp.load(text)
    safe = tmp_path / "model.safetensors"
    assert main(["export", str(run_dir), str(safe)]) == 0
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(safe.read_bytes()[:-100])
    with pytest.raises(mamlpp.MamlppError, match="cannot read model file .*damaged safetensors"):
        mamlpp.load(damaged)
    capsys.readouterr()
    assert main(["export", str(run_dir), str(tmp_path / "model.bin")]) == 2
    assert "must end in .safetensors or .pt" in capsys.readouterr().err
    assert not (tmp_path / "model.bin").exists()
