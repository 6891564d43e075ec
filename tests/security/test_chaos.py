"""Chaos under load (issue 12): the engine crashes, the runner crashes, the control plane restarts,
while clients keep sending streamed and unstreamed requests — on SQLite and on PostgreSQL.

The promises checked:

* every request ends, for its client, in a complete answer or a clear error: an OpenAI error
  body, or an SSE error event followed by ``[DONE]``; a refused or reset connection is allowed
  only for a request the control plane never answered (it was down);
* every request the control plane answered (it has an ``x-request-id``) has at most one request
  record and at most one audit event, and every one answered 200 has exactly one of each —
  nothing accepted is lost, nothing is counted twice.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import create_engine, text

from harness.processes import ControlPlaneProcess, RunnerProcess, wait_until
from outpost.control_plane.db.engine import sync_url
from tests.conftest import _database

MODEL = "smollm2-135m-instruct"
CLIENTS = 3


@dataclass
class Outcome:
    request_id: str | None
    status: int
    kind: str  # ok | error_event | error_body | not_accepted | truncated | unclear
    detail: str = ""


@dataclass
class Chaos:
    cp: ControlPlaneProcess
    runner: RunnerProcess
    key: str
    database_url: str
    tmp: Path
    outcomes: list[Outcome] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def successes(self) -> int:
        return sum(1 for o in list(self.outcomes) if o.kind == "ok")


def _one(chaos: Chaos, i: int) -> Outcome:
    stream = i % 2 == 0
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Count to ten ({i})."}],
        "max_tokens": 24,
        "ignore_eos": True,
        "temperature": 0,
        "stream": stream,
    }
    rid: str | None = None
    try:
        with httpx.stream(
            "POST",
            f"{chaos.cp.url}/v1/chat/completions",
            json=body,
            headers=chaos.headers,
            timeout=120,
        ) as resp:
            rid = resp.headers.get("x-request-id")
            if resp.status_code != 200:
                err = json.loads(resp.read()).get("error", {})
                kind = "error_body" if err.get("message") and err.get("type") else "unclear"
                return Outcome(rid, resp.status_code, kind, str(err)[:200])
            if not stream:
                data = json.loads(resp.read())
                ok = data["usage"]["completion_tokens"] == 24
                return Outcome(rid, 200, "ok" if ok else "unclear", str(data["usage"]))
            events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    except (httpx.TransportError, json.JSONDecodeError) as exc:
        # Before the response started, the request was never accepted; after, it was cut
        # unannounced.
        return Outcome(rid, 0, "not_accepted" if rid is None else "truncated", type(exc).__name__)
    if not events or events[-1] != "[DONE]":
        return Outcome(rid, 200, "truncated", events[-1][:200] if events else "no events")
    errors = [e for e in events[:-1] if '"error"' in e]
    return Outcome(rid, 200, "error_event" if errors else "ok", errors[0][:200] if errors else "")


def _client(chaos: Chaos, first: int) -> None:
    i = first
    while not chaos.stop.is_set():
        chaos.outcomes.append(_one(chaos, i))
        i += CLIENTS
        if chaos.outcomes[-1].kind == "not_accepted":
            time.sleep(0.2)  # the control plane is down: do not spin


def _wait_serving_again(chaos: Chaos, what: str) -> None:
    before = chaos.successes()
    wait_until(
        lambda: chaos.successes() >= before + 2, 120, f"requests to succeed again after {what}"
    )


def _engine_processes(runner: RunnerProcess) -> list[psutil.Process]:
    assert runner.proc is not None
    return [
        p
        for p in psutil.Process(runner.proc.pid).children(recursive=True)
        if "xllamacpp_main" in " ".join(p.cmdline())
    ]


@pytest.fixture(params=["sqlite", "postgres"])
def chaos(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Chaos]:
    db = _database(request.param, tmp_path)
    url = next(db)
    cp = ControlPlaneProcess(tmp_path / "cp", url).start()
    runner = RunnerProcess(
        cp, tmp_path / "runner", "chaos", args=["--parallel", "2", "--ctx", "2048"]
    )
    c = Chaos(
        cp, runner, cp.cli("keys", "create", "chaos", "--admin").splitlines()[-1], url, tmp_path
    )
    try:
        runner.start()
        runner.wait_connected(c.key)
        yield c
    finally:
        c.stop.set()
        for p in _engine_processes(runner) if runner.proc and runner.proc.poll() is None else []:
            p.kill()
        c.runner.stop(timeout=10)
        c.cp.stop()
        db.close()


def _rows(url: str) -> tuple[Counter[str], Counter[str]]:
    """Request records and inference audit events, counted by request id."""
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            records = Counter(r[0] for r in conn.execute(text("SELECT id FROM request_records")))
            audited: Counter[str] = Counter()
            for (data,) in conn.execute(
                text("SELECT data FROM audit_events WHERE type = 'inference'")
            ):
                audited[(data if isinstance(data, dict) else json.loads(data))["request_id"]] += 1
            return records, audited
    finally:
        engine.dispose()


@pytest.mark.timeout(600)
def test_engine_crash_runner_crash_and_control_plane_restart_under_load(chaos: Chaos) -> None:
    threads = [
        threading.Thread(target=_client, args=(chaos, k), daemon=True) for k in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    try:
        _wait_serving_again(chaos, "start")

        # 1. The engine crashes: the supervisor restarts it, the runner keeps its tunnel.
        engines = _engine_processes(chaos.runner)
        assert engines, chaos.runner.log()
        for p in engines:
            p.send_signal(signal.SIGKILL)
        _wait_serving_again(chaos, "the engine crash")

        # 2. The runner crashes (and its engine with it); it is started again with the same
        # identity.
        engines = _engine_processes(chaos.runner)
        assert chaos.runner.proc is not None
        chaos.runner.proc.send_signal(signal.SIGKILL)
        chaos.runner.proc.wait(10)
        for p in engines:  # the engine of a killed runner would live on, holding memory
            p.kill()
        chaos.runner.start()
        _wait_serving_again(chaos, "the runner crash")

        # 3. The control plane restarts (SIGTERM: it drains, then a new process on the same port and
        # state).
        old = chaos.cp
        assert old.stop() in (0, -signal.SIGTERM)
        chaos.cp = ControlPlaneProcess(
            old.state_dir, old.env["OUTPOST_DATABASE_URL"], port=old.port
        ).start()
        _wait_serving_again(chaos, "the control plane restart")
    finally:
        chaos.stop.set()
        for t in threads:
            t.join(180)

    outcomes = list(chaos.outcomes)
    kinds = Counter(o.kind for o in outcomes)
    unclear = [o for o in outcomes if o.kind in ("truncated", "unclear")]
    assert not unclear, f"{kinds}: {unclear[:5]}"
    assert kinds["ok"] >= 8, kinds

    answered = {o.request_id for o in outcomes if o.request_id}
    succeeded = {o.request_id for o in outcomes if o.status == 200 and o.request_id}

    def complete() -> bool:
        records, audited = _rows(chaos.database_url)
        return all(records[r] == 1 and audited[r] == 1 for r in succeeded)

    wait_until(complete, 60, "every answered request's record and audit event")
    records, audited = _rows(chaos.database_url)
    assert all(records[r] <= 1 and audited[r] <= 1 for r in answered), "a request recorded twice"
    assert max(audited.values()) == 1 and max(records.values()) == 1
