"""Trace which llmplat modules one streaming chat request passes through, in order.

The gateway's real app (middleware, routes, lifecycle, quotas, audit) runs in this process
with the shared fake engine of the unit tests (tests/support). After one warm-up request,
a second, identical one runs under ``sys.setprofile``; every fresh call of a function
defined in an ``llmplat.*`` module is recorded (coroutine and generator resumptions are
not: they follow the event loop's scheduling, not the code's structure), and runs of the
same module are merged into one visit.

    PYTHONPATH=platform python tools/trace_request.py [--max-tokens N] [--show]

Prints: steps (transitions from one module to another), distinct modules, re-entries
(entering a module already left earlier) and immediate A→B→A bounces, then the modules
re-entered most, and the re-entries per package. ``--show`` prints the whole sequence, with the
function that opened each visit.
"""

from __future__ import annotations

import argparse
import asyncio
import dis
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from pydantic import SecretStr  # noqa: E402

from llmplat.gateway.app import create_app  # noqa: E402
from llmplat.gateway.assemble import assemble_state  # noqa: E402
from llmplat.gateway.backends import EngineBackend  # noqa: E402
from llmplat.gateway.state import GatewayConfig, GatewayModel  # noqa: E402
from llmplat.settings import Settings  # noqa: E402
from support import DEV_KEY, MODEL, V3_TOKENIZER, make_engine  # noqa: E402
from support.asgi import Client, call  # noqa: E402

_RESUME = dis.opmap["RESUME"]


class ModuleTrace:
    """Records the llmplat module of every fresh function call (a profile hook)."""

    def __init__(self, resumptions: bool = False) -> None:
        self.resumptions = resumptions
        self.visits: list[str] = []
        self.first_calls: list[str] = []  # the function that opened each visit
        self.callbacks: list[str] = []  # "outer -> ... -> module.function" for each call-back
        self._fresh: dict[tuple[CodeType, int], bool] = {}

    def _is_fresh(self, frame: FrameType) -> bool:
        # A new call stands on the function's first RESUME (oparg 0); a resumed generator
        # or coroutine stands on the instruction it yielded or awaited at.
        key = (frame.f_code, frame.f_lasti)
        fresh = self._fresh.get(key)
        if fresh is None:
            code, at = frame.f_code.co_code, frame.f_lasti
            fresh = at + 1 < len(code) and code[at] == _RESUME and code[at + 1] == 0
            self._fresh[key] = fresh
        return fresh

    def hook(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if not module.startswith("llmplat."):
            return
        if not self.resumptions and not self._is_fresh(frame):
            return
        name = module.removeprefix("llmplat.")
        self._note_callback(frame, name)
        if not self.visits or self.visits[-1] != name:
            self.visits.append(name)
            self.first_calls.append(frame.f_code.co_qualname)

    def _note_callback(self, frame: FrameType, name: str) -> None:
        """A call into a module that is already on the stack below another module's frame
        (M -> X -> M): control handed back to a module that had handed it on."""
        chain: list[str] = []  # llmplat modules on the stack, innermost first, merged
        caller = frame.f_back
        while caller is not None:
            module = caller.f_globals.get("__name__", "")
            if module.startswith("llmplat."):
                short = module.removeprefix("llmplat.")
                if not chain or chain[-1] != short:
                    chain.append(short)
            caller = caller.f_back
        if name in chain[1:] or (chain and chain[0] != name and name in chain):
            outer = chain.index(name, 1 if chain[0] == name else 0)
            path = " -> ".join(reversed(chain[: outer + 1]))
            self.callbacks.append(f"{path} -> {name}.{frame.f_code.co_qualname}")


@dataclass
class Summary:
    steps: int
    modules: int
    reentries: int
    bounces: int
    reentered: Counter[str]


def summarise(visits: list[str]) -> Summary:
    reentered: Counter[str] = Counter()
    bounces = 0
    for i, name in enumerate(visits):
        if name in visits[:i]:
            reentered[name] += 1
        if i >= 2 and visits[i - 2] == name:
            bounces += 1
    return Summary(
        steps=max(len(visits) - 1, 0),
        modules=len(set(visits)),
        reentries=sum(reentered.values()),
        bounces=bounces,
        reentered=reentered,
    )


async def trace(max_tokens: int, resumptions: bool = False) -> ModuleTrace:
    tmp = Path(tempfile.mkdtemp(prefix="llmplat-trace-"))
    try:
        model_dir = tmp / "model"
        model_dir.mkdir()
        shutil.copy(V3_TOKENIZER, model_dir / "tokenizer.model.v3")
        settings = Settings(home=tmp / "home", dev_api_key=SecretStr(DEV_KEY))
        engine = make_engine(settings, MODEL)
        await engine.start()
        config = GatewayConfig(
            models=(GatewayModel(MODEL, 256, str(model_dir)),),
            dev_api_key=SecretStr(DEV_KEY),
            keystore_path=str(tmp / "teams.yaml"),
            audit_sink=str(tmp / "audit.log"),
        )
        state = assemble_state(config, {MODEL: EngineBackend(engine)})
        app = create_app(state)
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "trace me"}],
            "max_tokens": max_tokens,
            "stream": True,
        }
        recorder = ModuleTrace(resumptions)
        async with app.router.lifespan_context(app):
            for traced in (False, True):  # the first request warms caches and imports
                client = Client()
                if traced:
                    sys.setprofile(recorder.hook)
                try:
                    await call(app, "/v1/chat/completions", body, DEV_KEY, client)
                    await state.drain()
                finally:
                    sys.setprofile(None)
                if client.status != 200 or "[DONE]" not in client.text:
                    raise SystemExit(f"the request failed: {client.status} {client.text!r}")
        return recorder
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=1)
    parser.add_argument(
        "--resumptions",
        action="store_true",
        help="also count each resumption of a coroutine or generator as an entry",
    )
    parser.add_argument("--show", action="store_true", help="print the whole sequence")
    args = parser.parse_args()
    recorder = asyncio.run(trace(args.max_tokens, args.resumptions))
    visits = recorder.visits
    s = summarise(visits)
    if args.show:
        for i, (name, first) in enumerate(zip(visits, recorder.first_calls, strict=True)):
            print(f"{i:4d}  {name:<28} {first}")
    print(f"one streaming chat request, max_tokens={args.max_tokens} (fake engine)")
    print(f"  steps (module transitions): {s.steps}")
    print(f"  distinct modules:           {s.modules}")
    print(f"  re-entries:                 {s.reentries}")
    print(f"  immediate A->B->A bounces:  {s.bounces}")
    print(f"  call-backs (M -> X -> M on one stack): {len(recorder.callbacks)}")
    if args.show:
        for line in recorder.callbacks:
            print(f"    {line}")
    print("  re-entered most: " + ", ".join(f"{m} {n}" for m, n in s.reentered.most_common(6)))
    packages: Counter[str] = Counter()
    for module, n in s.reentered.items():
        packages[module.split(".")[0]] += n
    print("  re-entries by package: " + ", ".join(f"{p} {n}" for p, n in packages.most_common()))


if __name__ == "__main__":
    main()
