"""The run folder's life: refuse a folder that holds another run, find the checkpoint to resume
from (falling back to the newest intact epoch file), and reconcile the folder with it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mamlpp.errors import ConfigError, MamlppError
from mamlpp.run.checkpoint import atomic_save, remove_stale_temporaries, top_k_epochs
from mamlpp.run.data_record import check_same_data, describe, run_record
from mamlpp.run.experiment import ExperimentConfig, check_resumable, to_toml
from mamlpp.run.output_guard import check_new_run_folder
from mamlpp.run.run_dir import (
    NoIntactCheckpoint,
    RunCheckpoints,
    RunDir,
    default_run_dir,
    read_metrics,
    read_run_config,
    truncate_metrics,
    write_json,
)
from mamlpp.util.atomic import atomic_write


def check_run_folder(run: RunDir, resume: bool, config: ExperimentConfig | None = None) -> None:
    """Refuse a folder that already holds a run unless resuming, and (given ``config``) a
    resume whose config would change the run. Cheap: call it before loading any data."""
    if run.root.exists() and not run.root.is_dir():
        raise ConfigError(f"--out {run.root} exists and is not a folder")
    check_new_run_folder(run)  # a folder of the user's own files is never written into
    started = run.has_training_state() or run.metrics.is_file() or bool(run.epoch_checkpoints())
    if started and not resume:
        raise ConfigError(
            f"{run.root} already holds a run; continue it with --resume or choose another --out"
        )
    if not (resume and started and config is not None):
        return
    if not run.config.is_file():
        raise ConfigError(f"cannot resume {run.root}: it has training files but no config.toml")
    check_resumable(read_run_config(run).to_dict(), config.to_dict())


def choose_run_folder(run: RunDir | None, config: ExperimentConfig, resume: bool) -> RunDir:
    """The run folder: ``run``, else a new one named after the preset and the time, checked by
    :func:`check_run_folder` (with ``config``) before any data is loaded or downloaded."""
    chosen = run if run is not None else RunDir(default_run_dir(config.preset))
    check_run_folder(chosen, resume, config)
    return chosen


def kept_top_k(state: dict[str, Any]) -> int:
    """The top-k whose epoch files a checkpoint's run keeps (older checkpoints: its eval.top_k)."""
    return int(state.get("keep_top_k", state["config"]["eval"]["top_k"]))


def resume_state(run: RunDir, say: Callable[[str], None] = print) -> dict[str, Any] | None:
    """The state to resume from: ``latest.pt``, else (announced) the newest intact epoch file,
    read by :class:`~mamlpp.run.run_dir.RunCheckpoints` as every command reads them.

    None only for a run with no checkpoint and no finished epoch; a run with history whose
    checkpoints are all damaged or gone is refused, never silently restarted."""
    problem = None
    try:
        found = RunCheckpoints(run, say).newest("resuming from {name}, the end of epoch {epoch}")
    except NoIntactCheckpoint as error:
        found, problem = None, error.problem
    if found is not None:
        if found.path != run.latest:
            atomic_save(found.state, run.latest)  # the intact state becomes latest.pt again
        return found.state
    finished = sum(r.get("kind") == "val" for r in read_metrics(run.metrics))
    if problem or finished:
        why = problem or f"{run.checkpoints} holds no checkpoint"
        raise MamlppError(
            f"cannot resume {run.root}: {why}, no intact epoch checkpoint remains and "
            f"metrics.jsonl records {finished} finished epoch(s); move the folder away to start "
            "again"
        )
    return None


def prepare_run(
    config: ExperimentConfig,
    run: RunDir,
    resume: bool,
    say: Callable[[str], None] = print,
    data: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Check the folder against ``resume``; return the checkpoint to resume from (or None).

    A folder that already holds training state is never reused without ``--resume``, so two
    runs (say MAML and MAML++) cannot write into one folder by accident. ``data`` is the
    record of the data loaded for this session (:mod:`mamlpp.run.data_record`): a resume on
    other data than the run's is refused, and the record is written to ``data.json``.
    """
    check_run_folder(run, resume)
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run.checkpoints)
    state = resume_state(run, say) if resume else None
    if state is not None:
        check_resumable(state["config"], config.to_dict())
        if data is not None:
            _check_resume_data(run, state, data, say)
        truncate_metrics(run.metrics, int(state["progress"]["step"]))
        # Reconcile the epoch files with the checkpoint (a kill may have come mid-way); the
        # largest top-k ever used decides, so a smaller eval.top_k never deletes a checkpoint.
        keep_k = max(config.eval.top_k, kept_top_k(state))
        keep = set(top_k_epochs(state["history"], keep_k))
        for epoch, path in run.epoch_checkpoints().items():
            if epoch not in keep or epoch > int(state["progress"]["epoch"]):
                path.unlink(missing_ok=True)
    elif run.metrics.is_file():
        if resume:
            say(f"no checkpoint yet in {run.checkpoints}: starting again from iteration 0")
        truncate_metrics(run.metrics, 0)  # killed before the first checkpoint: start over
    header = "mamlpp run configuration (preset, then --config file, then --set overrides)"
    with atomic_write(run.config, "w", encoding="utf-8") as handle:
        handle.write(to_toml(config, header))
    if data is not None:
        write_json(run.data, data)
    return state


def _check_resume_data(
    run: RunDir, state: dict[str, Any], data: dict[str, Any], say: Callable[[str], None]
) -> None:
    """A run continues on the data it started on (there is no --allow-other-data for
    training: the checkpoints would come from two datasets). A run from before data records
    is continued with a note, and its record starts with this session."""
    recorded = run_record(run, state)
    if recorded is None:
        say(
            f"note: {run.root} has no record of the data it was trained on (a run from before "
            f"mamlpp recorded it): not checked; recording {describe(data)} from now on"
        )
        return
    check_same_data(
        run,
        recorded,
        data,
        "a run continues on the data it started on: give its folder with --data-dir, or "
        "start a new run (another --out) to train on this data",
    )


def resume_hint(run: RunDir, step: int, saved_step: int | None, iterations_per_epoch: int) -> str:
    """What an interrupted training session tells the user: how to continue, and how much since
    the last checkpoint is lost (``step``: iterations done; ``saved_step``: those latest.pt
    holds, None when no checkpoint was written yet)."""
    command = f"continue with `mamlpp train --out {run.root} --resume`"
    if saved_step is None:
        return (
            f"{command}; no checkpoint was written yet (one is written at the end of every "
            f"epoch), so it starts again from iteration 0 ({step} done are lost)"
        )
    epoch, iteration = divmod(saved_step, iterations_per_epoch)
    at = f"epoch {epoch + 1}, iteration {iteration}" if iteration else f"the end of epoch {epoch}"
    lost = step - saved_step
    what = "nothing is lost" if lost <= 0 else f"the {lost} iteration(s) since are run again"
    return f"{command}; it starts from the last checkpoint ({at}): {what}"


def checkpoint_kept_hint(run: RunDir) -> str:
    """What to add to a lost-process error: the ``--resume`` hint when the folder holds a
    checkpoint to continue from, else nothing."""
    if run.latest.is_file() or run.epoch_checkpoints():
        return "; the last checkpoint is kept: continue with --resume"
    return ""
