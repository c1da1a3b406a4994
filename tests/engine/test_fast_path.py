"""The fast-path step against the plain loop path: eagerly on the CPU (no CUDA graph can be
captured there), and captured and replayed from CUDA graphs where a GPU exists."""

from __future__ import annotations

import copy

import pytest
import torch
from core_helpers import clone_learner, tiny_learner, tiny_tasks
from test_capture_safety import REGIMES, _capturable_step, capturable_adam_on_cpu  # noqa: F401

from mamlpp import MetaConfig
from mamlpp.core.types import PassStats
from mamlpp.engine.capture import CaptureError
from mamlpp.engine.collectives import sync_in_graph
from mamlpp.engine.step_runner import MetaStepRunner, choose_execution
from mamlpp.errors import ConfigError


@pytest.mark.slow
def test_fast_step_matches_loop_path_updates():
    # MSL annealing, first order then second order, cosine lr: the schedules all move.
    config = MetaConfig(
        num_inner_steps=2, msl_epochs=2, first_order_epochs=1, total_epochs=4, grad_clip=5.0
    )
    reference = tiny_learner(config, execution="loop")
    fast_learner = clone_learner(reference)
    fast_learner.execution = "batched"
    runner = MetaStepRunner(fast_learner)
    assert not runner.use_cuda_graph  # CPU: eager, the body a GPU captures (tested below)
    optimizer = reference.make_optimizer()
    for epoch in range(4):
        for group in optimizer.param_groups:
            group["lr"] = reference.outer_lr(epoch)
        batch = tiny_tasks(seed=epoch)
        expected = reference.meta_step(optimizer, batch, epoch)
        got = runner(batch, epoch)
        torch.testing.assert_close(got["loss"], expected["loss"], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(
            got["step_losses"], expected["step_losses"], rtol=1e-10, atol=1e-12
        )
        # Same meta-gradients, hence the same parameters after the Adam step. (Tolerances allow
        # for Adam amplifying rounding noise in gradients that are zero in exact arithmetic,
        # e.g. conv biases followed by batch norm; a wrong lr or schedule is off by >1e-5.)
        for (name, a), b in zip(
            reference.named_parameters(), fast_learner.parameters(), strict=True
        ):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-6, atol=1e-9, msg=name)
            torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-9, msg=name)
        for a, b in zip(reference.buffers(), fast_learner.buffers(), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-9)
    assert runner.optimizer.param_groups[0]["lr"] == reference.outer_lr(3)
    assert runner.captures == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_captured_graph_replays_match_the_loop_path():
    """One warm-up step per graph, then capture and replays: the replayed meta-iterations give
    the loop path's loss and parameters (float64, so rounding cannot hide a wrong graph)."""
    device = torch.device("cuda")
    config = MetaConfig(num_inner_steps=2, msl_epochs=2, first_order_epochs=1, total_epochs=4)
    reference = tiny_learner(config, execution="loop").to(device)
    fast_learner = clone_learner(reference)
    fast_learner.execution = "batched"
    runner = MetaStepRunner(fast_learner, warmup_steps=1)
    assert runner.use_cuda_graph
    optimizer = reference.make_optimizer()
    for iteration, epoch in enumerate([1, 1, 1, 1, 2, 2, 2]):  # warm-up, capture, replays
        for group in optimizer.param_groups:
            group["lr"] = reference.outer_lr(epoch)
        batch = [t.to(device) for t in tiny_tasks(seed=iteration)]
        expected = reference.meta_step(optimizer, batch, epoch)
        got = runner(batch, epoch)
        torch.testing.assert_close(got["loss"], expected["loss"], rtol=1e-9, atol=1e-12)
        for a, b in zip(reference.parameters(), fast_learner.parameters(), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-9)
    assert runner.captures == 2  # one graph per (MSL, derivative order) regime


