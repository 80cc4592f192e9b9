"""The request-surface checks, with exact expectations, through the app over HTTP.

Each check here is one the gateway makes before the engine sees a request: engine-control
fields refused (``unsupported_parameter``), the team's ``cache_salt`` set on every engine
request (never the client's), the team's cap on ``n``, and the cap on chat messages. Each
test names the status, the error body and what the engine received (or that it received
nothing), so removing the check fails it.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import httpx
import pytest

from llmplat.engine.fake import FakeEngine
from support import ADMIN_TOKEN, DEV_KEY, MODEL, auth

ADMIN = auth(ADMIN_TOKEN)
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
# Fields a client may not set (surface.py's list): engine identity and scheduling, the
# prefix-cache salt, KV/EC transfer, arbitrary engine arguments, templates, beam search.
ENGINE_CONTROL_CHAT = (
    "request_id",
    "priority",
    "cache_salt",
    "kv_transfer_params",
    "vllm_xargs",
    "chat_template",
    "mm_processor_kwargs",
    "use_beam_search",
)
ENGINE_CONTROL_COMPLETIONS = ("request_id", "priority", "cache_salt", "prompt_embeds")


def _salt(group: str) -> str:
    """The salt a prefix-cache group gets, computed here independently of the gateway."""
    return hashlib.sha256(f"llmplat-prefix-cache:{group}".encode()).hexdigest()[:32]


@pytest.fixture
def engine(gateway) -> FakeEngine:
    return gateway.state.gateway.backends[MODEL].engine


def _chat(**extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "alpha beta"}],
        "max_tokens": 2,
        **extra,
    }


def _completion(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "alpha beta", "max_tokens": 2, **extra}


async def _team_key(http: httpx.AsyncClient, name: str, **team: Any) -> str:
    """A new team (with ``team``'s fields) and a key of it, accepted by the gateway."""
    made = await http.post("/admin/teams", json={"name": name, **team}, headers=ADMIN)
    assert made.status_code == 201, made.text
    minted = await http.post(f"/admin/teams/{name}/keys", json={}, headers=ADMIN)
    assert minted.status_code == 201, minted.text
    key = minted.json()["key"]
    for _ in range(200):
        if (await http.get("/v1/models", headers=auth(key))).status_code == 200:
            return key
        await asyncio.sleep(0.05)
    raise AssertionError(f"the key of team {name!r} was never accepted")


def _error(response: httpx.Response) -> dict[str, Any]:
    return response.json()["error"]


# -- engine-control fields --------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [(CHAT, _chat, f) for f in ENGINE_CONTROL_CHAT]
    + [(COMPLETIONS, _completion, f) for f in ENGINE_CONTROL_COMPLETIONS],
)
async def test_engine_control_field_is_refused_by_name(
    http: httpx.AsyncClient, engine: FakeEngine, path: str, body: Any, field: str
) -> None:
    calls = len(engine.request_ids)
    r = await http.post(path, json=body(**{field: "x"}), headers=auth(DEV_KEY))
    assert r.status_code == 400, r.text
    assert _error(r) == {
        "message": f"Unrecognized request argument supplied: {field}. This endpoint accepts "
        "OpenAI's parameters and vLLM's documented sampling extras only.",
        "type": "invalid_request_error",
        "param": field,
        "code": "unsupported_parameter",
    }
    assert len(engine.request_ids) == calls  # the engine never saw it


async def test_several_unknown_fields_name_the_first_and_count_the_rest(
    http: httpx.AsyncClient, engine: FakeEngine
) -> None:
    calls = len(engine.request_ids)
    body = _completion(priority=-100, cache_salt="mine", request_id="r1")
    r = await http.post(COMPLETIONS, json=body, headers=auth(DEV_KEY))
    assert r.status_code == 400
    error = _error(r)
    assert (error["param"], error["code"]) == ("cache_salt", "unsupported_parameter")
    assert "supplied: cache_salt (and 2 more). " in error["message"]
    assert len(engine.request_ids) == calls


async def test_documented_sampling_extras_reach_the_engine(
    http: httpx.AsyncClient, engine: FakeEngine
) -> None:
    """The other side of the screen: vLLM's documented extras pass, with their values."""
    r = await http.post(COMPLETIONS, json=_completion(top_k=7, min_p=0.25), headers=auth(DEV_KEY))
    assert r.status_code == 200, r.text
    request = engine.requests[-1]
    assert (request.top_k, request.min_p) == (7, 0.25)


# -- cache_salt: the team's, on every engine request ------------------------------------


