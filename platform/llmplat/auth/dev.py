"""The single dev key of `llmplat serve` in dev mode."""

from __future__ import annotations

import hmac

from pydantic import SecretStr

from llmplat.auth.base import Principal, bearer_token
from llmplat.gateway.errors import AuthenticationFailed

DEV_TEAM = "dev"


class DevKeyAuthenticator:
    """Accepts exactly one key (constant-time comparison) as team ``dev``."""

    def __init__(self, key: SecretStr) -> None:
        self._key = key.get_secret_value().encode()
        self._principal = Principal(team=DEV_TEAM, key_id="dev")

    async def authenticate(self, authorization: str | None) -> Principal:
        token = bearer_token(authorization)
        if token is None:
            raise AuthenticationFailed(
                "Missing API key. Send it as 'Authorization: Bearer <key>'.", code="missing_api_key"
            )
        if not hmac.compare_digest(token.encode(), self._key):
            raise AuthenticationFailed("Incorrect API key provided.", code="invalid_api_key")
        return self._principal
