"""A model adapted to the user's own classes as a standalone classifier, and its ONNX file.

After adaptation the network is an ordinary classifier: the fast weights theta_S after the S
inner steps, batch norm at step S-1 with fixed statistics, and a head over the user's classes.
:class:`AdaptedClassifier` is that classifier as a plain ``nn.Module``::

    images [N, C, S, S], pixels in 0..1
      -> (images - mean) / std                       (the run's normalisation, inside)
      -> each member's network with its fast weights, every BN layer normalising with FIXED
         statistics: the support set's batch statistics at step S-1 (what mamlpp uses for one
         query image of a transductive model, and for every query with bn_mode="support"), or
         the stored per-step statistics with bn_mode="per_step"
      -> softmax(mean of the members' logits)        [N, ways], as FewShotPredictor combines them

so each row depends on its own image alone, and equals ``FewShotPredictor.adapt_and_predict``
for that image predicted alone (tests/run/test_onnx_classifier.py: within 1e-5 in onnxruntime).
:meth:`AdaptedClassifier.to_onnx` writes it with torch's own exporter (:func:`_torch_export`),
the class names, preprocessing and provenance in the file's metadata (:func:`onnx_metadata`).

The fixed statistics are taken from mamlpp's own support-mode pass
(:func:`mamlpp.core.algorithm.query_forward`), which returns each BN layer's support mean and
*unbiased* variance; batch norm normalises with the biased one. With u1 the unbiased variance of
the support rows (c values per channel) and u2 that of the support rows given twice (2c values,
the same mean and biased variance v): 1/u1 = (c-1)/(c v) and 1/u2 = (2c-1)/(2c v), so
2/u2 - 1/u1 = 1/v whatever c is (the layer's spatial size need not be known).

onnx and onnxruntime are optional (``pip install "mamlpp[onnx]"``) and imported only here, on use.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from mamlpp.core import algorithm
from mamlpp.core.executions import task_batched_forward
from mamlpp.core.learner import MAMLpp
from mamlpp.core.types import BatchNormContext
from mamlpp.data.images import ImageLike, Preprocessing
from mamlpp.errors import ConfigError
from mamlpp.nn.module_backbone import ModuleBackbone
from mamlpp.run.experiment import ExperimentConfig
from mamlpp.util.atomic import atomic_write
from mamlpp.version import __version__

INSTALL = 'pip install "mamlpp[onnx]"'
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
OPSET = 17
# What the file's probabilities equal (the metadata key "equals" and docs/onnx.md).
EQUALS = (
    "mamlpp's probabilities for each image predicted alone (FewShotPredictor.adapt_and_predict "
    "with one query image, mamlpp adapt with one --query file): the weights adapted to this "
    "support set, batch norm at the last inner step with {stats}; an ensemble averages its "
    "members' logits, then softmax"
)


def require_onnx() -> Any:
    """The ``onnx`` module, or a one-line :class:`ConfigError` saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise ConfigError(f"ONNX export needs the onnx package: {INSTALL}") from None
    return onnx


class Adaptable(Protocol):
    """What adaptation needs of a :class:`~mamlpp.run.predictor.FewShotPredictor` (which
    imports this module for its ``adapt``)."""

    config: ExperimentConfig
    members: list[MAMLpp]
    preprocessing: Preprocessing
    sources: list[str]

    def prepare_support(
        self,
        support: Mapping[str, Sequence[ImageLike]] | Sequence[ImageLike],
        class_names: Sequence[str] | None = None,
    ) -> tuple[Tensor, Tensor, list[str], list[str]]: ...


@dataclass(frozen=True)
class Provenance:
    """Where an adapted classifier came from, for the file's metadata."""

    source: str  # the run folder or model file, as the user named it
    checkpoints: list[str]
    bn_mode: str
    inner_steps: int
    support_counts: dict[str, int]  # images per class


