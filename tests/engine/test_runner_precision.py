"""The step runner checks its precision name without writing PyTorch's global flags."""

from __future__ import annotations

import pytest
import torch
from core_helpers import tiny_learner

from mamlpp import MetaConfig, MetaStepRunner
from mamlpp.engine.precision import precision_context


@pytest.fixture
def flag_writes(monkeypatch):
    """Every write of ``torch.backends.cudnn.benchmark`` (which precision_context sets and
    restores), recorded and passed on."""
    writes: list[tuple[str, bool]] = []
    module_type = type(torch.backends.cudnn)
    for name in ("benchmark",):
        original = module_type.__dict__[name]  # the descriptor itself

        def setter(self, value, name=name, original=original):
            writes.append((name, value))
            original.__set__(self, value)

        def getter(self, original=original):
            return original.__get__(self, module_type)

        monkeypatch.setattr(module_type, name, property(getter, setter))
    return writes


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_building_a_runner_writes_no_flag(precision, flag_writes):
    learner = tiny_learner(MetaConfig(num_inner_steps=1))
    MetaStepRunner(learner, precision=precision)
    assert flag_writes == []
    # The spy sees the writes that running a step makes (and that validating the name by
    # entering this context, as earlier, made).
    with precision_context(precision, torch.device("cpu")):
        pass
    assert flag_writes


def test_a_bad_precision_is_refused(flag_writes):
    with pytest.raises(ValueError, match="precision must be one of"):
        MetaStepRunner(tiny_learner(MetaConfig(num_inner_steps=1)), precision="fp8")
    assert flag_writes == []
