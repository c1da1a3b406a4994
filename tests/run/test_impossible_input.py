"""Input that cannot be right is refused with one line (item 8): floating tensors outside [0, 1]
(pixels 0..255 given as floats), NaN tensors, and model files whose weights are not finite (they
were served with a 200, null probabilities and "predicted": "c0")."""

from __future__ import annotations

import pytest
import torch
from tiny_model_helpers import WAYS, untrained_predictor

from mamlpp.errors import InputError, MamlppError
from mamlpp.run.predictor import FewShotPredictor, load


def support(value: float = 0.5):
    return {f"c{i}": [torch.full((1, 28, 28), value * (i + 1) / WAYS)] for i in range(WAYS)}


def test_float_pixels_in_0_255_are_refused() -> None:
    predictor = untrained_predictor()
    query = torch.rand(1, 1, 28, 28) * 255
    with pytest.raises(
        InputError,
        match=r"^query image 0 has values from .* to .*; floating "
        r"tensors are pixels in \[0, 1\] \(divide by 255, or give uint8\)$",
    ):
        predictor.adapt_and_predict(support(), query)


def test_nan_and_negative_tensors_are_refused() -> None:
    predictor = untrained_predictor()
    nan = torch.full((1, 28, 28), float("nan"))
    with pytest.raises(InputError, match=r"holds NaN or infinite values"):
        predictor.adapt_and_predict(support(), [nan])
    with pytest.raises(InputError, match=r"has values from -1 to"):
        predictor.adapt_and_predict(support(), [torch.full((1, 28, 28), -1.0)])
    # In range: accepted, with uint8 0..255 and floats 0..1 giving the same probabilities.
    pixels = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    a = predictor.adapt_and_predict(support(), [pixels]).probabilities
    b = predictor.adapt_and_predict(support(), [pixels.float() / 255]).probabilities
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_model_file_with_non_finite_weights_is_refused_on_load(tmp_path, suffix) -> None:
    predictor = untrained_predictor()
    member = predictor.members[0]
    name, weight = next((n, p) for n, p in member.named_parameters() if p.dim() > 1)
    with torch.no_grad():
        weight.view(-1)[0] = float("nan")
    path = tmp_path / f"broken{suffix}"
    predictor.export(path)
    with pytest.raises(MamlppError, match=r"has NaN or infinite weights .*cannot predict") as error:
        load(path)
    assert "\n" not in str(error.value)
    with pytest.raises(MamlppError, match="NaN or infinite weights"):
        FewShotPredictor.from_file(path)
