"""Issue 19: a tenant's prompts reach only runners it may use; what a runner claims routes and
bills nothing.

A real control plane (uvicorn; SQLite and PostgreSQL) with no shared pool, and scripted runners
that speak the real tunnel protocol through a real WebSocket: tenant A's own runner (labelled
``site: victim-site`` by A's admin at enrollment) and tenant B's rogue, which advertises A's model
and alias at ``usd_per_hour: 0`` and claims A's residency label in its hello. Every attack of the
issue that concerns who may receive a prompt or set a price is one test here; docs/security.md
names them.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from harness.processes import ControlPlaneProcess, tenant_records
from outpost.sdk import protocol
from outpost.sdk.e2e.keydoc import signed_hpke_key
from outpost.sdk.e2e.keys import RunnerKeys
from outpost.sdk.identity import IdentityKey
from outpost.sdk.protocol import (
    ChallengeFrame,
    DataFrame,
    EndFrame,
    RequestFrame,
    ResponseStartFrame,
    Usage,
    encode_frame,
    handshake_message,
    parse_frame,
)
from tests.conftest import _database

MODEL, ALIAS = "smollm2-135m-instruct", "smollm2"
SITE = {"site": "victim-site"}


class ScriptedRunner:
    """A runner enrolled by ``admin``'s tenant that answers every request with its own name.

    Each prompt it receives is kept in ``captured``: for the rogue, what it could read.
    """

    def __init__(self, cp: ControlPlaneProcess, admin: str, name: str, **enroll: Any) -> None:
        self.cp, self.name = cp, name
        made = httpx.post(
            f"{cp.url}/api/runners/enroll",
            json={"name": name, **enroll},
            timeout=10,
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert made.status_code == 201, made.text
        self.keys = RunnerKeys.generate()
        self.identity = IdentityKey(self.keys.identity)
        registered = httpx.post(
            f"{cp.url}/api/runners/register",
            timeout=10,
            json={"identity_public_key": self.identity.public_b64},
            headers={"Authorization": f"Bearer {made.json()['token']}"},
        )
        assert registered.status_code == 201, registered.text
        self.runner_id: str = registered.json()["runner_id"]
        self.captured: list[str] = []
        self.sockets: list[ClientConnection] = []

    def connect(self, index: int = 0, **hello: Any) -> None:
        ws = connect(
            self.cp.url.replace("http://", "ws://") + "/tunnel/v1",
            max_size=None,
            compression=None,
            open_timeout=10,
            legacy=True,
        )
        challenge = parse_frame(ws.recv(timeout=10))
        assert isinstance(challenge, ChallengeFrame)
        frame = {
            "type": "hello.v1",
            "runner_id": self.runner_id,
            "version": 1,
            "capacity": 4,
            "signature": self.identity.sign(handshake_message(challenge.nonce, self.runner_id, 1)),
            "models": [{"name": MODEL, "engine": "fake", "aliases": [ALIAS]}],
            "capabilities": sorted(protocol.CAPABILITIES),
            "connection_index": index,
            **hello,
        }
        ws.send(json.dumps(frame))
        assert json.loads(ws.recv(timeout=10))["type"] == "welcome.v1"
        self.sockets.append(ws)
        threading.Thread(target=self._serve, args=(ws,), daemon=True).start()

    def publish_e2e_key(self) -> None:
        doc = signed_hpke_key(self.keys.identity, self.keys.hpke_public, self.runner_id)
        resp = httpx.put(
            f"{self.cp.url}/api/runners/{self.runner_id}/e2e-key", json=doc, timeout=10
        )
        assert resp.status_code == 200, resp.text

    def close(self) -> None:
        for ws in self.sockets:
            ws.close()

    def _serve(self, ws: ClientConnection) -> None:
        try:
            while True:
                frame = parse_frame(ws.recv())
                if isinstance(frame, RequestFrame):
                    self.captured.append(frame.body)
                    sid = frame.stream_id
                    body = json.dumps(
                        {
                            "object": "chat.completion",
                            "model": MODEL,
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": self.name},
                                    "finish_reason": "stop",
                                }
                            ],
                            "usage": {
                                "prompt_tokens": 3,
                                "completion_tokens": 1,
                                "total_tokens": 4,
                            },
                        }
                    )
                    for out in (
                        ResponseStartFrame(stream_id=sid, status=200),
                        DataFrame(stream_id=sid, data=body),
                        EndFrame(stream_id=sid, usage=Usage(prompt_tokens=3, completion_tokens=1)),
                    ):
                        ws.send(encode_frame(out))
        except (ConnectionClosed, OSError):
            return


class World:
    def __init__(self, cp: ControlPlaneProcess, url: str) -> None:
        self.cp, self.url = cp, url
        self.admin = {
            t: cp.cli("keys", "create", "admin", "--tenant", t, "--admin").splitlines()[-1]
            for t in ("victim", "attacker", "bystander")
        }
        # The victim keeps its prompts on its own site: a residency rule set before any request.
        cp.cli("tenants", "set", "victim", "--residency", json.dumps({"site": ["victim-site"]}))
        self.honest = ScriptedRunner(cp, self.admin["victim"], "honest", labels=SITE)
        self.honest.connect()
        self.rogue = ScriptedRunner(cp, self.admin["attacker"], "rogue")
        # What the attacker sent: the victim's model and alias, free, and the victim's
        # label.
        self.rogue.connect(labels=SITE, cost={"usd_per_hour": 0})
        for r in (self.honest, self.rogue):
            r.publish_e2e_key()

    def chat(self, tenant: str, prompt: str = "hello", model: str = ALIAS) -> httpx.Response:
        return httpx.post(
            f"{self.cp.url}/v1/chat/completions",
            timeout=30,
            headers={"Authorization": f"Bearer {self.admin[tenant]}"},
            json={
                "model": model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 4,
            },
        )

    def get(self, tenant: str, path: str) -> httpx.Response:
        return httpx.get(
            f"{self.cp.url}{path}",
            headers={"Authorization": f"Bearer {self.admin[tenant]}"},
            timeout=10,
        )

    def send(
        self, tenant: str, method: str, path: str, body: Any = None, **kw: Any
    ) -> httpx.Response:
        return httpx.request(
            method,
            f"{self.cp.url}{path}",
            json=body,
            timeout=10,
            headers={"Authorization": f"Bearer {self.admin[tenant]}", **kw.pop("headers", {})},
            **kw,
        )

    def runner_row(self, tenant: str, runner_id: str) -> dict:
        return next(
            r for r in self.get(tenant, "/api/runners").json()["data"] if r["id"] == runner_id
        )


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp(f"pools-{request.param}")
    db = _database(request.param, tmp)
    url = next(db)
    cp = ControlPlaneProcess(
        tmp / "cp", url, shared_pool=False, extra_env={"OUTPOST_RUNNER_WAIT_S": "1"}
    ).start()
    world = None
    try:
        world = World(cp, url)
        yield world
    finally:
        if world is not None:
            world.honest.close()
            world.rogue.close()
        cp.stop()
        db.close()


def test_another_tenants_runner_gets_none_of_our_prompts_even_claiming_our_label(
    world: World,
) -> None:
    """Issue 19 "prompt capture": 6 of 6 requests went to B's free runner, also under A's
    residency rule."""
    secret = "VICTIM-" + secrets.token_hex(4)
    for _ in range(6):
        resp = world.chat("victim", secret)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-outpost-runner"] == world.honest.runner_id
        assert resp.json()["choices"][0]["message"]["content"] == "honest"
    assert not any(secret in body for body in world.rogue.captured)


def test_a_tenant_without_runners_or_grants_reaches_nobody(world: World) -> None:
    """A bystander tenant may use no pool at all: its request is a 404, not someone else's
    runner."""
    secret = "BYSTANDER-" + secrets.token_hex(4)
    resp = world.chat("bystander", secret)
    assert resp.status_code == 404, resp.text
    assert resp.json()["error"]["code"] == "model_not_found"
    assert not any(secret in body for r in (world.rogue, world.honest) for body in r.captured)


def test_the_rogue_serves_its_own_tenant(world: World) -> None:
    """The rogue is connected and routable: the tests above pass because of pools, not by
    accident."""
    resp = world.chat("attacker", "mine")
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-outpost-runner"] == world.rogue.runner_id


def test_models_and_e2e_runner_list_show_only_usable_runners(world: World) -> None:
    """``GET /v1/models`` counts only the caller's runners; ``GET /v1/e2e/runners`` lists only
    them."""
    for tenant, mine in (("victim", world.honest), ("attacker", world.rogue)):
        models = {m["id"]: m for m in world.get(tenant, "/v1/models").json()["data"]}
        assert models[ALIAS]["runners"] == 1
        listed = [r["runner_id"] for r in world.get(tenant, "/v1/e2e/runners").json()["data"]]
        assert listed == [mine.runner_id], listed
        other = world.rogue if mine is world.honest else world.honest
        assert world.get(tenant, f"/api/runners/{other.runner_id}/e2e-key").status_code == 404
    assert world.get("bystander", "/v1/models").json()["data"] == []
    assert world.get("bystander", "/v1/e2e/runners").json()["data"] == []


def test_labels_a_runner_reports_are_shown_never_trusted(world: World) -> None:
    rogue = world.runner_row("attacker", world.rogue.runner_id)
    assert rogue["reported_labels"] == SITE and rogue["labels"] == {}
    honest = world.runner_row("victim", world.honest.runner_id)
    assert honest["labels"] == SITE


def test_a_later_hello_does_not_change_the_price(world: World) -> None:
    """Issue 19 "billing": a second connection's hello at a huge price changed the whole
    runner's price."""
    world.rogue.connect(index=1, cost={"usd_per_hour": 900})
    for _ in range(4):  # both connections serve; neither bills at the second hello's price
        assert world.chat("attacker").status_code == 200
    costs = [r["cost_usd"] for r in tenant_records(world.url, "attacker") if r["status"] == "ok"]
    assert costs and all(c == 0 for c in costs), costs
    assert world.runner_row("attacker", world.rogue.runner_id)["usd_per_hour"] == 0.0


