"""Error types of the harness (a neutral module: the API, benchmarks and the CLI all import from here)."""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input: printed as one line, exit code 2."""
