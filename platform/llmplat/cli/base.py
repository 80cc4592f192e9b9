"""What a command module hands the parser: its subcommands and their handlers."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeAlias

from llmplat.settings import Settings

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""The ``llmplat`` parser's subcommands, where each module adds its own."""

Handler: TypeAlias = Callable[[argparse.Namespace, Settings], int]
"""What a parsed command runs (``set_defaults(func=...)``): its exit status."""
