"""The meta-iteration that a CUDA graph records must need no host work: checked on the CPU.

A CUDA graph cannot record a host-to-device copy, a value read on the host or a data-dependent
shape. Such a call either breaks capture on a GPU (as a Python-list index in the statistics fold
once did, on the first real GPU) or syncs every iteration. These tests run one whole fast-path
iteration (meta-loss, backward, clamp, capturable Adam step, statistics fold) under
:class:`mamlpp.engine.capture.CaptureHazardMode` in every schedule regime, so the CPU-only CI guards
code
that only a GPU would run.
"""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
from core_helpers import tiny_learner, tiny_tasks

from mamlpp import MetaConfig
from mamlpp.engine.capture import CaptureError, CaptureHazardMode, find_capture_hazards
from mamlpp.engine.step_runner import MetaStepRunner
from mamlpp.nn.per_step_bn import fold_running_stats


@pytest.fixture
def capturable_adam_on_cpu(monkeypatch):
    """Let ``Adam(capturable=True)`` run on the CPU, so the optimiser step is the one a graph
    records (tensor lr and step count; the non-capturable step reads its step on the host)."""
    base = importlib.import_module("torch.optim.optimizer")
    adam = importlib.import_module("torch.optim.adam")
    original = base._get_capturable_supported_devices

    def with_cpu(supports_xla: bool = True) -> list[str]:
        return [*original(supports_xla), "cpu"]

    monkeypatch.setattr(base, "_get_capturable_supported_devices", with_cpu)
    monkeypatch.setattr(adam, "_get_capturable_supported_devices", with_cpu)


def _capturable_step(config: MetaConfig) -> MetaStepRunner:
    learner = tiny_learner(config)
    lr = torch.tensor(learner.outer_lr(0), dtype=torch.float64)
    optimizer = torch.optim.Adam(learner.meta_parameters(), lr=lr, capturable=True)
    return MetaStepRunner(learner, optimizer)


REGIMES = {
    "maml++ msl first order": (MetaConfig(num_inner_steps=2, first_order_epochs=5), 0),
    "maml++ msl second order": (MetaConfig(num_inner_steps=2, first_order_epochs=0), 0),
    "maml++ msl off": (MetaConfig(num_inner_steps=2, msl_epochs=1, first_order_epochs=0), 3),
    "maml++ clipped": (MetaConfig(num_inner_steps=2, grad_clip=1.0), 0),
    "maml": (MetaConfig.maml(num_inner_steps=2), 0),
    "fomaml": (MetaConfig.fomaml(num_inner_steps=2), 0),
    "maml++ support bn": (
        MetaConfig(num_inner_steps=2, first_order_epochs=0, bn_mode="support"),
        0,
    ),
    "shared bn stats, per-step affine": (
        MetaConfig(num_inner_steps=2, per_step_bn_stats=False),
        0,
    ),
    "adapted bn affine, sum": (
        MetaConfig(
            num_inner_steps=3,
            per_step_bn_affine=False,
            adapt_bn_affine=True,
            learn_inner_lrs=False,
            task_reduction="sum",
        ),
        0,
    ),
}


@pytest.mark.parametrize("regime", list(REGIMES))
@pytest.mark.slow
def test_whole_iteration_has_no_capture_hazard(regime, capturable_adam_on_cpu):
    config, epoch = REGIMES[regime]
    step = _capturable_step(config)
    batch = tiny_tasks()
    step(batch, epoch)  # warm-up: optimiser state exists, as before a real capture
    step._set_epoch(epoch)  # host work that happens before a replay, outside the graph
    before = copy.deepcopy(step.learner.state_dict())
    hazards = find_capture_hazards(lambda: step._body(batch, epoch))
    assert hazards == [], "\n".join(h.describe() for h in hazards)
    # The checked iteration really trained: parameters and running statistics moved.
    after = step.learner.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in after if "running" in k)
    assert not torch.equal(before["backbone.head.weight"], after["backbone.head.weight"])