@pytest.mark.parametrize(("path", "body"), [(CHAT, _chat), (COMPLETIONS, _completion)])
async def test_engine_gets_the_teams_cache_salt(
    http: httpx.AsyncClient, engine: FakeEngine, path: str, body: Any
) -> None:
    alpha = await _team_key(http, "alpha")
    beta = await _team_key(http, "beta")
    salts = []
    for key in (DEV_KEY, alpha, beta):
        r = await http.post(path, json=body(), headers=auth(key))
        assert r.status_code == 200, r.text
        salts.append(engine.requests[-1].cache_salt)
    assert salts == [_salt("dev"), _salt("alpha"), _salt("beta")]


async def test_teams_in_one_prefix_cache_group_share_its_salt(
    http: httpx.AsyncClient, engine: FakeEngine
) -> None:
    keys = [
        await _team_key(http, "red", prefix_cache_group="shared"),
        await _team_key(http, "blue", prefix_cache_group="shared"),
        await _team_key(http, "green"),
    ]
    salts = []
    for key in keys:
        r = await http.post(COMPLETIONS, json=_completion(), headers=auth(key))
        assert r.status_code == 200, r.text
        salts.append(engine.requests[-1].cache_salt)
    assert salts == [_salt("shared"), _salt("shared"), _salt("green")]


# -- the team's cap on n ----------------------------------------------------------------


@pytest.mark.parametrize(("path", "body"), [(CHAT, _chat), (COMPLETIONS, _completion)])
async def test_n_over_the_teams_cap_is_refused(
    http: httpx.AsyncClient, engine: FakeEngine, path: str, body: Any
) -> None:
    key = await _team_key(http, "ci", max_choices=3)
    ok = await http.post(path, json=body(n=3), headers=auth(key))
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["choices"]) == 3 and engine.requests[-1].n == 3
    calls = len(engine.request_ids)
    r = await http.post(path, json=body(n=4), headers=auth(key))
    assert r.status_code == 400, r.text
    assert _error(r) == {
        "message": "'n' is 4; team 'ci' may ask for at most 3 choices per request.",
        "type": "invalid_request_error",
        "param": "n",
        "code": "too_many_choices",
    }
    assert len(engine.request_ids) == calls


async def test_default_cap_on_n_applies_to_a_team_without_one(
    http: httpx.AsyncClient, engine: FakeEngine
) -> None:
    from llmplat.config.teams import DEFAULT_MAX_CHOICES

    ok = await http.post(COMPLETIONS, json=_completion(n=DEFAULT_MAX_CHOICES), headers=auth())
    assert ok.status_code == 200 and len(ok.json()["choices"]) == DEFAULT_MAX_CHOICES
    calls = len(engine.request_ids)
    over = DEFAULT_MAX_CHOICES + 1
    r = await http.post(COMPLETIONS, json=_completion(n=over), headers=auth())
    assert (r.status_code, _error(r)["code"], _error(r)["param"]) == (400, "too_many_choices", "n")
    assert (
        f"'n' is {over}; team 'dev' may ask for at most {DEFAULT_MAX_CHOICES} "
        in (_error(r)["message"])
    )
    assert len(engine.request_ids) == calls


@pytest.mark.parametrize("n", [0, -1, "2", True, 1.5])
async def test_n_must_be_a_positive_integer(
    http: httpx.AsyncClient, engine: FakeEngine, n: Any
) -> None:
    calls = len(engine.request_ids)
    r = await http.post(COMPLETIONS, json=_completion(n=n), headers=auth())
    assert r.status_code == 400
    assert (_error(r)["param"], _error(r)["message"]) == ("n", "'n' must be a positive integer.")
    assert len(engine.request_ids) == calls


# -- the cap on chat messages -----------------------------------------------------------


async def test_chat_with_more_messages_than_the_cap_is_refused(replica, engine, settings) -> None:
    capped = settings.gateway.model_copy(update={"max_messages": 3})
    async with replica(gateway=capped) as (_, http):
        messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
        at_cap = [*messages, {"role": "user", "content": "c"}]
        ok = await http.post(CHAT, json=_chat(messages=at_cap), headers=auth())
        assert ok.status_code == 200, ok.text
        calls = len(engine.request_ids)
        over = [*at_cap, {"role": "assistant", "content": "d"}]
        r = await http.post(CHAT, json=_chat(messages=over), headers=auth())
    assert r.status_code == 400, r.text
    assert _error(r) == {
        "message": "The request has 4 messages; this server accepts at most 3.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": None,
    }
    assert len(engine.request_ids) == calls
