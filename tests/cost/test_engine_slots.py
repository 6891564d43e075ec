"""Engine slots: a runner with several engines is admitted per engine, not up to the summed
capacity.

In process, real parts: ``Admission`` over a ``FairScheduler``, a ``ConnectedRunner``
whose link carries the status frame's ``engines``, the runner's ``EngineFleet`` and
``TunnelClient`` status loop. The end-to-end check, with two real engines, is in
tests/runner/test_multi_model_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from outpost.control_plane.cluster.holder import Holder
from outpost.control_plane.cluster.registry import RemoteView, describe_runners
from outpost.control_plane.routing.admission import Admission
from outpost.control_plane.routing.service_fairness import ServiceFairness
from outpost.control_plane.services.budgets import BudgetGuard
from outpost.control_plane.services.cost import EngineTimeMeter
from outpost.control_plane.services.scheduler import FairScheduler, RunnerGone
from outpost.control_plane.tunnel.hub import ConnectedRunner, TunnelHub
from outpost.control_plane.tunnel.link import RunnerLoad
from outpost.runner.engines.base import ServedModel
from outpost.runner.engines.xllamacpp import XllamacppEngine
from outpost.runner.fleet import EngineFleet
from outpost.runner.tunnel import TunnelClient
from outpost.sdk.protocol import (
    EngineSlots,
    ModelInfo,
    StatusFrame,
    Usage,
    encode_frame,
    parse_frame,
)

ENGINES = (EngineSlots(models=["smol-a"], capacity=1), EngineSlots(models=["smol-b"], capacity=1))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Call:
    request_id: str
    tenant_id: str
    model: str
    api_key_id: str | None = None


class FakeLink:
    closed = draining = False
    open_streams = 0

    def __init__(self, load: RunnerLoad) -> None:
        self.load = load


def runner(engines: tuple[EngineSlots, ...] = ENGINES, headroom: int = 0) -> ConnectedRunner:
    models = [
        ModelInfo(name="smol-a", engine="xllamacpp", aliases=["chat"]),
        ModelInfo(name="smol-b", engine="xllamacpp"),
    ]
    r = ConnectedRunner(
        runner_id="run_1",
        tenant_id="ten_x",
        name="two",
        models=models,
        capacity=2,
        cost={"usd_per_hour": 3.6},
    )
    r.links.append(FakeLink(RunnerLoad(engines=engines, headroom=headroom)))  # type: ignore[arg-type]
    return r


def admission(clock: Clock) -> Admission:
    wall = datetime(2026, 3, 1, tzinfo=UTC)
    return Admission(
        scheduler=FairScheduler(clock=clock),
        meter=EngineTimeMeter(clock),
        fairness=ServiceFairness(backlog_wait_s=0.001, clock=clock),
        budgets=BudgetGuard(clock=lambda: wall, monotonic=clock),
        queue_timeout_s=30,
    )


async def test_a_model_waits_for_its_own_engine_while_the_other_engine_admits_at_once() -> None:
    clock = Clock()
    adm, r = admission(clock), runner()
    adm.runner_changed(r, True)
    a1 = await adm.acquire(Call("req_a1", "t1", "smol-a"), r, prompt_tokens=1)
    a2 = asyncio.create_task(
        adm.acquire(Call("req_a2", "t2", "chat"), r, prompt_tokens=1)
    )  # an alias of smol-a
    await asyncio.sleep(0)
    assert not a2.done() and r.queued == 1
    b = await adm.acquire(
        Call("req_b", "t2", "smol-b"), r, prompt_tokens=1
    )  # the runner's sum (2) is not the limit
    queues = adm.service_snapshot("t1")["runners"]
    # The hello's runner-wide queue (capacity 2) is idle and not shown beside the engines'.
    assert {k: (q["capacity"], q["in_flight"], q["queued"]) for k, q in queues.items()} == {
        "run_1#smol-a": (1, 1, 1),
        "run_1#smol-b": (1, 1, 0),
    }
    clock.now = 4
    a1.finish(Usage(prompt_tokens=1, completion_tokens=1))
    a2_slot = await a2
    assert a2_slot.queue_wait_s == 4
    # Engine time is metered per runner: its rate pays for both engines, so two requests
    # running side by side (on different engines) split the runner's seconds.
    assert a1.record_fields()["engine_share_s"] == pytest.approx(2.0)
    clock.now = 6
    for slot in (a2_slot, b):
        slot.finish(None)
    assert adm.meter.busy_seconds("run_1") == pytest.approx(6.0)


async def test_an_engine_queue_takes_that_engines_headroom() -> None:
    clock = Clock()
    adm = admission(clock)
    r = runner(
        (
            EngineSlots(models=["smol-a"], capacity=1, headroom=1),
            EngineSlots(models=["smol-b"], capacity=1),
        )
    )
    await adm.acquire(Call("req_1", "t1", "smol-a"), r, prompt_tokens=1)
    await adm.acquire(
        Call("req_2", "t2", "smol-a"), r, prompt_tokens=1
    )  # t2 has nothing in flight: headroom
    snap = adm.scheduler.snapshot()["runners"]["run_1#smol-a"]
    assert (snap["capacity"], snap["headroom"], snap["in_flight"], snap["in_headroom"]) == (
        1,
        1,
        2,
        1,
    )


async def test_forgetting_the_runner_drops_every_engine_queue() -> None:
    adm, r = admission(Clock()), runner()
    adm.runner_changed(r, True)
    await adm.acquire(Call("req_a1", "t1", "smol-a"), r, prompt_tokens=1)
    await adm.acquire(Call("req_b1", "t1", "smol-b"), r, prompt_tokens=1)
    waiting = [
        asyncio.create_task(adm.acquire(Call(f"req_{m}2", "t2", m), r, prompt_tokens=1))
        for m in ("smol-a", "smol-b")
    ]
    await asyncio.sleep(0)
    adm.runner_changed(r, False)  # its last link is gone
    for task in waiting:
        with pytest.raises(RunnerGone):
            await task
    assert adm.scheduler.snapshot()["runners"] == {}
    assert r.queued == 0


async def test_a_status_without_engines_falls_back_to_the_runner_queue() -> None:
    adm, r = (
        admission(Clock()),
        runner(engines=()),
    )  # one engine, or a runner that predates engine slots
    slots = [
        await adm.acquire(Call(f"req_{i}", "t1", "smol-a"), r, prompt_tokens=1) for i in range(2)
    ]
    assert list(adm.scheduler.snapshot()["runners"]) == ["run_1"]
    assert adm.scheduler.snapshot()["runners"]["run_1"]["in_flight"] == 2
    for slot in slots:
        slot.finish(None)
    # A model no engine lists (not expected) also queues on the runner's key, with the hello's
    # capacity.
    r.links[0].load = RunnerLoad(engines=ENGINES)
    assert adm.queue_key(r, "other") == ("run_1", 2, 0)
    assert adm.queue_key(r, None) == ("run_1", 2, 0)
    assert adm.queue_key(r, "chat") == ("run_1#smol-a", 1, 0)


def test_engines_are_left_off_the_wire_when_empty() -> None:
    # A control plane that predates the field refuses unknown fields: an empty list is not sent.
    assert "engines" not in json.loads(encode_frame(StatusFrame()))
    frame = StatusFrame(engines=list(ENGINES))
    assert json.loads(encode_frame(frame))["engines"] == [
        {"models": ["smol-a"], "capacity": 1, "headroom": 0},
        {"models": ["smol-b"], "capacity": 1, "headroom": 0},
    ]
    assert parse_frame(encode_frame(frame)) == frame


def _engine(name: str, capacity: int, headroom: int) -> XllamacppEngine:
    return XllamacppEngine(
        model_path=f"/models/{name}.gguf",
        capacity=capacity,
        headroom=headroom,
        models=(ServedModel(name=name, engine="xllamacpp", aliases=("alias",)),),
    )


async def test_the_fleet_reports_each_engines_slots_only_when_it_has_several(
    tmp_path: Path,
) -> None:
    async with httpx.AsyncClient() as http:
        fleet = EngineFleet(
            [_engine("smol-a", 3, 1), _engine("smol-b", 1, 0)], log_dir=tmp_path / "two", http=http
        )
        assert fleet.slots() == [
            EngineSlots(models=["smol-a"], capacity=2, headroom=1),
            EngineSlots(models=["smol-b"], capacity=1, headroom=0),
        ]
        lone = EngineFleet([_engine("smol-a", 3, 1)], log_dir=tmp_path / "one", http=http)
        assert lone.slots() == []  # its slots are the hello's capacity, as before


@pytest.mark.parametrize(
    ("caps", "sent"),
    [
        (frozenset({"status", "engine-slots"}), list(ENGINES)),
        (
            frozenset({"status"}),
            [],
        ),  # a control plane that predates engine slots admits up to the summed capacity
    ],
)
async def test_the_runner_sends_engines_only_to_a_control_plane_that_knows_them(
    caps: frozenset[str], sent: list[EngineSlots]
) -> None:
    frames: list[StatusFrame] = []

    async def send(frame: Any) -> None:
        frames.append(frame)
        raise ConnectionClosed(None, None)  # one frame is enough: end the loop

    identity = SimpleNamespace(runner_id="run_1", control_plane="http://cp.test")
    client = TunnelClient(
        identity=identity,
        hello_fields=dict,
        on_stream=None,  # type: ignore[arg-type]
        status=lambda: StatusFrame(engines=list(ENGINES)),
    )
    await client._status_loop(send, caps)
    assert [f.engines for f in frames] == [sent]


class FakeRemoteLink:
    draining = False

    def __init__(self, replica_id: str, runner_id: str) -> None:
        self.replica_id, self.load = replica_id, RunnerLoad()

    def fail_all(self, reason: str) -> None:
        pass


def test_other_replicas_see_the_engines_of_a_runner_held_here() -> None:
    hub = TunnelHub()
    view = RemoteView(hub, "rep-a", FakeRemoteLink, on_runner=lambda r, up: None)  # type: ignore[arg-type]
    assert view.apply({"rep-b": describe_runners([runner()], now=0.0)})
    assert hub.remote["run_1"].links[0].load.engines == ENGINES


async def test_the_holder_admits_a_relayed_request_on_the_queue_of_its_models_engine() -> None:
    messages: list[tuple[str, str]] = []

    async def send(origin: str, kind: str, key: str, payload: Any) -> bool:
        messages.append((kind, key))
        return True

    adm, r = admission(Clock()), runner()
    holder = Holder(TunnelHub(), send, is_alive=lambda origin: True, quiet_check_s=5, admission=adm)
    admit = {"tenant_id": "t1", "prompt_tokens": 3}
    slot = await holder._admit("k1", "rep-a", r, {"model": "smol-b"}, admit, "req_1")
    assert slot is not None and messages == [("admitted", "k1")]
    assert adm.scheduler.snapshot()["runners"]["run_1#smol-b"]["in_flight"] == 1
    slot.finish_at_holder(None)
    assert adm.scheduler.snapshot()["runners"]["run_1#smol-b"]["in_flight"] == 0
