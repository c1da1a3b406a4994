"""Neural-network building blocks: batch norm (functional, with a closed-form double backward,
and per-step), the Conv4 backbone, any ``nn.Module`` as a backbone, and ResNet-12."""

from mamlpp.nn.backbone import Backbone, BatchNormContext, BatchStats
from mamlpp.nn.conv4 import Conv4
from mamlpp.nn.per_step_bn import PerStepBatchNorm, fold_running_stats, per_step_batch_norm

__all__ = [
    "Backbone",
    "BatchNormContext",
    "BatchStats",
    "Conv4",
    "PerStepBatchNorm",
    "fold_running_stats",
    "per_step_batch_norm",
]
