"""Team keys and quotas through the whole gateway pipeline, with the official openai client."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import httpx
import openai
import pytest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from llmplat.auth.admin import KeyAdmin
from llmplat.auth.file_store import FileKeyStore
from llmplat.engine.fake import FAIL_BEFORE, FAIL_MID_STREAM, HANG
from llmplat.gateway.state import GatewayState
from llmplat.gateway.uploads import BodyBudget
from support import MODEL, V3_TOKENIZER, auth, with_gateway


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def state(gateway) -> GatewayState:
    return gateway.state.gateway


@pytest.fixture(autouse=True)
async def no_leaked_reservations(gateway, key_store: FileKeyStore):
    """After every test, every team's in-flight counter is back to zero."""
    yield
    state: GatewayState = gateway.state.gateway
    for team in key_store.load().teams:
        await _eventually(lambda t=team: _in_flight_zero(state, t))


@pytest.fixture
def clock(state: GatewayState) -> Clock:
    # 10 s into a minute, far from a day boundary.
    c = Clock(1_800_000_010.0)
    state.quotas.clock = c
    return c


@pytest.fixture
def admin(key_store: FileKeyStore, state: GatewayState) -> KeyAdmin:
    return KeyAdmin(key_store)


@pytest.fixture
def make_key(admin: KeyAdmin, key_store: FileKeyStore, state: GatewayState):
    """Create a team (if needed) and a key; return once the gateway's store watch has it."""

    async def make(team: str = "ci", key_limits: dict | None = None, **team_fields) -> str:
        if team not in {t.name for t in admin.list_teams()}:
            admin.create_team({"name": team, **team_fields})
        issued = admin.create_key(team, name="test", limits=key_limits)
        await _eventually(
            lambda: _assert(issued.record.key_id in state.authenticator.registry.keys)
        )
        return issued.plaintext

    return make


def client_for(http: httpx.AsyncClient, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url="http://gw/v1", http_client=http, max_retries=0)


async def _in_flight_zero(state: GatewayState, principal_team: str) -> None:
    from llmplat.auth.base import Principal

    usage = await state.quotas.usage(Principal(team=principal_team, key_id="-"))
    assert all(u.in_flight == 0 for u in usage)