def test_list_index_in_the_fold_is_a_hazard():
    """The failure seen on the first real GPU, in miniature: indexing with a Python list builds a
    CPU index tensor (``aten.lift_fresh``); the mode must name it and its line."""
    values = torch.randn(2, 4, 3)

    def list_indexed():
        return values[:, [0, 2], :]

    hazards = find_capture_hazards(list_indexed)
    assert [h.op for h in hazards] == ["aten.lift_fresh.default"]
    assert "test_capture_safety.py" in hazards[0].where and "list_indexed" in hazards[0].where
    # The fold itself is clean (integer indexing only), with repeated and non-contiguous rows.
    running = torch.zeros(3, 3)
    fold = lambda: fold_running_stats(running, values, [0, 2, 0, 1], 0.1)  # noqa: E731
    assert find_capture_hazards(fold) == []


@pytest.mark.parametrize(
    "make",
    [
        lambda t: t.sum().item(),
        lambda t: bool(t.sum() > 0),
        lambda t: t[t > 0],
        lambda t: t.nonzero(),
        lambda t: torch.tensor([1.0, 2.0]) * t[:2],
    ],
    ids=["item", "bool", "mask-index", "nonzero", "tensor-from-list"],
)
def test_mode_detects_each_kind_of_hazard(make):
    t = torch.randn(5)
    with CaptureHazardMode() as mode:
        make(t)
    assert mode.hazards, "hazard not detected"


def test_hazard_in_the_step_is_a_one_line_error_naming_op_and_line(monkeypatch):
    """The warm-up check raises CaptureError (default) naming the operation and source line."""
    step = MetaStepRunner(tiny_learner(MetaConfig(num_inner_steps=2)))
    original = step.learner.meta_loss_and_stats

    def with_a_host_read(*args, **kwargs):
        loss, metrics, stats = original(*args, **kwargs)
        _ = float(loss.detach())  # a host read hidden inside the step
        return loss, metrics, stats

    monkeypatch.setattr(step.learner, "meta_loss_and_stats", with_a_host_read)
    hazards = find_capture_hazards(lambda: step._body(tiny_tasks(), 0))
    assert hazards and hazards[0].op == "aten._local_scalar_dense.default"
    assert "test_capture_safety.py" in hazards[0].where
    assert "\n" not in hazards[0].describe()
    with pytest.raises(CaptureError, match="_local_scalar_dense.*test_capture_safety.py"):
        step._hazards_found(hazards[0].describe(), {})
    # Explicit opt-out: eager training, recorded (never silent).
    step.fallback = "eager"
    with pytest.warns(RuntimeWarning, match="continuing eagerly"):
        step._hazards_found(hazards[0].describe(), {})
    assert step.path == "eager" and "_local_scalar_dense" in step.describe()["graph_fallback"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_real_capture_equals_eager_on_cuda():
    """On a GPU: graph replays give the same parameters as eager steps (float32)."""
    config = MetaConfig(num_inner_steps=2, msl_epochs=2, first_order_epochs=1, total_epochs=4)
    eager_learner = tiny_learner(config).float().cuda()
    graph_learner = copy.deepcopy(eager_learner)
    eager = MetaStepRunner(eager_learner, use_cuda_graph=False)
    graph = MetaStepRunner(graph_learner, use_cuda_graph=True, warmup_steps=1)
    for epoch in range(4):
        for i in range(3):
            batch = [t.cuda() for t in tiny_tasks(seed=10 * epoch + i)]
            batch = [t.float() if t.is_floating_point() else t for t in batch]
            a = eager(batch, epoch)
            b = graph(batch, epoch)
            torch.testing.assert_close(b["loss"], a["loss"], rtol=1e-4, atol=1e-5)
    assert graph.captures >= 3 and graph.path == "cuda-graph"
    expected, got = eager_learner.state_dict(), graph_learner.state_dict()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-3, atol=1e-4, msg=name)