def test_a_first_hello_out_of_bounds_gets_the_hardware_default(world: World) -> None:
    """A first hello may only propose a price within bounds (0-1000 $/h); above, the hardware
    default."""
    greedy = ScriptedRunner(world.cp, world.admin["attacker"], f"greedy-{secrets.token_hex(2)}")
    greedy.connect(cost={"usd_per_hour": 5000})
    try:
        assert world.runner_row("attacker", greedy.runner_id)["usd_per_hour"] == pytest.approx(0.10)
    finally:
        greedy.close()


@pytest.mark.parametrize("raw", ["1e9", "Infinity", "NaN", "-1", '"5"', "true", "1001"])
def test_the_owner_sets_the_price_within_bounds(world: World, raw: str) -> None:
    resp = httpx.patch(
        f"{world.cp.url}/api/runners/{world.rogue.runner_id}",
        timeout=10,
        content=f'{{"usd_per_hour": {raw}}}',
        headers={
            "Authorization": f"Bearer {world.admin['attacker']}",
            "Content-Type": "application/json",
        },
    )
    assert resp.status_code in (400, 422), resp.text
    assert world.runner_row("attacker", world.rogue.runner_id)["usd_per_hour"] == 0.0


def test_the_owners_price_is_what_routing_and_billing_use(world: World) -> None:
    path = f"/api/runners/{world.honest.runner_id}"
    assert (
        world.send("attacker", "PATCH", path, {"usd_per_hour": 2.0}).status_code == 404
    )  # not B's runner
    resp = world.send("victim", "PATCH", path, {"usd_per_hour": 36.0})
    assert resp.status_code == 200, resp.text
    assert resp.json()["usd_per_hour"] == 36.0
    assert world.chat("victim").status_code == 200
    record = max(tenant_records(world.url, "victim"), key=lambda r: r["created_at"])
    assert record["cost_usd"] == pytest.approx(record["engine_share_s"] * 36.0 / 3600, rel=1e-6)
    assert record["cost_usd"] > 0
    world.send("victim", "PATCH", path, {"usd_per_hour": 0.1})


