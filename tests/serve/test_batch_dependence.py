"""Whether a prediction depends on the other queries: said by the API, `mamlpp adapt` and
`mamlpp serve` in every mode; one query image of a transductive model is normalised with the
support set's statistics (a batch of one would normalise itself)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from serve_helpers import form, held_out_characters, make_task, train_tiny_run

import mamlpp
from mamlpp.cli.main import main
from mamlpp.run.predictor import with_bn_mode


@pytest.fixture(scope="module")
def run_dir(omniglot_dir, tmp_path_factory) -> Path:
    return train_tiny_run(omniglot_dir, tmp_path_factory.mktemp("batch-dependence"))


@pytest.fixture(scope="module")
def task(omniglot_dir):
    characters = held_out_characters(omniglot_dir)
    support, query = make_task(characters, sorted(characters)[:5], queries=2)
    return {c: [png for _, png in images] for c, images in support.items()}, query


@pytest.mark.slow
def test_one_transductive_query_uses_the_support_statistics(run_dir: Path, task) -> None:
    predictor = mamlpp.FewShotPredictor.from_run(run_dir)
    assert predictor.config.meta.bn_mode == "transductive" and predictor.batch_dependent
    support, query = task
    images = [png for _, png in query]
    together = predictor.adapt_and_predict(support, images)
    assert together.batch_dependent
    alone = predictor.adapt_and_predict(support, images[:1])
    assert not alone.batch_dependent and not predictor.batch_dependent_for(1)
    # Exactly the support-statistics model's answer, not a batch of one normalising itself.
    sx, sy, _, _ = predictor.prepare_support(support)
    qx = predictor.prepare_query(images[:1])
    support_mode = with_bn_mode(predictor.members[0], "support")
    expected = torch.softmax(support_mode.adapt_and_predict(sx, sy, qx).float(), -1)
    assert torch.allclose(alone.probabilities, expected, atol=1e-6)  # threads may differ
    batch_of_one = torch.softmax(predictor.members[0].adapt_and_predict(sx, sy, qx).float(), -1)
    assert not torch.allclose(alone.probabilities, batch_of_one, atol=1e-3)
    # And a support-statistics answer does not depend on the other queries.
    assert torch.allclose(
        support_mode.adapt_and_predict(sx, sy, predictor.prepare_query(images))[:1].softmax(-1),
        expected,
        atol=1e-6,
    )


def test_adapt_says_whether_predictions_depend_on_the_batch(
    run_dir: Path, task, tmp_path: Path, capsys
) -> None:
    support, query = task
    for name, images in support.items():
        (tmp_path / "support" / name).mkdir(parents=True)
        (tmp_path / "support" / name / "0.png").write_bytes(images[0])
    files = []
    for i, (_, png) in enumerate(query[:3]):
        files.append(tmp_path / f"q{i}.png")
        files[-1].write_bytes(png)
    base = ["adapt", str(run_dir), "--support", str(tmp_path / "support")]
    out = tmp_path / "p.json"
    assert main([*base, "--query", *map(str, files), "--out", str(out)]) == 0
    assert "were normalised together (transductive batch norm)" in capsys.readouterr().err
    assert json.loads(out.read_text())["batch_dependent"] is True
    assert main([*base, "--query", str(files[0]), "--out", str(out)]) == 0
    assert (
        "one query image: normalised with the support set's statistics" in capsys.readouterr().err
    )
    assert json.loads(out.read_text())["batch_dependent"] is False


def test_serve_says_it_per_request(run_dir: Path, task) -> None:
    pytest.importorskip("fastapi", reason='pip install -e ".[serve]"')
    from fastapi.testclient import TestClient

    from mamlpp.serve.app import create_app

    support, query = task
    files = {c: [(f"{c}.png", png) for png in images] for c, images in support.items()}
    client = TestClient(create_app(mamlpp.FewShotPredictor.from_run(run_dir)))
    several = client.post("/predict", files=form(files, query[:3])).json()
    one = client.post("/predict", files=form(files, query[:1])).json()
    assert several["batch_dependent"] is True and one["batch_dependent"] is False