class _FrozenMember(nn.Module):
    """One ensemble member after adaptation: a copy of its learner whose batch norm reads fixed
    statistics (``bn_mode="per_step"`` with those statistics in every per-step row) and runs
    task by task (plain ops a tracer records), and its fast weights ``{name: [1, ...]}``."""

    def __init__(
        self, learner: MAMLpp, fast: Mapping[str, Tensor], stats: Mapping[str, Tensor] | None
    ):
        super().__init__()
        frozen = copy.deepcopy(learner).cpu()
        frozen.config = learner.config.replace(bn_mode="per_step")
        frozen.execution = "loop"  # per-task functional_forward: no vmap, no grouped layout
        if stats is not None:  # else: the stored per-step statistics (a per_step model)
            for bn, layer in frozen.backbone.bn_layers().items():
                for which in ("mean", "var"):
                    table = getattr(layer, f"running_{which}")  # [C] or [S, C]
                    value = stats[f"{bn}.running_{which}"].to(table)  # [C]
                    setattr(layer, f"running_{which}", value.expand_as(table).clone())
        frozen.requires_grad_(False)
        self.learner = frozen
        self.names = list(fast)
        # Buffers, so that the exporter stores them once as initializers.
        for i, name in enumerate(self.names):
            self.register_buffer(f"fast{i}", fast[name].detach().cpu().clone())

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[N, ways]`` of normalised images ``x [N, C, S, S]``."""
        fast = {name: getattr(self, f"fast{i}") for i, name in enumerate(self.names)}
        return self.learner.predict(fast, x[None])[0]


class AdaptedClassifier(nn.Module):
    """A trained model adapted to one support set: images ``[N, C, S, S]`` in 0..1 ->
    probabilities ``[N, ways]`` over :attr:`classes` (see the module docstring)."""

    mean: Tensor  # [C, 1, 1]
    std: Tensor  # [C, 1, 1]

    def __init__(
        self,
        members: Sequence[_FrozenMember],
        preprocessing: Preprocessing,
        classes: Sequence[str],
        provenance: Provenance,
        notes: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        # A plain module's network runs through torch.func.functional_call (see _torch_export).
        self.functional = any(isinstance(m.learner.backbone, ModuleBackbone) for m in members)
        self.preprocessing = preprocessing
        self.classes = list(classes)
        self.provenance = provenance
        self.notes = list(notes)  # the predictor's remarks on the support set
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(preprocessing.std).view(-1, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        x = (images - self.mean) / self.std  # the rule of Preprocessing.normalise
        logits = self.members[0](x)
        for member in self.members[1:]:  # summed in member order, as FewShotPredictor does
            logits = logits + member(x)
        return torch.softmax(logits / len(self.members), dim=-1)

    def metadata(self) -> dict[str, str]:
        """The file's metadata (:func:`onnx_metadata`)."""
        return onnx_metadata(self)

    def to_onnx(self, path: str | os.PathLike[str]) -> Path:
        """Write this classifier as one ONNX file (atomically); returns the path."""
        return export_onnx(self, path)


def adapt_classifier(
    predictor: Adaptable,
    support: Mapping[str, Sequence[ImageLike]] | Sequence[ImageLike],
    class_names: Sequence[str] | None = None,
    *,
    source: str = "",
) -> AdaptedClassifier:
    """Adapt every member of ``predictor`` to ``support`` once (its images and class names as
    :meth:`~mamlpp.run.predictor.FewShotPredictor.adapt_and_predict` takes them) and freeze the
    result (:class:`AdaptedClassifier`)."""
    sx, sy, classes, notes = predictor.prepare_support(support, class_names)
    return classifier_from_prepared(predictor, sx, sy, classes, notes, source=source)


