"""End to end on real Omniglot: a short run on a folder dataset, then `mamlpp adapt` on held-out
characters (one row per query, above chance over 20 tasks, every error case), and `mamlpp export`
-> `mamlpp.load` -> `adapt_and_predict` giving the same probabilities as `mamlpp adapt`."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from own_images_helpers import omniglot_characters, write_classes
from PIL import Image

import mamlpp
from mamlpp.cli.main import main
from mamlpp.run.predictor import FewShotPredictor, InputError

WAYS = 5


@pytest.fixture(scope="module")
def held_out(omniglot_dir) -> dict[str, dict[str, bytes]]:
    """25 characters of the evaluation alphabets: never in the training folder."""
    return omniglot_characters(omniglot_dir / "images_evaluation.zip", 25, skip=100)


@pytest.fixture(scope="module")
def run_dir(omniglot_dir, tmp_path_factory) -> Path:
    """A short MAML++ run (32 filters, 2 epochs x 8 iterations, first order) on a split-layout
    folder of 80 background characters."""
    characters = omniglot_characters(omniglot_dir / "images_background.zip", 80)
    names = sorted(characters)
    root = tmp_path_factory.mktemp("own-images")
    for split, chosen in (("train", names[:60]), ("val", names[60:70]), ("test", names[70:])):
        write_classes(root / "data" / split, {n: characters[n] for n in chosen})
    run = root / "run"
    args = ["train", "--preset", "synthetic", "--data-dir", str(root / "data"), "--out", str(run)]
    settings = {
        "data.dataset": "folder",
        "model.channels": 32,
        "train.epochs": 2,
        "train.iterations_per_epoch": 8,
        "train.log_every": 4,
        "eval.val_tasks": 10,
        "eval.test_tasks": 20,
        "eval.top_k": 2,
    }
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    assert main([*args, "--quiet"]) == 0
    assert 'dataset = "folder"' in (run / "config.toml").read_text()
    return run


def _task(held_out, tmp: Path, seed: int, queries: int = 2, shots: int = 1):
    """A 5-way task of held-out characters: tmp/support/<class>/, tmp/query/<class>__<file>."""
    rng = np.random.default_rng(seed)
    classes = sorted(rng.choice(sorted(held_out), WAYS, replace=False).tolist())
    truth = []
    for name in classes:
        files = sorted(held_out[name])
        picks = rng.choice(len(files), shots + queries, replace=False)
        support = tmp / "support" / name
        support.mkdir(parents=True)
        for i in picks[:shots]:
            (support / files[i]).write_bytes(held_out[name][files[i]])
        for i in picks[shots:]:
            query = tmp / "query" / f"{name}__{files[i]}"
            query.parent.mkdir(exist_ok=True)
            query.write_bytes(held_out[name][files[i]])
            truth.append(name)
    return tmp / "support", tmp / "query", truth


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("mamlpp: error: ") and "\n" not in err, err
    return err


@pytest.mark.slow
def test_adapt_is_above_chance_on_unseen_characters(run_dir, held_out, tmp_path, capsys) -> None:
    correct = total = 0
    for seed in range(20):
        folder = tmp_path / f"task{seed}"
        support, query, truth = _task(held_out, folder, seed)
        out = folder / "predictions.csv"
        assert main(["adapt", str(run_dir), "--support", str(support), "--query", str(query),
                     "--out", str(out)]) == 0  # fmt: skip
        with open(out, newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == len(truth) == WAYS * 2  # one row per query image
        classes = sorted(p.name for p in support.iterdir())
        assert list(rows[0])[3:] == [f"p[{c}]" for c in classes]  # every class's probability
        for row, true_class in zip(rows, truth, strict=True):
            probs = [float(row[f"p[{c}]"]) for c in classes]
            assert abs(sum(probs) - 1.0) < 1e-5
            assert row["predicted"] == classes[int(np.argmax(probs))]
            assert Path(row["file"]).name.startswith(true_class + "__")
            correct += row["predicted"] == true_class
            total += 1
    printed = capsys.readouterr().out
    assert "predicted" in printed and "probability" in printed  # the readable table
    accuracy = correct / total
    # Chance is 1/5; 200 predictions: 35% is more than 5 binomial standard deviations above it.
    assert accuracy > 0.35, f"accuracy {accuracy:.3f} over {total} held-out queries"


@pytest.mark.slow
def test_a_shot_count_unlike_training_is_allowed_with_a_note(
    run_dir, held_out, tmp_path, capsys
) -> None:
    support, query, _ = _task(held_out, tmp_path, seed=99, shots=3)
    assert main(["adapt", str(run_dir), "--support", str(support), "--query", str(query)]) == 0
    captured = capsys.readouterr()
    assert "note: 3 support images per class; the model was trained on 1-shot" in captured.err
    assert len(captured.out.strip().splitlines()) == 1 + WAYS * 2


def _break_ways(support: Path, query: Path) -> list[str]:
    first = sorted(support.iterdir())[0]
    for file in first.iterdir():
        file.unlink()
    first.rmdir()
    return []


def _break_empty_class(support: Path, query: Path) -> list[str]:
    (support / "zz_empty").mkdir()
    return []


def _break_support_image(support: Path, query: Path) -> list[str]:
    victim = next(sorted(support.iterdir())[1].iterdir())
    victim.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return []


def _break_query_image(support: Path, query: Path) -> list[str]:
    (query / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return []


def _break_missing_query(support: Path, query: Path) -> list[str]:
    return ["--query", str(query / "nowhere.png")]


def _break_out_suffix(support: Path, query: Path) -> list[str]:
    return ["--out", str(query.parent / "predictions.txt")]


@pytest.mark.parametrize(
    ("breaker", "message"),
    [
        (_break_ways, "the support set has 4 classes, but the model was trained for 5-way"),
        (_break_empty_class, "zz_empty has no images"),
        (_break_support_image, "unreadable image"),
        (_break_query_image, "unreadable image .*broken.jpg"),
        (_break_missing_query, "nowhere.png does not exist"),
        (_break_out_suffix, "--out must end in .csv or .json"),
    ],
)
@pytest.mark.slow
def test_adapt_errors_are_one_line_exit_2_and_write_nothing(
    breaker, message, run_dir, held_out, tmp_path, capsys
) -> None:
    support, query, _ = _task(held_out, tmp_path, seed=7)
    extra = breaker(support, query)
    out = tmp_path / "predictions.json"
    args = ["adapt", str(run_dir), "--support", str(support), "--query", str(query)]
    args += ["--out", str(out), *extra]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(args) == 2
    import re

    assert re.search(message, _error_line(capsys))
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert not out.exists()


@pytest.mark.slow
def test_an_image_that_cannot_be_brought_to_the_trained_size_is_refused(
    run_dir, held_out, tmp_path, capsys
) -> None:
    # The same model, exported with resizing off (data.resize = "never"): 105x105 PNGs are
    # not the trained 28x28 and must be refused.
    predictor = FewShotPredictor.from_run(run_dir)
    strict = FewShotPredictor(
        dataclasses.replace(
            predictor.config, data=dataclasses.replace(predictor.config.data, resize="never")
        ),
        predictor.members,
        dataclasses.replace(predictor.preprocessing, resize=False),
    )
    model = tmp_path / "strict.pt"
    strict.export(model)
    support, query, _ = _task(held_out, tmp_path, seed=8)
    out = tmp_path / "p.csv"
    args = ["adapt", str(model), "--support", str(support), "--query", str(query), "--out"]
    assert main([*args, str(out)]) == 2
    assert "is 105x105, the model takes 28x28" in _error_line(capsys)
    assert not out.exists()
    # Tensors are never resized, and need the trained channels.
    with pytest.raises(InputError, match=r"shape \(3, 28, 28\), the model takes \(1, 28, 28\)"):
        predictor.adapt_and_predict(
            {str(i): [torch.zeros(3, 28, 28)] for i in range(WAYS)}, [torch.zeros(1, 28, 28)]
        )


@pytest.mark.slow
def test_export_load_predict_equals_mamlpp_adapt(run_dir, held_out, tmp_path, capsys) -> None:
    support, query, _ = _task(held_out, tmp_path, seed=11)
    out = tmp_path / "p.json"
    cli = ["adapt", str(run_dir), "--support", str(support), "--query", str(query)]
    assert main([*cli, "--out", str(out), "--top-k", "2"]) == 0
    record = json.loads(out.read_text())
    assert len(record["checkpoints"]) == 2  # the ensemble of the two best epochs
    model = tmp_path / "model.pt"
    assert main(["export", str(run_dir), str(model), "--top-k", "2"]) == 0

    raw = torch.load(model, weights_only=True)  # one file: config, weights, preprocessing
    assert raw["config"]["data"]["dataset"] == "folder" and len(raw["members"]) == 2
    assert raw["preprocessing"]["image_size"] == 28

    torch.manual_seed(12345)  # a state that building a learner (seeded by the run) cannot give
    rng_before = torch.get_rng_state()
    learner = mamlpp.load(model)
    assert torch.equal(torch.get_rng_state(), rng_before)  # loading leaves the caller's RNG
    classes = record["classes"]
    pil_support = {
        c: [Image.open(p).copy() for p in sorted((support / c).iterdir())] for c in classes
    }
    files = [Path(p["file"]) for p in record["predictions"]]
    pil_query = [Image.open(f).copy() for f in files]
    result = learner.adapt_and_predict(pil_support, pil_query)
    assert result.classes == classes
    expected = torch.tensor(
        [[p["probabilities"][c] for c in classes] for p in record["predictions"]]
    )
    assert torch.equal(result.probabilities, expected)
    assert result.predicted == [p["predicted"] for p in record["predictions"]]

    # Tensors (uint8 pixels, already 28x28: what the preprocessing made of the files) and a
    # flat list with class names give the same answer.
    prep = learner.preprocessing
    to_tensor = [torch.from_numpy(prep.pixels(f)) for f in files]
    flat = [img for c in classes for img in pil_support[c]]
    names = [c for c in classes for _ in pil_support[c]]
    again = learner.adapt_and_predict(flat, to_tensor, class_names=names)
    assert torch.equal(again.probabilities, expected)
    as_float = [t.float() / 255 for t in to_tensor]  # ToTensor's convention: pixels in [0, 1]
    close = learner.adapt_and_predict(flat, torch.stack(as_float), class_names=names)
    assert torch.allclose(close.probabilities, expected, atol=1e-5)

    # `mamlpp adapt` on the exported file agrees too.
    out2 = tmp_path / "p2.json"
    assert main(["adapt", str(model), "--support", str(support), "--query", str(query),
                 "--out", str(out2)]) == 0  # fmt: skip
    assert json.loads(out2.read_text())["predictions"] == record["predictions"]
    capsys.readouterr()


def test_exported_file_is_refused_when_foreign(tmp_path, capsys) -> None:
    bogus = tmp_path / "bogus.pt"
    torch.save({"format": "something else"}, bogus)
    with pytest.raises(mamlpp.MamlppError, match="not an exported mamlpp model"):
        mamlpp.load(bogus)
    buffer = io.BytesIO(b"garbage")
    bogus.write_bytes(buffer.getvalue())
    with pytest.raises(mamlpp.MamlppError, match="cannot read model file"):
        mamlpp.load(bogus)


def _untrained_predictor() -> FewShotPredictor:
    """A fresh (untrained) 5-way 1-shot learner on 28x28 grey images: input handling only."""
    from mamlpp.run.build import build_learner
    from mamlpp.run.datasource import preprocessing_for
    from mamlpp.run.experiment import build_config

    config = build_config({"data": {"dataset": "folder"}, "model": {"channels": 8}})
    learner = build_learner(config, 1)
    return FewShotPredictor(config, [learner], preprocessing_for(config.data, 1))


def test_input_forms_and_their_errors(tmp_path: Path) -> None:
    predictor = _untrained_predictor()
    images = [Image.fromarray(np.full((40, 30), 40 * i, dtype=np.uint8)) for i in range(WAYS)]
    path = tmp_path / "q.png"
    images[2].save(path)
    # One image per class (no list), one query (a path); a list with class names; a tensor batch.
    single = predictor.adapt_and_predict({f"c{i}": images[i] for i in range(WAYS)}, str(path))
    assert single.probabilities.shape == (1, WAYS) and single.classes[0] == "c0"
    listed = predictor.adapt_and_predict(images, [path], class_names=[f"c{i}" for i in range(5)])
    assert torch.equal(listed.probabilities, single.probabilities)
    pixels = torch.stack([torch.from_numpy(predictor.preprocessing.pixels(i)) for i in images])
    batch = predictor.adapt_and_predict(list(pixels), pixels, class_names=list("abcde"))
    assert batch.probabilities.shape == (WAYS, WAYS) and batch.classes == list("abcde")
    with pytest.raises(InputError, match="not both"):
        predictor.adapt_and_predict({"a": images}, [path], class_names=["a"])
    with pytest.raises(InputError, match="needs class_names"):
        predictor.adapt_and_predict(images, [path])
    with pytest.raises(InputError, match="no query images"):
        predictor.adapt_and_predict(images, [], class_names=list("abcde"))
    with pytest.raises(InputError, match="support class 'b' has no images"):
        predictor.adapt_and_predict({"a": images, "b": []}, [path])
    with pytest.raises(InputError, match="must be uint8 .* or floating"):
        predictor.adapt_and_predict(images, torch.zeros(1, 28, 28, dtype=torch.int32),
                                    class_names=list("abcde"))  # fmt: skip
