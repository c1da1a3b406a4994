"""Exceptions with one-line messages meant for users.

The CLI prints ``mamlpp: error: <message>`` for any of these and exits with ``exit_code``
instead of showing a traceback.
"""

from __future__ import annotations


class MamlppError(Exception):
    """Base class for errors whose message is a complete, one-line explanation for the user."""

    exit_code = 1


class ConfigError(MamlppError, ValueError):
    """A bad configuration: unknown key, wrong type or an impossible combination."""

    exit_code = 2


class DataError(MamlppError):
    """Missing, corrupt or unusable data (files, checksums, splits, episode sizes)."""

    exit_code = 1


class InputError(MamlppError):
    """Support or query images a model cannot use (a usage error: exit code 2)."""

    exit_code = 2
