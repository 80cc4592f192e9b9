"""``/admin/`` (admin token) and the team's own view (``/v1/usage``, team key).

The admin API is the HTTP face of :class:`KeyAdmin`, the same code the CLI runs. Store
calls are blocking (file or Kubernetes API), so they run in a worker thread. Every call
leaves one audit line: ``auth_failure`` when its credential is refused, else ``admin``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from llmplat.auth.admin import InvalidAdminRequest, IssuedKey, KeyAdmin
from llmplat.auth.base import Principal
from llmplat.auth.store import ConflictError, NotFoundError, StoreError
from llmplat.config.teams import ApiKeyRecord, Limits, Team
from llmplat.gateway.errors import (
    APIError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
)
from llmplat.gateway.requests import (
    authenticate,
    authenticate_admin,
    client_address,
    given_request_id,
    read_json_body,
    refused,
)
from llmplat.gateway.state import GatewayState
from llmplat.observability.record import AdminAction
from llmplat.quotas.model import ScopeUsage

log = logging.getLogger(__name__)


class Conflict(APIError):
    status = 409
    type = "invalid_request_error"


class NewKeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = ""
    expires_in_days: float | None = Field(None, gt=0)
    limits: Limits = Field(default_factory=Limits)


def key_view(key: ApiKeyRecord) -> dict[str, Any]:
    """A key as listed: everything but the hash."""
    return key.model_dump(mode="json", exclude={"secret_sha256"})


def issued_view(issued: IssuedKey) -> dict[str, Any]:
    return {**key_view(issued.record), "key": issued.plaintext}


def usage_view(usage: ScopeUsage) -> dict[str, Any]:
    """One scope's usage as /v1/usage and the admin API show it: the ``*_this_minute``
    counts are those of the last 60 s (the sliding window the per-minute limits hold
    over), ``minute_resets_in_s`` is when they are back to zero."""
    return {
        "scope": usage.scope,
        "limits": usage.limits.model_dump(),
        "requests_this_minute": usage.requests_this_minute,
        "tokens_this_minute": usage.tokens_this_minute,
        "tokens_today": usage.tokens_today,
        "in_flight": usage.in_flight,
        "minute_resets_in_s": round(usage.minute_reset_s, 3),
        "day_resets_in_s": round(usage.day_reset_s, 3),
    }


def _store_error(exc: StoreError) -> APIError:
    if isinstance(exc, NotFoundError):
        return NotFound(str(exc), code="not_found")
    if isinstance(exc, ConflictError):
        return Conflict(str(exc), code="conflict")
    if isinstance(exc, InvalidAdminRequest):
        return InvalidRequest(str(exc))
    return ServiceUnavailable(f"The key store failed: {exc}", code="key_store_unavailable")


async def _run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except StoreError as exc:
        raise _store_error(exc) from exc


def _require_admin(state: GatewayState, request: Request) -> tuple[KeyAdmin, str]:
    """The key administration and the caller's identity (``admin-token``), once the admin
    token is checked: refused tokens are audited and throttled like refused keys."""
    admin_token = state.config.admin_token
    if state.admin is None or admin_token is None:
        raise NotFound(
            "The admin API is disabled: set LLMPLAT_ADMIN_TOKEN to enable it.",
            code="admin_disabled",
        )
    return state.admin, authenticate_admin(state, request, admin_token)


@dataclass
class _Subject:
    """What an admin action touched, filled in as it becomes known."""

    team: str | None = None
    key_id: str | None = None
    new_key_id: str | None = None


@contextlib.contextmanager
def _audited(
    state: GatewayState, request: Request, actor: str, action: str, status: int = 200
) -> Iterator[_Subject]:
    """One ``admin`` audit line for the action run inside, whatever its outcome."""
    subject = _Subject()
    ok, error_code = False, None
    try:
        yield subject
        ok = True
    except APIError as exc:
        status, error_code = exc.status, exc.code
        raise
    except asyncio.CancelledError:
        status, error_code = 499, "cancelled"  # the store call may still finish
        raise
    except Exception:
        status, error_code = 500, "internal_error"
        raise
    finally:
        line = AdminAction(
            actor=actor,
            client=client_address(state, request),
            action=action,
            ok=ok,
            status=status,
            error_code=error_code,
            team=subject.team,
            key_id=subject.key_id,
            new_key_id=subject.new_key_id,
            request_id=given_request_id(request),
        )
        try:
            state.on_audit(line)
        except Exception:
            log.exception("auditing an admin action failed")


async def _object_body(request: Request, state: GatewayState) -> dict[str, Any]:
    return await read_json_body(request, state.config.gateway.max_request_bytes)


def admin_router(state: GatewayState) -> APIRouter:
    """Every route checks the admin token first (a refusal is an ``auth_failure`` line) and
    then leaves one ``admin`` audit line, reads included."""
    router = APIRouter(prefix="/admin")

    @router.get("/teams")
    async def list_teams(request: Request) -> dict[str, Any]:
        admin, actor = _require_admin(state, request)
        with _audited(state, request, actor, "team.list"):
            teams: list[Team] = await _run(admin.list_teams)
        return {"object": "list", "data": [t.model_dump(mode="json") for t in teams]}

    @router.post("/teams", status_code=201)
    async def create_team(request: Request) -> dict[str, Any]:
        admin, actor = _require_admin(state, request)
        with _audited(state, request, actor, "team.create", 201) as subject:
            body = await _object_body(request, state)
            name = body.get("name")
            subject.team = name[:200] if isinstance(name, str) else None
            team: Team = await _run(admin.create_team, body)
        return team.model_dump(mode="json")

    @router.get("/teams/{name}")
    async def get_team(name: str, request: Request) -> dict[str, Any]:
        admin, actor = _require_admin(state, request)
        with _audited(state, request, actor, "team.get") as subject:
            subject.team = name
            team: Team = await _run(admin.get_team, name)
        return team.model_dump(mode="json")

    @router.patch("/teams/{name}")
    async def update_team(name: str, request: Request) -> dict[str, Any]:
        admin, actor = _require_admin(state, request)
        with _audited(state, request, actor, "team.update") as subject:
            subject.team = name
            body = await _object_body(request, state)
            team: Team = await _run(admin.update_team, name, body)
        return team.model_dump(mode="json")

    @router.delete("/teams/{name}")
    async def delete_team(name: str, request: Request) -> dict[str, Any]:
        admin, actor = _require_admin(state, request)
        with _audited(state, request, actor, "team.delete") as subject:
            subject.team = name
            await _run(admin.delete_team, name)
        return {"deleted": name}

    @router.get("/teams/{name}/usage")
    async def team_usage(name: str, request: Request) -> dict[str, Any]:
        admin, actor = _require_admin(state, request)
        with _audited(state, request, actor, "team.usage") as subject:
            subject.team = name
            team: Team = await _run(admin.get_team, name)
            usage = await state.quotas.usage(
                Principal(team=team.name, key_id="-", team_limits=team.limits)
            )
        return {"team": team.name, "usage": [usage_view(u) for u in usage]}

    @router.get("/status")
    async def status(request: Request) -> dict[str, Any]:
        _, actor = _require_admin(state, request)
        with _audited(state, request, actor, "status.read"):
            if state.status is None:
                raise NotFound("Deployment status is only available under Ray Serve.")
            deployments = await asyncio.to_thread(state.status)
        return {"deployments": deployments}

    @router.get("/keys")
    async def list_keys(request: Request, team: str | None = None) -> dict[str, Any]:
        admin, actor = _require_admin(state, request)
        with _audited(state, request, actor, "key.list") as subject:
            subject.team = team
            keys: list[ApiKeyRecord] = await _run(admin.list_keys, team)
        return {"object": "list", "data": [key_view(k) for k in keys]}

    @router.post("/teams/{name}/keys", status_code=201)
    async def create_key(name: str, request: Request) -> dict[str, Any]:
        admin, actor = _require_admin(state, request)
        with _audited(state, request, actor, "key.create", 201) as subject:
            subject.team = name
            try:
                body = NewKeyBody.model_validate(await _object_body(request, state))
            except ValueError as exc:
                raise InvalidRequest(f"Invalid key request: {exc}") from exc
            expires = timedelta(days=body.expires_in_days) if body.expires_in_days else None
            issued: IssuedKey = await _run(
                admin.create_key, name, name=body.name, expires_in=expires, limits=body.limits
            )
            subject.key_id = issued.record.key_id
        return issued_view(issued)

    @router.post("/keys/{key_id}/revoke")
    async def revoke_key(key_id: str, request: Request) -> dict[str, Any]:
        admin, actor = _require_admin(state, request)
        with _audited(state, request, actor, "key.revoke") as subject:
            subject.key_id = key_id
            key: ApiKeyRecord = await _run(admin.revoke_key, key_id)
            subject.team = key.team
        return key_view(key)

    @router.post("/keys/{key_id}/rotate", status_code=201)
    async def rotate_key(key_id: str, request: Request) -> dict[str, Any]:
        admin, actor = _require_admin(state, request)
        with _audited(state, request, actor, "key.rotate", 201) as subject:
            subject.key_id = key_id
            issued: IssuedKey = await _run(admin.rotate_key, key_id)
            subject.team, subject.new_key_id = issued.record.team, issued.record.key_id
        return issued_view(issued)

    return router


def team_router(state: GatewayState) -> APIRouter:
    """What a team key may read about its own team, and nothing about any other. Keys are
    checked, throttled and audited as on the generation routes."""
    router = APIRouter(prefix="/v1")

    async def own_usage(principal: Principal) -> dict[str, Any]:
        usage = await state.quotas.usage(principal)
        return {
            "team": principal.team,
            "key_id": principal.key_id,
            "priority_class": principal.priority_class,
            "max_tokens_cap": principal.max_tokens_cap,
            "models": sorted(principal.models) if principal.models is not None else None,
            "usage": [usage_view(u) for u in usage],
            "time": datetime.now().astimezone().isoformat(timespec="seconds"),
        }

    @router.get("/usage")
    async def usage(request: Request) -> dict[str, Any]:
        return await own_usage(await authenticate(state, request))

    @router.get("/teams/{name}/usage")
    async def named_usage(name: str, request: Request) -> dict[str, Any]:
        principal = await authenticate(state, request)
        if principal.team != name:
            # A valid key is never throttled, but asking for another team is audited.
            other = PermissionDenied(
                f"Your key belongs to team '{principal.team}'; it cannot read team '{name}'.",
                code="other_team",
            )
            raise refused(state, request, other, throttle=False, key_id=principal.key_id)
        return await own_usage(principal)

    return router
