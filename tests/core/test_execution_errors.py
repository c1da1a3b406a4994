"""An operation without a vmap batching rule (here nn.GRU) under the batched executions is a
one-line ConfigError that names the operation and the fix; execution="loop" trains it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mamlpp import MAMLpp, MetaConfig, TaskBatch


class GRUNet(nn.Module):
    """Sequences ``[n, L, 4]`` -> logits ``[n, 3]`` from the GRU's last hidden state."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(4, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1])


def _batch(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    sx, qx = torch.randn(2, 6, 5, 4, generator=g), torch.randn(2, 6, 5, 4, generator=g)
    y = torch.arange(3).repeat(2, 2)
    return sx, y, qx, y


@pytest.mark.parametrize("execution", ["batched", "vmap"])
def test_an_op_without_a_batching_rule_is_a_one_line_config_error(execution):
    from mamlpp.errors import ConfigError

    torch.manual_seed(0)
    learner = MAMLpp(GRUNet(), MetaConfig(num_inner_steps=1), execution=execution)
    sx, sy, qx, qy = _batch()
    with pytest.raises(ConfigError) as caught:
        learner.meta_loss(TaskBatch(sx, sy, qx, qy))
    message = str(caught.value)
    assert "\n" not in message
    assert "aten::gru.input" in message
    assert 'execution="loop"' in message and "--set train.execution=loop" in message
    with pytest.raises(ConfigError, match="aten::gru.input"):  # evaluation too
        learner.adapt_and_predict(sx, sy, qx)


def test_the_same_module_trains_with_execution_loop():
    torch.manual_seed(0)
    learner = MAMLpp(GRUNet(), MetaConfig(num_inner_steps=1, meta_lr=1e-2), execution="loop")
    before = {n: p.detach().clone() for n, p in learner.named_parameters()}
    optimizer = learner.make_optimizer()
    for seed in range(3):
        metrics = learner.meta_step(optimizer, _batch(seed))
        assert torch.isfinite(metrics["loss"])
    after = dict(learner.named_parameters())
    assert all(not torch.equal(after[n], before[n]) for n in before)
    sx, sy, qx, _ = _batch(5)
    assert learner.adapt_and_predict(sx, sy, qx).shape == (2, 6, 3)
