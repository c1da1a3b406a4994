"""mamlpp: MAML++ ("How to train your MAML", Antoniou, Edwards & Storkey, ICLR 2019).

The public API:

* the algorithm: :class:`MetaConfig` (the six techniques as switches), :class:`MAMLpp` (meta-loss,
  adaptation, prediction), the :class:`Conv4` backbone, and the per-epoch schedules
  :func:`msl_weights`, :func:`step_loss_weights`, :func:`second_order_at`, :func:`outer_lr`;
* any ``nn.Module`` as a backbone: :class:`ModuleBackbone` (``MAMLpp(module, config)`` wraps a
  plain module with it), and :class:`ResNet12`; a backbone of your own implements
  ``forward(params, x, bn: BatchNormContext)``;
* training steps: :class:`MetaStepRunner` (CUDA-graph replay on GPUs, eager elsewhere; its
  earlier name ``FastMetaStep`` still resolves, with a DeprecationWarning, until the next
  release);
* data: :func:`load_dataset`, :class:`EpisodeSampler`, :class:`TaskBatch`, :class:`FewShotSplit`;
* evaluation: :func:`evaluate` with 95% confidence intervals and checkpoint ensembles;
* own images: :func:`load` (a model from ``mamlpp export``, or a run folder) ->
  :class:`FewShotPredictor`, whose ``adapt_and_predict`` takes PIL images or tensors and class
  names.

The package is layered (``docs/architecture.md``): ``core`` (MAML++ itself) on ``nn`` (networks),
``engine`` (running steps fast) and ``data`` beside each other, ``run`` (experiments) on those,
and ``studies`` and ``cli`` on top. The names below load on first use, so ``import mamlpp`` (and
``mamlpp --version``) does not import torch until the library is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mamlpp.util.lazy import lazy_attributes
from mamlpp.version import __version__

# public name -> the module that defines it
_EXPORTS = {
    "MetaConfig": "mamlpp.core.config",
    "MAMLpp": "mamlpp.core.learner",
    "msl_weights": "mamlpp.core.schedules",
    "outer_lr": "mamlpp.core.schedules",
    "second_order_at": "mamlpp.core.schedules",
    "step_loss_weights": "mamlpp.core.schedules",
    "BatchNormContext": "mamlpp.nn.backbone",
    "Conv4": "mamlpp.nn.conv4",
    "conv4_for": "mamlpp.nn.conv4",
    "ModuleBackbone": "mamlpp.nn.module_backbone",
    "ResNet12": "mamlpp.nn.resnet12",
    "MetaStepRunner": "mamlpp.engine.step_runner",
    "FastMetaStep": "mamlpp.engine.step_runner",
    "EpisodeSampler": "mamlpp.data",
    "FewShotSplit": "mamlpp.data",
    "TaskBatch": "mamlpp.core.types",
    "load_dataset": "mamlpp.data",
    "EvalResult": "mamlpp.run.evaluate",
    "evaluate": "mamlpp.run.evaluate",
    "FewShotPredictor": "mamlpp.run.predictor",
    "Prediction": "mamlpp.run.predictor",
    "load": "mamlpp.run.predictor",
    "ConfigError": "mamlpp.errors",
    "DataError": "mamlpp.errors",
    "MamlppError": "mamlpp.errors",
}

__all__ = [
    "BatchNormContext",
    "ConfigError",
    "Conv4",
    "DataError",
    "EpisodeSampler",
    "EvalResult",
    "FewShotPredictor",
    "FewShotSplit",
    "MAMLpp",
    "MamlppError",
    "MetaConfig",
    "MetaStepRunner",
    "ModuleBackbone",
    "Prediction",
    "ResNet12",
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


__getattr__, __dir__ = lazy_attributes("mamlpp", _EXPORTS, globals())


if TYPE_CHECKING:  # the same names for type checkers and IDEs
    from mamlpp.core.config import MetaConfig
    from mamlpp.core.learner import MAMLpp
    from mamlpp.core.schedules import msl_weights, outer_lr, second_order_at, step_loss_weights
    from mamlpp.core.types import TaskBatch
    from mamlpp.data import EpisodeSampler, FewShotSplit, load_dataset
    from mamlpp.engine.step_runner import MetaStepRunner
    from mamlpp.errors import ConfigError, DataError, MamlppError
    from mamlpp.nn.backbone import BatchNormContext
    from mamlpp.nn.conv4 import Conv4, conv4_for
    from mamlpp.nn.module_backbone import ModuleBackbone
    from mamlpp.nn.resnet12 import ResNet12
    from mamlpp.run.evaluate import EvalResult, evaluate
    from mamlpp.run.predictor import FewShotPredictor, Prediction, load
