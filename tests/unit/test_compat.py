"""Private Ray and vLLM APIs are imported in one module, llmplat.compat, and only there."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from llmplat import compat

ROOT = Path(__file__).resolve().parents[2] / "platform" / "llmplat"
COMPAT = ROOT / "compat.py"

# Modules that are internal although no part of their path says so.
PRIVATE_MODULES = (
    "ray.experimental.internal_kv",
    "vllm.v1",
    "vllm.parser.engine",
    "vllm.usage.usage_lib",
)


def _is_private(module: str) -> bool:
    parts = module.split(".")
    if parts[0] not in ("ray", "vllm"):
        return False
    return any(p.startswith("_") for p in parts) or any(
        module == m or module.startswith(m + ".") for m in PRIVATE_MODULES
    )


def private_imports(source: str) -> list[str]:
    """The private Ray/vLLM modules (or names) that ``source`` imports, as written."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if _is_private(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
            found += [n for n in names if _is_private(n)]
        elif (
            isinstance(node, ast.Call)
            and ast.unparse(node.func) in ("importlib.import_module", "import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and _is_private(node.args[0].value)
        ):
            found.append(node.args[0].value)
    return found


def test_private_ray_and_vllm_apis_are_imported_through_compat_only() -> None:
    offenders = {
        str(path.relative_to(ROOT)): found
        for path in sorted(ROOT.rglob("*.py"))
        if path != COMPAT and (found := private_imports(path.read_text()))
    }
    assert offenders == {}, "import these through llmplat.compat"


@pytest.mark.parametrize(
    "source",
    [
        "from ray.llm._internal.serve.utils.batcher import Batcher",
        "from ray.serve._private import replica",
        "from ray.experimental.internal_kv import _internal_kv_get",
        "import vllm.v1.engine.exceptions",
        "def f():\n    from vllm.usage.usage_lib import UsageContext",
        "from vllm.parser.engine import streaming_parser_engine",
        "from vllm.entrypoints.openai import _private_helper",
        "importlib.import_module('ray.serve._private.replica')",
    ],
)
def test_the_check_finds_private_imports(source: str) -> None:
    assert private_imports(source)


@pytest.mark.parametrize(
    "source",
    [
        "from ray.serve.llm import LLMServer",
        "from vllm.exceptions import VLLMClientError",
        "import ray",
        "from llmplat.compat import internal_kv_get",
    ],
)
def test_public_imports_pass(source: str) -> None:
    assert private_imports(source) == []


def test_every_compat_name_exists_in_the_installed_ray_and_vllm() -> None:
    """An upgrade that moves or drops one of them fails here, not in a replica."""
    assert sorted(compat.__all__) == sorted(compat._NAMES)
    for name in compat.__all__:
        assert getattr(compat, name) is not None, name


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        compat.nothing  # noqa: B018


def test_importing_compat_imports_neither_ray_nor_vllm() -> None:
    code = (
        "import sys, llmplat.compat\n"
        "loaded = sorted(m for m in ('ray', 'vllm') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
