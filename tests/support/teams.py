"""A team and a key created through the key store, once the running gateway has seen it."""

from __future__ import annotations

import asyncio
from typing import Any

from llmplat.auth.admin import KeyAdmin
from llmplat.gateway.state import GatewayState


async def team_key(admin: KeyAdmin, state: GatewayState, team: str, **fields: Any) -> str:
    """Create ``team`` (with these fields) and a key of it; return the key once ``state``'s
    authenticator knows it."""
    admin.create_team({"name": team, **fields})
    issued = admin.create_key(team, name="test")
    deadline = asyncio.get_running_loop().time() + 5
    while issued.record.key_id not in state.authenticator.registry.keys:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    return issued.plaintext
