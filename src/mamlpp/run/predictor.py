"""A trained model applied to the user's own images: adapt to a labelled support set, predict.

:class:`FewShotPredictor` holds one or more trained learners (a checkpoint ensemble averages
their logits, as :func:`mamlpp.run.evaluate.evaluate` does) and the run's image
:class:`~mamlpp.data.images.Preprocessing`. It comes from a run folder
(:meth:`FewShotPredictor.from_run`) or from one exported file (:func:`load`), and
``mamlpp adapt`` and ``mamlpp export`` are thin wrappers around it, so the command line and the
Python API give the same probabilities by construction.

The exported file (:mod:`mamlpp.run.model_file`) holds the run's resolved config, the image
preprocessing, one state dict per ensemble member and the checkpoint names they came from, as
safetensors with JSON metadata (default) or as the earlier ``.pt`` dict.

Adaptation is the evaluation inner loop of the run's settings (first order, S steps, BN step S-1).
With ``meta.bn_mode = "transductive"`` (the default, as the authors' code) batch norm uses the
statistics of the batch it sees, so a query image's probabilities depend on the other query images
predicted with it; all queries of one call form one batch.
"""

from __future__ import annotations

import copy
import functools
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch

from mamlpp.core.learner import MAMLpp
from mamlpp.data.images import ImageLike, Preprocessing
from mamlpp.errors import DataError, InputError, MamlppError
from mamlpp.run.build import build_learner
from mamlpp.run.data_record import check_members, run_record
from mamlpp.run.datasource import preprocessing_for
from mamlpp.run.evaluate import member_from_state
from mamlpp.run.experiment import ExperimentConfig, build_config
from mamlpp.run.model_file import ModelRecord, read_model, write_model
from mamlpp.run.onnx_export import AdaptedClassifier, adapt_classifier
from mamlpp.run.run_dir import RunCheckpoints, read_run_config, require_run_dir

