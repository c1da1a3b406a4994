"""The dependency-free progress bar: terminal redraws, quiet logs, units, ETA and postfix."""

from __future__ import annotations

import io

from mamlpp.data import Progress
from mamlpp.data.progress import format_amount, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_format_helpers():
    assert format_amount(999, "B") == "999 B"
    assert format_amount(1536, "B") == "1.5 kB"
    assert format_amount(9_464_212, "B") == "9.5 MB"
    assert format_amount(37, "it") == "37 it"
    assert format_amount(2.5, "it") == "2.5 it"
    assert format_duration(5) == "00:05"
    assert format_duration(3725) == "1:02:05"


def test_terminal_bar_redraws_in_place_with_rate_eta_and_postfix():
    clock, out = FakeClock(), Tty()
    bar = Progress(1000, desc="dl", unit="B", file=out, clock=clock)
    assert bar.interactive
    clock.now += 1
    bar.update(250, loss=0.123456)
    text = out.getvalue()
    assert text.startswith("\rdl  25% [#####...............] 250 B/1.0 kB 250 B/s ETA 00:03")
    assert text.endswith("loss=0.1235")
    clock.now += 0.01  # too soon for another redraw
    bar.update(10)
    assert out.getvalue() == text
    clock.now += 1
    bar.close()
    final = out.getvalue()
    assert final.endswith("\n") and final.count("\r") == 2 and "260 B/1.0 kB" in final
    bar.close()  # idempotent
    assert out.getvalue() == final


def test_log_mode_writes_only_occasional_lines():
    clock, out = FakeClock(), io.StringIO()
    bar = Progress(None, desc="train", file=out, clock=clock, log_every=30)
    assert not bar.interactive
    for _ in range(100):
        clock.now += 1
        bar.update(1, acc=0.5)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 4  # at 30, 60, 90 s and the final line
    assert lines[-1] == "train 100 it 1 it/s in 01:40 acc=0.5"


def test_disabled_bar_is_silent_and_counts():
    out = Tty()
    with Progress(10, file=out, enabled=False) as bar:
        bar.update(4)
    assert out.getvalue() == "" and bar.count == 4


def test_resumed_total_counts_rate_from_session_start():
    clock, out = FakeClock(), io.StringIO()
    bar = Progress(2000, unit="B", file=out, clock=clock, initial=1000)
    clock.now += 2
    bar.update(500)
    assert "75%" in bar.line() and "250 B/s" in bar.line() and "ETA 00:02" in bar.line()
