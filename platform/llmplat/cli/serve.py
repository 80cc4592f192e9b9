"""`llmplat serve`: the configured models and the gateway on local (or given) Ray."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Literal

from llmplat.cli.base import Subcommands
from llmplat.cli.output import note
from llmplat.config.loader import ConfigError, LoadedPlatform, load_platform
from llmplat.local import session
from llmplat.local.session import SessionError
from llmplat.settings import Settings


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    if args.config:
        settings = settings.model_copy(update={"config": Path(args.config)})
    if args.port:
        settings = settings.model_copy(update={"port": args.port})
    if args.nodes:
        local = settings.local.model_copy(update={"nodes": args.nodes})
        settings = settings.model_copy(update={"local": local})
    try:
        settings.check_quota_store()
        platform = load_platform(settings.resolved_config(), settings.config_dir)
    except (ConfigError, ValueError) as exc:
        note(str(exc))
        return 2
    try:
        status = _own_session(args, settings, platform)
    except SessionError as exc:
        note(str(exc))
        return 2
    if status is not None:
        return status
    admin_generated = settings.admin_token is None and settings.mode == "dev"
    settings = settings.with_dev_key()

    from llmplat.local.runtime import PlatformStartError, prepare_environment, start_platform

    prepare_environment(settings)  # before anything imports ray.serve

    from llmplat.config.profiles import drain_seconds
    from llmplat.engine.llm_config import ModelSourceError
    from llmplat.serving.builder import build_application, build_models

    try:
        models = build_models(platform, settings, progress=note)
    except (ConfigError, ModelSourceError) as exc:
        note(str(exc))
        return 2
    stop = threading.Event()
    # A hang-up too: Ray's daemons run in this session and must be shut down with it.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    try:
        running = start_platform(
            settings,
            lambda: build_application(models, settings),
            progress=note,
            drain_s=drain_seconds(platform.profiles),
        )
    except PlatformStartError as exc:
        note(f"failed to start: {exc}")
        return 1
    key = settings.dev_api_key.get_secret_value() if settings.dev_api_key else ""
    names = ", ".join(m.model_id for m in models)
    print(f"llmplat is serving {names} at {running.url}/v1", flush=True)
    print(f"  OPENAI_BASE_URL={running.url}/v1", flush=True)
    if key:
        print(f"  OPENAI_API_KEY={key}", flush=True)
    if admin_generated and settings.admin_token is not None:
        token = settings.admin_token.get_secret_value()
        print(f"  LLMPLAT_ADMIN_TOKEN={token}  (admin API at {running.url}/admin/)", flush=True)
    print(f"  teams and keys: {settings.keystore_path} (llmplat teams|keys --help)", flush=True)
    print("Press Ctrl-C to stop.", flush=True)
    try:
        stop.wait()
    finally:
        note(f"shutting down (requests in flight get up to {running.drain_s:.0f} s)")
        running.shutdown()
        note("stopped")
    return 0


def _own_session(
    args: argparse.Namespace, settings: Settings, platform: LoadedPlatform
) -> int | None:
    """Give a local CPU platform a session of its own at a lower CPU autogroup priority.

    Returns None to serve from this process, or the exit status of the platform when it
    ran in a new session started from here (see llmplat.local.session for why).
    """
    plan = session_plan(
        settings,
        platform,
        autogroup=session.autogroup_enabled(),
        leader=session.leads_own_session(),
    )
    if plan == "new session":
        return session.run_in_new_session(serve_command(args))
    if plan == "renice":
        nice = settings.cpu.autogroup_nice
        session.set_autogroup_nice(nice)
        note(f"serving from its own session at CPU autogroup nice {nice}")
    return None


def session_plan(
    settings: Settings, platform: LoadedPlatform, *, autogroup: bool, leader: bool
) -> Literal["serve here", "new session", "renice"]:
    """Whether ``llmplat serve`` runs here as it is, re-runs itself in a new session, or
    (already leading one) lowers its session's autogroup priority."""
    on_cpu = any(p.accelerator.kind == "cpu" for p in platform.profiles)
    if settings.cpu.autogroup_nice == 0 or not on_cpu or settings.ray_address or not autogroup:
        return "serve here"
    return "renice" if leader else "new session"


def serve_command(args: argparse.Namespace) -> list[str]:
    """The ``llmplat serve`` command line that ``args`` were parsed from."""
    argv = [sys.executable, "-m", "llmplat", "serve"]
    if args.config:
        argv += ["--config", str(args.config)]
    if args.port:
        argv += ["--port", str(args.port)]
    if args.nodes:
        argv += ["--nodes", str(args.nodes)]
    return argv


def add_serve_command(sub: Subcommands) -> None:
    serve = sub.add_parser("serve", help="serve the configured models on local Ray")
    serve.add_argument(
        "--config",
        help="platform config YAML, or a name from configs/ such as 'autoscale' "
        "(default configs/local.yaml)",
    )
    serve.add_argument("--port", type=int, help="HTTP port (default LLMPLAT_PORT or 8000)")
    serve.add_argument(
        "--nodes",
        type=int,
        help="Ray nodes on this machine, each with its share of the cores, to try layouts "
        "that span nodes (default LLMPLAT_LOCAL__NODES or 1)",
    )
    serve.set_defaults(func=cmd_serve)