@torch.no_grad()
def classifier_from_prepared(
    predictor: Adaptable,
    support_x: Tensor,
    support_y: Tensor,
    classes: Sequence[str],
    notes: Sequence[str] = (),
    *,
    source: str = "",
) -> AdaptedClassifier:
    """:func:`adapt_classifier` on a support set already prepared by
    :meth:`~mamlpp.run.predictor.FewShotPredictor.prepare_support` (``support_x [N*K, C, S, S]``
    normalised, ``support_y [N*K]``)."""
    sx, sy = support_x[None].cpu(), support_y[None].cpu()  # one task
    members = []
    for learner in predictor.members:
        learner = copy.deepcopy(learner).cpu()
        mode = learner.config.bn_mode
        if mode == "transductive":  # one query image: the support set's statistics (predictor)
            learner.config = learner.config.replace(bn_mode="support")
        fast = learner.adapt(sx, sy)  # {name: [1, ...]}, first order, S steps
        stats = None if mode == "per_step" else support_statistics(learner, fast, sx)
        members.append(_FrozenMember(learner, fast, stats))
    counts = {name: int((support_y == i).sum()) for i, name in enumerate(classes)}
    provenance = Provenance(
        source=source,
        checkpoints=list(predictor.sources),
        bn_mode=predictor.config.meta.bn_mode,
        inner_steps=predictor.config.meta.num_inner_steps,
        support_counts=counts,
    )
    return AdaptedClassifier(members, predictor.preprocessing, classes, provenance, notes)


def support_statistics(
    learner: MAMLpp, fast: Mapping[str, Tensor], support_x: Tensor
) -> dict[str, Tensor]:
    """Every BN layer's support-set mean and biased variance at the last inner step, with the
    fast weights ``{name: [1, ...]}`` of ``support_x [1, n, C, S, S]``, as
    ``{"<bn>.running_mean": [C], "<bn>.running_var": [C]}`` (the stored-statistics names).

    Computed by mamlpp's support-mode pass (the statistics that normalise a query in
    ``bn_mode="support"``); the biased variance from the unbiased ones of the support rows given
    once (u1) and twice (u2): v = 1 / (2/u2 - 1/u1) (module docstring)."""
    steps = learner.config.num_inner_steps
    plan = algorithm.InnerLoopPlan(
        num_steps=steps,
        adapted_names=learner.adapted_names,
        second_order=False,
        step_weights=None,
        bn_from_support=True,
    )
    forward = task_batched_forward(learner.backbone, "loop")
    params = {n: p.detach()[None] for n, p in learner.backbone.named_parameters()}
    params.update(fast)
    probe = support_x[:, :1]  # a query row is needed; its logits are dropped
    last = BatchNormContext(steps - 1)  # the last inner step's BN row
    _, once = algorithm.query_forward(forward, plan, params, support_x, probe, last)
    doubled = torch.cat([support_x, support_x], dim=1)
    _, twice = algorithm.query_forward(forward, plan, params, doubled, probe, last)
    out = {}
    for bn, (mean, u1) in once.items():  # mean, unbiased var: [1, C]
        u2 = twice[bn][1]
        biased = torch.where(u1 > 0, 1.0 / (2.0 / u2 - 1.0 / u1), torch.zeros_like(u1))
        out[f"{bn}.running_mean"] = mean[0]
        out[f"{bn}.running_var"] = biased[0].clamp_min(0.0)
    return out


# ------------------------------------------------------------------------------ the ONNX file


def onnx_metadata(classifier: AdaptedClassifier) -> dict[str, str]:
    """The file's ``metadata_props`` (all values strings; JSON where a value is a list)."""
    prep = classifier.preprocessing
    prov = classifier.provenance
    stats = (
        "the model's stored per-step statistics"
        if prov.bn_mode == "per_step"
        else "the support set's statistics"
    )
    return {
        "classes": json.dumps(classifier.classes, ensure_ascii=False),
        "input": (
            f"{INPUT_NAME}: float32 [N, {prep.channels}, {prep.image_size}, {prep.image_size}], "
            "pixels / 255 (0..1), "
            + ("grey" if prep.channels == 1 else "RGB channel order")
            + "; the normalisation below is inside the graph"
        ),
        "output": f"{OUTPUT_NAME}: float32 [N, {len(classifier.classes)}], in the order of classes",
        "image_size": str(prep.image_size),
        "channels": str(prep.channels),
        "resample": prep.resample,
        "resize": "always" if prep.resize else "never",
        "resize_rule": _resize_rule(prep),
        # The same rule as Pillow's arguments: Image.convert(pil_mode), then
        # resize((S, S), Image.Resampling[pil_filter]); with resample "nearest-binary" pixels
        # above 127 become 255, the others 0, and a grey image fills every channel.
        "pil_mode": "L" if prep.channels == 1 or prep.resample == "nearest-binary" else "RGB",
        "pil_filter": {"nearest-binary": "NEAREST"}.get(prep.resample, prep.resample.upper()),
        "normalisation": json.dumps({"mean": list(prep.mean), "std": list(prep.std)}),
        "mamlpp_version": __version__,
        "source": prov.source,
        "checkpoints": json.dumps(prov.checkpoints, ensure_ascii=False),
        "bn_mode": prov.bn_mode,
        "inner_steps": str(prov.inner_steps),
        "support_images": json.dumps(prov.support_counts, ensure_ascii=False),
        "equals": EQUALS.format(stats=stats),
    }


