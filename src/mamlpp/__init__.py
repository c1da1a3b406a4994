"""mamlpp: MAML++ ("How to train your MAML", Antoniou, Edwards & Storkey, ICLR 2019)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]

from .config import MetaConfig  # noqa: E402
from .learner import MAMLpp  # noqa: E402
from .nn import Conv4  # noqa: E402
from .nn.backbones import conv4_for  # noqa: E402
from .schedules import msl_weights, outer_lr, second_order_at, step_loss_weights  # noqa: E402

__all__ += [
    "Conv4",
    "MAMLpp",
    "MetaConfig",
    "conv4_for",
    "msl_weights",
    "outer_lr",
    "second_order_at",
    "step_loss_weights",
]
