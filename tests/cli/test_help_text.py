"""The commands' help: every `mamlpp bench` option is documented, and `mamlpp evaluate --help`
prints a single percent sign."""

from __future__ import annotations

import argparse

import pytest

from mamlpp.cli.main import main


def test_every_bench_option_has_help() -> None:
    from mamlpp.cli.bench import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    undocumented = [
        action.option_strings[0]
        for action in parser._actions
        if action.option_strings and not (action.help or "").strip()
    ]
    assert undocumented == []


def test_evaluate_help_shows_a_single_percent_sign(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    out = capsys.readouterr().out
    assert "95% confidence" in out and "%%" not in out
