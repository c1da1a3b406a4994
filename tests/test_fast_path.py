"""The fast-path step against the plain loop path: eagerly on the CPU (no CUDA graph can be
captured there), and captured and replayed from CUDA graphs where a GPU exists."""

from __future__ import annotations

import pytest
import torch
from core_helpers import clone_learner, tiny_learner, tiny_tasks

from mamlpp import MetaConfig
from mamlpp.fast import FastMetaStep, choose_execution


def test_fast_step_matches_loop_path_updates():
    # MSL annealing, first order then second order, cosine lr: the schedules all move.
    config = MetaConfig(
        num_inner_steps=2, msl_epochs=2, first_order_epochs=1, total_epochs=4, grad_clip=5.0
    )
    reference = tiny_learner(config, execution="loop")
    fast_learner = clone_learner(reference)
    fast_learner.execution = "batched"
    runner = FastMetaStep(fast_learner)
    assert not runner.use_cuda_graph  # CPU: eager, the body a GPU captures (tested below)
    optimizer = reference.make_optimizer()
    for epoch in range(4):
        for group in optimizer.param_groups:
            group["lr"] = reference.outer_lr(epoch)
        batch = tiny_tasks(seed=epoch)
        expected = reference.meta_step(optimizer, *batch, epoch)
        got = runner(*batch, epoch)
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
    runner = FastMetaStep(fast_learner, warmup_steps=1)
    assert runner.use_cuda_graph
    optimizer = reference.make_optimizer()
    for iteration, epoch in enumerate([1, 1, 1, 1, 2, 2, 2]):  # warm-up, capture, replays
        for group in optimizer.param_groups:
            group["lr"] = reference.outer_lr(epoch)
        batch = [t.to(device) for t in tiny_tasks(seed=iteration)]
        expected = reference.meta_step(optimizer, *batch, epoch)
        got = runner(*batch, epoch)
        torch.testing.assert_close(got["loss"], expected["loss"], rtol=1e-9, atol=1e-12)
        for a, b in zip(reference.parameters(), fast_learner.parameters(), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-9)
    assert runner.captures == 2  # one graph per (MSL, derivative order) regime


def test_msl_weights_tensor_equals_schedule_floats():
    learner = tiny_learner(MetaConfig(num_inner_steps=3, first_order_epochs=0))
    batch = tiny_tasks()
    floats, _ = learner.meta_loss(*batch, 1, update_bn_stats=False)
    as_tensor = torch.tensor(learner.msl_weights(1), dtype=torch.float64)
    tensor, _ = learner.meta_loss(*batch, 1, update_bn_stats=False, msl_weights=as_tensor)
    torch.testing.assert_close(tensor, floats, rtol=1e-14, atol=0)
    doubled, _ = learner.meta_loss(*batch, 1, update_bn_stats=False, msl_weights=2 * as_tensor)
    torch.testing.assert_close(doubled, 2 * floats)


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
    original = FastMetaStep.__call__

    def tracking_call(self, *args, **kwargs):
        current["execution"] = self.learner.execution
        return original(self, *args, **kwargs)

    FastMetaStep.__call__ = tracking_call
    try:
        choice, seconds = choose_execution(learner, tiny_tasks(), iterations=2, timer=timer)
    finally:
        FastMetaStep.__call__ = original
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

    from mamlpp.cli import main

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