# Pillow's name for an image read from bytes, e.g. " <_io.BytesIO object at 0x7f...>".
_BUFFER = re.compile(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


@dataclass(frozen=True)
class Prediction:
    """Probabilities of every query image over the support set's classes."""

    classes: list[str]  # column order of ``probabilities``
    probabilities: torch.Tensor  # float32 [Q, N]; each row sums to 1
    notes: list[str] = field(default_factory=list)  # e.g. a shot count unlike training
    # Whether a query's probabilities depend on the other queries of this call (see
    # FewShotPredictor.batch_dependent_for).
    batch_dependent: bool = True

    @property
    def predicted(self) -> list[str]:
        """The most probable class of each query."""
        return [self.classes[i] for i in self.probabilities.argmax(-1).tolist()]

    @property
    def confidence(self) -> list[float]:
        """The probability of each query's predicted class."""
        return self.probabilities.max(-1).values.tolist()


class FewShotPredictor:
    """Trained learners plus the run's preprocessing; see the module docstring."""

    def __init__(
        self,
        config: ExperimentConfig,
        members: Sequence[MAMLpp],
        preprocessing: Preprocessing,
        sources: Sequence[str] = (),
    ) -> None:
        if not members:
            raise MamlppError("a predictor needs at least one trained learner")
        self.config = config
        self.members = list(members)
        self.preprocessing = preprocessing
        self.sources = list(sources)  # checkpoint names, for reports
        self._single: list[MAMLpp] | None = None  # members for one transductive query image
        self.origin = ""  # the run folder or model file it was read from (ONNX metadata)

    @property
    def ways(self) -> int:
        return self.config.data.ways

    @property
    def shots(self) -> int:
        return self.config.data.shots

    @property
    def batch_dependent(self) -> bool:
        """Whether a query's prediction depends on the other queries of a call of several
        queries: true for transductive batch norm (the query batch normalises itself), false
        when queries are normalised with stored (``per_step``) or support-set (``support``)
        statistics. One query alone is never batch-dependent (:meth:`batch_dependent_for`)."""
        return self.config.meta.bn_mode == "transductive"

    def batch_dependent_for(self, queries: int | Sequence[ImageLike] | ImageLike) -> bool:
        """Whether the probabilities of a call with ``queries`` depend on each other:
        ``queries`` is their count, or the queries themselves as :meth:`adapt_and_predict` takes
        them (a tensor ``[Q, C, S, S]``, a list, one image). A single query image of a
        transductive model is normalised with the support set's statistics instead of a batch
        of one, which normalises itself and predicts far worse
        (docs/results/bn-support-b300/single-image.md), so it depends on nothing else."""
        return self.batch_dependent and _query_count(queries) > 1

    def query_note(self, queries: int) -> str:
        """One line for `mamlpp adapt`: how the queries of this call were normalised."""
        mode = self.config.meta.bn_mode
        if mode != "transductive":
            source = "stored per-step" if mode == "per_step" else "the support set's"
            return (
                f"each query image is predicted on its own (bn_mode={mode}: normalised with "
                f"{source} statistics); the other queries do not change its probabilities"
            )
        if queries == 1:
            return (
                "one query image: normalised with the support set's statistics (a batch of one "
                "would normalise itself and predict far worse; docs/serve.md)"
            )
        return (
            f"the {queries} query images were normalised together (transductive batch norm): "
            "each one's probabilities depend on the others given with it"
        )

    def _members_for(self, queries: int) -> list[MAMLpp]:
        if self.batch_dependent and queries == 1:
            if self._single is None:  # the same weights, queries normalised with the support's
                self._single = [with_bn_mode(m, "support") for m in self.members]
            return self._single
        return self.members

    @property
    def device(self) -> torch.device:
        return next(self.members[0].parameters()).device

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_run(
        cls, run_dir: str | Path, top_k: int = 1, device: torch.device | str = "cpu"
    ) -> FewShotPredictor:
        """The top-``top_k`` checkpoints of a run folder by validation accuracy, read as every
        command reads them (:class:`~mamlpp.run.run_dir.RunCheckpoints`: a damaged file is
        named in a warning on stderr and the intact ones are used); every member must come from
        the run's data (:func:`~mamlpp.run.data_record.check_members`)."""
        if top_k < 1:
            raise InputError(f"--top-k must be >= 1, got {top_k}")
        run = require_run_dir(run_dir)
        config = read_run_config(run)
        checkpoints = RunCheckpoints(run)
        found = checkpoints.ensemble(top_k)
        newest = checkpoints.newest()
        run_data = run_record(run, newest.state if newest is not None else None)
        check_members(run, run_data, [(m.path, m.state) for m in found])
        shape = found[0].state.get("shape")
        channels = int(shape[0]) if shape else preprocessing_for(config.data).channels
        template = _template(config, channels, device)
        members = [member_from_state(template, m.state["model"], m.path, device) for m in found]
        used = (run_data or {}).get("preprocessing")  # recorded by training (own images)
        preprocessing = (
            Preprocessing.from_dict(used) if used else preprocessing_for(config.data, channels)
        )
        predictor = cls(config, members, preprocessing, [m.path.name for m in found])
        predictor.origin = str(run_dir)
        return predictor

    @classmethod
    def from_file(cls, path: str | Path, device: torch.device | str = "cpu") -> FewShotPredictor:
        """A model written by :meth:`export` (``mamlpp export``): safetensors or the earlier
        ``.pt`` format (:mod:`mamlpp.run.model_file`)."""
        record = read_model(path)
        config = build_config(record.config)
        preprocessing = Preprocessing.from_dict(record.preprocessing)
        if preprocessing.image_size != config.data.image_size:  # the network is built for this
            raise InputError(
                f"model file {path} is inconsistent: its preprocessing makes "
                f"{preprocessing.image_size}x{preprocessing.image_size} images, but its network "
                f"was trained on {config.data.image_size}x{config.data.image_size} "
                "(data.image_size); export the run again"
            )
        template = _template(config, preprocessing.channels, device)
        members = [member_from_state(template, s, path, device) for s in record.members]
        predictor = cls(config, members, preprocessing, record.checkpoints)
        predictor.origin = str(path)
        return predictor

    def export(self, path: str | Path) -> None:
        """Write this predictor as one model file, atomically: ``.safetensors`` (weights as
        safetensors, the rest as JSON metadata) or ``.pt`` (see :mod:`mamlpp.run.model_file`)."""
        record = ModelRecord(
            config=self.config.to_dict(),
            preprocessing=self.preprocessing.to_dict(),
            members=[
                {k: v.detach().cpu() for k, v in m.state_dict().items()} for m in self.members
            ],
            checkpoints=list(self.sources),
        )
        write_model(path, record)

    # -- prediction ----------------------------------------------------------------------------
    def prepare_support(
        self,
        support: Mapping[str, Sequence[ImageLike]] | Sequence[ImageLike],
        class_names: Sequence[str] | None = None,
        labels: Sequence[str] | None = None,
        *,
        converted: list[str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
        """(support_x [N*K, C, S, S], support_y [N*K], class names, notes), checked.

        Colour images made grey for a one-channel model are named in a note; given a list
        ``converted``, their labels go there instead, so that a caller that also prepares
        queries says it once for both (:func:`colour_note`)."""
        if isinstance(support, Mapping):
            if class_names is not None:
                raise InputError(
                    "give class names as the keys of the support mapping or as "
                    "class_names, not both"
                )
            names = [str(name) for name in support]
            per_class = [_image_list(support[name]) for name in support]
            images = [image for group in per_class for image in group]
            class_ids = [i for i, group in enumerate(per_class) for _ in group]
        else:
            images = _image_list(support)
            if class_names is None or len(class_names) != len(images):
                raise InputError("a support list needs class_names: one class name per image")
            names = list(dict.fromkeys(str(c) for c in class_names))  # first-appearance order
            index = {name: i for i, name in enumerate(names)}
            class_ids = [index[str(c)] for c in class_names]
        counts = [class_ids.count(i) for i in range(len(names))]
        empty = [name for name, count in zip(names, counts, strict=True) if count == 0]
        if empty:
            raise InputError(f"support class {empty[0]!r} has no images")
        if len(names) != self.ways:
            raise InputError(
                f"the support set has {len(names)} classes, but the model was trained for "
                f"{self.ways}-way tasks (its output layer has {self.ways} classes)"
            )
        notes = []
        if min(counts) != max(counts):
            notes.append(f"support classes have {min(counts)} to {max(counts)} images each")
        if max(counts) != self.shots or min(counts) != self.shots:
            shown = counts[0] if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"
            notes.append(
                f"{shown} support images per class; the model was trained on "
                f"{self.shots}-shot tasks (allowed: adaptation uses every support image)"
            )
        made_grey: list[str] = [] if converted is None else converted
        labels = labels or [f"support image {i}" for i in range(len(images))]
        x = self._batch(images, labels, made_grey)
        if converted is None:
            notes += colour_note(made_grey)
        return x, torch.tensor(class_ids, dtype=torch.int64), names, notes

    def prepare_query(
        self,
        query: Sequence[ImageLike] | ImageLike,
        labels: Sequence[str] | None = None,
        *,
        converted: list[str] | None = None,
    ) -> torch.Tensor:
        """query_x [Q, C, S, S] (one image, a list, or a tensor [Q, C, S, S]); the labels of
        colour images made grey are appended to ``converted`` if given."""
        items = _image_list(query)
        if not items:
            raise InputError("no query images")
        labels = labels or [f"query image {i}" for i in range(len(items))]
        return self._batch(items, labels, converted)

    def _batch(
        self, images: Sequence[ImageLike], labels: Sequence[str], converted: list[str] | None
    ) -> torch.Tensor:
        try:
            return self.preprocessing.batch(images, labels, converted=converted)
        except DataError as error:
            # Pillow names bytes input by its buffer object ("<_io.BytesIO object at 0x...>").
            raise InputError(_BUFFER.sub("", str(error))) from None

    def predict_prepared(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor
    ) -> torch.Tensor:
        """Probabilities [Q, N]: softmax of the members' averaged logits (one transductive
        query image: with the support set's statistics, see :meth:`batch_dependent_for`)."""
        device = self.device
        sx, sy, qx = support_x.to(device), support_y.to(device), query_x.to(device)
        # The run's thread setting, as `mamlpp evaluate` does (small models: one thread is
        # faster on a busy CPU); the caller's setting is restored.
        threads = torch.get_num_threads()
        if self.config.train.threads:
            torch.set_num_threads(self.config.train.threads)
        try:
            # [Q, N] summed in member order (the order evaluate() uses)
            members = self._members_for(len(qx))
            logits = functools.reduce(
                operator.add, (m.adapt_and_predict(sx, sy, qx) for m in members)
            )
        finally:
            torch.set_num_threads(threads)
        return torch.softmax(logits.float() / len(self.members), dim=-1).cpu()

    def adapt_and_predict(
        self,
        support: Mapping[str, Sequence[ImageLike]] | Sequence[ImageLike],
        query: Sequence[ImageLike] | ImageLike,
        class_names: Sequence[str] | None = None,
    ) -> Prediction:
        """Adapt to ``support`` and return the class probabilities of every ``query`` image.

        ``support`` is ``{class name: [images]}`` or a list of images with ``class_names`` (one
        per image). Images are file paths, encoded bytes, PIL images, or tensors ``[C, S, S]``
        (uint8 0..255, or floating 0..1); ``query`` may also be one image or ``[Q, C, S, S]``.
        """
        converted: list[str] = []
        sx, sy, names, notes = self.prepare_support(support, class_names, converted=converted)
        qx = self.prepare_query(query, converted=converted)
        notes += colour_note(converted)
        probabilities = self.predict_prepared(sx, sy, qx)
        return Prediction(names, probabilities, notes, self.batch_dependent_for(len(qx)))

    def adapt(
        self,
        support: Mapping[str, Sequence[ImageLike]] | Sequence[ImageLike],
        class_names: Sequence[str] | None = None,
    ) -> AdaptedClassifier:
        """Adapt once to ``support`` (as :meth:`adapt_and_predict` takes it) and return the
        result as a standalone classifier: ``.to_onnx(path)`` writes it as one ONNX file that
        equals this predictor on one image at a time (:mod:`mamlpp.run.onnx_export`)."""
        return adapt_classifier(self, support, class_names, source=self.origin)


def with_bn_mode(learner: MAMLpp, mode: str) -> MAMLpp:
    """The same weights evaluated with another ``bn_mode`` (no parameter depends on it)."""
    other = copy.deepcopy(learner)
    other.config = learner.config.replace(bn_mode=mode)
    return other


def colour_note(converted: Sequence[str]) -> list[str]:
    """The note (none, or one line) for the colour images a grey model's preprocessing made
    grey: how many, and the first few by name."""
    if not converted:
        return []
    count = len(converted)
    shown = ", ".join(converted[:3]) + (f" and {count - 3} more" if count > 3 else "")
    what = "1 colour image was" if count == 1 else f"{count} colour images were"
    return [f"{what} converted to grey, as the model takes grey images: {shown}"]


def _image_list(value: Sequence[ImageLike] | ImageLike) -> list[ImageLike]:
    """One image (path, bytes, PIL image, tensor [C, S, S]) or several (a sequence, or a tensor
    [B, C, S, S]) as a list."""
    if isinstance(value, torch.Tensor):
        return list(value.unbind(0)) if value.dim() == 4 else [value]
    if isinstance(value, str | Path | bytes) or not isinstance(value, Sequence):
        return [value]  # a path, bytes or a PIL image: one image
    return list(cast(Sequence[ImageLike], value))


def _query_count(queries: int | Sequence[ImageLike] | ImageLike) -> int:
    """The number of query images in ``queries``: a count, or the images themselves."""
    if isinstance(queries, bool):
        raise TypeError("queries must be a count of query images or the images, not a bool")
    if isinstance(queries, int):
        return queries
    if isinstance(queries, torch.Tensor) and queries.dim() not in (3, 4):
        raise TypeError(
            f"a query tensor is [Q, C, S, S] or one image [C, S, S], got shape "
            f"{tuple(queries.shape)}"
        )
    return len(_image_list(queries))


def _template(config: ExperimentConfig, channels: int, device: torch.device | str) -> MAMLpp:
    """The run's learner, built by the training code's own builder (so any backbone it knows
    works here); its seeding is kept from touching the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        return build_learner(config, channels, device)


def load(path: str | Path, device: torch.device | str = "cpu") -> FewShotPredictor:
    """A model exported with ``mamlpp export RUN_DIR model.safetensors`` (or ``.pt``), or a run
    folder itself (its best checkpoint, as ``mamlpp adapt RUN_DIR`` uses it), ready for
    :meth:`FewShotPredictor.adapt_and_predict`."""
    if Path(path).is_dir():
        return FewShotPredictor.from_run(path, 1, device)
    return FewShotPredictor.from_file(path, device)
