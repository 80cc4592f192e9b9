"""Shared quota store on Redis: exact across gateway replicas.

Every operation is one server-side Lua script, so each is atomic across every process that
talks to the same Redis. The decisions are those of :class:`MemoryQuotaStore` for the same
sequence of calls: the caller's ``now`` (not Redis ``TIME``) picks the windows and the
lease expiries, and the Python side turns the counters the scripts return into the same
``Admission`` / ``QuotaExceeded`` values.

Keys, per scope (``<prefix>:<scope>:...``):

* ``rpm:<minute>`` and ``tpm:<minute>``: requests and tokens of one UTC minute;
* ``tpd:<day>``: tokens of one UTC day;
* ``inflight``: a sorted set, member = reservation id, score = lease expiry.

Window keys expire a while after their window ends (so late settlements still find them);
the in-flight set expires a while after its longest lease.

A script is never retried after a timeout (the script may have run): a reservation is
counted at most once per call, except when a connection error hits a script that already
ran, which can only count it twice (stricter, never looser).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from llmplat.quotas.model import (
    DAY_S,
    MINUTE_S,
    Admission,
    LimitState,
    QuotaExceeded,
    QuotaStore,
    QuotaStoreUnavailable,
    Reason,
    Reservation,
    Scope,
    ScopeUsage,
    tightest,
    windows,
)

DEFAULT_KEY_PREFIX = "llmplat:quota"
MINUTE_KEY_GRACE_S = MINUTE_S
"""Minute keys live this long past the end of their minute."""
DAY_KEY_GRACE_S = 3_600
"""Day keys live this long past the end of their UTC day."""
LEASE_KEY_GRACE_S = MINUTE_S
"""An in-flight set lives this long past the end of its longest lease."""
MAX_LEASE_KEY_TTL_S = 30 * DAY_S
"""Longer (or infinite) leases keep their in-flight set this long."""

REASONS: tuple[Reason, ...] = (
    "requests_per_minute",
    "tokens_per_minute",
    "tokens_per_day",
    "concurrent_requests",
)

# KEYS: per scope, rpm / tpm / tpd / inflight.
# ARGV: tokens, now, lease expiry, reservation id, minute ttl, day ttl, lease ttl, then per
# scope the four limits in REASONS order ('' is unlimited).
# Returns {failed scope (1-based, 0 = admitted), failed reason (1-based), then per scope the
# counters before this reservation: requests, minute tokens, day tokens, in flight}.
_RESERVE_LUA = """
local n = #KEYS / 4
local tokens = tonumber(ARGV[1])
local now = ARGV[2]
local counts = {}
for i = 0, n - 1 do
  local k = i * 4
  redis.call('ZREMRANGEBYSCORE', KEYS[k + 4], '-inf', now)
  counts[k + 1] = tonumber(redis.call('GET', KEYS[k + 1]) or '0')
  counts[k + 2] = tonumber(redis.call('GET', KEYS[k + 2]) or '0')
  counts[k + 3] = tonumber(redis.call('GET', KEYS[k + 3]) or '0')
  counts[k + 4] = redis.call('ZCARD', KEYS[k + 4])
end
local want = {1, tokens, tokens, 1}
local failed_scope, failed_reason = 0, 0
for i = 0, n - 1 do
  for j = 1, 4 do
    local limit = ARGV[7 + i * 4 + j]
    if limit ~= '' and counts[i * 4 + j] + want[j] > tonumber(limit) then
      failed_scope, failed_reason = i + 1, j
      break
    end
  end
  if failed_scope > 0 then
    break
  end
end
if failed_scope == 0 then
  local minute_ttl, day_ttl, lease_ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
  for i = 0, n - 1 do
    local k = i * 4
    redis.call('INCR', KEYS[k + 1])
    redis.call('EXPIRE', KEYS[k + 1], minute_ttl)
    redis.call('INCRBY', KEYS[k + 2], ARGV[1])
    redis.call('EXPIRE', KEYS[k + 2], minute_ttl)
    redis.call('INCRBY', KEYS[k + 3], ARGV[1])
    redis.call('EXPIRE', KEYS[k + 3], day_ttl)
    redis.call('ZADD', KEYS[k + 4], ARGV[3], ARGV[4])
    if redis.call('TTL', KEYS[k + 4]) < lease_ttl then
      redis.call('EXPIRE', KEYS[k + 4], lease_ttl)
    end
  end
end
local reply = {failed_scope, failed_reason}
for i = 1, #counts do
  reply[i + 2] = counts[i]
