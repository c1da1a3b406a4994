"""The exported model file: what ``mamlpp export`` writes and ``mamlpp.load`` / ``mamlpp serve``
read. One record in two formats, told apart by their first bytes, not by the file name:

* **safetensors** (written by default, ``MODEL.safetensors``): every ensemble member's tensors
  as ``member<i>/<state_dict key>``, and the rest as JSON in the file's metadata under the key
  ``"mamlpp"``: ``{"format": "mamlpp-model", "version": 1, "mamlpp_version", "config",
  "preprocessing", "members": <count>, "checkpoints": [...]}``. Loading it runs no code (no
  pickle), and other tools read the weights with any safetensors library.
* **torch** (``MODEL.pt``, the format of earlier releases, still written on request): a plain dict
  with the same fields and ``members`` as a list of state dicts, which
  ``torch.load(weights_only=True)`` reads.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from mamlpp.errors import ConfigError, InputError, MamlppError
from mamlpp.run.checkpoint import atomic_save
from mamlpp.util.atomic import atomic_write
from mamlpp.version import __version__

MODEL_FORMAT = "mamlpp-model"
MODEL_VERSION = 1
SUFFIXES = (".safetensors", ".pt")
METADATA_KEY = "mamlpp"
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip container


@dataclass(frozen=True)
class ModelRecord:
    """What a model file holds (the config and preprocessing as plain dicts)."""

    config: dict[str, Any]
    preprocessing: dict[str, Any]
    members: list[dict[str, torch.Tensor]]  # one state dict per ensemble member, CPU tensors
    checkpoints: list[str]  # the checkpoint file names the members came from
    mamlpp_version: str = __version__


def write_model(path: str | Path, record: ModelRecord) -> None:
    """Write ``record`` atomically, as safetensors or torch by ``path``'s suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(f"a model file ends in .safetensors or .pt, got {path.name}")
    header = {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "mamlpp_version": record.mamlpp_version,
        "config": record.config,
        "preprocessing": record.preprocessing,
        "checkpoints": list(record.checkpoints),
    }
    if suffix == ".pt":
        atomic_save({**header, "members": record.members}, path)
        return
    tensors = {
        f"member{i}/{name}": tensor.detach().cpu().contiguous().clone()  # no shared storage
        for i, state in enumerate(record.members)
        for name, tensor in state.items()
    }
    metadata = {METADATA_KEY: json.dumps({**header, "members": len(record.members)})}
    data = save_safetensors(tensors, metadata=metadata)
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def read_model(path: str | Path) -> ModelRecord:
    """The record of a model file in either format; one-line errors for anything else (weights
    that are NaN or infinite included: such a model predicts nothing)."""
    return _finite(Path(path), _read_record(Path(path)))


def _finite(path: Path, record: ModelRecord) -> ModelRecord:
    for i, state in enumerate(record.members):
        for name, tensor in state.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                where = f"member{i}/{name}" if len(record.members) > 1 else name
                raise InputError(
                    f"model file {path} has NaN or infinite weights ({where}): it cannot "
                    "predict; export it again from a run whose checkpoints are finite"
                )
    return record


def _read_record(path: Path) -> ModelRecord:
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a model file (from `mamlpp export`)")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"model file {path} does not exist") from None
    if data.startswith(_ZIP_MAGIC):
        return _from_torch(path)
    if _looks_like_safetensors(data):
        return _from_safetensors(path, data)
    raise InputError(  # a usage error (exit 2): the wrong file was given
        f"cannot read model file {path}: it is neither safetensors nor a torch file (write a "
        "model with `mamlpp export RUN_DIR MODEL.safetensors`)"
    )


def _looks_like_safetensors(data: bytes) -> bool:
    """A safetensors file starts with the length of its JSON header (u64, little-endian)."""
    if len(data) < 10:
        return False
    (length,) = struct.unpack("<Q", data[:8])
    return 0 < length <= len(data) - 8 and data[8:9] == b"{"


def _checked(path: Path, header: Any) -> dict[str, Any]:
    if not isinstance(header, dict) or header.get("format") != MODEL_FORMAT:
        raise InputError(f"{path} is not an exported mamlpp model (see `mamlpp export`)")
    if header.get("version") != MODEL_VERSION:
        raise MamlppError(f"{path} is model format {header.get('version')}, not {MODEL_VERSION}")
    return header


def _from_torch(path: Path) -> ModelRecord:
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged or foreign file
        # The first sentence only: a truncated file gives "[Errno 22] Invalid argument" or
        # miniz's long advice, neither of which says what happened to the file.
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0].split(". ")[0]
        raise MamlppError(
            f"cannot read model file {path}: a truncated or damaged torch file "
            f"({path.stat().st_size} bytes; torch says: {reason}); write it again with "
            "`mamlpp export`"
        ) from None
    record = _checked(path, record)
    return ModelRecord(
        config=record["config"],
        preprocessing=record["preprocessing"],
        members=list(record["members"]),
        checkpoints=list(record.get("checkpoints", [])),
        mamlpp_version=str(record.get("mamlpp_version", "")),
    )


def _from_safetensors(path: Path, data: bytes) -> ModelRecord:
    try:
        (length,) = struct.unpack("<Q", data[:8])
        metadata = json.loads(data[8 : 8 + length]).get("__metadata__") or {}
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError, UnicodeDecodeError) as error:
        raise MamlppError(f"cannot read model file {path}: damaged safetensors ({error})") from None
    try:
        header = json.loads(metadata.get(METADATA_KEY, "null"))
    except json.JSONDecodeError:
        header = None
    header = _checked(path, header)
    members: list[dict[str, torch.Tensor]] = [{} for _ in range(int(header["members"]))]
    for key, tensor in tensors.items():
        member, _, name = key.partition("/")
        members[int(member.removeprefix("member"))][name] = tensor
    return ModelRecord(
        config=header["config"],
        preprocessing=header["preprocessing"],
        members=members,
        checkpoints=list(header.get("checkpoints", [])),
        mamlpp_version=str(header.get("mamlpp_version", "")),
    )
