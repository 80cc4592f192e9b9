"""`llmplat loadtest`: run a Locust scenario headless and judge it against its objectives.

Exit status: 0 every objective met, 1 an objective failed, 2 bad scenario or arguments,
3 the run broke (platform unreachable, admin API refused, Locust failed).
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from llmplat.cli.base import Subcommands
from llmplat.cli.output import note
from llmplat.config.loader import ConfigError
from llmplat.settings import Settings


def _seconds(text: str) -> float:
    from llmplat.loadtest.scenario import parse_seconds

    try:
        value = parse_seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if value <= 0:
        raise argparse.ArgumentTypeError("the duration must be positive")
    return value


def _key_pair(text: str) -> tuple[str, str]:
    team, sep, key = text.partition("=")
    if not sep or not team or not key:
        raise argparse.ArgumentTypeError("expected TEAM=KEY (the scenario's team id)")
    return team.strip().lower(), key.strip()


def cmd_loadtest(args: argparse.Namespace, settings: Settings) -> int:
    from llmplat.loadtest.provision import ProvisionError
    from llmplat.loadtest.runner import (
        EXIT_BROKEN,
        EXIT_USAGE,
        RunError,
        RunOptions,
        run_loadtest,
    )
    from llmplat.loadtest.scenario import load_scenario

    loadtests_dir = Path(args.loadtests_dir) if args.loadtests_dir else settings.loadtest.dir
    try:
        scenario = load_scenario(args.scenario, loadtests_dir)
    except ConfigError as exc:
        note(str(exc))
        return EXIT_USAGE
    if args.users is not None or args.duration is not None:
        scenario = scenario.scaled(users=args.users, duration_s=args.duration)
    keys = {t: k.get_secret_value() for t, k in settings.loadtest.keys.items()}
    keys.update(dict(args.key or []))
    unknown = sorted(set(keys) - set(scenario.teams))
    if args.key and unknown:
        note(f"--key for unknown teams {unknown}; scenario teams: {', '.join(scenario.teams)}")
        return EXIT_USAGE
    keys = {t: k for t, k in keys.items() if t in scenario.teams}
    admin_token = settings.admin_token.get_secret_value() if settings.admin_token else None
    host = (args.host or f"http://{settings.host}:{settings.port}").rstrip("/")
    host = host.removesuffix("/v1")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.out) if args.out else Path("loadtest-results") / f"{scenario.name}-{stamp}"
    # Absolute: Locust runs with this folder as its working directory.
    out_dir = out_dir.resolve()
    opts = RunOptions(
        scenario=scenario,
        host=host,
        out_dir=out_dir,
        loadtests_dir=loadtests_dir,
        admin_token=admin_token,
        keys=keys,
        model=args.model,
        team_prefix=args.team_prefix,
        keep_teams=args.keep_teams,
        seed=args.seed,
        progress=note,
    )
    try:
        outcome = run_loadtest(opts)
    except (ProvisionError, RunError) as exc:
        note(str(exc))
        return EXIT_BROKEN
    print(outcome.summary, flush=True)
    print(f"report: {outcome.report}", flush=True)
    return outcome.exit_code


def add_loadtest_command(sub: Subcommands) -> None:
    p = sub.add_parser(
        "loadtest",
        help="run a Locust load-test scenario headless; exit 1 when an objective fails",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--scenario", required=True, help="name in loadtests/scenarios/ or a YAML path")
    p.add_argument(
        "--host", help="platform URL, e.g. http://127.0.0.1:8000 (default LLMPLAT_HOST:PORT)"
    )
    p.add_argument("--users", type=int, help="peak users (scales every phase proportionally)")
    p.add_argument(
        "--duration",
        type=_seconds,
        help="total run time, e.g. 90s or 10m (measured phases share what warm-up leaves)",
    )
    p.add_argument("--out", help="output folder (default loadtest-results/<scenario>-<time>)")
    p.add_argument("--model", help="model id (default: the scenario's, else the first listed)")
    p.add_argument(
        "--key",
        action="append",
        type=_key_pair,
        metavar="TEAM=KEY",
        help="use an existing key for a scenario team (or LLMPLAT_LOADTEST__KEYS__<TEAM>, "
        "which keeps it out of the process list)",
    )
    p.add_argument("--team-prefix", default="lt-", help="prefix of created teams (default lt-)")
    p.add_argument("--keep-teams", action="store_true", help="keep created teams afterwards")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt and length draws")
    p.add_argument("--loadtests-dir", help="folder with locustfile.py and scenarios/")
    p.set_defaults(func=cmd_loadtest)
