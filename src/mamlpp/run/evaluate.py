"""Evaluation on fixed tasks: mean accuracy, a 95% confidence interval over tasks, ensembles.

Task ``j`` of an evaluation is a pure function of (split, j, seed) (see
:class:`~mamlpp.data.EpisodeSampler`), and evaluation always uses ids ``0..tasks-1``, so every
call sees the same tasks. An ensemble averages the logits of several models on those same tasks
(the paper averaged the top-3 or top-5 validation checkpoints). Models are only read: each
ensemble member is a copy of a template learner with a checkpoint's state loaded into it.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from mamlpp.core.algorithm import per_task_accuracy, per_task_cross_entropy
from mamlpp.core.learner import MAMLpp
from mamlpp.data import EpisodeSampler
from mamlpp.errors import MamlppError
from mamlpp.run.checkpoint import load_checkpoint
from mamlpp.run.run_dir import RunCheckpoints, RunDir, warn


@dataclass(frozen=True)
class EvalResult:
    accuracy: float  # mean over tasks of the per-task query accuracy
    ci95: float  # 1.96 * sample std over tasks / sqrt(tasks)
    loss: float  # mean query cross-entropy of the (averaged) logits
    per_task_accuracies: list[float]
    num_tasks: int
    ensemble_size: int

    def describe(self) -> str:
        members = f", ensemble of {self.ensemble_size}" if self.ensemble_size > 1 else ""
        return (
            f"{100 * self.accuracy:.2f}% +- {100 * self.ci95:.2f}% "
            f"(95% CI over {self.num_tasks} tasks{members})"
        )


class TaskSharding(Protocol):
    """How the processes of a data-parallel job split evaluation tasks
    (:mod:`mamlpp.engine.collectives`)."""

    def my_tasks(self, tasks: int) -> range:
        """This process's task ids out of ``0..tasks-1``."""
        ...

    def gather_tasks(self, values: torch.Tensor, tasks: int) -> torch.Tensor:
        """Every process's per-task ``values`` joined in task order: ``[tasks, ...]``."""
        ...


def confidence_interval95(per_task: torch.Tensor) -> float:
    """Half-width of the normal 95% interval of the mean: 1.96 * std(ddof=1) / sqrt(n)."""
    n = per_task.numel()
    if n < 2:
        return float("nan")
    return 1.96 * float(per_task.double().std(unbiased=True)) / math.sqrt(n)


def evaluate(
    models: MAMLpp | Sequence[MAMLpp],
    sampler: EpisodeSampler,
    tasks: int = 600,
    batch_size: int = 50,
    *,
    shards: TaskSharding | None = None,
) -> EvalResult:
    """Adapt every model to tasks ``0..tasks-1`` of ``sampler`` and score the averaged logits.

    One model is an ensemble of one: its logits are used as they are. With ``shards`` (a
    data-parallel job) each process scores its block of the tasks and the per-task values are
    gathered in task order, so every process gets the single-process result.
    """
    members = [models] if isinstance(models, MAMLpp) else list(models)
    if not members:
        raise MamlppError("evaluation needs at least one model")
    if tasks < 1 or batch_size < 1:
        raise MamlppError(f"tasks and batch size must be >= 1, got {tasks} and {batch_size}")
    task_ids = range(tasks) if shards is None else shards.my_tasks(tasks)
    per_task = _score_tasks(members, sampler, task_ids, batch_size)  # [n, 2]: accuracy, loss
    if shards is not None:
        per_task = shards.gather_tasks(per_task, tasks)
    accuracies, losses = per_task.cpu().unbind(-1)
    return EvalResult(
        accuracy=float(accuracies.double().mean()),
        ci95=confidence_interval95(accuracies),
        loss=float(losses.double().mean()),
        per_task_accuracies=accuracies.tolist(),
        num_tasks=accuracies.numel(),
        ensemble_size=len(members),
    )


