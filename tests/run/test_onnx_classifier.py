"""The exported ONNX classifier is the same classifier: for every query image predicted alone,
onnxruntime's probabilities on the file equal mamlpp's own (FewShotPredictor.adapt_and_predict
with that one image) within 1e-5. Conv4 and a plain nn.Sequential backbone; transductive,
support and per_step batch norm; grey and RGB; an ensemble (mamlpp averages the members'
logits). Small models moved by a few meta-steps on random tasks (weights, inner learning rates
and running statistics no longer at their initial values): this checks equality, not accuracy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mamlpp
from mamlpp import MAMLpp
from mamlpp.errors import ConfigError, InputError
from mamlpp.nn.conv4 import conv4_sequential
from mamlpp.run.build import build_learner
from mamlpp.run.datasource import preprocessing_for
from mamlpp.run.experiment import build_config
from mamlpp.run.onnx_export import AdaptedClassifier
from mamlpp.run.predictor import FewShotPredictor

ort = pytest.importorskip("onnxruntime", reason='pip install "mamlpp[onnx]"')
onnx = pytest.importorskip("onnx", reason='pip install "mamlpp[onnx]"')

WAYS, SIZE, FILTERS = 5, 28, 8
TOLERANCE = 1e-5


def _moved(learner: MAMLpp, channels: int, seed: int) -> MAMLpp:
    """``learner`` after 2 meta-steps on random 5-way 1-shot tasks."""
    g = torch.Generator().manual_seed(seed)
    optimizer = learner.make_optimizer()
    for _ in range(2):
        sx = torch.rand(1, WAYS, channels, SIZE, SIZE, generator=g)
        qx = torch.rand(1, WAYS, channels, SIZE, SIZE, generator=g)
        y = torch.arange(WAYS)[None]
        learner.meta_step(optimizer, sx, y, qx, y)
    return learner


def predictor(
    backbone: str, bn_mode: str, channels: int, members: int = 1, seed: int = 0
) -> FewShotPredictor:
    """A 5-way predictor on 28x28 images (grey: 1 channel, RGB: 3)."""
    config = build_config(
        {
            "data": {"dataset": "folder", "channels": "grey" if channels == 1 else "rgb"},
            "model": {"channels": FILTERS},
            "meta": {"bn_mode": bn_mode, "num_inner_steps": 2},
            "train": {"seed": seed},
        }
    )
    learners = []
    for m in range(members):
        if backbone == "conv4":
            learner = build_learner(config, channels)
        else:  # a plain nn.Sequential, run through ModuleBackbone
            torch.manual_seed(seed + m)
            learner = MAMLpp(conv4_sequential(WAYS, channels, FILTERS, SIZE), config.meta)
        learners.append(_moved(learner, channels, seed + 10 * m))
    sources = [f"epoch-{m:04d}.pt" for m in range(members)]
    return FewShotPredictor(config, learners, preprocessing_for(config.data, channels), sources)


def images(count: int, channels: int, seed: int) -> list[Image.Image]:
    """Random PIL images at the model's size (no resize): pixels as a PNG would give them."""
    rng = np.random.default_rng(seed)
    mode = "L" if channels == 1 else "RGB"
    shape = (SIZE, SIZE) if channels == 1 else (SIZE, SIZE, 3)
    return [
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode) for _ in range(count)
    ]


def as_input(pictures: list[Image.Image]) -> np.ndarray:
    """The file's input: float32 [N, C, S, S], pixels / 255."""
    arrays = [np.asarray(p, dtype=np.float32).reshape(SIZE, SIZE, -1) for p in pictures]
    return np.stack([a.transpose(2, 0, 1) for a in arrays]) / np.float32(255)


def check_same_classifier(p: FewShotPredictor, channels: int, path: Path) -> dict[str, str]:
    """Export p adapted to a random 2-shot support set; compare every query image alone."""
    names = ["cat", "dog", "fox", "owl", "yak"]
    pool = images(WAYS * 2, channels, seed=1)
    support = {name: pool[2 * i : 2 * i + 2] for i, name in enumerate(names)}
    queries = images(4, channels, seed=2)
    classifier = p.adapt(support)
    assert isinstance(classifier, AdaptedClassifier) and classifier.classes == names
    classifier.to_onnx(path)

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = as_input(queries)
    batch = session.run(None, {"image": x})[0]  # [4, 5]: one call for all of them
    assert batch.shape == (4, WAYS) and batch.dtype == np.float32
    for i, query in enumerate(queries):
        alone = p.adapt_and_predict(support, [query])  # mamlpp, this image alone
        assert alone.classes == names
        expected = alone.probabilities.numpy()[0]
        np.testing.assert_allclose(batch[i], expected, rtol=0, atol=TOLERANCE)
        single = session.run(None, {"image": x[i : i + 1]})[0][0]  # a batch of one too
        np.testing.assert_allclose(single, expected, rtol=0, atol=TOLERANCE)
    with torch.no_grad():  # the torch module itself, before export
        np.testing.assert_allclose(
            classifier(torch.from_numpy(x)).numpy(), batch, rtol=0, atol=TOLERANCE
        )
    return session.get_modelmeta().custom_metadata_map


