"""New grammar compilations, charged to the team that asks for them.

vLLM compiles a request's JSON schema, regex, grammar or choice list into a token mask in a
small pool of threads shared by every request of the engine (first come, first served), and
caches what it compiled. One compilation of the costliest schema the input bounds allow
takes seconds of CPU; a team that sends a fresh one per request would keep the pool busy
and every other team's structured requests queued behind it. So a team may have at most
``InputBounds.grammar_compiles`` *new* specs compiling at once on a gateway replica: a spec
this replica has seen compiled (or sees compiling now) is a cache hit for the engine and is
not counted, so parallel requests that share a schema are never refused. A request that
goes away before the engine answered leaves its compilation running (the engine cannot
interrupt one), so it stays counted for as long as the team's recent ones took.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from llmplat.errors import RateLimited

REMEMBERED = 4096
"""Compiled specs remembered per replica (least recently used forgotten first)."""

MAX_HOLD_S = 30.0
"""The longest a compilation whose request went away keeps counting."""

UNKNOWN_COMPILE_S = 10.0
"""How long a compilation whose request went away is assumed to run on, for a team whose
recent new specs this replica has not seen answered (else: the longest of those)."""


def grammar_key(body: dict[str, Any], chat: bool) -> str | None:
    """A digest of what the engine would compile for ``body`` (fields already screened and
    bounded) and for which model, or None when it compiles nothing. Key order counts, as in
    the engine's cache (vLLM serialises the schema as sent; property order changes the
    grammar)."""
    spec: dict[str, Any] = {}
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        spec["response_format"] = fmt
    if body.get("structured_outputs") is not None:
        spec["structured_outputs"] = body["structured_outputs"]
    choice = body.get("tool_choice")
    if chat and body.get("tools") and (choice == "required" or isinstance(choice, dict)):
        spec["tools"], spec["tool_choice"] = body["tools"], choice  # compiled into one schema
    if not spec:
        return None
    spec["model"] = body.get("model")
    text = json.dumps(spec, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@dataclass
class _Compiling:
    team: str
    requests: int = 0


class GrammarSlot:
    """A request's hold on a spec's compilation: :meth:`sent` when the engine call is made,
    :meth:`compiled` once the engine has answered (the spec is in its cache from then on)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.engine_has_it = False
        self.done = False
        self.timed: float | None = None
        """Seconds from the engine call to a stream's first chunk (a compile time)."""
        self.sent_at = 0.0

    def sent(self) -> None:
        self.engine_has_it = True
        self.sent_at = self._clock()

    def answered(self) -> None:
        """The engine answered with an error, or never had the request (a 503 before it
        started): nothing is left compiling."""
        self.engine_has_it = False

    def compiled(self, *, first_chunk: bool) -> None:
        """``first_chunk``: the answer is a stream's first chunk, so the time to it is the
        compilation's (plus a prefill), not a whole generation's."""
        self.done = True
        if first_chunk and self.engine_has_it:
            self.timed = self._clock() - self.sent_at


class GrammarGate:
    """Per replica: the specs compiling now (by team) and those recently compiled."""

    def __init__(
        self, remembered: int = REMEMBERED, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._remembered = remembered
        self._clock = clock
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._compiling: dict[str, _Compiling] = {}
        self._per_team: Counter[str] = Counter()
        self._orphans: list[tuple[float, str]] = []
        """(until, team): compilations whose request went away before the engine answered.
        The engine cannot interrupt a compilation, so it still counts for its team."""
        self._durations: dict[str, deque[float]] = {}
        """team → how long its recent new specs took to a stream's first chunk. Per team:
        a team that cancels every request never shortens its own hold with other teams'
        cheap compilations."""

    @contextlib.contextmanager
    def compiling(self, team: str, key: str | None, limit: int) -> Iterator[GrammarSlot]:
        """Count ``key`` against ``team``'s new compilations while the block runs, or raise
        a 429 when the team already has ``limit`` of them compiling here."""
        slot = GrammarSlot(self._clock)
        if key is None or key in self._recent:
            if key is not None:
                self._recent.move_to_end(key)
            yield slot
            return
        entry = self._compiling.get(key)
        if entry is None:
            self._expire_orphans()
            if self._per_team[team] >= limit:
                raise RateLimited(
                    f"Team '{team}' already has {limit} new grammar(s) (a JSON schema, regex, "
                    "grammar or choice list the engine has not compiled yet) being compiled "
                    "on this gateway replica (input bound 'grammar_compiles'). Retry after "
                    "1 s; a spec already compiled is not counted.",
                    code="grammar_concurrency",
                    headers={"Retry-After": "1"},
                )
            entry = self._compiling[key] = _Compiling(team)
            self._per_team[team] += 1
        entry.requests += 1
        try:
            yield slot
        finally:
            if slot.timed is not None:
                times = self._durations.setdefault(entry.team, deque(maxlen=16))
                times.append(slot.timed)
            elif slot.engine_has_it and not slot.done:  # gone before the engine answered
                self._orphan(entry.team)
            self._release(key, slot.done)

    def compiling_for(self, team: str) -> int:
        """New specs of ``team`` compiling on this replica now (orphans included)."""
        self._expire_orphans()
        return self._per_team[team]

    def _orphan(self, team: str) -> None:
        hold = min(max(self._durations.get(team, ()), default=UNKNOWN_COMPILE_S), MAX_HOLD_S)
        heapq.heappush(self._orphans, (self._clock() + hold, team))
        self._per_team[team] += 1

    def _expire_orphans(self) -> None:
        now = self._clock()
        while self._orphans and self._orphans[0][0] <= now:
            _, team = heapq.heappop(self._orphans)
            self._drop(team)

    def _drop(self, team: str) -> None:
        self._per_team[team] -= 1
        if not self._per_team[team]:
            del self._per_team[team]

    def _release(self, key: str, compiled: bool) -> None:
        entry = self._compiling[key]
        entry.requests -= 1
        if compiled:
            self._recent[key] = None
            self._recent.move_to_end(key)
            while len(self._recent) > self._remembered:
                self._recent.popitem(last=False)
        if entry.requests == 0:
            del self._compiling[key]
            self._drop(entry.team)