def _score_tasks(
    members: list[MAMLpp], sampler: EpisodeSampler, task_ids: range, batch_size: int
) -> torch.Tensor:
    """``[len(task_ids), 2]``: per task, the query accuracy and mean cross-entropy of the
    ensemble's averaged logits."""
    accuracies, losses = [], []
    for batch in sampler.batches(task_ids, batch_size):
        sx, sy, qx, qy = batch
        logits = members[0].adapt_and_predict(sx, sy, qx)  # [B, N*T, ways]
        for model in members[1:]:
            logits = logits + model.adapt_and_predict(sx, sy, qx)
        if len(members) > 1:
            logits = logits / len(members)
        accuracies.append(per_task_accuracy(logits, qy).float())  # [B]
        losses.append(per_task_cross_entropy(logits, qy).float())  # [B]
    if not accuracies:  # a process with no tasks (fewer tasks than processes)
        return torch.zeros((0, 2), device=sampler.device)
    return torch.stack([torch.cat(accuracies), torch.cat(losses)], dim=-1)


def load_member(template: MAMLpp, path: Path, device: torch.device | str | None = None) -> MAMLpp:
    """A copy of ``template`` holding the model state of checkpoint ``path``."""
    return member_from_state(template, load_checkpoint(path)["model"], path, device)


def member_from_state(
    template: MAMLpp,
    model_state: dict[str, torch.Tensor],
    source: Path | str,
    device: torch.device | str | None = None,
) -> MAMLpp:
    """A copy of ``template`` holding ``model_state`` (read from ``source``, named in errors)."""
    member = copy.deepcopy(template)
    try:
        member.load_state_dict(model_state)
    except (RuntimeError, KeyError) as error:
        why = state_dict_mismatch(str(error))
        raise MamlppError(f"checkpoint {source} does not fit this model: {why}") from None
    if device is not None:
        member.to(device)
    return member


def state_dict_mismatch(message: str, shown: int = 3) -> str:
    """torch's ``load_state_dict`` error (a first line ending in a colon, then one line per
    problem) as one line: missing and unexpected keys counted with the first few named, size
    mismatches with their shapes, e.g. ``missing 2 keys (head.weight, head.bias); size mismatch
    for head.weight: [5, 64] in the checkpoint, [6, 64] in the model``."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) < 2:
        return lines[0] if lines else "its tensors do not match the model's"
    parts, sizes = [], []
    for line in lines[1:]:
        keys = re.findall(r'"([^"]+)"', line)
        kind = "missing" if line.startswith("Missing") else "unexpected"
        if line.startswith(("Missing", "Unexpected")) and keys:
            named = ", ".join(keys[:shown]) + (
                f" and {len(keys) - shown} more" if len(keys) > shown else ""
            )
            parts.append(f"{kind} {len(keys)} {'key' if len(keys) == 1 else 'keys'} ({named})")
        elif line.startswith("size mismatch"):
            sizes.append(line)
        else:
            parts.append(line.rstrip("."))
    for line in sizes[:shown]:
        found = re.match(
            r"size mismatch for (\S+): copying a param with shape (.+) from checkpoint, "
            r"the shape in current model is (.+?)\.?$",
            line,
        )
        if found:
            name, theirs, ours = (re.sub(r"torch\.Size\((.*)\)", r"\1", g) for g in found.groups())
            parts.append(
                f"size mismatch for {name}: {theirs} in the checkpoint, {ours} in the model"
            )
        else:
            parts.append(line.rstrip("."))
    if len(sizes) > shown:
        parts.append(f"and {len(sizes) - shown} more size mismatches")
    return "; ".join(parts)


def ensemble_paths(run: RunDir, k: int, say: Callable[[str], None] = warn) -> list[Path]:
    """The top-``k`` intact epoch checkpoints by validation accuracy (best first), read by
    :meth:`RunCheckpoints.ensemble <mamlpp.run.run_dir.RunCheckpoints.ensemble>` (the ranking
    comes from the newest intact checkpoint's validation history; damaged files are named in
    warnings and left out; with no epoch checkpoints yet, the newest checkpoint alone)."""
    return [member.path for member in RunCheckpoints(run, say).ensemble(k)]


def task_fingerprint(sampler: EpisodeSampler, tasks: int) -> str:
    """A hash of the classes, images and rotations of tasks ``0..tasks-1``: two runs with the
    same fingerprint were tested on the same tasks."""
    episodes = sampler.sample_indices(torch.arange(tasks))
    digest = hashlib.sha256()
    split = sampler.split
    digest.update(f"{split.name}:{split.num_classes}:{split.num_images}:{tasks}".encode())
    for tensor in (episodes.classes, episodes.images, episodes.rotations):
        digest.update(tensor.to("cpu", torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
