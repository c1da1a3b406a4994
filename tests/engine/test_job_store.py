"""The job's key-value store, reached through torch's private accessor (wrapped once in
:func:`mamlpp.engine.job_errors.default_store`).

If torch removes or renames ``torch.distributed.distributed_c10d._get_default_store``, the first
test fails with the wrapper's message, before any data-parallel job meets it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch.distributed as dist

from mamlpp.engine.job_errors import default_store
from mamlpp.errors import MamlppError


def test_the_default_store_of_a_one_process_gloo_group_answers(tmp_path: Path) -> None:
    """A one-process gloo group on a file store: the wrapper gives the group's store, and a key
    set through it is read back (the protocol's set, add, check and get)."""
    assert not dist.is_initialized()
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        found = default_store()
        found.set("mamlpp/test", "7 2")
        assert found.get("mamlpp/test") == b"7 2"
        assert found.check(["mamlpp/test"]) and not found.check(["mamlpp/absent"])
        assert found.add("mamlpp/count", 1) == 1 and found.add("mamlpp/count", 0) == 1
    finally:
        dist.destroy_process_group()


def test_without_the_private_accessor_the_error_is_one_clear_line(monkeypatch) -> None:
    monkeypatch.delattr(dist.distributed_c10d, "_get_default_store")
    with pytest.raises(MamlppError, match="_get_default_store") as raised:
        default_store()
    assert "\n" not in str(raised.value)
