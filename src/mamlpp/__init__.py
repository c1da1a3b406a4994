"""mamlpp: MAML++ ("How to train your MAML", Antoniou, Edwards & Storkey, ICLR 2019).

The public API:

* the algorithm: :class:`MetaConfig` (the six techniques as switches), :class:`MAMLpp` (meta-loss,
  adaptation, prediction), the :class:`Conv4` backbone, and the per-epoch schedules
  :func:`msl_weights`, :func:`step_loss_weights`, :func:`second_order_at`, :func:`outer_lr`;
* any ``nn.Module`` as a backbone: :class:`ModuleBackbone` (``MAMLpp(module, config)`` wraps a
  plain module with it), and :class:`ResNet12`;
* fast training steps: :class:`FastMetaStep` (CUDA-graph replay where possible);
* data: :func:`load_dataset`, :class:`EpisodeSampler`, :class:`TaskBatch`, :class:`FewShotSplit`;
* evaluation: :func:`evaluate` with 95% confidence intervals and checkpoint ensembles;
* own images: :func:`load` (a model from ``mamlpp export``) -> :class:`FewShotPredictor`, whose
  ``adapt_and_predict`` takes PIL images or tensors and class names.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import MetaConfig
from .data import EpisodeSampler, FewShotSplit, TaskBatch, load_dataset
from .errors import ConfigError, DataError, MamlppError
from .evaluate import EvalResult, evaluate
from .fast import FastMetaStep
from .learner import MAMLpp
from .nn import Conv4
from .nn.backbones import conv4_for
from .nn.module_backbone import ModuleBackbone
from .nn.resnet12 import ResNet12
from .predictor import FewShotPredictor, Prediction, load
from .schedules import msl_weights, outer_lr, second_order_at, step_loss_weights

__all__ = [
    "ConfigError",
    "Conv4",
    "DataError",
    "EpisodeSampler",
    "EvalResult",
    "FastMetaStep",
    "FewShotPredictor",
    "FewShotSplit",
    "MAMLpp",
    "MamlppError",
    "MetaConfig",
    "ModuleBackbone",
    "ResNet12",
    "Prediction",
    "TaskBatch",
    "__version__",
    "conv4_for",
    "evaluate",
    "load",
    "load_dataset",
    "msl_weights",
    "outer_lr",
    "second_order_at",
    "step_loss_weights",
]
