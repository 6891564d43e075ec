"""Issue 22, control plane: the deployments API on a real control plane (SQLite and PostgreSQL).

CRUD, scale, validation at the edge (what the schema allows but nobody meant), tenant trust
(another tenant's deployment is a 404; a pool granted to a tenant is for routing, not deploying)
and the audit event of every change. No runner is connected: replicas stay unplaced.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.processes import ControlPlaneProcess
from tests.conftest import _database

SHA = "ab" * 32


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def cp(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp: Path = tmp_path_factory.mktemp(f"dep-api-{request.param}")
    db = _database(request.param, tmp)
    url = next(db)
    proc = ControlPlaneProcess(tmp / "cp", url, shared_pool=False).start()
    try:
        yield proc
    finally:
        proc.stop()
        db.close()


_KEYS: dict[tuple[int, str, bool], str] = {}


def _key(cp: ControlPlaneProcess, tenant: str, *, admin: bool = True) -> str:
    """One key per tenant and role (the CLI is a process start: slow on a loaded machine)."""
    if (id(cp), tenant, admin) not in _KEYS:
        args = ["keys", "create", "k", "--tenant", tenant, *(["--admin"] if admin else [])]
        _KEYS[id(cp), tenant, admin] = cp.cli(*args).splitlines()[-1]
    return _KEYS[id(cp), tenant, admin]


def _api(cp: ControlPlaneProcess, key: str, method: str, path: str, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", **kw.pop("headers", {})}
    return httpx.request(
        method, f"{cp.url}/api/deployments{path}", headers=headers, timeout=10, **kw
    )


def _spec(**over: Any) -> dict[str, Any]:
    return {
        "name": "smol-b",
        "aliases": ["smol-b-latest"],
        "source": {"kind": "url", "url": "https://models.lan/smol.gguf", "sha256": SHA},
        "engine": "llama.cpp",
        "engine_options": {"ctx": 2048, "parallel": 2},
        "labels": {"site": ["lab"]},
        "min_replicas": 0,
        "max_replicas": 3,
        **over,
    }


def test_create_read_update_scale_delete(cp: ControlPlaneProcess) -> None:
    admin = _key(cp, "acme")
    made = _api(cp, admin, "POST", "", json=_spec())
    assert made.status_code == 201, made.text
    dep = made.json()
    assert dep["name"] == "smol-b" and dep["replicas"] == 1 and dep["generation"] == 1
    assert dep["source"]["sha256"] == SHA and dep["replica_status"] == []
    dep_id = dep["id"]

    listed = _api(cp, admin, "GET", "").json()
    assert [d["id"] for d in listed["data"]] == [dep_id]
    assert listed["static"] == []  # no runner connected

    # Weight and labels do not change what replicas run: same generation.
    same = _api(cp, admin, "PATCH", f"/{dep_id}", json={"weight": 3})
    assert same.status_code == 200, same.text
    assert same.json()["weight"] == 3 and same.json()["generation"] == 1
    # New engine options roll the replicas: a new generation.
    rolled = _api(cp, admin, "PATCH", f"/{dep_id}", json={"engine_options": {"ctx": 4096}})
    assert rolled.json()["generation"] == 2, rolled.text

    scaled = _api(cp, admin, "POST", f"/{dep_id}/scale", json={"replicas": 0})
    assert scaled.status_code == 200 and scaled.json()["replicas"] == 0
    too_many = _api(cp, admin, "POST", f"/{dep_id}/scale", json={"replicas": 4})
    assert too_many.status_code == 400
    assert too_many.json()["error"]["param"] == "replicas"

    assert _api(cp, admin, "DELETE", f"/{dep_id}").status_code == 204
    assert _api(cp, admin, "GET", f"/{dep_id}").status_code == 404
    assert _api(cp, admin, "GET", "").json()["data"] == []

    events = httpx.get(
        f"{cp.url}/api/audit",
        params={"limit": 100},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=10,
    ).json()["data"]
    types = [e["type"] for e in events if e["data"].get("target") == dep_id]
    for want in ("create", "update", "scale", "delete"):
        assert f"admin.deployment.{want}" in types, types


@pytest.mark.parametrize(
    ("override", "why"),
    [
        ({"source": {"kind": "path", "path": "../../etc/passwd"}}, "traversal"),
        ({"source": {"kind": "path", "path": "/models/x.gguf"}}, "absolute path"),
        ({"source": {"kind": "url", "url": "https://x.lan/m.gguf"}}, "no checksum"),
        ({"source": {"kind": "url", "url": "file:///etc/passwd", "sha256": SHA}}, "file url"),
        ({"source": {"kind": "hf", "repo": "org/../x"}}, "bad repo"),
        ({"source": {"kind": "ftp", "path": "x"}}, "unknown kind"),
        ({"engine": "tensorrt"}, "unknown engine"),
        ({"engine_options": {f"o{i}": i for i in range(17)}}, "too many options"),
        ({"engine_options": {"ctx": {"nested": 1}}}, "structured option"),
        ({"engine_options": {"Bad Key": 1}}, "option key"),
        ({"engine_options": {"ctx": 10**12}}, "huge option"),
        ({"max_replicas": 65}, "replicas bound"),
        ({"min_replicas": 2, "max_replicas": 1}, "min above max"),
        ({"replicas": 5}, "replicas above max"),
        ({"weight": -1}, "negative weight"),
        ({"weight": 1e308}, "huge weight"),
        ({"name": "x" * 201}, "long name"),
        ({"name": "bad name\n"}, "control characters"),
        ({"aliases": ["smol-b"]}, "alias repeats name"),
        ({"labels": {"site": []}}, "empty allowed list"),
        ({"idle_timeout_s": 1}, "idle below floor"),
        ({"surprise": True}, "unknown field"),
    ],
)
def test_bad_specs_are_clear_400s(cp: ControlPlaneProcess, override: dict, why: str) -> None:
    admin = _key(cp, "badspec")
    resp = _api(cp, admin, "POST", "", json=_spec(**override))
    assert resp.status_code == 400, (why, resp.status_code, resp.text)
    assert resp.json()["error"]["type"] == "invalid_request_error", why
    assert _api(cp, admin, "GET", "").json()["data"] == []


def test_weight_nan_refused(cp: ControlPlaneProcess) -> None:
    admin = _key(cp, "nan")
    body = json.dumps(_spec()).replace('"max_replicas": 3', '"max_replicas": 3, "weight": NaN')
    resp = _api(cp, admin, "POST", "", content=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400, resp.text


def test_other_tenant_sees_and_touches_nothing(cp: ControlPlaneProcess) -> None:
    owner, other = _key(cp, "owner-t"), _key(cp, "other-t")
    dep_id = _api(cp, owner, "POST", "", json=_spec()).json()["id"]
    assert _api(cp, other, "GET", "").json()["data"] == []
    for method, path, body in [
        ("GET", f"/{dep_id}", None),
        ("PATCH", f"/{dep_id}", {"weight": 2}),
        ("POST", f"/{dep_id}/scale", {"replicas": 2}),
        ("DELETE", f"/{dep_id}", None),
    ]:
        resp = _api(cp, other, method, path, json=body)
        assert resp.status_code == 404, (method, path, resp.text)
    assert _api(cp, owner, "GET", f"/{dep_id}").json()["weight"] == 1.0


def test_deploying_onto_another_tenants_pool_is_refused(cp: ControlPlaneProcess) -> None:
    owner, other = _key(cp, "pool-owner"), _key(cp, "pool-guest")
    pool = httpx.post(
        f"{cp.url}/api/pools",
        json={"name": "gpus"},
        headers={"Authorization": f"Bearer {owner}"},
        timeout=10,
    ).json()
    # Granted for routing: still not the guest's to deploy onto, by id or by name.
    granted = httpx.post(
        f"{cp.url}/api/pools/{pool['id']}/grants",
        json={"tenant": "pool-guest"},
        headers={"Authorization": f"Bearer {owner}"},
        timeout=10,
    )
    assert granted.status_code == 201, granted.text
    for ref in (pool["id"], "gpus"):
        resp = _api(cp, other, "POST", "", json=_spec(pool=ref))
        assert resp.status_code == 404, resp.text
        assert resp.json()["error"]["code"] == "pool_not_found"
    mine = _api(cp, owner, "POST", "", json=_spec(pool="gpus"))
    assert mine.status_code == 201 and mine.json()["pool_id"] == pool["id"]


def test_writes_need_an_admin_key(cp: ControlPlaneProcess) -> None:
    admin, plain = _key(cp, "rw"), _key(cp, "rw", admin=False)
    dep_id = _api(cp, admin, "POST", "", json=_spec()).json()["id"]
    assert _api(cp, plain, "GET", f"/{dep_id}").status_code == 200
    assert _api(cp, plain, "POST", "", json=_spec()).status_code == 403
    assert _api(cp, plain, "DELETE", f"/{dep_id}").status_code == 403
    assert _api(cp, plain, "POST", f"/{dep_id}/scale", json={"replicas": 2}).status_code == 403
