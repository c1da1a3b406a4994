"""The commands' help: every `mamlpp bench` option is documented."""

from __future__ import annotations

import argparse


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