def test_owner_labels_are_what_residency_obeys(world: World) -> None:
    """The victim's admin relabels its runner: the residency rule no longer matches, nothing is
    routed."""
    path = f"/api/runners/{world.honest.runner_id}"
    assert world.send("victim", "PATCH", path, {"labels": {"site": "elsewhere"}}).status_code == 200
    try:
        resp = world.chat("victim")
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "no_eligible_runner", (
            resp.text
        )
    finally:
        assert world.send("victim", "PATCH", path, {"labels": SITE}).status_code == 200
    assert world.chat("victim").status_code == 200


def test_grants_are_audited_on_both_sides_revocable_by_the_grantee_and_refusable(
    world: World,
) -> None:
    grant = world.send("victim", "POST", "/api/pools/default/grants", {"tenant": "bystander"})
    assert grant.status_code == 201, grant.text
    grant_id = grant.json()["id"]
    try:
        resp = world.chat("bystander")  # no residency rule of its own: A's runner serves it now
        assert (
            resp.status_code == 200 and resp.headers["x-outpost-runner"] == world.honest.runner_id
        )
        incoming = world.get("bystander", "/api/pools/grants").json()["data"]
        assert [(g["id"], g["direction"]) for g in incoming] == [(grant_id, "incoming")]
        for tenant in ("victim", "bystander"):
            events = world.get(tenant, "/api/audit?type=admin.pool.grant").json()["data"]
            assert any(e["data"]["target"] == grant_id for e in events), (tenant, events)
        # Refusing shared pools takes effect at once, and accepting again restores the grant.
        assert (
            world.send(
                "bystander", "PUT", "/api/pools/sharing", {"refuse_shared_pools": True}
            ).status_code
            == 200
        )
        assert world.chat("bystander").status_code == 404
        assert (
            world.send(
                "bystander", "PUT", "/api/pools/sharing", {"refuse_shared_pools": False}
            ).status_code
            == 200
        )
        assert world.chat("bystander").status_code == 200
        # The grantee revokes it; the attacker (neither side) cannot even see it.
        assert (
            world.send("attacker", "POST", f"/api/pools/grants/{grant_id}/revoke").status_code
            == 404
        )
        assert (
            world.send("bystander", "POST", f"/api/pools/grants/{grant_id}/revoke").status_code
            == 200
        )
        assert world.chat("bystander").status_code == 404
        events = world.get("victim", "/api/audit?type=admin.pool.revoke_grant").json()["data"]
        assert any(e["data"]["target"] == grant_id for e in events)
    finally:
        world.send("victim", "POST", f"/api/pools/grants/{grant_id}/revoke")


