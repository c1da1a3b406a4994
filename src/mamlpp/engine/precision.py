"""Precision of a meta-step's float arithmetic: fp32, TF32 matmuls (CUDA), or bfloat16 autocast
of the forward passes. The names are listed once here; the config, the step runner and
``mamlpp bench`` read them."""

from __future__ import annotations

import contextlib
import typing
from collections.abc import Iterator
from typing import Literal

import torch

Precision = Literal["fp32", "tf32", "bf16"]
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)  # the names, stated once above


def check_precision(precision: str) -> Precision:
    """``precision`` if it is one of :data:`PRECISIONS` (no flag is touched), else ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return typing.cast(Precision, precision)


@contextlib.contextmanager
def precision_context(precision: str, device: torch.device) -> Iterator[None]:
    """Float arithmetic of one step: TF32 flags for ``"tf32"``, bfloat16 autocast (forward
    passes only, see :func:`outer_step`) for ``"bf16"``, cuDNN autotuning on CUDA; restores
    PyTorch's flags afterwards."""
    check_precision(precision)
    flags = (torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32")
    saved = [getattr(owner, name) for owner, name in flags]
    saved_benchmark = torch.backends.cudnn.benchmark
    tf32 = precision == "tf32"
    for owner, name in flags:
        setattr(owner, name, tf32)
    # cuDNN autotuning: the eager warm-up steps try the convolution algorithms of each shape,
    # and the captured graph keeps the fastest (shapes never change within a graph).
    torch.backends.cudnn.benchmark = device.type == "cuda" or saved_benchmark
    try:
        yield
    finally:
        for (flag_owner, flag), value in zip(flags, saved, strict=True):
            setattr(flag_owner, flag, value)
        torch.backends.cudnn.benchmark = saved_benchmark


def autocast_dtype_of(precision: str) -> torch.dtype | None:
    return torch.bfloat16 if precision == "bf16" else None
