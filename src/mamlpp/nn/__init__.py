"""Neural-network building blocks: functional per-step batch norm and backbones."""

from .backbones import Backbone, Conv4
from .per_step_bn import PerStepBatchNorm, fold_running_stats, per_step_batch_norm

__all__ = ["Backbone", "Conv4", "PerStepBatchNorm", "fold_running_stats", "per_step_batch_norm"]
