"""Teams and keys for a load test, through the platform's admin API.

Each scenario team without a key of its own becomes the platform team ``<prefix><id>``
(created, or updated to the scenario's quotas when it exists) with a fresh key. At the end
the keys are revoked and the teams the run created are deleted. Keys live in memory only:
they reach the Locust process through its environment, never a file or a log.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import httpx

from llmplat.loadtest.scenario import Scenario


class ProvisionError(RuntimeError):
    """The admin API refused or failed; the message says what to fix."""


@dataclass
class Provisioned:
    keys: dict[str, str] = field(default_factory=dict)
    """Scenario team id → API key."""
    team_names: dict[str, str] = field(default_factory=dict)
    created_teams: list[str] = field(default_factory=list)
    created_key_ids: list[str] = field(default_factory=list)

    def __repr__(self) -> str:  # never show the keys
        return f"Provisioned(teams={self.team_names}, created={self.created_teams})"


def _check(resp: httpx.Response, what: str) -> dict:
    if resp.status_code in (401, 403):
        raise ProvisionError(f"{what}: the admin API answered {resp.status_code} (admin token?)")
    if resp.status_code == 404 and "admin_disabled" in resp.text:
        raise ProvisionError(f"{what}: the admin API is disabled on this platform")
    if not resp.is_success:
        raise ProvisionError(f"{what}: HTTP {resp.status_code}: {resp.text[:300]}")
    return resp.json()


class TeamProvisioner:
    """Creates what a scenario needs and removes it again (a context manager)."""

    def __init__(
        self, base_url: str, admin_token: str | None, *, prefix: str = "lt-", timeout_s: float = 30
    ) -> None:
        headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
        self.admin_token = admin_token
        self.prefix = prefix
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s)
        self.result = Provisioned()

    def team_body(self, scenario: Scenario, team: str) -> dict:
        spec = scenario.teams[team]
        return {
            "priority_class": spec.priority_class,
            "limits": spec.limits.model_dump(exclude_none=True),
        }

    def provision(self, scenario: Scenario, existing: dict[str, str]) -> Provisioned:
        res = self.result
        for team in scenario.teams:
            if team in existing:
                res.keys[team] = existing[team]
                res.team_names[team] = self.team_of(existing[team])
                continue
            if self.admin_token is None:
                raise ProvisionError(
                    f"team '{team}' has no key: give one (--key {team}=... or "
                    f"LLMPLAT_LOADTEST__KEYS__{team.upper()}) or an admin token "
                    "(LLMPLAT_ADMIN_TOKEN or LLMPLAT_ADMIN_TOKEN_FILE) to create it"
                )
            name = f"{self.prefix}{team}"
            res.team_names[team] = name
            body = self.team_body(scenario, team)
            resp = self.http.post("/admin/teams", json={"name": name, **body})
            if resp.status_code == 409:
                _check(self.http.patch(f"/admin/teams/{name}", json=body), f"update team {name}")
            else:
                _check(resp, f"create team {name}")
                res.created_teams.append(name)
            issued = _check(
                self.http.post(
                    f"/admin/teams/{name}/keys", json={"name": f"loadtest-{scenario.name}"}
                ),
                f"create a key for {name}",
            )
            res.created_key_ids.append(issued["key_id"])
            res.keys[team] = issued["key"]
        return res

    def team_of(self, key: str) -> str:
        """The platform team a given key belongs to (``?`` on other OpenAI-compatible servers)."""
        try:
            r = self.http.get("/v1/usage", headers={"Authorization": f"Bearer {key}"})
            return str(r.json()["team"]) if r.status_code == 200 else "?"
        except (httpx.HTTPError, ValueError, KeyError):
            return "?"

    def wait_until_keys_work(self, timeout_s: float = 15.0) -> None:
        """Gateways follow the key store within a second or two: wait for every key."""
        deadline = time.monotonic() + timeout_s
        pending = dict(self.result.keys)
        while pending:
            for team, key in list(pending.items()):
                r = self.http.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
                if r.status_code == 200:
                    del pending[team]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise ProvisionError(
                    f"keys of teams {sorted(pending)} not accepted within {timeout_s:.0f} s"
                )
            time.sleep(0.25)

    def first_model(self) -> str:
        key = next(iter(self.result.keys.values()))
        data = _check(
            self.http.get("/v1/models", headers={"Authorization": f"Bearer {key}"}), "list models"
        )
        if not data.get("data"):
            raise ProvisionError("the platform lists no models")
        return str(data["data"][0]["id"])

    def cleanup(self, *, delete_teams: bool = True) -> list[str]:
        """Revoke created keys, delete created teams; returns what failed (not raised)."""
        problems = []
        for key_id in self.result.created_key_ids:
            r = self.http.post(f"/admin/keys/{key_id}/revoke")
            if not r.is_success:
                problems.append(f"revoke key {key_id}: HTTP {r.status_code}")
        if delete_teams:
            for name in self.result.created_teams:
                r = self.http.delete(f"/admin/teams/{name}")
                if not r.is_success:
                    problems.append(f"delete team {name}: HTTP {r.status_code}")
        return problems

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> TeamProvisioner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
