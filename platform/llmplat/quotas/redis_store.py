"""Shared quota store on Redis: exact across gateway replicas.

Every operation is one server-side Lua script, so each is atomic across every process that
talks to the same Redis. The decisions are those of :class:`MemoryQuotaStore` for the same
sequence of calls: the caller's ``now`` (not Redis ``TIME``) places log entries, prunes the
sliding window and sets lease expiries, and the Python side turns what the scripts return
into the same ``Admission`` / ``QuotaExceeded`` values (see ``quotas.model``).

Keys, per scope (``<prefix>:<scope>:...``):

* ``log``: the sliding window, a sorted set, member = reservation id, score = its time;
* ``logtok``: a hash, ``r:<reservation id>`` = the entry's tokens (reserved, then settled),
  ``sum`` = their total (kept with the entries, so reading it is O(1));
* ``tpd:<day>``: tokens of one UTC day;
* ``inflight``: a sorted set, member = reservation id, score = lease expiry.

Every call prunes the entries at or before ``now - WINDOW_S`` (their tokens leave ``sum``),
so the log holds at most the requests of the last minute. The log keys expire a while after
their newest entry (an idle scope leaves nothing behind), day keys a while after their UTC
day (so late settlements still find them); the in-flight set a while after its longest
lease. Times travel as Python ``repr`` strings and come back as Redis' exact score text:
Lua would round numbers it formats itself.

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
    WINDOW_S,
    Admission,
    Counts,
    QuotaStore,
    QuotaStoreUnavailable,
    Reservation,
    Scope,
    ScopeUsage,
    admitted,
    day_window,
    exceeded,
    usage_of,
    window_reset,
)
from llmplat.settings import QuotaSettings

DEFAULT_KEY_PREFIX: str = QuotaSettings.model_fields["key_prefix"].default
LOG_KEY_GRACE_S = 60
"""Log keys live this long past the moment their newest entry leaves the window."""
DAY_KEY_GRACE_S = 3_600
"""Day keys live this long past the end of their UTC day."""
LEASE_KEY_GRACE_S = 60
"""An in-flight set lives this long past the end of its longest lease."""
MAX_LEASE_KEY_TTL_S = 30 * DAY_S
"""Longer (or infinite) leases keep their in-flight set this long."""

# KEYS: log, logtok of one scope. ARGV[2]: the cutoff (entries at or before it leave).
# A log that expired takes its tokens hash with it (both get the same TTL in one script).
_PRUNE_LUA = """
local function prune(log, tok, cutoff)
  if redis.call('EXISTS', log) == 0 then
    redis.call('DEL', tok)
    return
  end
  local old = redis.call('ZRANGEBYSCORE', log, '-inf', cutoff)
  if #old > 0 then
    local freed = 0
    for _, member in ipairs(old) do
      freed = freed + tonumber(redis.call('HGET', tok, 'r:' .. member) or '0')
      redis.call('HDEL', tok, 'r:' .. member)
    end
    if freed ~= 0 then
      redis.call('HINCRBY', tok, 'sum', string.format('%d', -freed))
    end
    redis.call('ZREMRANGEBYSCORE', log, '-inf', cutoff)
  end
end

local function newest(log)
  local last = redis.call('ZRANGE', log, -1, -1, 'WITHSCORES')
  return last[2] or ''
end
"""

# KEYS: per scope, log / logtok / tpd / inflight.
# ARGV: tokens, now, cutoff, lease expiry, reservation id, log ttl, day ttl, lease ttl, then
# per scope the four limits in REASONS order ('' is unlimited).
# Returns {failed scope (1-based, 0 = admitted), failed reason (1-based), the score of the
# log entry whose leaving makes room ('' if none), then per scope the counters before this
# reservation: requests, window tokens, day tokens, in flight, newest entry's score or ''}.
_RESERVE_LUA = (
    _PRUNE_LUA
    + """