# --- authentication -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "missing_api_key"),
        ("Basic abc", "missing_api_key"),
        ("Bearer not-a-key", "invalid_api_key"),
        ("Bearer llmp_0000aaaa_" + "x" * 43, "invalid_api_key"),
    ],
)
async def test_bad_keys_are_401(http, header, code) -> None:
    headers = {"Authorization": header} if header else {}
    r = await http.post("/v1/completions", json={"model": MODEL, "prompt": "x"}, headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["type"] == "authentication_error"
    assert r.headers["www-authenticate"] == 'Bearer realm="llmplat"'  # RFC 6750


async def test_wrong_secret_of_real_key_id_is_401(http, make_key) -> None:
    key = await make_key()
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    with pytest.raises(openai.AuthenticationError):
        await client_for(http, forged).models.list()


async def test_revoked_and_expired_keys_are_401(http, make_key, admin, key_store, state) -> None:
    key = await make_key()
    client = client_for(http, key)
    assert (await client.models.list()).data
    admin.revoke_key(key.split("_")[1])
    kid = key.split("_")[1]
    await _eventually(lambda: _assert(state.authenticator.registry.keys[kid].revoked))
    with pytest.raises(openai.AuthenticationError) as exc:
        await client.models.list()
    assert exc.value.body["code"] == "revoked_api_key"

    expired = admin.create_key("ci", expires_in=timedelta(seconds=-1))
    await _eventually(lambda: _assert(expired.record.key_id in state.authenticator.registry.keys))
    with pytest.raises(openai.AuthenticationError) as exc:
        await client_for(http, expired.plaintext).models.list()
    assert exc.value.body["code"] == "expired_api_key"


async def test_revocation_reaches_gateway_through_store_watch(http, admin) -> None:
    """No manual refresh: the replica follows the store on its own, within the "second or two"
    of docs/teams-and-quotas.md (measured; the wait itself allows longer)."""
    admin.create_team({"name": "web"})
    issued = admin.create_key("web")
    client = client_for(http, issued.plaintext)
    await _eventually(lambda: client.models.list())
    revoked_at = asyncio.get_running_loop().time()
    admin.revoke_key(issued.record.key_id)

    async def refused() -> None:
        try:
            await client.models.list()
        except openai.AuthenticationError:
            return
        raise AssertionError("revoked key still accepted")

    await _eventually(refused, timeout_s=15)
    assert asyncio.get_running_loop().time() - revoked_at < 2.0


async def _eventually(probe, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            await probe()
            return
        except (AssertionError, openai.APIError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)


# --- quotas ---------------------------------------------------------------------------


def _limits_of(r: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in r.headers.items() if k.startswith("x-ratelimit-")}


def _state(requests: tuple[int, int, str], tokens: tuple[int, int, str] | None) -> dict:
    out = {}
    for kind, state in (("requests", requests), ("tokens", tokens)):
        if state is not None:
            limit, remaining, reset = state
            out[f"x-ratelimit-limit-{kind}"] = str(limit)
            out[f"x-ratelimit-remaining-{kind}"] = str(remaining)
            out[f"x-ratelimit-reset-{kind}"] = reset
    return out


async def test_rate_limit_headers_on_every_response_whatever_refused_it(
    http, make_key, clock, state
) -> None:
    """200, 4xx before admission, and every 429 path (admission: requests, tokens, too
    large, concurrency; the pre-check before the body is read: requests, concurrency)
    carry the caller's x-ratelimit-* headers, exactly."""
    # Token numbers fit the fixture model's 256-token context.
    key = await make_key(limits={"requests_per_minute": 3, "tokens_per_minute": 250})
    start = clock.now

    async def post(body: object) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await http.post("/v1/completions", content=content, headers=auth(key))

    ok = await post({"model": MODEL, "prompt": "a b", "max_tokens": 3})
    assert ok.status_code == 200
    # Reserved at admission: the prompt as the model's tokenizer counts it + max_tokens; a
    # fresh entry counts for the next 60 s.
    assert _limits_of(ok) == _state((3, 2, "1m0s"), (250, 250 - _v3_count("a b") - 3, "1m0s"))
    billed = ok.json()["usage"]["total_tokens"]

    clock.now = start + 10  # 4xx after authentication, before admission: from the counters
    bad = await post({"model": MODEL})
    assert bad.status_code == 400
    assert _limits_of(bad) == _state((3, 2, "50s"), (250, 250 - billed, "50s"))
    unknown = await post({"model": "no-such-model", "prompt": "x"})
    assert unknown.status_code == 404
    assert _limits_of(unknown) == _limits_of(bad)

    clock.now = start + 20  # admission refuses on tokens: they free when the first entry leaves
    tokens = await post({"model": MODEL, "prompt": "x", "max_tokens": 246})
    assert (tokens.status_code, tokens.json()["error"]["code"]) == (429, "rate_limit_exceeded")
    assert "tokens per minute" in tokens.json()["error"]["message"]
    assert _limits_of(tokens) == _state((3, 2, "40s"), (250, 250 - billed, "40s"))
    assert tokens.headers["retry-after"] == "40"
    too_large = await post({"model": MODEL, "prompt": "x", "max_tokens": 252})
    assert too_large.json()["error"]["code"] == "request_too_large"
    assert _limits_of(too_large) == _limits_of(tokens)
    assert "retry-after" not in too_large.headers

    clock.now = start + 30
    for _ in range(2):
        ok = await post({"model": MODEL, "prompt": "x", "max_tokens": 1})
        billed += ok.json()["usage"]["total_tokens"]
    assert ok.status_code == 200
    assert _limits_of(ok)["x-ratelimit-remaining-requests"] == "0"

    clock.now = start + 40  # admission refuses on requests: the first entry leaves at +60
    first = await post({"model": MODEL, "prompt": "x", "max_tokens": 1})
    expected = _state((3, 0, "50s"), (250, 250 - billed, "50s"))
    assert (first.status_code, first.headers["retry-after"]) == (429, "20")
    assert _limits_of(first) == expected
    # Refused again by the pre-check, before the body is read: not even JSON gets a 400.
    again = await post(b"not json")
    assert (again.status_code, again.headers["retry-after"]) == (429, "20")
    assert "requests per minute" in again.json()["error"]["message"]
    assert _limits_of(again) == expected

    # Concurrency: admission refuses, then the pre-check (confirmed against the store).
    state.config = with_gateway(state.config, request_timeout_s=2.0)
    busy = await make_key("busy", limits={"requests_per_minute": 10, "concurrent_requests": 1})
    hanging = asyncio.create_task(
        http.post(
            "/v1/completions",
            json={"model": MODEL, "prompt": f"x {HANG}", "max_tokens": 1},
            headers=auth(busy),
        )
    )

    async def in_flight() -> None:
        (team,) = (await http.get("/v1/usage", headers=auth(busy))).json()["usage"]
        assert team["in_flight"] == 1

    await _eventually(in_flight)
    clock.now = start + 45
    refusals = [
        await http.post("/v1/completions", content=body, headers=auth(busy))
        for body in (json.dumps({"model": MODEL, "prompt": "x"}).encode(), b"not json")
    ]
    for r in refusals:
        assert (r.status_code, r.headers["retry-after"]) == (429, "1")
        assert "concurrent requests" in r.json()["error"]["message"]
        assert _limits_of(r) == _state((10, 9, "55s"), None)
    timed_out = await hanging  # an error after admission keeps the admission's headers
    assert timed_out.status_code == 504
    assert _limits_of(timed_out) == _state((10, 9, "1m0s"), None)


async def test_requests_per_minute_429_with_retry_after_then_window_slides(
    http, make_key, clock
) -> None:
    client = client_for(http, await make_key(limits={"requests_per_minute": 2}))
    for _ in range(2):
        await client.completions.create(model=MODEL, prompt="x", max_tokens=1)
    with pytest.raises(openai.RateLimitError) as exc:
        await client.completions.create(model=MODEL, prompt="x", max_tokens=1)
    assert exc.value.response.headers["retry-after"] == "60"  # 60 s after the first
    assert exc.value.body["code"] == "rate_limit_exceeded"
    assert "requests per minute" in exc.value.message
    clock.now += 50  # the next clock minute: still within 60 s of both
    with pytest.raises(openai.RateLimitError) as exc:
        await client.completions.create(model=MODEL, prompt="x", max_tokens=1)
    assert exc.value.response.headers["retry-after"] == "10"
    clock.now += 10  # 60 s after them: both have slid out
    await client.completions.create(model=MODEL, prompt="x", max_tokens=1)


async def test_tokens_reserved_at_admission_settle_to_usage(http, make_key, clock, state) -> None:
    key = await make_key(limits={"tokens_per_minute": 10_000, "tokens_per_day": 50_000})
    client = client_for(http, key)
    resp = await client.completions.create(model=MODEL, prompt="one two three", max_tokens=7)
    clock.now += 0.12345  # 10.12345 s into the minute and 28,810.12345 s into the UTC day
    body = (await http.get("/v1/usage", headers=auth(key))).json()
    (team,) = body["usage"]
    assert team["scope"] == "team:ci"
    assert team["limits"] == {
        "requests_per_minute": None,
        "tokens_per_minute": 10_000,
        "tokens_per_day": 50_000,
        "concurrent_requests": None,
    }
    # The window is empty 60 s after its newest request; the day at UTC midnight.
    assert (team["minute_resets_in_s"], team["day_resets_in_s"]) == (59.877, 57_589.877)
    # The gateway bills what the engine reports (the fake counts words).
    assert team["tokens_this_minute"] == resp.usage.total_tokens == 3 + 7
    assert team["tokens_today"] == resp.usage.total_tokens
    assert team["in_flight"] == 0 and team["requests_this_minute"] == 1


def _v3_count(text: str) -> int:
    tokenizer = MistralTokenizer.from_file(str(V3_TOKENIZER)).instruct_tokenizer.tokenizer
    return len(tokenizer.encode(text, bos=True, eos=False))


@pytest.mark.parametrize(
    ("endpoint", "max_tokens", "n"),
    [
        ("completions", 7, 1),
        ("completions", 7, 3),
        ("completions", None, 2),  # OpenAI's completions default: 16
        ("chat/completions", None, 2),  # chat without max_tokens: what the context leaves
    ],
)
async def test_reservation_seen_in_flight_then_settled(
    http, make_key, clock, state, endpoint: str, max_tokens: int | None, n: int
) -> None:
    """While a request runs, the team's tokens hold the prompt (the model's tokenizer count)
    plus max_tokens times n; when it ends (here by the timeout, before any token) only the
    prompt stays billed."""
    state.config = with_gateway(state.config, request_timeout_s=4.0)
    key = await make_key(limits={"tokens_per_minute": 100_000})
    text = f"count these words please {HANG}"
    body: dict = {"model": MODEL, "n": n}
    if endpoint == "completions":
        body["prompt"] = text
    else:
        body["messages"] = [{"role": "user", "content": text}]
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    request = asyncio.create_task(http.post(f"/v1/{endpoint}", json=body, headers=auth(key)))

    async def team_usage() -> dict:
        (team,) = (await http.get("/v1/usage", headers=auth(key))).json()["usage"]
        return team

    seen: list[dict] = []

    async def reserved() -> None:
        seen.append(await team_usage())
        assert seen[-1]["in_flight"] == 1

    await _eventually(reserved)
    held = seen[-1]  # read while the request was in flight (it hangs until the timeout)
    assert held["requests_this_minute"] == 1
    assert (await request).status_code == 504
    after = await team_usage()
    billed = after["tokens_this_minute"]  # the prompt as counted at admission
    assert after["in_flight"] == 0
    if endpoint == "completions":
        assert billed == _v3_count(text)
        per_choice = 16 if max_tokens is None else max_tokens
    else:  # [INST] ... [/INST] around the text: a few tokens more than the text alone
        assert _v3_count(text) < billed < _v3_count(text) + 5
        per_choice = 256 - billed  # the fixture's max_model_len
    assert held["tokens_this_minute"] == billed + n * per_choice


async def test_request_larger_than_token_limit_says_so(http, make_key, clock) -> None:
    client = client_for(http, await make_key(limits={"tokens_per_minute": 50}))
    with pytest.raises(openai.RateLimitError) as exc:
        await client.completions.create(model=MODEL, prompt="x", max_tokens=100)
    assert exc.value.body["code"] == "request_too_large"
    assert "Lower max_tokens" in exc.value.message
    assert "retry-after" not in exc.value.response.headers  # waiting would not help


@pytest.mark.parametrize(
    ("limit", "retry_after", "words"),
    [
        ("tokens_per_minute", "60", "tokens per minute"),  # when the first request slides out
        ("tokens_per_day", "57590", "tokens per day"),  # to midnight UTC, rounded up
    ],
)
async def test_token_limits_429_with_retry_after_rounded_up(
    http, make_key, clock, limit: str, retry_after: str, words: str
) -> None:
    clock.now += 0.4
    client = client_for(http, await make_key(limits={limit: 30}))
    for _ in range(2):  # each reserves prompt + 10 and settles to 11 (the fake's count)
        await client.completions.create(model=MODEL, prompt="x", max_tokens=10)
    with pytest.raises(openai.RateLimitError) as exc:
        await client.completions.create(model=MODEL, prompt="x", max_tokens=10)
    assert exc.value.body["code"] == "rate_limit_exceeded"
    assert words in exc.value.message
    assert exc.value.response.headers["retry-after"] == retry_after


async def test_reservation_without_max_tokens_uses_team_cap(http, make_key, clock, state) -> None:
    seen = []
    backend = state.backends[MODEL]
    original = backend.call
    backend.call = lambda m, r: (seen.append(r.max_tokens), original(m, r))[1]
    client = client_for(http, await make_key(max_tokens_cap=6, limits={"tokens_per_minute": 1000}))
    resp = await client.completions.create(model=MODEL, prompt="a")
    assert seen == [6] and resp.usage.completion_tokens == 6
    # chat has no default max_tokens at all: the cap becomes it
    chat = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "a"}]
    )
    assert seen == [6, 6] and chat.usage.completion_tokens == 6


