"""How every ``llmplat`` command speaks: results on stdout, everything else on stderr.

Errors and progress are one line on stderr prefixed with the program's name (and the
command's, where a command says so), so scripts can capture stdout alone.
"""

from __future__ import annotations

import json
import sys
from typing import Any

PROG = "llmplat"


def stderr(text: str) -> None:
    """One line on stderr, as it is."""
    print(text, file=sys.stderr, flush=True)


def note(text: str, *, command: str | None = None) -> None:
    """One line on stderr naming the program: ``llmplat: …`` (``llmplat status: …``)."""
    prefix = f"{PROG} {command}" if command else PROG
    stderr(f"{prefix}: {text}")


def print_json(obj: Any) -> None:
    """``obj`` as indented JSON on stdout (dates and the like as strings)."""
    print(json.dumps(obj, indent=2, default=str))
