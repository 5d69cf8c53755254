"""Errors that are the user's to fix. `lit-caprl` prints them as one line each, without a
traceback (`LIT_CAPRL_DEBUG=1` shows it); any other exception is ours and keeps its traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in a command, config or data file; the message says what and where."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work, named by its key."""


class MissingPath(UserError, FileNotFoundError):
    """A model, data or config path that does not exist (or is not what it should be)."""
