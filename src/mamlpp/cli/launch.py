"""``mamlpp train --nproc G``: the same command again as G processes under torchrun.

:func:`launch_torchrun` fixes the run folder, then starts torchrun's launcher in a child process
through :func:`torchrun_agent`, which turns torchrun's outcome into the exit code one process
would have. The ranks print the job's one error line themselves
(:mod:`mamlpp.engine.job_errors`); only a job whose failed ranks were all killed by a signal,
so that nobody said anything, is explained here.

Not a command of its own: ``mamlpp train``'s handler imports it (it imports torch), and the
child process runs :func:`torchrun_agent`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

import torch
from torch.distributed import run as torchrun
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from mamlpp.engine.collectives import check_divisible, launched_by_torchrun
from mamlpp.engine.elastic_temp import removing_empty_elastic_folders
from mamlpp.engine.job_errors import DistributedError
from mamlpp.errors import ConfigError
from mamlpp.run.lifecycle import checkpoint_kept_hint, choose_run_folder
from mamlpp.run.training import TrainOptions, resolve_options


def launch_torchrun(nproc: int, options: TrainOptions) -> int:
    """``mamlpp train --nproc G ...`` = ``torchrun --standalone --nproc_per_node=G -m mamlpp
    train ...`` with the same options (and the run folder fixed before the launch).

    torchrun runs in a child process through :func:`torchrun_agent`: the ranks print the job's
    one error line themselves, and this process exits with the code one process would have
    (2 for a configuration error), without torchrun's traceback and failure report."""
    forwarded = _forwarded(options)  # each rank's options, less the run folder fixed below
    config, device, given = resolve_options(options)
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    if launched_by_torchrun():
        raise ConfigError("--nproc launches torchrun itself; under torchrun leave it out")
    check_divisible(config.train.tasks_per_batch, nproc)
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise ConfigError(
            f"--nproc {nproc} on CUDA needs {nproc} GPUs; this machine has "
            f"{torch.cuda.device_count()} (one process per GPU)"
        )
    cores = os.cpu_count() or 1
    if device.type == "cpu" and nproc > cores:
        print(
            f"note: --nproc {nproc} on the CPU, but this machine has {cores} CPU cores: the "
            f"{nproc} processes share them, so this is slower than --nproc {cores}",
            flush=True,
        )
    run = choose_run_folder(given, config, options.resume)  # before any data is loaded
    agent = "import sys; from mamlpp.cli.launch import torchrun_agent as run; "
    agent += "sys.exit(run(sys.argv[1:]))"
    command = [sys.executable, "-c", agent, "--standalone"]
    command += [f"--nproc_per_node={nproc}", "-m", "mamlpp", "train"]
    command += ["--out", str(run.root), *forwarded]
    print(f"launching {nproc} processes: torchrun {' '.join(command[3:])}", flush=True)
    with removing_empty_elastic_folders(), subprocess.Popen(command) as process:
        try:
            code = process.wait()
        except KeyboardInterrupt:  # Ctrl-C reached every process: torchrun stops the ranks
            code = process.wait()
    code = 128 - code if code < 0 else code  # torchrun itself killed by a signal
    if code <= 128 or code in (128 + signal.SIGINT, 128 + signal.SIGPIPE):
        return code  # success, the ranks said what went wrong, Ctrl-C or a closed pipe
    # Every rank that failed was killed by a signal: nobody has said anything yet.
    try:
        name = signal.Signals(code - 128).name
    except ValueError:
        name = f"signal {code - 128}"
    message = f"a process of the distributed job was killed by {name}"
    if name == "SIGKILL":
        message += " (out of memory?)"
    raise DistributedError(message + checkpoint_kept_hint(run))


def _forwarded(options: TrainOptions) -> list[str]:
    """The options of this ``mamlpp train`` for each rank, but the run folder (``--out``)."""
    forwarded = ["--device", options.device]
    for flag, value in (("--preset", options.preset), ("--config", options.config_file)):
        if value is not None:
            forwarded += [flag, str(value)]
    for assignment in options.overrides:
        forwarded += ["--set", assignment]
    if options.data_dir is not None:
        forwarded += ["--data-dir", options.data_dir]
    forwarded += [f for f, on in (("--resume", options.resume), ("--quiet", options.quiet)) if on]
    forwarded += [] if options.download else ["--no-download"]
    return forwarded


def torchrun_agent(argv: list[str]) -> int:
    """``torchrun ARGV`` in this process (the child that ``--nproc`` starts), as an exit code.

    Instead of torchrun's traceback and failure report: the first positive exit code of a
    failed rank (by rank), since a rank that exits with one has printed why (mamlpp's one line,
    or a Python traceback) and its peers exit quietly with the same code; when every failed rank
    was killed by a signal, 128 + that signal (not SIGTERM, which torchrun sends to the others),
    for the launcher to explain. torchrun's own log lines are shown only with ``LOGLEVEL`` set.
    """
    if "LOGLEVEL" not in os.environ:
        logging.disable(logging.ERROR)
    try:
        torchrun.run(torchrun.parse_args(argv))
    except ChildFailedError as failed:
        codes = [failure.exitcode for _, failure in sorted(failed.failures.items())]
        printed = [code for code in codes if code > 0]
        if printed:
            return printed[0]
        killed = [-code for code in codes if code < 0 and -code != signal.SIGTERM]
        return 128 + (killed[0] if killed else signal.SIGTERM)
    except SignalException as stopped:  # the launcher itself was interrupted or stopped
        return 128 + int(stopped.sigval)
    return 0