def test_msl_weights_tensor_equals_schedule_floats():
    learner = tiny_learner(MetaConfig(num_inner_steps=3, first_order_epochs=0))
    batch = tiny_tasks()
    floats, _ = learner.meta_loss(batch, 1, update_bn_stats=False)
    as_tensor = torch.tensor(learner.msl_weights(1), dtype=torch.float64)
    tensor, _ = learner.meta_loss(batch, 1, update_bn_stats=False, msl_weights=as_tensor)
    torch.testing.assert_close(tensor, floats, rtol=1e-14, atol=0)
    doubled, _ = learner.meta_loss(batch, 1, update_bn_stats=False, msl_weights=2 * as_tensor)
    torch.testing.assert_close(doubled, 2 * floats)


@pytest.mark.slow
def test_choose_execution_measures_every_candidate_on_a_copy():
    """The choice at start: every candidate runs (on a copy; the learner is untouched) and the
    fastest by the timer wins. A fake timer stands in for CUDA timing on the CPU."""
    learner = tiny_learner(MetaConfig(num_inner_steps=2))
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    seen: list[str] = []
    fake_seconds = {"batched": 3.0, "loop": 1.0, "vmap": 2.0}

    def timer(fn):
        fn()
        seen.append(current["execution"])
        return fake_seconds[current["execution"]]

    current = {}
    original = MetaStepRunner.__call__

    def tracking_call(self, *args, **kwargs):
        current["execution"] = self.learner.execution
        return original(self, *args, **kwargs)

    MetaStepRunner.__call__ = tracking_call
    try:
        choice, seconds = choose_execution(learner, tiny_tasks(), iterations=2, timer=timer)
    finally:
        MetaStepRunner.__call__ = original
    assert choice == "loop" and seconds == {"batched": 3.0, "loop": 1.0, "vmap": 2.0}
    assert sorted(set(seen)) == ["batched", "loop", "vmap"]
    for name, value in learner.state_dict().items():
        assert torch.equal(value, before[name]), name
    # On the CPU without a timer the tested rule applies: batched, nothing measured.
    assert choose_execution(learner, tiny_tasks()) == ("batched", {})