local n = #KEYS / 4
local tokens = tonumber(ARGV[1])
local now, cutoff = ARGV[2], ARGV[3]
local counts, newests = {}, {}
for i = 0, n - 1 do
  local k = i * 4
  prune(KEYS[k + 1], KEYS[k + 2], cutoff)
  redis.call('ZREMRANGEBYSCORE', KEYS[k + 4], '-inf', now)
  counts[k + 1] = redis.call('ZCARD', KEYS[k + 1])
  counts[k + 2] = tonumber(redis.call('HGET', KEYS[k + 2], 'sum') or '0')
  counts[k + 3] = tonumber(redis.call('GET', KEYS[k + 3]) or '0')
  counts[k + 4] = redis.call('ZCARD', KEYS[k + 4])
  newests[i + 1] = newest(KEYS[k + 1])
end
local want = {1, tokens, tokens, 1}
local failed_scope, failed_reason, frees = 0, 0, ''
for i = 0, n - 1 do
  for j = 1, 4 do
    local limit = ARGV[8 + i * 4 + j]
    if limit ~= '' and counts[i * 4 + j] + want[j] > tonumber(limit) then
      failed_scope, failed_reason = i + 1, j
      break
    end
  end
  if failed_scope > 0 then
    break
  end
end
if failed_reason == 1 or failed_reason == 2 then
  local k = (failed_scope - 1) * 4
  local limit = tonumber(ARGV[8 + k + failed_reason])
  local left = counts[k + failed_reason]
  local entries = redis.call('ZRANGE', KEYS[k + 1], 0, -1, 'WITHSCORES')
  for e = 1, #entries, 2 do
    if failed_reason == 1 then
      left = left - 1
    else
      left = left - tonumber(redis.call('HGET', KEYS[k + 2], 'r:' .. entries[e]) or '0')
    end
    if left + want[failed_reason] <= limit then
      frees = entries[e + 1]
      break
    end
  end
end
if failed_scope == 0 then
  local log_ttl, day_ttl, lease_ttl = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
  for i = 0, n - 1 do
    local k = i * 4
    redis.call('ZADD', KEYS[k + 1], now, ARGV[5])
    redis.call('HSET', KEYS[k + 2], 'r:' .. ARGV[5], ARGV[1])
    redis.call('HINCRBY', KEYS[k + 2], 'sum', ARGV[1])
    redis.call('EXPIRE', KEYS[k + 1], log_ttl)
    redis.call('EXPIRE', KEYS[k + 2], log_ttl)
    redis.call('INCRBY', KEYS[k + 3], ARGV[1])
    redis.call('EXPIRE', KEYS[k + 3], day_ttl)
    redis.call('ZADD', KEYS[k + 4], ARGV[4], ARGV[5])
    if redis.call('TTL', KEYS[k + 4]) < lease_ttl then
      redis.call('EXPIRE', KEYS[k + 4], lease_ttl)
    end
  end
