"""The commands the README and the documentation pages (docs/) show, as a user would copy them."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
README = REPO / "README.md"
DOCS = REPO / "docs"

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def code_blocks(path: Path, language: str) -> list[str]:
    """Every fenced block of ``language`` (``sh``, ``python``…), in order."""
    return [body for lang, body in _FENCE.findall(path.read_text()) if lang == language]


def shell_lines(block: str) -> list[str]:
    """A shell block's commands: continuation lines joined, trailing comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def block_with(path: Path, language: str, text: str) -> str:
    """The one block of ``language`` containing ``text`` (the test names what it runs)."""
    found = [b for b in code_blocks(path, language) if text in b]
    assert len(found) == 1, f"{path}: {len(found)} {language} blocks contain {text!r}"
    return found[0]