def test_only_the_platform_operator_grants_to_every_tenant(world: World) -> None:
    resp = world.send("attacker", "POST", "/api/pools/default/grants", {"tenant": "*"})
    assert resp.status_code == 403, resp.text
    # Naming another tenant's pool is a 404: pools are per tenant.
    victim_pool = world.get("victim", "/api/pools").json()["data"][0]["id"]
    assert (
        world.send(
            "attacker", "POST", f"/api/pools/{victim_pool}/grants", {"tenant": "attacker"}
        ).status_code
        == 404
    )
    assert world.chat("attacker", model=MODEL).headers["x-outpost-runner"] == world.rogue.runner_id


def test_pools_end_to_end_through_the_sdk(world: World) -> None:
    """The SDK's pools resource and runner settings against the real API (the sync client is
    generated)."""
    from outpost.sdk.client import Client

    with (
        Client(world.cp.url, world.admin["victim"]) as victim,
        Client(world.cp.url, world.admin["bystander"]) as bystander,
    ):
        gpu = victim.pools.create(f"gpu-{secrets.token_hex(2)}")
        assert gpu.name in [p.name for p in victim.pools.list()]
        token = victim.runners.enroll(
            f"gpu-box-{secrets.token_hex(2)}", pool=gpu.name, labels={"site": "b"}
        )
        assert token.token
        grant = victim.pools.grant(gpu.id, "bystander")
        assert (grant.direction, grant.pool_name) == ("outgoing", gpu.name)
        assert [g.id for g in bystander.pools.grants()] == [grant.id]
        assert bystander.pools.revoke_grant(grant.id).revoked_at is not None
        assert bystander.pools.grants() == []
        assert bystander.pools.set_sharing(refuse_shared_pools=True).refuse_shared_pools is True
        assert bystander.pools.set_sharing(refuse_shared_pools=False).refuse_shared_pools is False
        runner = next(r for r in victim.runners.list() if r.id == world.honest.runner_id)
        assert (
            runner.labels == SITE and runner.pool_id is not None and runner.usd_per_hour is not None
        )
        moved = victim.runners.update(world.honest.runner_id, pool=gpu.id)
        try:
            assert moved.pool_id == gpu.id
            assert world.chat("victim").headers["x-outpost-runner"] == world.honest.runner_id
        finally:
            victim.runners.update(world.honest.runner_id, pool="default")