async def test_max_completion_tokens_is_checked_like_max_tokens(http) -> None:
    """OpenAI's newer name for the same limit gets the same checks, with the same message."""
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "a"}]}
    over = await http.post(
        "/v1/chat/completions", json=chat | {"max_completion_tokens": 300}, headers=auth()
    )
    assert over.status_code == 400
    assert over.json()["error"]["code"] == "context_length_exceeded"
    assert over.json()["error"]["param"] == "max_tokens"
    for field in ("max_tokens", "max_completion_tokens"):
        zero = await http.post("/v1/chat/completions", json=chat | {field: 0}, headers=auth())
        assert zero.status_code == 400
        assert zero.json()["error"]["message"] == "'max_tokens' must be at least 1."


async def test_concurrency_limit_and_slot_freed_after_stream(
    live_url, make_key, clock, state
) -> None:
    state.backends[MODEL].engine.token_delay_s = 0.02
    key = await make_key(limits={"concurrent_requests": 1})
    async with httpx.AsyncClient(base_url=live_url) as http:
        client = client_for(http, key)
        client.base_url = f"{live_url}/v1"
        stream = await client.completions.create(
            model=MODEL, prompt="x", max_tokens=20, stream=True
        )
        with pytest.raises(openai.RateLimitError) as exc:
            await client.completions.create(model=MODEL, prompt="x", max_tokens=1)
        assert "concurrent requests" in exc.value.message
        assert exc.value.response.headers["retry-after"] == "1"
        _ = [c async for c in stream]
        await client.completions.create(model=MODEL, prompt="x", max_tokens=1)
    await _in_flight_zero(state, "ci")


