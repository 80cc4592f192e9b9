"""What a Principal means to the gateway: allowed models, max_tokens cap, vLLM priority."""

from __future__ import annotations

import openai
import pytest

from llmplat.auth.base import Principal
from llmplat.gateway.backends import EngineBackend
from support import MODEL, PLAIN_MODEL


class FixedPrincipal:
    """An authenticator that admits everyone as one principal (a key store stand-in)."""

    def __init__(self, principal: Principal) -> None:
        self.principal = principal

    async def authenticate(self, authorization: str | None) -> Principal:
        return self.principal


@pytest.fixture
def batch_team(gateway) -> Principal:
    principal = Principal(
        team="ci", key_id="k1", models=frozenset({MODEL}), priority_class="batch", max_tokens_cap=8
    )
    gateway.state.gateway.authenticator = FixedPrincipal(principal)
    return principal


async def test_model_outside_team_is_403(client, batch_team) -> None:
    with pytest.raises(openai.PermissionDeniedError) as exc:
        await client.completions.create(model=PLAIN_MODEL, prompt="x", max_tokens=2)
    assert exc.value.body["code"] == "model_not_allowed"
    assert [m.id for m in (await client.models.list()).data] == [MODEL]


async def test_max_tokens_over_team_cap_is_400(client, batch_team) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        await client.completions.create(model=MODEL, prompt="x", max_tokens=9)
    assert "at most 8" in exc.value.message


async def test_batch_class_becomes_lower_vllm_priority(
    client, gateway, batch_team, monkeypatch
) -> None:
    seen = []
    backend: EngineBackend = gateway.state.gateway.backends[MODEL]
    original = backend.call

    def spy(method, request):
        seen.append(request.priority)
        return original(method, request)

    monkeypatch.setattr(backend, "call", spy)
    await client.completions.create(model=MODEL, prompt="x", max_tokens=2)
    assert seen == [batch_team.vllm_priority] and seen[0] > Principal("t", "k").vllm_priority