end
return reply
"""

# KEYS: per scope, tpm of the reservation's minute / tpd of its day / inflight.
# ARGV: token delta, reservation id.
_SETTLE_LUA = """
for i = 1, #KEYS, 3 do
  for j = 0, 1 do
    local key = KEYS[i + j]
    if redis.call('EXISTS', key) == 1 then
      if redis.call('INCRBY', key, ARGV[1]) < 0 then
        redis.call('SET', key, 0, 'KEEPTTL')
      end
    end
  end
  redis.call('ZREM', KEYS[i + 2], ARGV[2])
end
return 0
"""

# KEYS: the inflight set of each scope. ARGV: new lease expiry, reservation id, lease ttl.
# XX: only a member still present is extended (a settled reservation is not re-added).
_RENEW_LUA = """
for i = 1, #KEYS do
  if redis.call('ZADD', KEYS[i], 'XX', 'CH', ARGV[1], ARGV[2]) == 1 then
    if redis.call('TTL', KEYS[i]) < tonumber(ARGV[3]) then
      redis.call('EXPIRE', KEYS[i], ARGV[3])
    end
  end
end
return 0
"""

# KEYS: rpm, tpm, tpd, inflight of one scope. ARGV: now.
_USAGE_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[1])
return {
  tonumber(redis.call('GET', KEYS[1]) or '0'),
  tonumber(redis.call('GET', KEYS[2]) or '0'),
  tonumber(redis.call('GET', KEYS[3]) or '0'),
  redis.call('ZCARD', KEYS[4]),
}
"""


