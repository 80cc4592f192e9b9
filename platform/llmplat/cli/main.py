"""`llmplat …`: serve the platform, build the embedded model, administer teams and keys."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from llmplat.cli.admin import add_admin_commands
from llmplat.cli.deploy import add_deploy_commands
from llmplat.cli.loadtest import add_loadtest_command
from llmplat.cli.model import add_model_commands
from llmplat.cli.output import note
from llmplat.cli.plan import add_plan_command
from llmplat.cli.serve import add_serve_command
from llmplat.cli.status import add_status_command
from llmplat.settings import ENV_PREFIX, Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmplat", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_command(sub)
    add_model_commands(sub)
    add_admin_commands(sub)
    add_status_command(sub)
    add_loadtest_command(sub)
    add_plan_command(sub)
    add_deploy_commands(sub)
    return parser


def load_settings() -> Settings:
    """The environment's settings, or exit 2 with one line per problem (never a value)."""
    try:
        return Settings()
    except ValidationError as exc:
        for error in exc.errors(include_input=False, include_url=False):
            where = "__".join(str(part) for part in error["loc"]).upper()
            name = f"{ENV_PREFIX}{where}: " if where else ""
            message = error["msg"].removeprefix("Value error, ")
            note(f"invalid setting {name}{message}")
    except ValueError as exc:  # a *_FILE variable that cannot be read, or doubly set
        note(f"invalid setting: {exc}")
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args, load_settings()))


if __name__ == "__main__":
    sys.exit(main())