def _resize_rule(prep: Preprocessing) -> str:
    size = f"{prep.image_size}x{prep.image_size}"
    if not prep.resize:
        return f"none: images must already be {size}"
    if prep.resample == "nearest-binary":
        return (
            f"grey (PIL convert('L')), resized to {size} by nearest neighbour (PIL NEAREST), "
            "then 1 bit per pixel: > 127 -> 1.0, else 0.0"
        )
    mode = "grey (PIL convert('L'))" if prep.channels == 1 else "RGB (PIL convert('RGB'))"
    filt = prep.resample.upper()
    return f"{mode}, the whole image resized to {size} (PIL {filt}, aspect ratio not kept)"


def export_onnx(classifier: AdaptedClassifier, path: str | os.PathLike[str]) -> Path:
    """Write ``classifier`` as one ONNX file with :func:`onnx_metadata`, atomically; anything
    the exporter cannot handle is one :class:`ConfigError` line."""
    onnx = require_onnx()
    if "dynamo" not in inspect.signature(torch.onnx.export).parameters:  # torch < 2.5
        raise ConfigError(f"ONNX export needs torch 2.5 or newer, this is {torch.__version__}")
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise ConfigError(f"the classifier file must end in .onnx, got {path.name}")
    if not path.parent.is_dir():
        raise ConfigError(f"folder {path.parent} does not exist")
    prep = classifier.preprocessing
    example = torch.rand(2, *prep.shape)
    classifier = classifier.eval()
    with tempfile.TemporaryDirectory() as tmp:
        traced = Path(tmp) / "classifier.onnx"
        try:
            with _quiet():
                _torch_export(classifier, example, traced)
            model = onnx.load(str(traced))
        except ConfigError:
            raise
        except Exception as error:  # the exporters raise many types for what they cannot handle
            reason = " ".join(str(error).split())[:300]
            raise ConfigError(
                f"cannot export this model to ONNX ({type(error).__name__}: {reason})"
            ) from None
    model.doc_string = (
        f"mamlpp {__version__}: a few-shot model adapted to {len(classifier.classes)} classes "
        f"({', '.join(classifier.classes)}); probabilities of images in 0..1"
    )
    model.producer_name = "mamlpp"
    model.producer_version = __version__
    del model.metadata_props[:]
    for key, value in classifier.metadata().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    with atomic_write(path, "wb") as handle:
        handle.write(model.SerializeToString())
    return path


def _torch_export(classifier: AdaptedClassifier, example: Tensor, path: Path) -> None:
    """torch's own exporter. The TorchScript-based one (quick on a CPU) where the networks
    trace; a plain module run through ModuleBackbone calls torch.func.functional_call, which
    tracing refuses, so its classifier goes through the torch.export-based one."""
    if classifier.functional:
        batch = torch.export.Dim("batch")
        program = torch.onnx.export(
            classifier,
            (example,),
            dynamo=True,
            dynamic_shapes=({0: batch},),
            opset_version=OPSET,
            verbose=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
        )
        if program is None:  # pragma: no cover (the dynamo exporter returns a program)
            raise ConfigError("the ONNX exporter returned nothing")
        program.save(str(path))
        return
    torch.onnx.export(
        classifier,
        (example,),
        str(path),
        dynamo=False,
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        opset_version=OPSET,
        do_constant_folding=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
    )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' progress lines, warnings and log messages kept off the user's screen
    (a failure still raises, and becomes one line)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [log.level for log in loggers]
    try:
        for log in loggers:
            log.setLevel(logging.ERROR)
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)
