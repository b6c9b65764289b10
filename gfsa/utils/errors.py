"""The one-line error contract: bad input or a broken environment stops with one line that names the
fix and exit code 2; nothing a user caused ends in a traceback."""

from __future__ import annotations

import sys
from typing import NoReturn

EXIT_BAD_INPUT = 2


class ConfigError(ValueError):
    """A user-facing configuration or input error: one line that names the fix."""


def first_line(e: BaseException, with_type: bool = True) -> str:
    """The first non-empty line of an exception's message (library messages often span many lines)."""
    text = first_lines(e, 1)
    if not with_type:
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def first_lines(e: BaseException, n: int = 2) -> str:
    """The first ``n`` non-empty lines of an exception's message, joined into one line (Hydra states
    the problem on its first line and the fix on its second)."""
    return " ".join([line.strip() for line in str(e).splitlines() if line.strip()][:n])


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print ``error: <message>`` (one line) to stderr and exit with ``code``."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    sys.exit(code)