end
local reply = {failed_scope, failed_reason, frees}
for i = 0, n - 1 do
  for j = 1, 4 do
    reply[#reply + 1] = counts[i * 4 + j]
  end
  reply[#reply + 1] = newests[i + 1]
end
return reply
"""
)

# KEYS: per scope, log / logtok / tpd of the reservation's day / inflight.
# ARGV: actual tokens, day delta (actual - reserved), reservation id.
# The entry is set to the actual tokens while it is still in the window; the day counter
# moves by the delta while its key lives (never below zero).
_SETTLE_LUA = """
local field = 'r:' .. ARGV[3]
for i = 1, #KEYS, 4 do
  local old = redis.call('HGET', KEYS[i + 1], field)
  if old and redis.call('ZSCORE', KEYS[i], ARGV[3]) then
    redis.call('HSET', KEYS[i + 1], field, ARGV[1])
    local delta = tonumber(ARGV[1]) - tonumber(old)
    if delta ~= 0 then
      redis.call('HINCRBY', KEYS[i + 1], 'sum', string.format('%d', delta))
    end
  end
  if redis.call('EXISTS', KEYS[i + 2]) == 1 then
    if redis.call('INCRBY', KEYS[i + 2], ARGV[2]) < 0 then
      redis.call('SET', KEYS[i + 2], 0, 'KEEPTTL')
    end
  end
  redis.call('ZREM', KEYS[i + 3], ARGV[3])
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

# KEYS: log, logtok, tpd, inflight of one scope. ARGV: now, cutoff.
_USAGE_LUA = (
    _PRUNE_LUA
    + """
prune(KEYS[1], KEYS[2], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[1])
return {
  redis.call('ZCARD', KEYS[1]),
  tonumber(redis.call('HGET', KEYS[2], 'sum') or '0'),
  tonumber(redis.call('GET', KEYS[3]) or '0'),
  redis.call('ZCARD', KEYS[4]),
  newest(KEYS[1]),
}
"""
)


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


def _score(value: object) -> float | None:
    """A score as a script returned it (Redis' exact text; empty: none)."""
    text = value.decode() if isinstance(value, bytes) else str(value)
    return float(text) if text else None


def _counts(values: Sequence[object]) -> Counts:
    """One scope's counters as the reserve and usage scripts return them."""
    requests, tokens, day_tokens, in_flight = (int(v) for v in values[:4])  # type: ignore[call-overload]
    return Counts(requests, tokens, day_tokens, in_flight, _score(values[4]))


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
    ) -> list[object]:
        try:
            return await script(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(what, exc) from None

    def _scope_keys(self, name: str, day: int) -> list[str]:
        return [
            self._key(name, "log"),
            self._key(name, "logtok"),
            self._key(name, "tpd", day),
            self._key(name, "inflight"),
        ]

    async def reserve(
        self, scopes: Sequence[Scope], tokens: int, now: float, lease_s: float, reservation_id: str
    ) -> Admission:
        day, day_left = day_window(now)
        res = Reservation(reservation_id, tuple(s.name for s in scopes), tokens, now, day)
        if not scopes:
            return admitted(res, scopes, [], now)
        keys: list[str] = []
        limit_args: list[str] = []
        for s in scopes:
            keys += self._scope_keys(s.name, day)
            limit_args += ["" if v is None else str(int(v)) for v in s.limit_values()]
        lease_left = lease_s
        if not lease_left <= MAX_LEASE_KEY_TTL_S:  # also inf and nan
            lease_left = MAX_LEASE_KEY_TTL_S
        reply = await self._call(
            "reserve",
            self._reserve,
            keys,
            [
                str(int(tokens)),
                repr(float(now)),
                repr(float(now) - WINDOW_S),
                repr(float(now + lease_s)),
                reservation_id,
                _ttl(WINDOW_S, LOG_KEY_GRACE_S),
                _ttl(day_left, DAY_KEY_GRACE_S),
                _ttl(lease_left, LEASE_KEY_GRACE_S),
                *limit_args,
            ],
        )
        failed_scope, failed_reason = int(reply[0]), int(reply[1])  # type: ignore[arg-type]
        counts = [_counts(reply[3 + 5 * i : 8 + 5 * i]) for i in range(len(scopes))]
        if failed_scope:
            i, j = failed_scope - 1, failed_reason - 1
            frees = _score(reply[2])
            retry = (
                window_reset(now, counts[i].newest) if frees is None else WINDOW_S - (now - frees)
            )
            raise exceeded(scopes, counts, (i, j), tokens, now, retry)
        return admitted(res, scopes, counts, now)

    async def settle(self, reservation: Reservation, actual_tokens: int, now: float) -> None:
        if not reservation.scopes:
            return
        actual = max(actual_tokens, 0)
        keys: list[str] = []
        for name in reservation.scopes:
            keys += self._scope_keys(name, reservation.day)
        args: list[str | int] = [str(actual), str(actual - reservation.tokens), reservation.id]
        await self._call("settle", self._settle, keys, args)

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
        keys = self._scope_keys(scope.name, day_window(now)[0])
        args: list[str | int] = [repr(float(now)), repr(float(now) - WINDOW_S)]
        return usage_of(scope, _counts(await self._call("usage", self._usage, keys, args)), now)

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
