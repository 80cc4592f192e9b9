"""Admission and settlement as the gateway answers them: the quota store's verdicts → HTTP
(429 and 503 with OpenAI's x-ratelimit-* headers). quotas/ keeps the limits and stores."""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from llmplat.auth.base import Principal
from llmplat.errors import RateLimited, ServiceUnavailable
from llmplat.quotas.model import (
    Admission,
    LimitState,
    QuotaExceeded,
    QuotaStore,
    QuotaStoreUnavailable,
    Scope,
    ScopeUsage,
    tightest,
)
from llmplat.settings import QuotaSettings

log = logging.getLogger(__name__)

_REASON_TEXT = {
    "requests_per_minute": "requests per minute",
    "tokens_per_minute": "tokens per minute",
    "tokens_per_day": "tokens per day",
    "concurrent_requests": "concurrent requests",
}


def format_reset(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(math.ceil(seconds * 1000), 1)}ms"
    if seconds < 60:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    minutes, rest = divmod(int(math.ceil(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return (f"{hours}h" if hours else "") + f"{minutes}m{rest}s"


def ratelimit_headers(requests: LimitState | None, tokens: LimitState | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    for kind, state in (("requests", requests), ("tokens", tokens)):
        if state is None:
            continue
        headers[f"x-ratelimit-limit-{kind}"] = str(state.limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(max(state.remaining, 0))
        headers[f"x-ratelimit-reset-{kind}"] = format_reset(state.reset_s)
    return headers


def scopes_of(principal: Principal) -> list[Scope]:
    """The team's scope, plus the key's when the key has limits of its own."""
    scopes = [Scope(f"team:{principal.team}", principal.team_limits)]
    if not principal.key_limits.is_unlimited():
        scopes.append(Scope(f"key:{principal.key_id}", principal.key_limits))
    return scopes


@dataclass
class Admitted:
    """A granted admission (``admission`` is None when the store was down and we fail open)."""

    admission: Admission | None
    headers: dict[str, str]
    settled: bool = False


class QuotaService:
    def __init__(
        self,
        store: QuotaStore,
        *,
        fail_open: bool = False,
        lease_s: float = QuotaSettings.model_fields["lease_s"].default,
        clock: Callable[[], float] = time.time,
        on_store_error: Callable[[str], None] | None = None,
    ) -> None:
        self.on_store_error = on_store_error
        self._exhausted: dict[str, tuple[str, float]] = {}
        """scope → (reason, until): a requests-per-minute or concurrency limit this replica
        recently found reached (see ``precheck``)."""
        self._receiving: Counter[str] = Counter()
        """scope → requests of that scope between authentication and admission here."""
        self.store = store
        self.fail_open = fail_open
        self.lease_s = lease_s
        self.clock = clock

    async def admit(self, principal: Principal, tokens: int) -> Admitted:
        """Reserve ``tokens`` and one request for the caller, or raise 429 / 503."""
        try:
            adm = await self.store.reserve(
                scopes_of(principal), tokens, self.clock(), self.lease_s, uuid.uuid4().hex
            )
        except QuotaExceeded as exc:
            if exc.reason in ("requests_per_minute", "concurrent_requests"):
                self._exhausted[exc.scope] = (exc.reason, self.clock() + exc.retry_after_s)
            raise _refusal(exc, principal) from None
        except QuotaStoreUnavailable as exc:
            self._store_failed("reserve")
            if self.fail_open:
                log.warning("quota store unreachable, admitting without quota: %s", exc)
                return Admitted(None, {})
            raise ServiceUnavailable(
                "The quota store is unreachable, so no request can be admitted; retry shortly.",
                code="quota_store_unavailable",
                headers={"Retry-After": "1"},
            ) from exc
        return Admitted(adm, ratelimit_headers(adm.requests, adm.tokens))

    async def precheck(self, principal: Principal) -> None:
        """Refuse, before the body is even read, a caller whose requests-per-minute or
        concurrency limit this replica found reached: a key at its limit costs no parsing
        or tokenization. Exact, not a guess: a sliding window's request count falls only
        when entries slide out, and none that blocked the refused request does before the
        refusal's retry time; a concurrency hint is confirmed against the store (freed
        slots admit at once). The refusal carries no ``x-ratelimit-*`` headers: the
        caller adds them from ``headers_for``, as for every response refused before
        admission."""
        if not self._exhausted:
            return
        now = self.clock()
        for scope in scopes_of(principal):
            hint = self._exhausted.get(scope.name)
            if hint is None:
                continue
            reason, until = hint
            if reason == "requests_per_minute":
                limit = scope.limits.requests_per_minute
                if now < until and limit is not None:
                    exc = QuotaExceeded(scope.name, reason, limit, limit, 1, until - now)
                    raise _refusal(exc, principal)
            else:
                limit = scope.limits.concurrent_requests
                try:
                    used = (await self.store.usage(scope, now)).in_flight
                except QuotaStoreUnavailable:
                    used = 0  # admission itself will answer for the store
                if limit is not None and used >= limit:
                    exc = QuotaExceeded(scope.name, reason, limit, used, 1, 1.0)
                    raise _refusal(exc, principal)
            del self._exhausted[scope.name]

    @contextlib.contextmanager
    def receiving(self, principal: Principal) -> Iterator[None]:
        """Count a request from authentication to admission (its body arriving, then being
        parsed and tokenized) against its key's and team's concurrency limit, on this
        replica: a caller allowed N requests at once gets a 429 for its N+1st upload at
        once instead of holding a body buffer per connection it opens. The count is per
        replica (the store only learns of a request at admission, which checks the limit
        again); unlimited scopes are not counted."""
        scopes = [s for s in scopes_of(principal) if s.limits.concurrent_requests is not None]
        for scope in scopes:
            limit = scope.limits.concurrent_requests or 0
            waiting = self._receiving[scope.name]
            if waiting >= limit:
                exc = QuotaExceeded(scope.name, "concurrent_requests", limit, waiting, 1, 1.0)
                raise _refusal(exc, principal)
        for scope in scopes:
            self._receiving[scope.name] += 1
        try:
            yield
        finally:
            for scope in scopes:
                self._receiving[scope.name] -= 1
                if not self._receiving[scope.name]:
                    del self._receiving[scope.name]

    async def renew(self, admitted: Admitted) -> None:
        """Extend a live request's in-flight lease. Never raises."""
        if admitted.settled or admitted.admission is None:
            return
        try:
            await self.store.renew(admitted.admission.reservation, self.clock(), self.lease_s)
        except Exception as exc:
            self._store_failed("renew")
            log.error("quota lease renewal failed: %s", exc)

    async def settle(self, admitted: Admitted, actual_tokens: int) -> None:
        """Bill the real usage (0 releases the tokens). Idempotent; never raises."""
        if admitted.settled or admitted.admission is None:
            return
        admitted.settled = True
        try:
            await self.store.settle(admitted.admission.reservation, actual_tokens, self.clock())
        except Exception as exc:  # the lease will free the slot; the tokens stay reserved
            self._store_failed("settle")
            log.error("quota settlement failed (lease expiry will free the slot): %s", exc)

    def _store_failed(self, operation: str) -> None:
        if self.on_store_error is not None:
            self.on_store_error(operation)

    async def headers_for(self, principal: Principal) -> dict[str, str]:
        """Rate-limit headers from current counters, for a response refused before
        admission (a 4xx, a pre-check 429); empty when the store cannot be read."""
        try:
            usages = await self.usage(principal)
        except Exception:
            return {}
        req = _per_minute(usages, "requests_per_minute", "requests_this_minute")
        tok = _per_minute(usages, "tokens_per_minute", "tokens_this_minute")
        return ratelimit_headers(tightest(req), tightest(tok))

    async def usage(self, principal: Principal) -> list[ScopeUsage]:
        now = self.clock()
        try:
            return [await self.store.usage(s, now) for s in scopes_of(principal)]
        except QuotaStoreUnavailable as exc:
            raise ServiceUnavailable(
                "The quota store is unreachable; usage cannot be read now.",
                code="quota_store_unavailable",
            ) from exc


def _refusal(exc: QuotaExceeded, principal: Principal) -> RateLimited:
    err = _rate_limited(exc, principal)
    err.quota_reason = exc.reason  # type: ignore[attr-defined]
    return err


def _rate_limited(exc: QuotaExceeded, principal: Principal) -> RateLimited:
    who = (
        f"team '{principal.team}'"
        if exc.scope.startswith("team:")
        else (f"key '{principal.key_id}'")
    )
    what = _REASON_TEXT[exc.reason]
    headers = ratelimit_headers(exc.requests, exc.tokens)
    if exc.never_fits:
        return RateLimited(
            f"Request too large for {who}: it needs up to {exc.requested} tokens (prompt + "
            f"max_tokens) but the limit is {exc.limit} {what}. Lower max_tokens or shorten "
            "the prompt.",
            code="request_too_large",
            headers=headers,
        )
    retry = max(1, math.ceil(exc.retry_after_s))
    headers["Retry-After"] = str(retry)
    return RateLimited(
        f"Rate limit reached for {who} on {what}: limit {exc.limit}, used {exc.used}, "
        f"requested {exc.requested}. Retry after {retry} s.",
        code="rate_limit_exceeded",
        headers=headers,
    )


def _per_minute(usages: list[ScopeUsage], limit: str, used: str) -> list[LimitState]:
    """The per-minute limit states (limit, remaining, reset) of the scopes that set one."""
    return [
        LimitState(cap, cap - getattr(u, used), u.minute_reset_s)
        for u in usages
        if (cap := getattr(u.limits, limit)) is not None
    ]