# --- before admission: the body and its parsing are charged to the caller -------------


def _completion_body(size: int | None = None) -> bytes:
    body = json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 1}).encode()
    return body if size is None else body.ljust(size)  # JSON allows trailing whitespace


async def _stalled(head: bytes, release: asyncio.Event, rest: bytes = b""):
    """An upload that sends ``head``, then nothing until ``release``."""
    yield head
    await release.wait()
    yield rest


def _headers(key: str, length: int | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if length is not None:
        headers["Content-Length"] = str(length)
    return headers


async def test_an_upload_counts_against_its_keys_concurrency_until_admitted(
    http, make_key, state, records
) -> None:
    """A key allowed one request at a time that opens a second upload while the first is
    still arriving gets a 429 at once: its body is never read, the engine never called."""
    key = await make_key(limits={"concurrent_requests": 1})
    body, release = _completion_body(), asyncio.Event()
    first = asyncio.create_task(
        http.post(
            "/v1/completions",
            content=_stalled(body[:10], release, body[10:]),
            headers=_headers(key),
        )
    )
    await _eventually(lambda: _assert(state.body_budget.held == 10))
    engine = state.backends[MODEL].engine
    calls = len(engine.request_ids)
    second = await http.post("/v1/completions", content=body, headers=_headers(key))
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "rate_limit_exceeded"
    assert "concurrent requests" in second.json()["error"]["message"]
    assert second.headers["retry-after"] == "1"
    assert len(engine.request_ids) == calls
    assert state.body_budget.held == 10  # the refused body was not read
    release.set()
    assert (await first).status_code == 200
    third = await http.post("/v1/completions", content=body, headers=_headers(key))
    assert third.status_code == 200
    assert state.body_budget.held == 0
    assert [r.status for r in records[-3:]] == [429, 200, 200]


async def test_an_unlimited_team_uploads_are_not_counted(http, make_key, state) -> None:
    key = await make_key("open")
    body, release = _completion_body(), asyncio.Event()
    stalled = [
        asyncio.create_task(
            http.post(
                "/v1/completions",
                content=_stalled(body[:10], release, body[10:]),
                headers=_headers(key),
            )
        )
        for _ in range(3)
    ]
    await _eventually(lambda: _assert(state.body_budget.held == 30))
    release.set()
    assert [(await t).status_code for t in stalled] == [200, 200, 200]


async def test_a_body_that_does_not_arrive_in_time_is_a_408(
    http, make_key, state, records, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state, "config", with_gateway(state.config, body_timeout_s=0.3))
    key = await make_key(limits={"concurrent_requests": 1})
    body = _completion_body()
    r = await http.post(
        "/v1/completions",
        content=_stalled(body[:10], asyncio.Event()),
        headers=_headers(key, len(body)),
    )
    assert r.status_code == 408
    error = r.json()["error"]
    assert error["code"] == "request_timeout"
    assert "did not arrive within 0.3 s (10 bytes received)" in error["message"]
    assert r.headers["connection"] == "close"
    assert records[-1].status == 408 and records[-1].error_code == "request_timeout"
    # the slot and the bytes are given back: the same key is served at once
    assert state.body_budget.held == 0
    assert (
        await http.post("/v1/completions", content=body, headers=_headers(key))
    ).status_code == 200


async def test_the_replica_bounds_the_body_bytes_it_holds(
    http, make_key, state, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bodies not yet admitted share one replica-wide budget: a declared length is taken
    before any of it is read, and past the budget a new body is a 503 with Retry-After."""
    monkeypatch.setattr(state, "body_budget", BodyBudget(2048))
    key = await make_key("open")
    big, release = _completion_body(1500), asyncio.Event()
    holding = asyncio.create_task(
        http.post(
            "/v1/completions",
            content=_stalled(big[:100], release, big[100:]),
            headers=_headers(key, len(big)),
        )
    )
    await _eventually(lambda: _assert(state.body_budget.held == 1500))
    refused = await http.post(
        "/v1/completions", content=_completion_body(600), headers=_headers(key)
    )
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "server_busy"
    assert refused.headers["retry-after"] == "1"
    fits = await http.post("/v1/completions", content=_completion_body(500), headers=_headers(key))
    assert fits.status_code == 200
    # a body without a declared length (chunked) is charged as it arrives: 300 bytes fit
    # beside the held 1500, 600 do not
    chunked = _completion_body(600)

    async def in_two_parts():
        yield chunked[:300]
        yield chunked[300:]

    r = await http.post("/v1/completions", content=in_two_parts(), headers=_headers(key))
    assert r.status_code == 503 and r.json()["error"]["code"] == "server_busy"
    assert state.body_budget.held == 1500
    release.set()
    assert (await holding).status_code == 200
    assert state.body_budget.held == 0


async def test_engine_failures_bill_prompt_and_delivered_tokens(
    http, make_key, clock, state, records
) -> None:
    """Billing is what the engine did: a failure before the first token costs the prompt, a
    failure mid-stream the prompt plus what was delivered; an engine refusal costs nothing."""
    key = await make_key(limits={"tokens_per_minute": 1000})
    client = client_for(http, key)
    with pytest.raises(openai.InternalServerError):
        await client.completions.create(model=MODEL, prompt=FAIL_BEFORE, max_tokens=5)
    before = records[-1]
    stream = await client.completions.create(
        model=MODEL, prompt=f"a {FAIL_MID_STREAM}", max_tokens=8, stream=True
    )
    with pytest.raises(openai.APIError):
        _ = [c async for c in stream]
    mid = records[-1]
    with pytest.raises(openai.BadRequestError):  # the engine refuses: 1 + 256 > context
        await client.completions.create(model=MODEL, prompt="a", max_tokens=256)
    refused = records[-1]
    await state.drain()
    usage = (await http.get("/v1/usage", headers=auth(key))).json()["usage"][0]
    assert (before.status, mid.status, refused.status) == (502, 502, 400)
    # The prompt as the gateway counted it (the engine never said), no completion.
    assert before.usage.completion_tokens == 0
    assert before.usage.prompt_tokens == _prompt_count(state, FAIL_BEFORE) > 0
    assert (mid.usage.prompt_tokens, mid.usage.completion_tokens) == (2, 2)  # engine's numbers
    assert refused.usage is None
    assert usage["tokens_this_minute"] == before.usage.total_tokens + 4
    assert usage["in_flight"] == 0 and usage["requests_this_minute"] == 3


def _prompt_count(state: GatewayState, prompt: str) -> int:
    from llmplat.engine.protocol import CompletionRequest

    return state.counters[MODEL].measure(CompletionRequest(model=MODEL, prompt=prompt)).tokens


async def test_client_disconnect_is_billed_for_what_was_generated(
    live_url, make_key, clock, state, records
) -> None:
    state.backends[MODEL].engine.token_delay_s = 0.01
    key = await make_key(limits={"tokens_per_minute": 10_000})
    body = {"model": MODEL, "prompt": "p q", "max_tokens": 200, "stream": True}
    async with httpx.AsyncClient(base_url=live_url) as http:
        async with http.stream("POST", "/v1/completions", json=body, headers=auth(key)) as r:
            got = 0
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    got += 1
                    assert "usage" not in json.loads(line[6:])  # client did not ask for it
                if got == 5:
                    break
        await _eventually(lambda: _assert(bool(records) and records[-1].status == 499))
        usage = (await http.get("/v1/usage", headers=auth(key))).json()["usage"][0]
    billed = usage["tokens_this_minute"]
    assert records[-1].usage.completion_tokens >= 5
    # Billed: the prompt plus what was generated until the cut, not the 202-token reservation.
    assert billed == records[-1].usage.prompt_tokens + records[-1].usage.completion_tokens
    assert 2 + 5 <= billed < 2 + 200, billed
    assert usage["in_flight"] == 0


async def _assert(cond: bool) -> None:
    assert cond


async def test_key_limits_apply_on_top_of_team_limits(http, make_key, clock) -> None:
    ci_key = await make_key(
        limits={"requests_per_minute": 100}, key_limits={"requests_per_minute": 1}
    )
    other = await make_key()  # same team, no key limit
    await client_for(http, ci_key).completions.create(model=MODEL, prompt="x", max_tokens=1)
    with pytest.raises(openai.RateLimitError) as exc:
        await client_for(http, ci_key).completions.create(model=MODEL, prompt="x", max_tokens=1)
    assert "key '" in exc.value.message
    await client_for(http, other).completions.create(model=MODEL, prompt="x", max_tokens=1)


async def test_one_team_exhausted_does_not_touch_another(http, make_key, clock) -> None:
    noisy = client_for(http, await make_key("noisy", limits={"requests_per_minute": 1}))
    quiet = client_for(http, await make_key("quiet", limits={"requests_per_minute": 100}))
    await noisy.completions.create(model=MODEL, prompt="x", max_tokens=1)
    with pytest.raises(openai.RateLimitError):
        await noisy.completions.create(model=MODEL, prompt="x", max_tokens=1)
    for _ in range(5):
        await quiet.completions.create(model=MODEL, prompt="x", max_tokens=1)


@pytest.mark.parametrize("on_store_error", ["closed", "open"])
async def test_quota_store_down_follows_on_store_error(
    replica, make_key, monkeypatch, on_store_error
) -> None:
    """The Redis settings of a replica, from the environment as a deployment reads them,
    with a real Redis client pointed at a port nothing listens on."""
    import socket

    from llmplat.settings import Settings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("LLMPLAT_QUOTAS__BACKEND", "redis")
    monkeypatch.setenv("LLMPLAT_QUOTAS__REDIS_URL", f"redis://:hunter2@127.0.0.1:{port}/0")
    monkeypatch.setenv("LLMPLAT_QUOTAS__ON_STORE_ERROR", on_store_error)
    key = await make_key(limits={"requests_per_minute": 1})
    async with replica(quotas=Settings().quotas) as (down, h):
        await _eventually(lambda: _assert(len(down.authenticator.registry.keys) > 0))
        body = {"model": MODEL, "prompt": "x", "max_tokens": 1}
        answers = [await h.post("/v1/completions", json=body, headers=auth(key)) for _ in range(3)]
    errors = down.metrics.registry.get_sample_value(
        "llmplat_quota_store_errors_total", {"operation": "reserve"}
    )
    assert errors == 3
    if on_store_error == "closed":
        assert [a.status_code for a in answers] == [503] * 3
        assert {a.json()["error"]["code"] for a in answers} == {"quota_store_unavailable"}
        assert {a.headers["retry-after"] for a in answers} == {"1"}
    else:  # admitted unmetered: a key limited to 1 request a minute makes 3
        assert [a.status_code for a in answers] == [200] * 3
        assert not any(h.startswith("x-ratelimit") for a in answers for h in a.headers)
    assert "hunter2" not in "".join(a.text for a in answers)