def test_the_fairness_view_lists_only_usable_runners(world: World) -> None:
    """``GET /api/fairness/service`` showed every runner's id and live queue to any tenant's
    admin."""
    for tenant, mine, other in (
        ("victim", world.honest, world.rogue),
        ("attacker", world.rogue, world.honest),
    ):
        runners = world.get(tenant, "/api/fairness/service").json()["runners"]
        ids = {k.split("#", 1)[0] for k in runners}
        assert mine.runner_id in ids and other.runner_id not in ids, (tenant, ids)


def test_pools_through_the_cli(world: World) -> None:
    """``control-plane pools ...`` and ``runners enroll --pool/--labels``, ``runners set``: the
    operator's shell."""
    cli = world.cp.cli
    name = f"cli-{secrets.token_hex(2)}"
    made = json.loads(cli("pools", "create", name, "--tenant", "victim"))
    token = cli(
        "runners",
        "enroll",
        f"box-{name}",
        "--tenant",
        "victim",
        "--pool",
        name,
        "--labels",
        json.dumps({"site": "cli"}),
    ).splitlines()[-1]
    key = IdentityKey(RunnerKeys.generate().identity)
    registered = httpx.post(
        f"{world.cp.url}/api/runners/register",
        json={"identity_public_key": key.public_b64},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert registered.status_code == 201, registered.text
    row = world.runner_row("victim", registered.json()["runner_id"])
    assert (row["pool_id"], row["labels"]) == (made["id"], {"site": "cli"})
    grant = json.loads(cli("pools", "grant", name, "--to", "bystander", "--tenant", "victim"))
    assert grant["grantee_tenant_id"] != "*" and grant["pool_id"] == made["id"]
    listed = json.loads(cli("pools", "list", "--tenant", "bystander"))
    assert [g["id"] for g in listed["grants"]] == [grant["id"]]
    assert json.loads(cli("pools", "revoke", grant["id"], "--tenant", "bystander"))["revoked_at"]
    with pytest.raises(RuntimeError, match="platform operator"):
        cli("pools", "grant", name, "--to", "*", "--tenant", "victim")
    with pytest.raises(RuntimeError, match="usd_per_hour"):
        cli("runners", "set", world.rogue.runner_id, "--usd-per-hour", "5000")
    changed = json.loads(
        cli("runners", "set", world.rogue.runner_id, "--labels", json.dumps({"site": "b-lab"}))
    )
    try:
        assert changed["labels"] == {"site": "b-lab"}
        assert world.runner_row("attacker", world.rogue.runner_id)["labels"] == {"site": "b-lab"}
    finally:
        cli("runners", "set", world.rogue.runner_id, "--labels", "{}")


def test_a_sealed_request_to_another_tenants_runner_is_404(world: World) -> None:
    """End-to-end mode names its runner: one of another tenant is refused as unknown, key or not."""
    from outpost.sdk.e2e.envelope import seal_request

    keyless = ScriptedRunner(world.cp, world.admin["attacker"], f"keyless-{secrets.token_hex(2)}")
    for target in (world.rogue.runner_id, keyless.runner_id):
        request_id = f"e2e_{secrets.token_hex(12)}"
        envelope, _ = seal_request(
            world.rogue.keys.hpke_public, target, b'{"messages": []}', request_id
        )
        before = len(world.rogue.captured)
        resp = httpx.post(
            f"{world.cp.url}/v1/e2e/chat/completions",
            timeout=30,
            headers={
                "Authorization": f"Bearer {world.admin['victim']}",
                "X-Outpost-Runner": target,
            },
            json={"model": ALIAS, "request_id": request_id, "envelope": envelope, "max_tokens": 4},
        )
        assert resp.status_code == 404, (target, resp.text)
        assert resp.json()["error"]["code"] == "runner_not_found"
        assert len(world.rogue.captured) == before
