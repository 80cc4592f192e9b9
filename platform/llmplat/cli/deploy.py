"""`llmplat deploy …`: what the Helm chart consumes, and what KubeRay says once it runs.

* ``deploy serve-config``: the Ray Serve config (the RayService's ``serveConfigV2``) of
  profiles, from the same code that builds the local application.
* ``deploy values``: the generated block of a Helm values file (worker groups sized by the
  capacity planner, the Serve config); refuses a layout that does not fit its GPUs.
* ``deploy status``: the RayService's conditions, clusters and Serve applications.

Installing, upgrading and rolling back stay with Helm.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from llmplat.cli.base import Subcommands
from llmplat.cli.output import note, stderr
from llmplat.settings import Settings


def cmd_serve_config(args: argparse.Namespace, settings: Settings) -> int:
    from llmplat.config.loader import ConfigError, load_profile
    from llmplat.serving.serve_config import serve_config

    try:
        profiles = [load_profile(ref, settings.config_dir) for ref in args.model]
        config = serve_config(profiles, log_level=settings.log_level)
    except (ConfigError, ValueError) as exc:
        note(str(exc))
        return 2
    print(yaml.safe_dump(config, sort_keys=False, width=100), end="")
    return 0


def cmd_values(args: argparse.Namespace, settings: Settings) -> int:
    from llmplat.config.loader import ConfigError
    from llmplat.k8s.values import read_block, regenerate, render_block, write_block
    from llmplat.planner import GeometryError, GpuTableError

    try:
        if args.refresh:
            for name in args.refresh:
                path = Path(name)
                write_block(path, regenerate(read_block(path), settings.config_dir))
                stderr(f"refreshed {path}")
            return 0
        if not args.model:
            note("name the profiles (--model, repeatable) or files to --refresh")
            return 2
        from llmplat.k8s.values import layout_values

        generated = layout_values(
            args.model,
            settings.config_dir,
            gpu=args.gpu,
            gpus_per_node=args.gpus_per_node,
            gpu_tables=[Path(p) for p in args.gpus or ()],
        )
    except (ConfigError, GeometryError, GpuTableError, ValueError, OSError) as exc:
        note(str(exc))
        return 2
    if args.write:
        write_block(Path(args.write), generated)
        stderr(f"wrote the generated block of {args.write}")
    else:
        print(render_block(generated), end="")
    return 0


def cmd_deploy_status(args: argparse.Namespace, settings: Settings) -> int:
    from llmplat.k8s.status import (
        StatusError,
        custom_objects_api,
        read_rayservice,
        render,
        summarize,
    )

    namespace = args.namespace or settings.keystore.namespace
    try:
        api = custom_objects_api(
            args.kubeconfig
            or (str(settings.keystore.kubeconfig) if settings.keystore.kubeconfig else None),
            args.context,
        )
        summary = summarize(read_rayservice(api, namespace, args.name))
    except StatusError as exc:
        note(str(exc))
        return 1
    print(render(summary))
    return 0 if summary.ready else 3


def add_deploy_commands(sub: Subcommands) -> None:
    deploy = sub.add_parser("deploy", help="Kubernetes: Serve config and Helm values, status")
    dsub = deploy.add_subparsers(dest="deploy_command", required=True)

    p = dsub.add_parser(
        "serve-config", help="print the Ray Serve config (RayService serveConfigV2) of profiles"
    )
    p.add_argument("--model", action="append", required=True, help="profile (repeatable)")
    p.set_defaults(func=cmd_serve_config)

    p = dsub.add_parser(
        "values",
        help="print (or write into a values file) the chart values of a model layout",
        description="Sizes the model worker group from the capacity planner and embeds the "
        "Serve config; refuses a layout that does not fit its GPUs, with the numbers.",
    )
    p.add_argument("--model", action="append", help="profile (repeatable)")
    p.add_argument("--gpu", help="GPU type (default: the profiles' hardware.gpu)")
    p.add_argument("--gpus-per-node", type=int, help="GPUs per node (default: the profiles')")
    p.add_argument("--gpus", action="append", help="extra GPU table YAML (repeatable)")
    p.add_argument("--write", metavar="FILE", help="replace the generated block of FILE")
    p.add_argument(
        "--refresh",
        nargs="+",
        metavar="FILE",
        help="regenerate the block of each FILE from the inputs it records",
    )
    p.set_defaults(func=cmd_values)

    p = dsub.add_parser(
        "status", help="the RayService's readiness, clusters and Serve applications (KubeRay)"
    )
    p.add_argument("--name", default="llmplat", help="RayService name (the Helm release's)")
    p.add_argument(
        "--namespace", "-n", help="namespace (default LLMPLAT_KEYSTORE__NAMESPACE, 'llmplat')"
    )
    p.add_argument("--kubeconfig", help="kubeconfig file (default $KUBECONFIG, ~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context")
    p.set_defaults(func=cmd_deploy_status)
