"""`llmplat model …`: models llmplat builds itself."""

from __future__ import annotations

import argparse
from pathlib import Path

from llmplat.cli.base import Subcommands
from llmplat.cli.output import note
from llmplat.settings import Settings


def cmd_model_build_tiny(args: argparse.Namespace, settings: Settings) -> int:
    from llmplat.models.tiny import build_tiny_model, ensure_tiny_model

    if args.out:
        path = build_tiny_model(Path(args.out), progress=note)
    else:
        path = ensure_tiny_model(settings.models_dir, progress=note)
    print(path)
    return 0


def add_model_commands(sub: Subcommands) -> None:
    model = sub.add_parser("model", help="models llmplat builds itself")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    tiny = model_sub.add_parser(
        "build-tiny", help="build the embedded tiny Mixtral-architecture model offline"
    )
    tiny.add_argument("--out", help="output directory (default: $LLMPLAT_HOME/models)")
    tiny.set_defaults(func=cmd_model_build_tiny)
