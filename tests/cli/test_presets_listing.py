"""`mamlpp presets` keeps its columns: each starts at one place on every line."""

from __future__ import annotations

import re

from mamlpp.cli.main import main


def test_presets_descriptions_start_at_one_column(capsys) -> None:
    from mamlpp.run.presets import PRESETS

    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(PRESETS)
    # Each column (dataset, ways/shots, techniques, budget) starts at one place on every line,
    # after at least two spaces (one space separates words within a cell).
    starts = {tuple(m.start() for m in re.finditer(r"(?<=  )(?=\S)", line)) for line in lines}
    assert len(starts) == 1 and len(next(iter(starts))) == 4, starts
