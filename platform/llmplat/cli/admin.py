"""`llmplat teams …` and `llmplat keys …`: administration against the configured key store.

Commands that create a key print the key alone on stdout (everything else goes to stderr)
so scripts can capture it: ``KEY=$(llmplat keys create --team ci)``. Every command leaves one
``admin`` line in the audit log (actor: the OS user running it; client: ``cli``); a command
that cannot open the audit log changes nothing.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from llmplat.auth.admin import InvalidAdminRequest, KeyAdmin
from llmplat.auth.store import ConflictError, NotFoundError, StoreError
from llmplat.cli.base import Handler, Subcommands
from llmplat.cli.output import note, print_json, stderr
from llmplat.config.teams import ApiKeyRecord, Team
from llmplat.observability.audit import AuditLog
from llmplat.observability.record import AdminAction
from llmplat.settings import Settings
from llmplat.stores import open_key_store

_LIMIT_FLAGS = {
    "rpm": "requests_per_minute",
    "tpm": "tokens_per_minute",
    "tpd": "tokens_per_day",
    "concurrency": "concurrent_requests",
}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``12h``, ``30d``, ``2w``."""
    m = _DURATION.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"'{text}' is not a duration like 12h, 30d or 2w")
    return timedelta(seconds=float(m.group(1)) * _UNIT_S[m.group(2)])


@dataclass
class Subject:
    """What a command touched (its audit line), filled in as it becomes known."""

    team: str | None = None
    key_id: str | None = None
    new_key_id: str | None = None


AdminHandler = Callable[[argparse.Namespace, Settings, Subject], int]


def _admin(settings: Settings) -> KeyAdmin:
    return KeyAdmin(open_key_store(settings.keystore, settings.keystore_path))


def _limits(args: argparse.Namespace) -> dict[str, int]:
    return {
        field: getattr(args, flag) for flag, field in _LIMIT_FLAGS.items() if getattr(args, flag)
    }


def _fmt_limits(limits: Any) -> str:
    parts = [f"{flag}={getattr(limits, f)}" for flag, f in _LIMIT_FLAGS.items()]
    return " ".join(p for p in parts if not p.endswith("=None")) or "unlimited"


def _team_line(t: Team) -> str:
    models = ",".join(t.models) if t.models is not None else "*"
    cap = t.max_tokens_cap or "-"
    limits = _fmt_limits(t.limits)
    return f"{t.name:20} {t.priority_class:11} models={models} max_tokens<={cap} {limits}"


def key_state(k: ApiKeyRecord, now: datetime) -> str:
    """What ``keys list`` shows: a key past its expiry is refused, so it is not 'active'."""
    if k.revoked:
        return "revoked"
    return "active" if k.is_active(now) else "expired"


def _key_line(k: ApiKeyRecord) -> str:
    state = key_state(k, datetime.now(UTC))
    expires = k.expires_at.isoformat(timespec="seconds") if k.expires_at else "never"
    return (
        f"{k.key_id:14} {k.team:20} {state:8} {k.name or '-':20} "
        f"created={k.created_at.isoformat(timespec='seconds')} expires={expires} "
        f"{_fmt_limits(k.limits)}"
    )


def cmd_teams(args: argparse.Namespace, settings: Settings, subject: Subject) -> int:
    admin = _admin(settings)
    if args.teams_command == "list":
        teams = admin.list_teams()
        if args.json:
            print_json([t.model_dump(mode="json") for t in teams])
        else:
            for t in teams:
                print(_team_line(t))
        return 0
    if args.teams_command == "delete":
        admin.delete_team(args.name)
        stderr(f"deleted team '{args.name}' and its keys")
        return 0
    fields: dict[str, Any] = {}
    if args.models is not None:
        fields["models"] = None if args.models == "*" else [m for m in args.models.split(",") if m]
    if args.priority is not None:
        fields["priority_class"] = args.priority
    if args.max_tokens_cap is not None:
        fields["max_tokens_cap"] = args.max_tokens_cap or None
    if args.max_n is not None:
        fields["max_choices"] = args.max_n
    if args.cache_group is not None:
        fields["prefix_cache_group"] = args.cache_group or None
    if args.input_bound:
        fields["input_bounds"] = _input_bounds(args.input_bound)
    limits = _limits(args)
    if args.teams_command == "create":
        team = admin.create_team({"name": args.name, **fields, "limits": limits})
    else:
        if limits:
            fields["limits"] = limits
        team = admin.update_team(args.name, fields)
    print(_team_line(team))
    return 0


def cmd_keys(args: argparse.Namespace, settings: Settings, subject: Subject) -> int:
    admin = _admin(settings)
    if args.keys_command == "list":
        keys = admin.list_keys(args.team)
        if args.json:
            print_json([k.model_dump(mode="json", exclude={"secret_sha256"}) for k in keys])
        else:
            for k in keys:
                print(_key_line(k))
        return 0
    if args.keys_command == "revoke":
        key = admin.revoke_key(args.key_id)
        subject.team = key.team
        stderr(f"revoked key '{key.key_id}' of team '{key.team}'")
        return 0
    if args.keys_command == "rotate":
        issued = admin.rotate_key(args.key_id)
    else:
        issued = admin.create_key(
            args.team, name=args.name, expires_in=args.expires_in, limits=_limits(args)
        )
    rec = issued.record
    subject.team = rec.team
    if args.keys_command == "rotate":
        subject.new_key_id = rec.key_id
    else:
        subject.key_id = rec.key_id
    stderr(
        f"created key '{rec.key_id}' for team '{rec.team}'"
        + (f" (replaces '{args.key_id}', now revoked)" if args.keys_command == "rotate" else "")
        + ". It is shown once; store it now."
    )
    print(issued.plaintext, flush=True)
    return 0


