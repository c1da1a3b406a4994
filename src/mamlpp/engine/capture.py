"""What breaks CUDA-graph capture, found on any device (the CPU included).

A CUDA graph records device work only. Anything in a captured step that needs the host in the
middle of the step either fails capture or silently freezes a value into the graph:

* a tensor built from Python data (``torch.tensor(list)``, indexing with a Python list): PyTorch
  creates it on the CPU (``aten.lift_fresh``) and copies it to the device during capture;
* reading a value on the host (``.item()``, ``float(t)``, ``bool(t)``: ``_local_scalar_dense``,
  ``is_nonzero``, ``equal``);
* data-dependent output shapes (``nonzero``, ``masked_select``, ``unique``, boolean masks), which
  need the host to learn the size.

:class:`CaptureHazardMode` watches every ATen call of a step through a ``TorchDispatchMode`` and
records each such call with the line of mamlpp (or the caller's) code that made it. Tests run it
on the CPU, so code written for a GPU is checked where no GPU exists; on a GPU the same diagnosis
names the culprit when a real capture fails.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mamlpp.errors import MamlppError

_aten = torch.ops.aten
# Calls that read device values on the host, create tensors from host data, or have shapes that
# depend on values. Each is either a capture error or a host synchronisation per iteration.
HAZARDS: dict[Any, str] = {
    _aten.lift_fresh.default: "tensor created from Python data (copied host -> device)",
    _aten.lift_fresh_copy.default: "tensor created from Python data (copied host -> device)",
    _aten._local_scalar_dense.default: "value read on the host (.item()/float()/bool())",
    _aten.is_nonzero.default: "truth value of a tensor read on the host",
    _aten.equal.default: "torch.equal reads its result on the host",
    _aten.nonzero.default: "data-dependent shape (nonzero)",
    _aten.masked_select.default: "data-dependent shape (masked_select)",
    _aten._unique2.default: "data-dependent shape (unique)",
    _aten.unique_consecutive.default: "data-dependent shape (unique_consecutive)",
    _aten.unique_dim.default: "data-dependent shape (unique)",
}
_PACKAGE_DIR = Path(__file__).resolve().parent
_TORCH_DIR = Path(torch.__file__).resolve().parent


class CaptureError(MamlppError):
    """A step cannot be captured as a CUDA graph (names the operation and the source line)."""


@dataclass(frozen=True)
class CaptureHazard:
    """One capture-unsafe call: the ATen operation, why, and where in Python it was made."""

    op: str
    reason: str
    where: str  # "path/to/file.py:123 in function" (mamlpp's own frame when there is one)

    def describe(self) -> str:
        return f"{self.op} at {self.where}: {self.reason}"


def _source_line() -> str:
    """The innermost frame outside torch and this module: mamlpp's code, or the caller's."""
    frames = traceback.extract_stack()[:-3]
    for frame in reversed(frames):
        path = Path(frame.filename).resolve()
        if path == Path(__file__).resolve() or _TORCH_DIR in path.parents:
            continue
        shown = path.relative_to(_PACKAGE_DIR.parent) if _PACKAGE_DIR in path.parents else path
        return f"{shown}:{frame.lineno} in {frame.name}"
    return "<unknown>"


def _boolean_index(func: Any, args: tuple[Any, ...]) -> bool:
    """Indexing with a boolean mask: the result's size depends on the mask's values."""
    if func is not _aten.index.Tensor or len(args) < 2:
        return False
    return any(t is not None and t.dtype == torch.bool for t in args[1])


class CaptureHazardMode(TorchDispatchMode):
    """Records (never raises) every capture hazard made while active; see :data:`HAZARDS`."""

    def __init__(self) -> None:
        super().__init__()
        self.hazards: list[CaptureHazard] = []

    def __torch_dispatch__(
        self,
        func: Any,
        types: Sequence[type],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        reason = HAZARDS.get(func)
        if reason is None and _boolean_index(func, args):
            reason = "data-dependent shape (boolean mask index)"
        if reason is not None:
            self.hazards.append(CaptureHazard(str(func), reason, _source_line()))
        return func(*args, **(kwargs or {}))


def find_capture_hazards(step: Callable[[], Any]) -> list[CaptureHazard]:
    """Run ``step()`` once (for real: it changes whatever it changes) and list its hazards."""
    with CaptureHazardMode() as mode:
        step()
    return mode.hazards
