"""Roles: every role against every admin endpoint of the API and the console.

One real control plane (SQLite and PostgreSQL); keys and console users of each role
(``control_plane.permissions``). The expected permission of each route is written
here, independently of the code: a route that checks the wrong permission, or
none, fails its row. A new ``/api`` route or console form that is not classified
below fails :func:`test_every_api_route_is_classified` /
:func:`test_every_console_form_is_classified`.

The attacks: a developer trying operator actions and minting a stronger key, an
auditor trying to write, a viewer raising its own role, an admin making itself
(or anyone) an owner, and another tenant's owner reaching this tenant's keys.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from harness.processes import ControlPlaneProcess, run_db
from outpost.control_plane.permissions import ROLES, Permission, allowed
from tests.conftest import _database

P = Permission
ANY = None  # any valid key: inference-only keys included

#: (method, path) -> the permission the route needs (ANY: a valid key of the tenant).
API: dict[tuple[str, str], Permission | None] = {
    ("get", "/api/audit"): P.AUDIT_READ,
    ("get", "/api/audit/checkpoints"): P.AUDIT_READ,
    ("get", "/api/audit/checkpoints/latest"): P.AUDIT_READ,
    ("get", "/api/audit/export"): P.AUDIT_READ,
    ("get", "/api/audit/keys"): ANY,  # public verification keys
    ("get", "/api/budgets"): ANY,  # a key without ``view`` sees its own budgets only
    ("post", "/api/budgets"): P.LIMITS_WRITE,
    ("delete", "/api/budgets/{budget_id}"): P.LIMITS_WRITE,
    ("get", "/api/deployments"): ANY,
    ("post", "/api/deployments"): P.DEPLOYMENTS_WRITE,
    ("get", "/api/deployments/compare"): ANY,
    ("get", "/api/deployments/{deployment_id}"): ANY,
    ("patch", "/api/deployments/{deployment_id}"): P.DEPLOYMENTS_WRITE,
    ("delete", "/api/deployments/{deployment_id}"): P.DEPLOYMENTS_WRITE,
    ("post", "/api/deployments/{deployment_id}/scale"): P.DEPLOYMENTS_WRITE,
    ("get", "/api/fairness/compare"): ANY,
    ("get", "/api/fairness/runs"): ANY,
    ("post", "/api/fairness/runs"): P.PROBES_RUN,
    ("post", "/api/fairness/runs/import"): P.PROBES_RUN,
    ("get", "/api/fairness/runs/{run_id}"): ANY,
    ("get", "/api/fairness/runs/{run_id}/responses"): ANY,
    ("get", "/api/fairness/service"): P.TENANT_WRITE,  # every tenant's service, anonymised
    ("get", "/api/keys"): P.VIEW,
    ("post", "/api/keys"): P.KEYS_WRITE,
    ("put", "/api/keys/{key_id}/models"): P.KEYS_WRITE,
    ("post", "/api/keys/{key_id}/revoke"): P.KEYS_WRITE,
    ("get", "/api/quotas"): P.VIEW,
    ("put", "/api/quotas"): P.LIMITS_WRITE,
    ("put", "/api/keys/{key_id}/quotas"): P.LIMITS_WRITE,
    ("get", "/api/pools"): ANY,
    ("post", "/api/pools"): P.POOLS_WRITE,
    ("get", "/api/pools/grants"): ANY,
    ("post", "/api/pools/grants/{grant_id}/revoke"): P.POOLS_WRITE,
    ("get", "/api/pools/sharing"): ANY,
    ("put", "/api/pools/sharing"): P.POOLS_WRITE,
    ("post", "/api/pools/{pool}/grants"): P.POOLS_WRITE,
    ("get", "/api/runners"): ANY,
    ("post", "/api/runners/enroll"): P.RUNNERS_WRITE,
    ("patch", "/api/runners/{runner_id}"): P.RUNNERS_WRITE,
    ("get", "/api/runners/{runner_id}/e2e-key"): ANY,
    ("post", "/api/runners/{runner_id}/revoke"): P.RUNNERS_WRITE,
    ("get", "/api/usage"): ANY,
}
#: Routes no API key authenticates (a runner's enrollment token or signature), and why.
NOT_KEY_ROUTES = {
    ("post", "/api/runners/register"),  # the enrollment token
    ("put", "/api/runners/{runner_id}/e2e-key"),  # the runner's signature
}
#: Bodies that pass validation, so a refusal is the permission check's (never a 422).
API_BODIES: dict[tuple[str, str], object] = {
    ("post", "/api/budgets"): {"amount_usd": 5, "period": "day"},
    ("post", "/api/keys"): {"name": "matrix"},
    ("put", "/api/keys/{key_id}/models"): {"allowed_models": ["smollm2-*"]},
    ("put", "/api/quotas"): {"tokens_per_minute": 1_000_000},
    ("put", "/api/keys/{key_id}/quotas"): {"tokens_per_day": 1_000_000},
    ("post", "/api/pools"): {"name": "matrix-pool"},
    ("put", "/api/pools/sharing"): {"refuse_shared_pools": False},
    ("post", "/api/pools/{pool}/grants"): {"tenant": "roles-other"},
    ("post", "/api/runners/enroll"): {"name": "matrix-runner"},
    ("patch", "/api/runners/{runner_id}"): {"usd_per_hour": 1},
}

#: Console forms (method, path) -> permission; every one needs a signed-in user and its CSRF token.
CONSOLE: dict[tuple[str, str], Permission | None] = {
    ("post", "/runners/enroll"): P.RUNNERS_WRITE,
    ("post", "/runners/{runner_id}/settings"): P.RUNNERS_WRITE,
    ("post", "/runners/{runner_id}/revoke"): P.RUNNERS_WRITE,
    ("post", "/keys"): P.KEYS_WRITE,
    ("post", "/keys/{key_id}/revoke"): P.KEYS_WRITE,
    ("post", "/keys/{key_id}/models"): P.KEYS_WRITE,
    ("post", "/keys/{key_id}/limits"): P.LIMITS_WRITE,
    ("post", "/budgets"): P.LIMITS_WRITE,
    ("post", "/budgets/{budget_id}/delete"): P.LIMITS_WRITE,
    ("post", "/pools"): P.POOLS_WRITE,
    ("post", "/pools/grant"): P.POOLS_WRITE,
    ("post", "/pools/grants/{grant_id}/revoke"): P.POOLS_WRITE,
    ("post", "/pools/sharing"): P.POOLS_WRITE,
    ("post", "/fairness/runs"): P.PROBES_RUN,
    ("post", "/deployments"): P.DEPLOYMENTS_WRITE,
    ("post", "/deployments/{deployment_id}/scale"): P.DEPLOYMENTS_WRITE,
    ("post", "/deployments/{deployment_id}/delete"): P.DEPLOYMENTS_WRITE,
    ("post", "/settings/tenant"): P.TENANT_WRITE,
    ("post", "/settings/users"): P.TENANT_WRITE,
    ("post", "/settings/users/{user_id}/unlock"): P.TENANT_WRITE,
    ("post", "/settings/users/{user_id}/role"): P.TENANT_WRITE,
    ("post", "/settings/password"): ANY,
    ("post", "/playground/chat"): P.PLAYGROUND,
    ("post", "/logout"): ANY,
    ("post", "/login"): ANY,
    ("get", "/runners"): P.VIEW,
    ("get", "/keys"): P.VIEW,
    ("get", "/pools"): P.VIEW,
    ("get", "/usage"): P.VIEW,
    ("get", "/models"): P.VIEW,
    ("get", "/fairness"): P.VIEW,
    ("get", "/deployments"): P.VIEW,
    ("get", "/audit"): P.AUDIT_READ,
    ("get", "/audit/export"): P.AUDIT_READ,
}
#: Console forms the matrix does not post, and why.
CONSOLE_SKIPPED = {
    ("post", "/settings/password"),  # every user's own password: tests/console
    ("post", "/logout"),  # would end the session the matrix runs on
    ("post", "/login"),  # before any role
}

PASSWORD = "correct horse battery staple 26"
OTHER_TENANT = "roles-other"


@dataclass
class Roles:
    cp: ControlPlaneProcess
    keys: dict[str, str]  # role (or "none") -> secret
    key_ids: dict[str, str]
    other_owner: str
    users: dict[str, str]  # role -> user id

    def api(self, role: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.cp.url,
            headers={"Authorization": f"Bearer {self.keys[role]}"},
            timeout=60,
        )


def _make_users(url: str) -> dict[str, str]:
    from outpost.control_plane.console.passwords import hash_password
    from outpost.control_plane.db.engine import Database
    from outpost.control_plane.store.tenants import get_or_create_tenant
    from outpost.control_plane.store.users import create_user

    digest = hash_password(PASSWORD)  # one slow hash for every user

    async def go(db: Database) -> dict[str, str]:
        out: dict[str, str] = {}
        async with db.session() as session:
            tenant = await get_or_create_tenant(session, "default")
            for role in ROLES:
                user = await create_user(
                    session,
                    tenant_id=tenant.id,
                    email=f"{role}@roles.example",
                    password_hash=digest,
                    role=role,
                )
                out[role] = user.id
            await session.commit()
        return out

    return run_db(url, go)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def roles(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Roles]:
    tmp: Path = tmp_path_factory.mktemp(f"roles-{request.param}")
    db = _database(request.param, tmp)
    url = next(db)
    cp = ControlPlaneProcess(tmp / "cp", url).start()
    try:
        owner = cp.cli("keys", "create", "owner", "--role", "owner").splitlines()[-1]
        other = cp.cli(
            "keys", "create", "other-owner", "--tenant", OTHER_TENANT, "--role", "owner"
        ).splitlines()[-1]
        keys, ids = {"owner": owner}, {}
        with httpx.Client(
            base_url=cp.url, headers={"Authorization": f"Bearer {owner}"}, timeout=60
        ) as client:
            for role in (*ROLES[1:], "none"):
                body = {"name": f"as-{role}"} | ({"role": role} if role != "none" else {})
                made = client.post("/api/keys", json=body)
                assert made.status_code == 201, made.text
                assert made.json()["role"] == (None if role == "none" else role)
                keys[role], ids[role] = made.json()["key"], made.json()["id"]
            listed = {k["name"]: k["id"] for k in client.get("/api/keys").json()["data"]}
            ids["owner"] = listed["owner"]
        yield Roles(cp, keys, ids, other, _make_users(url))
    finally:
        cp.stop()
        db.close()


def _fill(path: str, value: str = "nonexistent0") -> str:
    return re.sub(r"\{[^}]+\}", value, path)


def _is_permission_refusal(response: httpx.Response) -> bool:
    if response.status_code != 403:
        return False
    return response.json()["error"]["code"] in {"permission_denied", "forbidden"}


# -- the API ------------------------------------------------------------------------------------


def test_every_api_route_is_classified(roles: Roles) -> None:
    spec = httpx.get(f"{roles.cp.url}/openapi.json", timeout=30).json()
    routes = {
        (method, path)
        for path, ops in spec["paths"].items()
        if path.startswith("/api/")
        for method in ops
    }
    missing = routes - set(API) - NOT_KEY_ROUTES
    assert not missing, f"classify these routes in API (tests/security/test_roles.py): {missing}"


@pytest.mark.parametrize("role", [*ROLES, "none"])
def test_api_matrix(roles: Roles, role: str) -> None:
    """Each role is refused exactly the routes whose permission it lacks, with a 403 that names
    the permission; every other route lets it past the check (whatever it then answers)."""
    spec = httpx.get(f"{roles.cp.url}/openapi.json", timeout=30).json()
    live = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    failures = []
    with roles.api(role) as client:
        for (method, path), permission in sorted(API.items(), key=str):
            if (method, path) not in live:
                continue  # a route of a feature not in this tree (yet)
            body = API_BODIES.get(
                (method, path), {} if method in {"post", "put", "patch"} else None
            )
            response = client.request(method.upper(), _fill(path), json=body)
            refused = _is_permission_refusal(response)
            expected = permission is not None and not allowed(
                None if role == "none" else role, permission
            )
            names_it = permission is not None and permission.value in response.text
            if refused != expected or (refused and not names_it):
                failures.append((method, path, response.status_code, response.text[:200]))
    assert not failures, f"{role}: {failures}"


def test_developer_cannot_act_as_operator_or_mint_a_stronger_key(roles: Roles) -> None:
    with roles.api("developer") as dev:
        enroll = dev.post("/api/runners/enroll", json={"name": "dev-runner"})
        assert enroll.status_code == 403, enroll.text
        assert enroll.json()["error"]["code"] == "permission_denied"
        for stronger in ("operator", "admin", "owner", "auditor"):
            made = dev.post("/api/keys", json={"name": "up", "role": stronger})
            assert made.status_code == 403, (stronger, made.text)
            assert made.json()["error"]["code"] == "permission_denied"
        # The legacy scope is the admin role: no way round through it.
        legacy = dev.post("/api/keys", json={"name": "up", "scopes": ["inference", "admin"]})
        assert legacy.status_code == 403, legacy.text
        same = dev.post("/api/keys", json={"name": "peer", "role": "developer"})
        assert same.status_code == 201, same.text
        # Nor lock out the owner by revoking the owner's key.
        revoke = dev.post(f"/api/keys/{roles.key_ids['owner']}/revoke")
        assert revoke.status_code == 403, revoke.text
    with roles.api("owner") as owner:
        assert owner.get("/api/keys").status_code == 200  # still valid
        names = {k["name"]: k for k in owner.get("/api/keys").json()["data"]}
        assert "up" not in names  # nothing was created by the refused attempts
        assert names["peer"]["role"] == "developer"


def test_auditor_reads_the_audit_log_and_writes_nothing(roles: Roles) -> None:
    with roles.api("auditor") as auditor:
        export = auditor.get("/api/audit/export")
        assert export.status_code == 200, export.text
        lines = [json.loads(line) for line in export.text.splitlines()]
        kinds = [line["kind"] for line in lines]
        assert kinds[0] == "header" and "event" in kinds, kinds  # the setup's own key events
        assert auditor.get("/api/audit").status_code == 200
        for method, path, body in (
            ("post", "/api/keys", {"name": "aud"}),
            ("post", "/api/budgets", {"amount_usd": 1, "period": "day"}),
            ("post", "/api/pools", {"name": "aud-pool"}),
            ("put", "/api/pools/sharing", {"refuse_shared_pools": True}),
            ("post", "/api/runners/enroll", {"name": "aud-runner"}),
            ("post", f"/api/keys/{roles.key_ids['viewer']}/revoke", None),
        ):
            response = auditor.request(method.upper(), path, json=body)
            assert response.status_code == 403, (path, response.text)
        assert auditor.get("/api/keys").status_code == 403  # the tenant's keys: not the log
    with roles.api("owner") as owner:
        sharing = owner.get("/api/pools/sharing").json()
        assert sharing["refuse_shared_pools"] is False


def test_viewer_cannot_raise_its_own_role(roles: Roles) -> None:
    with roles.api("viewer") as viewer:
        for body in (
            {"name": "me-too", "role": "admin"},
            {"name": "me-too", "role": "viewer"},  # keys.write: not the viewer's
        ):
            response = viewer.post("/api/keys", json=body)
            assert response.status_code == 403, response.text
        models = viewer.put(
            f"/api/keys/{roles.key_ids['viewer']}/models", json={"allowed_models": None}
        )
        assert models.status_code == 403, models.text


def test_an_admin_key_cannot_make_or_unmake_an_owner(roles: Roles) -> None:
    with roles.api("admin") as admin:
        made = admin.post("/api/keys", json={"name": "crown", "role": "owner"})
        assert made.status_code == 403, made.text
        revoke = admin.post(f"/api/keys/{roles.key_ids['owner']}/revoke")
        assert revoke.status_code == 403, revoke.text
        ok = admin.post("/api/keys", json={"name": "ops", "role": "operator"})
        assert ok.status_code == 201, ok.text


def test_another_tenants_owner_reaches_no_key_of_this_tenant(roles: Roles) -> None:
    with httpx.Client(
        base_url=roles.cp.url,
        headers={"Authorization": f"Bearer {roles.other_owner}"},
        timeout=60,
    ) as other:
        victim = roles.key_ids["developer"]
        for method, path, body in (
            ("post", f"/api/keys/{victim}/revoke", None),
            ("put", f"/api/keys/{victim}/models", {"allowed_models": []}),
        ):
            response = other.request(method.upper(), path, json=body)
            assert response.status_code == 404, response.text
            assert victim not in response.text or "in this tenant" in response.text
        listed = other.get("/api/keys").json()["data"]
        assert victim not in {k["id"] for k in listed}
    with roles.api("developer") as developer:
        assert developer.get("/v1/models").status_code == 200  # neither revoked nor narrowed


# -- the console --------------------------------------------------------------------------------


def _console_routes() -> set[tuple[str, str]]:
    """Every route of every module of ``console/pages`` (a new module is found too)."""
    import importlib
    import pkgutil

    from fastapi.routing import APIRoute

    from outpost.control_plane.console import pages

    out = set()
    for info in pkgutil.iter_modules(pages.__path__):
        module = importlib.import_module(f"{pages.__name__}.{info.name}")
        for route in getattr(module, "router").routes:
            if isinstance(route, APIRoute):
                out |= {(m.lower(), route.path) for m in route.methods if m != "HEAD"}
    return out


def test_every_console_form_is_classified() -> None:
    posts = {r for r in _console_routes() if r[0] != "get"}
    missing = posts - set(CONSOLE)
    assert not missing, f"classify these console forms in CONSOLE: {missing}"


def _login(cp: ControlPlaneProcess, email: str) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=cp.url, timeout=60)
    form = client.get("/login")
    token = re.search(r'name="login_token" value="([^"]+)"', form.text)
    assert token, form.text[:500]
    signed_in = client.post(
        "/login",
        data={"email": email, "password": PASSWORD, "login_token": token.group(1)},
    )
    assert signed_in.status_code == 303, signed_in.text[:500]
    page = client.get("/settings")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf, page.text[:500]
    return client, csrf.group(1)


@pytest.mark.parametrize("role", ROLES)
def test_console_matrix(roles: Roles, role: str) -> None:
    client, csrf = _login(roles.cp, f"{role}@roles.example")
    failures = []
    try:
        for (method, path), permission in sorted(CONSOLE.items(), key=str):
            if (method, path) in CONSOLE_SKIPPED:
                continue
            url = _fill(path)
            if path == "/playground/chat":
                response = client.post(
                    url,
                    json={"model": "none", "messages": [{"role": "user", "content": "hi"}]},
                    headers={"X-CSRF-Token": csrf},
                )
            elif method == "post":
                response = client.post(url, data={"csrf_token": csrf, "role": "viewer"})
            else:
                response = client.get(url)
            refused = response.status_code == 403 and "forbidden" in response.text
            expected = permission is not None and not allowed(role, permission)
            if refused != expected:
                failures.append((method, path, response.status_code, response.text[:200]))
    finally:
        client.close()
    assert not failures, f"{role}: {failures}"


def test_console_viewer_cannot_raise_its_own_role_nor_an_admin_crown_anyone(roles: Roles) -> None:
    viewer, csrf = _login(roles.cp, "viewer@roles.example")
    with closing(viewer):
        own = viewer.post(
            f"/settings/users/{roles.users['viewer']}/role",
            data={"csrf_token": csrf, "role": "owner"},
        )
        assert own.status_code == 403, own.text[:300]
    admin, csrf = _login(roles.cp, "admin@roles.example")
    with closing(admin):
        itself = admin.post(
            f"/settings/users/{roles.users['admin']}/role",
            data={"csrf_token": csrf, "role": "owner"},
        )
        assert itself.status_code == 400, itself.text[:300]  # never one's own role
        crown = admin.post(
            f"/settings/users/{roles.users['developer']}/role",
            data={"csrf_token": csrf, "role": "owner"},
        )
        assert crown.status_code in (400, 403), crown.text[:300]
        assert _role_of(roles, "developer") == "developer"
        demote = admin.post(
            f"/settings/users/{roles.users['owner']}/role",
            data={"csrf_token": csrf, "role": "viewer"},
        )
        assert demote.status_code in (400, 403), demote.text[:300]
        new_owner = admin.post(
            "/settings/users",
            data={
                "csrf_token": csrf,
                "email": "usurper@roles.example",
                "password": PASSWORD,
                "role": "owner",
            },
        )
        assert new_owner.status_code == 403, new_owner.text[:300]
    assert _role_of(roles, "owner") == "owner"
    assert _role_of(roles, "viewer") == "viewer"


def _role_of(roles: Roles, role: str) -> str:
    from outpost.control_plane.db.engine import Database
    from outpost.control_plane.store.users import get_user

    async def go(db: Database) -> str:
        async with db.session() as session:
            user = await get_user(session, roles.users[role])
            assert user is not None
            return user.role

    return run_db(roles.cp.database_url, go)


# -- single sign-on -------------------------------------------------------------------------------


def test_oidc_maps_claims_to_every_role_and_the_most_powerful_wins() -> None:
    from pydantic import ValidationError

    from outpost.control_plane.console.oidc import map_identity
    from outpost.control_plane.settings import Settings

    settings = Settings(
        oidc_issuer="https://sso.example",
        oidc_client_id="outpost-console",
        oidc_role_map={role.upper(): role for role in ROLES},
        public_url="http://localhost:1",
    )
    claims = {"sub": "s", "email": "a@corp.example"}
    for role in ROLES:
        assert map_identity({**claims, "groups": [role.upper()]}, settings).role == role
    # Groups for an auditor and an operator: the operator's role, whatever the claim's order.
    for groups in (["AUDITOR", "OPERATOR"], ["OPERATOR", "AUDITOR"]):
        assert map_identity({**claims, "groups": groups}, settings).role == "operator"
    assert map_identity({**claims, "groups": ["VIEWER", "OWNER"]}, settings).role == "owner"
    with pytest.raises(ValidationError):  # a role that does not exist is refused at start
        Settings(oidc_role_map={"x": "superuser"}, public_url="http://localhost:1")