def run_admin(func: AdminHandler, args: argparse.Namespace, settings: Settings) -> int:
    """Run a teams/keys command and write its one audit line (no secret: keys by id)."""
    group = "team" if func is cmd_teams else "key"
    action = f"{group}.{getattr(args, f'{group}s_command')}"
    sink = settings.audit_sink
    try:
        audit = AuditLog(sink, console=sys.stderr) if sink is not None else None
    except OSError as exc:
        note(f"cannot open the audit log {sink}: {exc}; nothing was changed")
        return 1
    subject = Subject(
        team=getattr(args, "team", None)
        or (getattr(args, "name", None) if group == "team" else None),
        key_id=getattr(args, "key_id", None),
    )
    ok, error_code = False, "internal_error"
    try:
        status = int(func(args, settings, subject))
        ok, error_code = status == 0, None
        return status
    except StoreError as exc:
        error_code = _error_code(exc)
        note(str(exc))
        return 1
    finally:
        if audit is not None:
            audit.write(
                AdminAction(
                    actor=os_user(),
                    client="cli",
                    action=action,
                    ok=ok,
                    error_code=error_code,
                    team=subject.team,
                    key_id=subject.key_id,
                    new_key_id=subject.new_key_id,
                )
            )
            audit.close()


def _audited(func: AdminHandler) -> Handler:
    return lambda args, settings: run_admin(func, args, settings)


def os_user() -> str:
    """Who runs this command: the effective user's name (``uid:<n>`` without one)."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid:{uid}"


def _error_code(exc: StoreError) -> str:
    """The admin API's code for the same refusal."""
    if isinstance(exc, NotFoundError):
        return "not_found"
    if isinstance(exc, ConflictError):
        return "conflict"
    if isinstance(exc, InvalidAdminRequest):
        return "invalid_request"
    return "key_store_unavailable"


def _input_bounds(pairs: list[str]) -> dict[str, int | None]:
    """``--input-bound schema_properties=2048`` (repeated); ``=0`` removes the override."""
    bounds: dict[str, int | None] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not value.strip().isdigit():
            raise StoreError(f"--input-bound {pair}: expected NAME=NUMBER, e.g. stop_count=16")
        bounds[name.strip().replace("-", "_")] = int(value) or None
    return bounds


def _add_limit_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rpm", type=int, help="requests per minute")
    p.add_argument("--tpm", type=int, help="tokens per minute")
    p.add_argument("--tpd", type=int, help="tokens per UTC day")
    p.add_argument("--concurrency", type=int, help="requests in flight at once")


def add_admin_commands(sub: Subcommands) -> None:
    teams = sub.add_parser("teams", help="create, list, update and delete teams")
    tsub = teams.add_subparsers(dest="teams_command", required=True)
    for name in ("create", "update"):
        p = tsub.add_parser(name, help=f"{name} a team")
        p.add_argument("name")
        p.add_argument("--models", help="comma-separated model ids, or '*' for all")
        p.add_argument("--priority", choices=["interactive", "batch"])
        p.add_argument("--max-tokens-cap", type=int, help="largest max_tokens (0 removes it)")
        p.add_argument("--max-n", type=int, help="largest n / best_of of a request (default 8)")
        p.add_argument(
            "--cache-group",
            help="share the engine's prefix cache with teams of this group ('' = own cache)",
        )
        p.add_argument(
            "--input-bound",
            action="append",
            default=[],
            metavar="NAME=N",
            help="the team's own input bound, e.g. schema_properties=2048 (repeatable; "
            "=0 restores the gateway's; names: docs/api.md, Input bounds)",
        )
        _add_limit_flags(p)
    p = tsub.add_parser("list", help="list teams")
    p.add_argument("--json", action="store_true")
    p = tsub.add_parser("delete", help="delete a team and all its keys")
    p.add_argument("name")
    teams.set_defaults(func=_audited(cmd_teams))

    keys = sub.add_parser("keys", help="create, list, revoke and rotate API keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    p = ksub.add_parser("create", help="create a key; prints it alone on stdout")
    p.add_argument("--team", required=True)
    p.add_argument("--name", default="", help="what the key is for, e.g. github-ci")
    p.add_argument("--expires-in", type=parse_duration, help="e.g. 12h, 30d, 2w")
    _add_limit_flags(p)
    p = ksub.add_parser("list", help="list keys (never their secrets)")
    p.add_argument("--team")
    p.add_argument("--json", action="store_true")
    p = ksub.add_parser("revoke", help="revoke a key (every gateway replica within seconds)")
    p.add_argument("key_id")
    p = ksub.add_parser("rotate", help="issue a replacement key and revoke the old one")
    p.add_argument("key_id")
    keys.set_defaults(func=_audited(cmd_keys))
