"""The ``deployments`` capability on the runner's tunnel (runner/tunnel.py), in process against the
scripted control plane (real WebSocket, real protocol): who announces it, and what happens to a
deploy frame or a replica frame when it was not negotiated."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from outpost.runner.identity import RunnerIdentity
from outpost.runner.streams import OutboundStream
from outpost.runner.tunnel import TunnelClient
from outpost.sdk.identity import IdentityKey
from outpost.sdk.protocol import CAPABILITIES, DeployFrame, ReplicaFrame, StatusFrame
from tests.deployments.scripted_cp import ScriptedControlPlane

ORDER = DeployFrame.model_validate(
    {
        "replica_id": "r1",
        "deployment_id": "d1",
        "name": "m",
        "source": {"kind": "path", "path": "m.gguf"},
    }
)


def client(cp: ScriptedControlPlane, key: IdentityKey, **kw: Any) -> TunnelClient:
    async def on_stream(out: OutboundStream) -> None:
        await out.start(404, "application/json")
        await out.end()

    identity = RunnerIdentity(runner_id="rn-t", key=key, control_plane=cp.url)
    return TunnelClient(
        identity=identity,
        hello_fields=lambda: {"models": [{"name": "m0", "engine": "x"}]},
        on_stream=on_stream,
        status=StatusFrame,
        connections=1,
        backoff_base_s=0.05,
        **kw,
    )


async def running(tunnel: TunnelClient) -> asyncio.Task[None]:
    task = asyncio.create_task(tunnel.run())
    await asyncio.wait_for(tunnel.connected.wait(), 30)
    return task


async def stop(tunnel: TunnelClient, task: asyncio.Task[None]) -> None:
    # As the agent stops it: drain (goaway, close), after which run() returns by itself.
    await tunnel.drain(0)
    await asyncio.wait_for(task, 30)


async def test_runner_without_a_manager_refuses_deploy_frames() -> None:
    key = IdentityKey.generate()
    with ScriptedControlPlane(key.public_b64) as cp:
        tunnel = client(cp, key)  # the default: no deployment manager
        task = await running(tunnel)
        try:
            hello = await asyncio.to_thread(cp.wait_connected, 30)
            assert "deployments" not in hello.capabilities
            # A control plane that sends one anyway breaks the protocol: 4000, then a redial.
            await asyncio.to_thread(cp.send, ORDER)
            await asyncio.to_thread(cp.wait_connected, 30, 2)
            assert cp.closes[0] == 4000
            assert (
                await tunnel.send_control(ReplicaFrame(replica_id="r1", state="pending")) is False
            )
        finally:
            await stop(tunnel, task)


async def test_replica_frames_only_where_negotiated() -> None:
    key = IdentityKey.generate()
    seen: list[object] = []
    resyncs: list[int] = []

    async def resync() -> None:
        resyncs.append(1)

    caps_without = CAPABILITIES - {"deployments"}
    with ScriptedControlPlane(key.public_b64, capabilities=caps_without) as old_cp:
        tunnel = client(
            old_cp,
            key,
            capabilities=CAPABILITIES,
            on_control=lambda f, send: seen.append(f),
            on_session=resync,
        )
        task = await running(tunnel)
        try:
            hello = await asyncio.to_thread(old_cp.wait_connected, 30)
            assert "deployments" in hello.capabilities
            # An older control plane did not echo it: nothing is sent to it, nothing resynced.
            frame = ReplicaFrame(replica_id="r1", state="pending")
            assert await tunnel.send_control(frame) is False
            assert resyncs == []
        finally:
            await stop(tunnel, task)
    with ScriptedControlPlane(key.public_b64) as cp:
        tunnel = client(
            cp,
            key,
            capabilities=CAPABILITIES,
            on_control=lambda f, send: seen.append(f),
            on_session=resync,
        )
        task = await running(tunnel)
        try:
            await asyncio.to_thread(cp.wait_connected, 30)
            await asyncio.to_thread(cp.send, ORDER)
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.05)
            assert seen == [ORDER]
            assert resyncs == [1]
            assert await tunnel.send_control(ReplicaFrame(replica_id="r1", state="pending"))
            got = await asyncio.to_thread(
                cp.wait_for, lambda f: isinstance(f, ReplicaFrame), 10, "replica frame"
            )
            assert json.loads(got.model_dump_json())["state"] == "pending"
        finally:
            await stop(tunnel, task)
