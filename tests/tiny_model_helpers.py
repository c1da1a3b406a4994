"""A FewShotPredictor built in well under a second, untrained (the tests that use it check
plumbing: reading, limits, refusals; not accuracy)."""

from __future__ import annotations

import io

import torch
from PIL import Image

from mamlpp.run.build import build_learner
from mamlpp.run.datasource import preprocessing_for
from mamlpp.run.experiment import build_config
from mamlpp.run.predictor import FewShotPredictor

WAYS = 5


def untrained_predictor(
    image_size: int = 28, channels: str = "grey", resize: str = "always"
) -> FewShotPredictor:
    config = build_config(
        {
            "data": {
                "dataset": "folder",
                "image_size": image_size,
                "channels": channels,
                "resize": resize,
                "ways": WAYS,
                "shots": 1,
            },
            "model": {"channels": 8},
        }
    )
    preprocessing = preprocessing_for(config.data)
    with torch.random.fork_rng(devices=[]):
        learner = build_learner(config, preprocessing.channels)
    return FewShotPredictor(config, [learner], preprocessing, ["untrained"])


def png(width: int = 28, height: int = 28, mode: str = "L", value: int = 128) -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), value).save(out, "PNG")
    return out.getvalue()