def redact_url(url: str) -> str:
    """``url`` without its user info and without a ``password`` query parameter."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable redis url>"
    netloc = parts.netloc.rpartition("@")[2]
    path = parts.path.rpartition("@")[2]  # no netloc, e.g. "user:pw@host" without a scheme
    if not parts.scheme:
        safe = f"{netloc}{path}"
    elif url[len(parts.scheme) :].startswith("://"):
        safe = f"{parts.scheme}://{netloc}{path}"
    else:
        safe = f"{parts.scheme}:{path}"
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        hidden = [(k, "***" if k.lower() == "password" else v) for k, v in pairs]
        safe += "?" + urlencode(hidden, safe="*/")
    return safe


def _secrets_of(url: str) -> list[str]:
    """The password carried by ``url``, to scrub from error texts."""
    try:
        parts = urlsplit(url)
        secrets = [parts.password or ""]
        secrets += [v for k, v in parse_qsl(parts.query) if k.lower() == "password"]
    except ValueError:
        return []
    return [s for s in secrets if s]


def _ttl(seconds_left: float, grace_s: int) -> int:
    return max(math.ceil(seconds_left), 0) + grace_s


class RedisQuotaStore(QuotaStore):
    """Counters in Redis, shared by every gateway replica that uses the same ``url``."""

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        socket_timeout_s: float = 0.5,
    ) -> None:
        self.url = redact_url(url)
        """The URL without credentials: safe to log."""
        self.key_prefix = key_prefix
        self._secrets = _secrets_of(url)
        try:
            self._redis = aioredis.Redis.from_url(
                url,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=socket_timeout_s,
                # One immediate retry on a broken connection (a pooled connection the
                # server closed); a timeout is never retried: the script may have run.
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            )
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"invalid Redis URL for the quota store: {self.url} ({self._scrub(exc)})"
            ) from None
        self._reserve = self._redis.register_script(_RESERVE_LUA)
        self._settle = self._redis.register_script(_SETTLE_LUA)
        self._usage = self._redis.register_script(_USAGE_LUA)
        self._renew = self._redis.register_script(_RENEW_LUA)

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        socket_timeout_s: float = 0.5,
    ) -> RedisQuotaStore:
        """A store whose Redis answered a PING (else QuotaStoreUnavailable)."""
        store = cls(url, key_prefix=key_prefix, socket_timeout_s=socket_timeout_s)
        try:
            await store.ping()
        except BaseException:
            await store.close()
            raise
        return store

    def _scrub(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}"
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _unavailable(self, what: str, exc: BaseException) -> QuotaStoreUnavailable:
        return QuotaStoreUnavailable(
            f"quota store Redis at {self.url} unavailable ({what}): {self._scrub(exc)}"
        )

    def _key(self, scope: str, kind: str, window: int | None = None) -> str:
        base = f"{self.key_prefix}:{scope}:{kind}"
        return base if window is None else f"{base}:{window}"

    async def _call(
        self, what: str, script: AsyncScript, keys: list[str], args: list[str | int]
    ) -> list[int]:
        try:
            return await script(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(what, exc) from None

    async def reserve(
        self, scopes: Sequence[Scope], tokens: int, now: float, lease_s: float, reservation_id: str
    ) -> Admission:
        minute, day, minute_left, day_left = windows(now)
        expiry = now + lease_s
        if scopes:
            keys: list[str] = []
            limit_args: list[str] = []
            for s in scopes:
                keys += [
                    self._key(s.name, "rpm", minute),
                    self._key(s.name, "tpm", minute),
                    self._key(s.name, "tpd", day),
                    self._key(s.name, "inflight"),
                ]
                lim = s.limits
                for value in (
                    lim.requests_per_minute,
                    lim.tokens_per_minute,
                    lim.tokens_per_day,
                    lim.concurrent_requests,
                ):
                    limit_args.append("" if value is None else str(int(value)))
            lease_left = expiry - now
            if not lease_left <= MAX_LEASE_KEY_TTL_S:  # also inf and nan
                lease_left = MAX_LEASE_KEY_TTL_S
            reply = await self._call(
                "reserve",
                self._reserve,
                keys,
                [
                    str(int(tokens)),
                    repr(float(now)),
                    repr(float(expiry)),
                    reservation_id,
                    _ttl(minute_left, MINUTE_KEY_GRACE_S),
                    _ttl(day_left, DAY_KEY_GRACE_S),
                    _ttl(lease_left, LEASE_KEY_GRACE_S),
                    *limit_args,
                ],
            )
            failed_scope, failed_reason = int(reply[0]), int(reply[1])
            counts = [
                tuple(int(v) for v in reply[2 + 4 * i : 6 + 4 * i]) for i in range(len(scopes))
            ]
        else:
            failed_scope, failed_reason, counts = 0, 0, []

        req_states: list[LimitState] = []
        tok_states: list[LimitState] = []
        for scope, (requests, minute_tokens, _, _) in zip(scopes, counts, strict=True):
            lim = scope.limits
            if lim.requests_per_minute is not None:
                rpm = lim.requests_per_minute
                req_states.append(LimitState(rpm, rpm - requests, minute_left))
            if lim.tokens_per_minute is not None:
                tpm = lim.tokens_per_minute
                tok_states.append(LimitState(tpm, tpm - minute_tokens, minute_left))
        if failed_scope:
            scope = scopes[failed_scope - 1]
            j = failed_reason - 1
            lim = scope.limits
            limit = (
                lim.requests_per_minute,
                lim.tokens_per_minute,
                lim.tokens_per_day,
                lim.concurrent_requests,
            )[j]
            assert limit is not None
            raise QuotaExceeded(
                scope.name,
                REASONS[j],
                limit,
                counts[failed_scope - 1][j],
                (1, tokens, tokens, 1)[j],
                (minute_left, minute_left, day_left, 1.0)[j],
                tightest(req_states),
                tightest(tok_states),
            )
        res = Reservation(reservation_id, tuple(s.name for s in scopes), tokens, minute, day)
        return Admission(
            res,
            tightest([LimitState(s.limit, s.remaining - 1, s.reset_s) for s in req_states]),
            tightest([LimitState(s.limit, s.remaining - tokens, s.reset_s) for s in tok_states]),
        )

    async def settle(self, reservation: Reservation, actual_tokens: int, now: float) -> None:
        if not reservation.scopes:
            return
        delta = max(actual_tokens, 0) - reservation.tokens
        keys: list[str] = []
        for name in reservation.scopes:
            keys += [
                self._key(name, "tpm", reservation.minute),
                self._key(name, "tpd", reservation.day),
                self._key(name, "inflight"),
            ]
        await self._call("settle", self._settle, keys, [str(int(delta)), reservation.id])

    async def renew(self, reservation: Reservation, now: float, lease_s: float) -> None:
        if not reservation.scopes:
            return
        lease_left = min(lease_s, MAX_LEASE_KEY_TTL_S)
        keys = [self._key(name, "inflight") for name in reservation.scopes]
        args: list[str | int] = [
            repr(float(now + lease_left)),
            reservation.id,
            _ttl(lease_left, LEASE_KEY_GRACE_S),
        ]
        await self._call("renew", self._renew, keys, args)

    async def usage(self, scope: Scope, now: float) -> ScopeUsage:
        minute, day, minute_left, day_left = windows(now)
        keys = [
            self._key(scope.name, "rpm", minute),
            self._key(scope.name, "tpm", minute),
            self._key(scope.name, "tpd", day),
            self._key(scope.name, "inflight"),
        ]
        requests, minute_tokens, day_tokens, in_flight = (
            int(v) for v in await self._call("usage", self._usage, keys, [repr(float(now))])
        )
        return ScopeUsage(
            scope.name,
            scope.limits,
            requests,
            minute_tokens,
            day_tokens,
            in_flight,
            minute_left,
            day_left,
        )

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable("ping", exc) from None

    async def close(self) -> None:
        try:
            await self._redis.aclose()
        except (RedisError, OSError):
            pass
