"""Issue 22, control plane: placement, reports and routing, against runners on the real protocol.

A real control plane (uvicorn, SQLite) and scripted runners (tests/security/rogue.py: enrolled,
signing, through a real WebSocket) that receive ``deploy.v1``/``undeploy.v1`` and answer with
``replica.v1`` as a test says. They play the runner's side honestly where the test is about the
control plane's bookkeeping, and lie where it is an attack: claiming a name they were not given,
reporting replicas that are not theirs, or sending reports without the capability.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from harness.processes import ControlPlaneProcess, wait_until
from outpost.control_plane.probes import ProbeRunner, ProbeTarget, SamplingSettings, builtin_suite
from outpost.sdk.protocol import (
    CAPABILITIES,
    DataFrame,
    DeployFrame,
    EndFrame,
    ModelInfo,
    ReplicaFrame,
    RequestFrame,
    ResponseStartFrame,
    UndeployFrame,
    Usage,
    encode_frame,
    parse_frame,
)
from tests.probes.fakes import FakeBiasedEngine, FakeEngine
from tests.security.rogue import RogueRunner, closed_with, exchange, send

STATIC = "static-model"


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    tmp: Path = tmp_path_factory.mktemp("dep-reconcile")
    proc = ControlPlaneProcess(
        tmp / "cp",
        f"sqlite+aiosqlite:///{tmp / 'outpost.db'}",
        extra_env={
            "OUTPOST_DEPLOYMENT_RECONCILE_INTERVAL_S": "0.5",
            "OUTPOST_DEPLOYMENT_RUNNER_GRACE_S": "1",
            "OUTPOST_DEPLOYMENT_WAKE_TIMEOUT_S": "15",
            "OUTPOST_DEPLOYMENT_SCALE_UP_AFTER_S": "2",
            # A stream waiting for a wake gets its headers after 1 s, then keep-alives.
            "OUTPOST_STREAM_HEADERS_AFTER_S": "1",
            "OUTPOST_STREAM_KEEPALIVE_S": "1",
        },
        shared_pool=False,
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


class Tenant:
    """A tenant with an admin key and a rogue-runner factory enrolled in its default pool."""

    def __init__(self, cp: ControlPlaneProcess, name: str) -> None:
        self.cp, self.name = cp, name
        self.admin = cp.cli("keys", "create", "a", "--tenant", name, "--admin").splitlines()[-1]

    def api(self, method: str, path: str = "", **kw: Any) -> httpx.Response:
        return httpx.request(
            method,
            f"{self.cp.url}/api/deployments{path}",
            headers={"Authorization": f"Bearer {self.admin}"},
            timeout=10,
            **kw,
        )

    def deploy(self, name: str, **over: Any) -> dict[str, Any]:
        body = {"name": name, "source": {"kind": "path", "path": "smol.gguf"}, **over}
        made = self.api("POST", json=body)
        assert made.status_code == 201, made.text
        return made.json()

    def runner(self, **hello: Any) -> tuple[RogueRunner, ClientConnection]:
        """A scripted runner; without ``served-names`` unless ``hello`` says otherwise: a replica
        answers to its public name, as a runner built before that capability does."""
        rogue = RogueRunner(self.cp, self.name, STATIC)
        hello.setdefault("capabilities", sorted(CAPABILITIES - {"served-names"}))
        return rogue, rogue.connect(**hello)

    def models(self) -> list[str]:
        return self.cp.models(self.admin)


@pytest.fixture(scope="module")
def acme(cp: ControlPlaneProcess) -> Tenant:
    return Tenant(cp, "acme")


def next_frame(ws: ClientConnection, kind: type, timeout: float = 30) -> Any:
    """The next frame of ``kind`` the control plane sends (status/window frames skipped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            frame = parse_frame(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        except TimeoutError:
            break
        if isinstance(frame, kind):
            return frame
    raise AssertionError(f"no {kind.__name__} within {timeout}s")


def no_frame(ws: ClientConnection, kind: type, within: float) -> None:
    try:
        frame = next_frame(ws, kind, within)
    except AssertionError:
        return
    raise AssertionError(f"unexpected {frame}")


def report(ws: ClientConnection, replica_id: str, state: str, **kw: Any) -> None:
    send(ws, ReplicaFrame(replica_id=replica_id, state=state, **kw))  # type: ignore[arg-type]


def ready(ws: ClientConnection, replica_id: str, name: str, aliases: list[str] = []) -> None:  # noqa: B006
    model = ModelInfo(name=name, engine="llama.cpp", aliases=aliases)
    report(ws, replica_id, "ready", model=model)


def replicas(t: Tenant, dep_id: str) -> list[dict[str, Any]]:
    return t.api("GET", f"/{dep_id}").json()["replica_status"]


def replica_state(t: Tenant, dep_id: str, replica_id: str) -> str | None:
    return next((r["state"] for r in replicas(t, dep_id) if r["id"] == replica_id), None)


def answer(name: str) -> Any:
    def reply(request: RequestFrame) -> list[object]:
        body = {
            "object": "chat.completion",
            "model": request.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": name},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
        sid = request.stream_id
        return [
            ResponseStartFrame(stream_id=sid, status=200),
            DataFrame(stream_id=sid, data=json.dumps(body)),
            EndFrame(stream_id=sid, usage=Usage(prompt_tokens=3, completion_tokens=1)),
        ]

    return reply


def chat(cp: ControlPlaneProcess, key: str, model: str) -> httpx.Response:
    return httpx.post(
        f"{cp.url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_deploy_progress_ready_route_delete(cp: ControlPlaneProcess, acme: Tenant) -> None:
    _, ws = acme.runner()
    dep = acme.deploy("smol-two", aliases=["smol-2"], engine_options={"ctx": 1024})
    frame = next_frame(ws, DeployFrame)
    assert (frame.name, frame.aliases, frame.deployment_id) == ("smol-two", ["smol-2"], dep["id"])
    assert frame.source.kind == "path" and frame.engine_options == {"ctx": 1024}
    rid = frame.replica_id

    report(ws, rid, "downloading", bytes_done=25, bytes_total=100, rate_bps=25.0)
    wait_until(lambda: replica_state(acme, dep["id"], rid) == "downloading", 10, "progress")
    shown = replicas(acme, dep["id"])[0]
    assert (shown["bytes_done"], shown["bytes_total"], shown["eta_s"]) == (25, 100, 3.0)
    assert "smol-two" not in acme.models()  # not ready: not routed

    ready(ws, rid, "smol-two", ["smol-2"])
    wait_until(lambda: "smol-two" in acme.models(), 10, "the name routed")
    assert "smol-2" in acme.models()
    listed = acme.api("GET").json()
    assert listed["data"][0]["ready_replicas"] == 1
    assert [s["name"] for s in listed["static"]] == [STATIC]  # the hello's model, shown as static

    resp, request = exchange(
        ws,
        f"{cp.url}/v1/chat/completions",
        acme.admin,
        {"model": "smol-2", "messages": [{"role": "user", "content": "hi"}]},
        answer("deployed"),
    )
    assert resp.status_code == 200, resp.text
    assert request.model == "smol-two"  # the alias reaches the runner as the deployment's name

    assert acme.api("DELETE", f"/{dep['id']}").status_code == 204
    undeploy = next_frame(ws, UndeployFrame)
    assert undeploy.replica_id == rid
    wait_until(lambda: "smol-two" not in acme.models(), 10, "the name gone")
    assert chat(cp, acme.admin, "smol-two").status_code == 404
    report(ws, rid, "stopped")
    wait_until(lambda: acme.api("GET").json()["data"] == [], 10, "the deployment forgotten")
    ws.close()


def test_a_runner_cannot_claim_a_name_it_was_not_given(acme: Tenant) -> None:
    _, ws = acme.runner()
    dep = acme.deploy("honest-name")
    rid = next_frame(ws, DeployFrame).replica_id
    ready(ws, rid, "someone-elses-model", ["honest-name"])
    assert next_frame(ws, UndeployFrame).replica_id == rid
    wait_until(lambda: replica_state(acme, dep["id"], rid) == "failed", 10, "replica failed")
    reason = replicas(acme, dep["id"])[0]["reason"]
    assert "someone-elses-model" in reason
    assert not {"honest-name", "someone-elses-model"} & set(acme.models())
    # Failed here, it is not placed on the same runner again.
    no_frame(ws, DeployFrame, 2)
    acme.api("DELETE", f"/{dep['id']}")
    ws.close()


def test_reports_for_unknown_or_foreign_replicas(cp: ControlPlaneProcess, acme: Tenant) -> None:
    _, owner_ws = acme.runner()
    dep = acme.deploy("foreign-check")
    rid = next_frame(owner_ws, DeployFrame).replica_id
    # Another runner of the same tenant reports the owner's replica ready, then an invented one.
    _, thief_ws = acme.runner()
    ready(thief_ws, rid, "foreign-check")
    assert next_frame(thief_ws, UndeployFrame).replica_id == rid
    report(thief_ws, "rep_invented", "loading")
    assert next_frame(thief_ws, UndeployFrame).replica_id == "rep_invented"
    assert replica_state(acme, dep["id"], rid) == "pending"
    assert "foreign-check" not in acme.models()
    acme.api("DELETE", f"/{dep['id']}")
    owner_ws.close()
    thief_ws.close()


def test_without_the_capability_no_orders_and_no_reports(acme: Tenant) -> None:
    rogue, ws = acme.runner(capabilities=["status"])
    dep = acme.deploy("needs-cap")
    no_frame(ws, DeployFrame, 3)
    assert replicas(acme, dep["id"]) == []
    report(ws, "rep_x", "ready", model=ModelInfo(name="needs-cap", engine="x"))
    code, _ = closed_with(ws)
    assert code is not None and code != 1000  # a protocol error, not a silent accept
    assert rogue.runner_id
    acme.api("DELETE", f"/{dep['id']}")


@pytest.mark.parametrize(
    "order",
    [
        DeployFrame.model_validate(
            {
                "replica_id": "rep_rogue",
                "deployment_id": "dep_rogue",
                "name": "rogue",
                "source": {"kind": "path", "path": "m.gguf"},
            }
        ),
        UndeployFrame(replica_id="rep_rogue", drain_s=0),
    ],
    ids=["deploy", "undeploy"],
)
def test_a_runner_sending_orders_is_closed(acme: Tenant, order: Any) -> None:
    # Orders flow from the control plane to the runner only.
    _, ws = acme.runner()
    send(ws, encode_frame(order))
    code, _ = closed_with(ws)
    assert code == 4000


def test_replica_replaced_when_its_runner_is_lost(cp: ControlPlaneProcess) -> None:
    t = Tenant(cp, "lossy")
    _, first = t.runner()
    dep = t.deploy("survivor")
    rid = next_frame(first, DeployFrame).replica_id
    ready(first, rid, "survivor")
    wait_until(lambda: "survivor" in t.models(), 10, "ready on the first runner")
    _, second = t.runner()
    no_frame(second, DeployFrame, 1.5)  # one replica wanted, and it is placed
    first.close()
    moved = next_frame(second, DeployFrame)
    assert moved.replica_id != rid and moved.name == "survivor"
    ready(second, moved.replica_id, "survivor")
    wait_until(lambda: chat_ok(t, second, "survivor"), 20, "served by the second runner")
    assert [r["id"] for r in replicas(t, dep["id"])] == [moved.replica_id]
    second.close()


def chat_ok(t: Tenant, ws: ClientConnection, model: str) -> bool:
    if model not in t.models():
        return False
    resp, _ = exchange(
        ws,
        f"{t.cp.url}/v1/chat/completions",
        t.admin,
        {"model": model, "messages": [{"role": "user", "content": "x"}]},
        answer("second"),
    )
    return resp.status_code == 200


def test_rolling_update_keeps_the_old_replica_until_the_new_is_ready(
    cp: ControlPlaneProcess,
) -> None:
    t = Tenant(cp, "roller")
    _, ws = t.runner()
    dep = t.deploy("rolled", engine_options={"ctx": 1024})
    old = next_frame(ws, DeployFrame)
    ready(ws, old.replica_id, "rolled")
    wait_until(lambda: "rolled" in t.models(), 10, "generation 1 ready")
    patched = t.api("PATCH", f"/{dep['id']}", json={"engine_options": {"ctx": 2048}})
    assert patched.json()["generation"] == 2
    new = next_frame(ws, DeployFrame)
    assert new.generation == 2 and new.engine_options == {"ctx": 2048}
    report(ws, new.replica_id, "loading")
    no_frame(ws, UndeployFrame, 2)  # the old one serves while the new one loads
    assert "rolled" in t.models()
    ready(ws, new.replica_id, "rolled")
    assert next_frame(ws, UndeployFrame).replica_id == old.replica_id
    assert "rolled" in t.models()  # served by the new replica throughout
    report(ws, old.replica_id, "stopped")
    wait_until(lambda: len(replicas(t, dep["id"])) == 1, 10, "the old replica forgotten")
    ws.close()


def test_another_tenant_cannot_reach_a_deployment(cp: ControlPlaneProcess) -> None:
    owner, other = Tenant(cp, "dep-owner"), Tenant(cp, "dep-other")
    _, ws = owner.runner()
    dep = owner.deploy("private-model")
    ready(ws, next_frame(ws, DeployFrame).replica_id, "private-model")
    wait_until(lambda: "private-model" in owner.models(), 10, "ready")
    assert "private-model" not in other.models()
    assert chat(cp, other.admin, "private-model").status_code == 404
    assert other.api("GET", f"/{dep['id']}").status_code == 404
    ws.close()


def test_report_floods_and_bad_numbers_are_refused(acme: Tenant) -> None:
    _, ws = acme.runner()
    bad = json.dumps(
        {"type": "replica.v1", "replica_id": "r1", "state": "downloading", "bytes_done": 10**400}
    )
    send(ws, bad)
    code, _ = closed_with(ws)
    assert code is not None and code != 1000
    _, ws2 = acme.runner()
    nan = '{"type": "replica.v1", "replica_id": "r1", "state": "downloading", "rate_bps": NaN}'
    send(ws2, nan)
    assert closed_with(ws2)[0] not in (None, 1000)
    # Encoded by the contract itself, a consistent report is accepted (no close).
    _, ws3 = acme.runner()
    ws3.send(encode_frame(ReplicaFrame(replica_id="r2", state="stopped")))
    no_frame(ws3, UndeployFrame, 1)  # unknown and stopped: nothing to answer
    ws3.close()


class Answering:
    """Answers every request on ``ws`` in a thread and counts them (after the test's own reads)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws, self.count = ws, 0
        self.models: dict[str, int] = {}  # the name each request asked the runner for
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            while True:
                frame = parse_frame(self.ws.recv())
                if isinstance(frame, RequestFrame):
                    self.count += 1
                    self.models[frame.model] = self.models.get(frame.model, 0) + 1
                    send(self.ws, *answer("ab")(frame))
        except (ConnectionClosed, OSError):
            return


def test_two_deployments_share_a_name_by_weight(cp: ControlPlaneProcess) -> None:
    t = Tenant(cp, "ab-tenant")
    (_, ws_a), (_, ws_b) = t.runner(), t.runner()
    a = t.deploy("ab-model", weight=1)
    b = t.deploy("ab-model", weight=0)
    # One name per runner: the two deployments land on different runners.
    for ws in (ws_a, ws_b):
        frame = next_frame(ws, DeployFrame)
        ready(ws, frame.replica_id, "ab-model")
        assert frame.deployment_id in (a["id"], b["id"])
    wait_until(
        lambda: all(t.api("GET", f"/{d['id']}").json()["ready_replicas"] == 1 for d in (a, b)),
        10,
        "both ready",
    )
    answering = {ws: Answering(ws) for ws in (ws_a, ws_b)}
    counts = lambda: [answering[ws].count for ws in (ws_a, ws_b)]  # noqa: E731

    def run(n: int) -> None:
        for _ in range(n):
            assert chat(cp, t.admin, "ab-model").status_code == 200

    run(8)  # weight 0: deployment b gets nothing
    first = counts()
    assert sorted(first) == [0, 8], first
    t.api("PATCH", f"/{a['id']}", json={"weight": 0})
    t.api("PATCH", f"/{b['id']}", json={"weight": 1})
    run(8)  # now all to b, on the other runner
    second = [x - y for x, y in zip(counts(), first, strict=True)]
    assert second == [8 - c for c in first], (first, second)
    t.api("PATCH", f"/{a['id']}", json={"weight": 1})
    before = counts()
    run(24)  # 1:1 — both get some (all 24 on one side: 2**-23)
    third = [x - y for x, y in zip(counts(), before, strict=True)]
    assert min(third) > 0, third

    # The comparison: each deployment's requests, from the request records.
    def compared() -> dict[str, dict[str, Any]]:
        got = t.api("GET", "/compare", params={"name": "ab-model"})
        assert got.status_code == 200, got.text
        return {row["id"]: row for row in got.json()["data"]}

    wait_until(lambda: sum(r["requests"] for r in compared().values()) == 40, 20, "records")
    rows = compared()
    assert set(rows) == {a["id"], b["id"]}
    served_by_a = rows[a["id"]]["requests"]
    assert served_by_a == 8 + third[0 if first[0] == 8 else 1]
    for row in rows.values():
        assert row["errors"] == 0 and row["error_rate"] == 0
        assert row["completion_tokens"] == row["requests"]  # 1 token per scripted answer
        assert row["ttft_ms"]["p50"] is not None and len(row["runners"]) == 1
    bad = t.api("GET", "/compare", params={"name": "ab-model", "window_s": 10**12})
    assert bad.status_code == 400
    assert (
        Tenant(cp, "ab-other").api("GET", "/compare", params={"name": "ab-model"}).json()["data"]
        == []
    )
    ws_a.close()
    ws_b.close()
    _ab_on_one_runner(Tenant(cp, "ab-one-tenant"))  # its own pool: a's and b's runners are gone


def _ab_on_one_runner(t: Tenant) -> None:
    """A runner with ``served-names`` holds both deployments of one name: each replica answers
    there to its deployment's id, a request asks for the drawn one's, and the records say which
    deployment served it (the comparison counts them apart on one runner)."""
    _, ws = t.runner(capabilities=sorted(CAPABILITIES))
    a, b = t.deploy("ab-one", weight=1), t.deploy("ab-one", weight=1)
    frames = {f.deployment_id: f for f in (next_frame(ws, DeployFrame) for _ in range(2))}
    assert set(frames) == {a["id"], b["id"]}
    for dep_id, frame in frames.items():
        assert (frame.name, frame.served_name) == ("ab-one", dep_id)
    ready(ws, frames[a["id"]].replica_id, a["id"])
    # b's replica claims the public name, not the one it was told to answer to: refused.
    rid_b = frames[b["id"]].replica_id
    ready(ws, rid_b, "ab-one")
    assert next_frame(ws, UndeployFrame).replica_id == rid_b
    assert replica_state(t, b["id"], rid_b) == "failed"
    c = t.deploy("ab-one", aliases=["ab-one-c"], weight=1)
    frame_c = next_frame(ws, DeployFrame)
    assert (frame_c.deployment_id, frame_c.served_name) == (c["id"], c["id"])
    ready(ws, frame_c.replica_id, c["id"], ["ab-one-c"])
    wait_until(
        lambda: all(t.api("GET", f"/{d['id']}").json()["ready_replicas"] == 1 for d in (a, c)),
        10,
        "both ready",
    )
    answering = Answering(ws)
    for _ in range(24):  # 1:1 — all 24 to one side: 2**-23
        assert chat(t.cp, t.admin, "ab-one").status_code == 200
    asked = dict(answering.models)
    assert set(asked) == {a["id"], c["id"]} and sum(asked.values()) == 24, asked

    def compared() -> dict[str, int]:
        got = t.api("GET", "/compare", params={"name": "ab-one"}).json()["data"]
        return {row["id"]: row["requests"] for row in got}

    wait_until(lambda: sum(compared().values()) == 24, 20, "records")
    assert compared() == {**asked, b["id"]: 0}
    _bias_probes_compared(t, a["id"], c["id"])
    ws.close()


def _bias_probes_compared(t: Tenant, a: str, c: str) -> None:
    """The comparison shows each deployment's latest bias-probe run: a run of c's own alias is
    c's alone (its requests reached only c); a run of the shared name is marked shared."""
    for model, engine in (("ab-one", FakeEngine()), ("ab-one-c", FakeBiasedEngine())):
        run = asyncio.run(
            ProbeRunner(
                ProbeTarget(base_url="http://fake-engine.test/v1", model=model),
                "sk-probe",
                sampling=SamplingSettings(temperature=0.0, max_tokens=16, seed=1),
                transport=engine.transport(),
                show_progress=False,
            ).run(builtin_suite())
        )
        made = httpx.post(
            f"{t.cp.url}/api/fairness/runs/import",
            json={"run": run.model_dump(mode="json")},
            headers={"Authorization": f"Bearer {t.admin}"},
            timeout=30,
        )
        assert made.status_code == 201, made.text
    rows = {r["id"]: r for r in t.api("GET", "/compare", params={"name": "ab-one"}).json()["data"]}
    got_a, got_c = rows[a]["bias_probe"], rows[c]["bias_probe"]
    assert (got_a["model"], got_a["shared"], got_a["flagged_attributes"]) == ("ab-one", True, [])
    assert (got_c["model"], got_c["shared"]) == ("ab-one-c", False)
    assert got_c["flagged_attributes"] == ["religion"]
    assert got_c["url"] == f"/fairness/runs/{got_c['run_id']}" and got_c["finished_at"]
    detail = httpx.get(
        f"{t.cp.url}{got_c['api_url']}", headers={"Authorization": f"Bearer {t.admin}"}
    )
    assert detail.status_code == 200 and detail.json()["model"] == "ab-one-c"


def _in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.setdefault("r", fn()), daemon=True)
    thread.start()
    return thread, result


def test_scale_to_zero_after_idle_then_a_request_wakes_it(cp: ControlPlaneProcess) -> None:
    t, stranger = Tenant(cp, "sleepy"), Tenant(cp, "stranger")
    _, ws = t.runner()
    dep = t.deploy("sleepy-model", min_replicas=0, max_replicas=1, idle_timeout_s=10)
    rid = next_frame(ws, DeployFrame).replica_id
    ready(ws, rid, "sleepy-model")
    wait_until(lambda: "sleepy-model" in t.models(), 10, "ready")
    # No request for 10 s: scaled to zero and undeployed.
    assert next_frame(ws, UndeployFrame, 60).replica_id == rid
    report(ws, rid, "stopped")
    wait_until(lambda: replicas(t, dep["id"]) == [], 10, "the replica forgotten")
    assert t.api("GET", f"/{dep['id']}").json()["replicas"] == 0
    assert "sleepy-model" not in t.models()

    # Another tenant's request does not wake it: the name is unknown to it.
    assert chat(cp, stranger.admin, "sleepy-model").status_code == 404
    no_frame(ws, DeployFrame, 1.5)

    # The owner's request wakes it and waits until the replica is ready.
    thread, result = _in_thread(lambda: chat(cp, t.admin, "sleepy-model"))
    woke = next_frame(ws, DeployFrame)
    assert woke.name == "sleepy-model" and woke.replica_id != rid
    ready(ws, woke.replica_id, "sleepy-model")
    request = next_frame(ws, RequestFrame)
    send(ws, *answer("awake")(request))
    thread.join(30)
    assert result["r"].status_code == 200, result["r"].text
    assert t.api("GET", f"/{dep['id']}").json()["replicas"] == 1

    events = httpx.get(
        f"{cp.url}/api/audit",
        params={"limit": 100},
        headers={"Authorization": f"Bearer {t.admin}"},
        timeout=10,
    ).json()["data"]
    actors = {e["actor"] for e in events if e["type"] == "admin.deployment.scale"}
    assert {"control-plane:idle", "control-plane:wake"} <= actors, actors

    # Scaled to zero by hand, woken, but never ready: a clear 503 after the bound.
    assert t.api("POST", f"/{dep['id']}/scale", json={"replicas": 0}).status_code == 200
    assert next_frame(ws, UndeployFrame).replica_id == woke.replica_id
    report(ws, woke.replica_id, "stopped")
    wait_until(lambda: replicas(t, dep["id"]) == [], 10, "undeployed")
    thread, result = _in_thread(lambda: chat(cp, t.admin, "sleepy-model"))
    stuck = next_frame(ws, DeployFrame)
    report(ws, stuck.replica_id, "loading")
    thread.join(60)
    resp = result["r"]
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "deployment_waking"
    # Still coming up (or asleep again): a stream waits too, kept alive with SSE comments,
    # and the same error ends it.
    streamed = httpx.post(
        f"{cp.url}/v1/chat/completions",
        json={
            "model": "sleepy-model",
            "stream": True,
            "messages": [{"role": "user", "content": "x"}],
        },
        headers={"Authorization": f"Bearer {t.admin}"},
        timeout=60,
    )
    assert streamed.status_code == 200
    assert ": keep-alive" in streamed.text and "deployment_waking" in streamed.text, streamed.text
    ws.close()


def test_scale_up_when_requests_keep_queueing(cp: ControlPlaneProcess) -> None:
    t = Tenant(cp, "busy")
    (rogue_a, ws_a), (_, ws_b) = t.runner(), t.runner()
    dep = t.deploy("busy-model", min_replicas=1, max_replicas=2)
    wait_until(lambda: len(replicas(t, dep["id"])) == 1, 10, "placed")
    holder_id = replicas(t, dep["id"])[0]["runner_id"]
    holder, spare = (ws_a, ws_b) if holder_id == rogue_a.runner_id else (ws_b, ws_a)
    ready(holder, next_frame(holder, DeployFrame).replica_id, "busy-model")
    wait_until(lambda: "busy-model" in t.models(), 10, "ready")
    no_frame(spare, DeployFrame, 1)
    # Six requests the holder never answers: four fill its slots (capacity 4), two queue.
    for _ in range(6):
        _in_thread(lambda: chat(cp, t.admin, "busy-model"))
    grown = next_frame(spare, DeployFrame, 30)
    assert grown.deployment_id == dep["id"]
    assert t.api("GET", f"/{dep['id']}").json()["replicas"] == 2
    events = httpx.get(
        f"{cp.url}/api/audit",
        params={"limit": 100},
        headers={"Authorization": f"Bearer {t.admin}"},
        timeout=10,
    ).json()["data"]
    assert any(
        e["actor"] == "control-plane:autoscale" and e["data"].get("target") == dep["id"]
        for e in events
    )
    ws_a.close()
    ws_b.close()


def test_a_flood_of_progress_reports_keeps_the_last_state(acme: Tenant) -> None:
    _, ws = acme.runner()
    dep = acme.deploy("flooded")
    rid = next_frame(ws, DeployFrame).replica_id
    for i in range(2000):  # far above the two a second a runner sends
        report(ws, rid, "downloading", bytes_done=i, bytes_total=10_000, rate_bps=1.0)
    report(ws, rid, "loading")
    wait_until(lambda: replica_state(acme, dep["id"], rid) == "loading", 30, "the state change")
    ready(ws, rid, "flooded")
    wait_until(lambda: "flooded" in acme.models(), 30, "ready after the flood")
    acme.api("DELETE", f"/{dep['id']}")
    ws.close()


def test_a_sleeping_ab_arm_wakes_when_the_draw_picks_it(cp: ControlPlaneProcess) -> None:
    """Two deployments share a name on one runner; one is scaled to zero. Requests keep going
    to the one that is up (none waits), and the sleeper, drawn by its weight, is woken."""
    t = Tenant(cp, "ab-wake-tenant")
    _, ws = t.runner(capabilities=sorted(CAPABILITIES))
    awake = t.deploy("ab-wake", weight=1)
    asleep = t.deploy("ab-wake", weight=1, min_replicas=0, replicas=0)
    frame = next_frame(ws, DeployFrame)
    assert frame.deployment_id == awake["id"]
    ready(ws, frame.replica_id, awake["id"])
    wait_until(lambda: t.api("GET", f"/{awake['id']}").json()["ready_replicas"] == 1, 10, "ready")
    answering = Answering(ws)
    for _ in range(16):  # the sleeper never drawn in 16 at 1:1: 2**-16
        assert chat(cp, t.admin, "ab-wake").status_code == 200
    assert answering.models == {awake["id"]: 16}  # all served by the arm that is up
    wait_until(
        lambda: t.api("GET", f"/{asleep['id']}").json()["replicas"] == 1, 10, "the sleeper woken"
    )
    ws.close()


def test_another_tenants_deployment_of_the_same_name_is_not_in_the_draw(
    cp: ControlPlaneProcess,
) -> None:
    """Two tenants each deploy the name ``common`` on a runner of their own pool. A tenant's
    requests draw among its own deployments only: another tenant's, heavily weighted, neither
    takes its requests nor answers them."""
    mine, theirs = Tenant(cp, "draw-mine"), Tenant(cp, "draw-theirs")
    served = {}
    for t, weight in ((mine, 1), (theirs, 1000)):
        _, ws = t.runner(capabilities=sorted(CAPABILITIES))
        dep = t.deploy("common", weight=weight)
        frame = next_frame(ws, DeployFrame)
        ready(ws, frame.replica_id, dep["id"])
        wait_until(lambda: t.api("GET", f"/{dep['id']}").json()["ready_replicas"] == 1, 10, "up")
        served[t.name] = (ws, Answering(ws), dep["id"])
    for _ in range(12):
        response = chat(cp, mine.admin, "common")
        assert response.status_code == 200, response.text
    assert served["draw-mine"][1].models == {served["draw-mine"][2]: 12}
    assert served["draw-theirs"][1].count == 0
    for ws, _, _ in served.values():
        ws.close()
