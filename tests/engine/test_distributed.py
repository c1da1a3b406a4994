"""Data-parallel meta-training (mamlpp.engine.collectives): G processes on gloo equal one process.

Every test starts its own processes (gloo on 127.0.0.1, a free port), each a few seconds.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from distributed_helpers import (
    THIS,
    evaluate_tiny,
    start_ranks,
    tiny_eval_learner,
    train_tiny,
    wait_all,
)

from mamlpp.data import EpisodeSampler, load_dataset
from mamlpp.engine.collectives import Distributed, block, check_divisible
from mamlpp.errors import ConfigError
from mamlpp.run.evaluate import evaluate


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def two_rank_tiny(tmp_path_factory) -> dict[int, dict]:
    """The tiny problem trained by 2 ranks: ``{rank: {(dtype, reduction): (state, metrics)}}``."""
    out = tmp_path_factory.mktemp("tiny")
    ranks = start_ranks([sys.executable, str(THIS), str(out)], 2, stderr=subprocess.PIPE)
    codes = wait_all(ranks)
    assert codes == [0, 0], [r.stderr.read().decode()[-2000:] for r in ranks]
    return {r: torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)}


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.slow
def test_two_ranks_equal_one_process(two_rank_tiny, reduction, dtype, tolerance) -> None:
    """Every stored tensor (network parameters, dead conv biases included, Adam-trained LSLR,
    per-step BN weights and running statistics) and the metrics after 6 iterations in which
    MSL, derivative order and the outer lr all change: float32 within 1e-5."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference_state, reference_metrics = train_tiny(dtype, reduction)
    finally:
        torch.set_num_threads(threads)
    for rank in (0, 1):
        state, metrics = two_rank_tiny[rank][(str(dtype), reduction)]
        assert state.keys() == reference_state.keys()
        for part in ("conv0.bias", "inner_lrs", "bn0.weight", "running_mean", "running_var"):
            assert any(k.endswith(part) for k in state), part  # compared like everything else
        assert _max_difference(state, reference_state) <= tolerance, (rank, reduction)
        assert len(metrics) == len(reference_metrics)
        for got, want in zip(metrics, reference_metrics, strict=True):
            assert got.keys() == want.keys()
            for key in want:
                assert torch.allclose(
                    torch.tensor(got[key], dtype=torch.float64),
                    torch.tensor(want[key], dtype=torch.float64),
                    rtol=0,
                    atol=tolerance,
                ), (key, got[key], want[key])
    # The ranks hold bitwise the same model: they took the same Adam steps from the same state.
    a, b = (two_rank_tiny[rank][(str(dtype), reduction)][0] for rank in (0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_collectives_after_the_replay_equal_one_process(two_rank_tiny) -> None:
    """The step in two phases with the collectives between them (what runs around the two
    graph replays with gloo on CUDA): 2 ranks equal one process (float64), and the ranks end
    bitwise equal to each other and to the fused step's ranks."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference_state, reference_metrics = train_tiny(torch.float64, "mean")
    finally:
        torch.set_num_threads(threads)
    for rank in (0, 1):
        state, metrics = two_rank_tiny[rank]["after-replay"]
        assert _max_difference(state, reference_state) <= 1e-10, rank
        for got, want in zip(metrics, reference_metrics, strict=True):
            for key in want:
                difference = torch.tensor(got[key]).double() - torch.tensor(want[key]).double()
                assert float(difference.abs().max()) <= 1e-10, (key, got[key], want[key])
        fused = two_rank_tiny[rank][(str(torch.float64), "mean")]
        assert all(torch.equal(state[k], fused[0][k]) for k in state) and metrics == fused[1]


@pytest.mark.slow
def test_sharded_evaluation_equals_one_process(two_rank_tiny) -> None:
    """9 tasks over 2 ranks (blocks of 4 and 5): the same per-task accuracies, in task order,
    so the same mean and 95% CI; every rank gets the whole result."""
    state = two_rank_tiny[0][(str(torch.float64), "mean")][0]
    want = evaluate_tiny(state)
    for rank in (0, 1):
        got = two_rank_tiny[rank]["evaluation"]
        assert got["num_tasks"] == want.num_tasks == 9
        assert got["per_task_accuracies"] == want.per_task_accuracies
        assert got["accuracy"] == want.accuracy
        assert got["ci95"] == want.ci95
        assert got["loss"] == pytest.approx(want.loss, rel=0, abs=1e-6)
    assert len(set(want.per_task_accuracies)) > 1  # tasks differ: an order mistake would show


@pytest.mark.slow
def test_leaving_the_job_stops_the_process_groups_threads(two_rank_tiny) -> None:
    """After Distributed.shutdown no gloo thread is left. Regression: torch modules imported
    after the group was made (lazily, by the first optimizer) held it in default arguments,
    so its threads ran on into the interpreter's teardown, where a rank once aborted after a
    finished run ("terminate called without an active exception")."""
    for rank in (0, 1):
        names = two_rank_tiny[rank]["threads_after_shutdown"]
        if names is None:
            pytest.skip("thread names need /proc/self/task (Linux)")
        assert not [n for n in names if "gloo" in n], (rank, names)


def test_task_blocks_cover_every_task_once_in_order() -> None:
    for count in (0, 1, 5, 600, 601):
        for world in (1, 2, 3, 8):
            ids = [i for r in range(world) for i in block(count, r, world)]
            assert ids == list(range(count))
    shards = [
        Distributed(r, 4, r, "gloo", torch.device("cpu")).shard(torch.arange(8, 16))
        for r in range(4)
    ]
    assert torch.cat(shards).tolist() == list(range(8, 16))


def test_meta_batch_not_divisible_by_processes_is_one_line_error() -> None:
    check_divisible(8, 4)
    with pytest.raises(ConfigError, match="tasks_per_batch=6 is not divisible by 4 processes"):
        check_divisible(6, 4)


def test_a_process_without_evaluation_tasks_still_joins_the_gather() -> None:
    """With fewer tasks than processes some ranks score nothing; they still contribute an
    empty ``[0, 2]`` block, and the result is the gathered one."""
    splits = load_dataset("synthetic", classes=(20, 5, 5), samples_per_class=4, image_size=16)
    sampler = EpisodeSampler(splits["val"], 3, 1, 2, seed=1)
    learner = tiny_eval_learner()
    whole = evaluate(learner, sampler, tasks=1, batch_size=4)

    class FirstOfThree:  # rank 0 of 3: block(1, 0, 3) is empty
        def my_tasks(self, tasks: int) -> range:
            return block(tasks, 0, 3)

        def gather_tasks(self, values: torch.Tensor, tasks: int) -> torch.Tensor:
            assert values.shape == (0, 2)
            return torch.tensor([[whole.accuracy, whole.loss]])

    got = evaluate(learner, sampler, tasks=1, batch_size=4, shards=FirstOfThree())
    assert got.num_tasks == 1 and got.accuracy == whole.accuracy