CASES = [  # backbone, bn_mode, channels
    ("conv4", "transductive", 1),
    ("conv4", "support", 3),
    ("sequential", "transductive", 3),
    ("sequential", "support", 1),
    ("conv4", "per_step", 1),
]


@pytest.mark.parametrize(("backbone", "bn_mode", "channels"), CASES)
def test_onnxruntime_equals_mamlpp_for_each_image_alone(backbone, bn_mode, channels, tmp_path):
    p = predictor(backbone, bn_mode, channels)
    meta = check_same_classifier(p, channels, tmp_path / "classifier.onnx")
    assert json.loads(meta["classes"]) == ["cat", "dog", "fox", "owl", "yak"]
    assert (meta["channels"], meta["image_size"], meta["bn_mode"]) == (
        str(channels),
        str(SIZE),
        bn_mode,
    )


@pytest.mark.parametrize("backbone", ["conv4", "sequential"])
def test_an_ensemble_is_one_graph_that_equals_mamlpp(backbone, tmp_path):
    p = predictor(backbone, "transductive", 3, members=2, seed=3)
    meta = check_same_classifier(p, 3, tmp_path / "ensemble.onnx")
    assert json.loads(meta["checkpoints"]) == ["epoch-0000.pt", "epoch-0001.pt"]
    # The members differ, so averaging logits and averaging probabilities differ: the equality
    # above pins mamlpp's rule (mean of logits, then softmax).
    model = onnx.load(str(tmp_path / "ensemble.onnx"))
    assert sum(node.op_type == "Softmax" for node in model.graph.node) == 1


def test_the_metadata_describes_the_file(tmp_path):
    p = predictor("conv4", "transductive", 1)
    p.origin = "runs/mine"
    support = {f"class {i}": images(1 + i % 2, 1, seed=i) for i in range(WAYS)}
    p.adapt(support).to_onnx(tmp_path / "c.onnx")
    model = onnx.load(str(tmp_path / "c.onnx"))
    meta = {e.key: e.value for e in model.metadata_props}
    assert json.loads(meta["classes"]) == [f"class {i}" for i in range(WAYS)]
    assert json.loads(meta["support_images"]) == {f"class {i}": 1 + i % 2 for i in range(WAYS)}
    assert meta["source"] == "runs/mine" and meta["mamlpp_version"] == mamlpp.__version__
    assert meta["resample"] == "bilinear" and meta["resize"] == "always"
    assert (meta["pil_mode"], meta["pil_filter"]) == ("L", "BILINEAR")
    assert json.loads(meta["normalisation"]) == {"mean": [0.0], "std": [1.0]}
    assert meta["inner_steps"] == "2" and "predicted alone" in meta["equals"]
    assert "support set's statistics" in meta["equals"]
    (graph_input,) = model.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert graph_input.name == "image" and dims[0].dim_param  # a dynamic batch dimension
    assert [d.dim_value for d in dims[1:]] == [1, SIZE, SIZE]
    assert [o.name for o in model.graph.output] == ["probabilities"]


def test_what_cannot_be_exported_is_one_line(tmp_path, monkeypatch):
    p = predictor("conv4", "support", 1)
    support = {f"c{i}": images(1, 1, seed=i) for i in range(WAYS)}
    classifier = p.adapt(support)
    with pytest.raises(ConfigError, match=r"must end in \.onnx, got c\.pt"):
        classifier.to_onnx(tmp_path / "c.pt")
    with pytest.raises(ConfigError, match="does not exist"):
        classifier.to_onnx(tmp_path / "missing" / "c.onnx")
    with pytest.raises(InputError, match="the model was trained for 5-way"):
        p.adapt({"a": support["c0"], "b": support["c1"]})

    # An operation the exporter has no ONNX rule for (aten::kthvalue here) is one line.
    class Median(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x - x.flatten(1).kthvalue(3, dim=1).values[:, None, None, None]

    config = build_config({"data": {"dataset": "folder"}, "model": {"channels": FILTERS}})
    network = torch.nn.Sequential(Median(), *conv4_sequential(WAYS, 1, FILTERS, SIZE))
    odd = FewShotPredictor(config, [MAMLpp(network, config.meta)], p.preprocessing)
    with pytest.raises(ConfigError, match=r"^cannot export this model to ONNX \(") as error:
        odd.adapt(support).to_onnx(tmp_path / "odd.onnx")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "odd.onnx").exists()

    # Without the onnx package: one line naming the extra.
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ConfigError, match=r'pip install "mamlpp\[onnx\]"'):
        classifier.to_onnx(tmp_path / "c.onnx")
    assert not (tmp_path / "c.onnx").exists()