def test_run_log_and_summary_say_what_trains(tmp_path, capsys):
    """No silent path: the log names the path, precision and execution at start, and
    summary.json records them (on the CPU: eager, nothing measured)."""
    import json

    from mamlpp.cli.main import main

    args = ["train", "--preset", "synthetic", "--out", str(tmp_path / "run"), "--device", "cpu"]
    for assignment in (
        "train.epochs=1",
        "train.iterations_per_epoch=2",
        "train.tasks_per_batch=2",
        "model.channels=4",
        "eval.val_tasks=4",
        "eval.test_tasks=4",
        "eval.top_k=1",
        "train.threads=1",
        "train.precision=fp32",
        "train.execution=loop",
    ):
        args += ["--set", assignment]
    assert main([*args, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "training: eager on cpu, precision fp32, execution loop" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["training_path"]["path"] == "eager"
    assert summary["training_path"]["execution"] == "loop"
    assert summary["training_path"]["precision"] == "fp32"
    assert summary["training_path"]["graph_fallback"] is None
    assert summary["training_path"]["graph_sync"] == "in-graph"  # one process: as before


# -- the collectives after the replay: the step in two phases ----------------------------------


class MirroredRank:
    """A :class:`~mamlpp.core.outer_step.StepSync` for rank 0 of 2 whose peer holds exactly this
    rank's tasks: its collectives are those of one process on the meta-batch repeated twice."""

    world_size = 2

    def reduce_gradients(self, parameters: list[torch.Tensor]) -> None:
        for p in parameters:
            p.grad.mul_(2)

    def gather_stats(self, stats: PassStats) -> PassStats:
        values = {bn: tuple(torch.cat([t, t]) for t in pair) for bn, pair in stats.values.items()}
        return PassStats(values, stats.rows)

    def reduce_metrics(self, metrics: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: 2 * v if k == "loss" else v.clone() for k, v in metrics.items()}


# MSL annealing (epochs 0-1), first then second order (from epoch 1), cosine lr, clamp active.
MOVING = MetaConfig(
    num_inner_steps=2, msl_epochs=2, first_order_epochs=1, total_epochs=4, grad_clip=0.05
)


def _train(step: MetaStepRunner, repeat: int = 1, iterations=((0, 0), (0, 1), (1, 2), (3, 3))):
    """(epoch, batch seed) iterations; each batch's tasks repeated ``repeat`` times."""
    history = []
    for epoch, seed in iterations:
        batch = [t.repeat(repeat, *([1] * (t.dim() - 1))) for t in tiny_tasks(seed=seed)]
        history.append(step(batch, epoch))
    return history


@pytest.mark.slow
def test_split_step_equals_fused_step_bitwise():
    """Phase 1, collectives, phase 2 run apart give bitwise the fused step's parameters, Adam
    state, running statistics and metrics, with and without (stand-in) collectives; and the
    mirrored rank equals one process on the repeated meta-batch (float64, summation order)."""
    reference = tiny_learner(MOVING)
    for sync in (None, MirroredRank()):
        steps = [
            MetaStepRunner(clone_learner(reference), sync=sync, sync_in_graph=inside)
            for inside in (True, False)
        ]
        fused, split = (_train(step) for step in steps)
        for a, b in zip(fused, split, strict=True):
            assert all(torch.equal(a[k], b[k]) for k in a)
        states = [step.learner.state_dict() for step in steps]
        assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
        adam = [step.optimizer.state_dict()["state"] for step in steps]
        assert all(torch.equal(adam[0][i][k], adam[1][i][k]) for i in adam[0] for k in adam[0][i])
        assert steps[1].describe()["graph_sync"] == "after-replay"
    assert not torch.equal(states[0]["backbone.head.weight"], reference.backbone.head.weight)
    one_process = MetaStepRunner(clone_learner(reference))
    whole = _train(one_process, repeat=2)
    for a, b in zip(whole, split, strict=True):
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-12, msg=key)
    want = one_process.learner.state_dict()
    for name, value in steps[1].learner.state_dict().items():
        torch.testing.assert_close(value, want[name], rtol=0, atol=1e-12, msg=name)


@pytest.mark.parametrize("regime", ["maml++ msl first order", "maml++ msl off", "maml++ clipped"])
@pytest.mark.usefixtures("capturable_adam_on_cpu")  # imported from test_capture_safety
def test_each_phase_has_no_capture_hazard(regime):
    """Phase 1 and phase 2 are each recorded as a graph: both are checked (the eager collectives
    between them are not; test_capture_safety checks the fused step in every regime)."""
    config, epoch = REGIMES[regime]
    capturable = _capturable_step(config)  # Adam(capturable=True), as on a GPU
    step = MetaStepRunner(
        capturable.learner, capturable.optimizer, sync=MirroredRank(), sync_in_graph=False
    )
    batch = tiny_tasks()
    step(batch, epoch)  # warm-up: optimiser state exists, as before a real capture
    step._set_epoch(epoch)  # host work that happens before a replay, outside the graphs
    before = copy.deepcopy(step.learner.state_dict())
    assert step.find_hazards(batch, epoch) == []
    after = step.learner.state_dict()  # the checked step really trained
    assert any(not torch.equal(before[k], after[k]) for k in after if "running" in k)
    assert not torch.equal(before["backbone.head.weight"], after["backbone.head.weight"])


@pytest.mark.usefixtures("capturable_adam_on_cpu")
@pytest.mark.slow
def test_hazard_check_watches_both_phases_but_not_the_collectives(monkeypatch):
    """A host read in phase 1, in the collectives and in phase 2: the split step's check names
    the phases' two (its collectives run eagerly after the replay), the fused step's all three."""

    class ReadingSync(MirroredRank):
        def reduce_metrics(self, metrics):
            float(metrics["loss"])  # aten._local_scalar_dense: a host read
            return super().reduce_metrics(metrics)

    capturable = _capturable_step(MOVING)  # Adam(capturable=True): no host read of its own
    step = MetaStepRunner(capturable.learner, capturable.optimizer, sync=ReadingSync())
    meta_loss, fold = step.learner.meta_loss_and_stats, step.learner.fold_batch_stats

    def phase1_read(*args, **kwargs):
        loss, metrics, stats = meta_loss(*args, **kwargs)
        float(loss.detach())
        return loss, metrics, stats

    def phase2_read(stats: PassStats) -> None:
        float(next(iter(stats.values.values()))[0].sum())
        fold(stats)

    monkeypatch.setattr(step.learner, "meta_loss_and_stats", phase1_read)
    monkeypatch.setattr(step.learner, "fold_batch_stats", phase2_read)
    found = {}
    for inside in (True, False):
        step.sync_in_graph = inside
        hazards = step.find_hazards(tiny_tasks(), 0)
        assert {h.op for h in hazards} == {"aten._local_scalar_dense.default"}
        found[inside] = [h.where.rsplit(" in ", 1)[1] for h in hazards]
    assert found[True] == ["phase1_read", "reduce_metrics", "phase2_read"]
    assert found[False] == ["phase1_read", "phase2_read"]
    # Collectives recorded into the graph may be what breaks capture: the error offers the split.
    for inside, offered in ((True, True), (False, False)):
        step.sync_in_graph = inside
        with pytest.raises(CaptureError) as error:
            step._hazards_found("x", {})
        assert ("train.graph_sync=after-replay" in str(error.value)) == offered


def test_graph_sync_setting_auto_follows_the_backend():
    assert sync_in_graph("auto", "nccl") and sync_in_graph("auto", None)
    assert not sync_in_graph("auto", "gloo")
    assert sync_in_graph("in-graph", "gloo") and not sync_in_graph("after-replay", "nccl")
    with pytest.raises(ConfigError, match="graph_sync must be auto, in-graph or after-replay"):
        sync_in_graph("inside", "nccl")


def test_bad_graph_sync_is_a_one_line_usage_error(tmp_path, capsys):
    from mamlpp.cli.main import main

    out = tmp_path / "run"
    args = ["train", "--preset", "synthetic", "--device", "cpu", "--out", str(out)]
    assert main([*args, "--set", "train.graph_sync=sideways", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mamlpp: error: train.graph_sync must be one of") and "\n" not in err
    assert not out.exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_split_graphs_replay_like_eager_steps():
    """Phase 1 and phase 2 captured as two graphs and replayed around the (stand-in)
    collectives, which fill phase 2's static [2B, P, C] statistics: the eager split step's
    metrics, parameters and running statistics (float64)."""
    device = torch.device("cuda")
    eager_learner = tiny_learner(MOVING).to(device)
    graph_learner = clone_learner(eager_learner)
    eager, graph = (
        MetaStepRunner(
            learner, use_cuda_graph=cuda, warmup_steps=1, sync=MirroredRank(), sync_in_graph=False
        )
        for learner, cuda in ((eager_learner, False), (graph_learner, True))
    )
    for iteration, epoch in enumerate([1, 1, 1, 1, 2, 2, 2]):  # warm-up, capture, replays
        batch = [t.to(device) for t in tiny_tasks(seed=iteration)]
        want, got = eager(batch, epoch), graph(batch, epoch)
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-9, atol=1e-12, msg=key)
    assert graph.captures == 2 and graph.path == "cuda-graph"
    assert all(len(entry["graphs"]) == 2 for entry in graph._graphs.values())
    expected = eager_learner.state_dict()
    for name, value in graph_learner.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-6, atol=1e-9, msg=name)
