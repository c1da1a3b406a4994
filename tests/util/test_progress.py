"""Progress bars (tqdm): redraws on a terminal, few plain ASCII lines in a log."""

from __future__ import annotations

import io

from mamlpp.util.progress import LOG_INTERVAL, progress_bar


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_ascii_lines_at_most_every_interval_and_the_final_state() -> None:
    log = io.StringIO()
    bar = progress_bar(1000, "work", "img", file=log)
    assert bar.ascii and bar.mininterval == LOG_INTERVAL >= 10
    for _ in range(1000):
        bar.update(1)
    bar.close()
    lines = log.getvalue().replace("\r", "\n").strip().splitlines()
    assert len(lines) <= 3  # start and end, not a line per update
    assert lines[-1].startswith("work: 100%") and "1000/1000" in lines[-1]


def test_a_terminal_gets_a_fast_unicode_bar_and_disabled_bars_write_nothing() -> None:
    assert not progress_bar(10, "t", file=Tty()).ascii
    assert progress_bar(10, "t", file=Tty()).mininterval < 1
    quiet = io.StringIO()
    bar = progress_bar(10, "t", enabled=False, file=quiet)
    bar.update(10)
    bar.close()
    assert quiet.getvalue() == ""
