"""A replica dies: its runner reconnects through the load balancer to the other one.

The runner dials a round-robin TCP load balancer in front of both replicas,
as it would in production. The replica holding its tunnel is killed (SIGKILL: no
goaway, no clean withdrawal from Redis) while a request received by the other
replica is being relayed to it.
"""

from __future__ import annotations

import signal
import time

import httpx

from harness.processes import ControlPlaneProcess, wait_until
from tests.cluster.conftest import MODEL, Cluster, sse_events
from tests.cluster.lb import RoundRobinLB


def _holder_and_survivor(
    cluster: Cluster, lb: RoundRobinLB
) -> tuple[ControlPlaneProcess, ControlPlaneProcess]:
    """The replica the runner's one tunnel landed on, and the other one."""
    wait_until(
        lambda: lb.live(cluster.a.port) + lb.live(cluster.b.port) == 1, 10, "one tunnel connection"
    )
    return (cluster.a, cluster.b) if lb.live(cluster.a.port) else (cluster.b, cluster.a)


def test_replica_death_mid_stream_then_runner_reconnects_to_the_survivor(cluster: Cluster) -> None:
    lb = RoundRobinLB([cluster.b.port, cluster.a.port]).start()
    try:
        runner = cluster.runner(lb.url)
        runner_id = runner.wait_connected(cluster.admin_key)
        cluster.wait_seen_by_both(runner_id)
        holder, survivor = _holder_and_survivor(cluster, lb)

        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Tell a long story."}],
            "max_tokens": 800,
            "ignore_eos": True,
            "stream": True,
        }
        events: list = []
        killed_at = 0.0
        # Sent to the survivor, relayed to the holder, which dies mid-stream.
        with httpx.stream(
            "POST",
            f"{survivor.url}/v1/chat/completions",
            json=body,
            headers=cluster.headers,
            timeout=60,
        ) as resp:
            assert resp.status_code == 200 and resp.headers["x-outpost-runner"] == runner_id
            for ev in sse_events(resp):
                events.append(ev)
                if len(events) == 3:
                    assert holder.proc is not None
                    holder.proc.send_signal(signal.SIGKILL)
                    killed_at = time.monotonic()
        ended_after = time.monotonic() - killed_at
        # The relayed stream ends with an error event and [DONE] once the survivor notices
        # (its registry entry expires: OUTPOST_CLUSTER_REPLICA_TTL_S=3), never hangs.
        assert events[-1] == "[DONE]"
        assert isinstance(events[-2], dict) and events[-2]["error"]["code"] == "runner_lost", (
            events[-2:]
        )
        assert ended_after < 10, ended_after

        # The runner re-dials through the load balancer, which skips the dead replica.
        wait_until(lambda: lb.live(survivor.port) == 1, 30, "runner to reconnect to the survivor")
        wait_until(
            lambda: cluster.connected(survivor, runner_id), 10, "the survivor to list the runner"
        )
        for _ in range(3):
            resp = cluster.chat(survivor, max_tokens=4)
            assert resp.status_code == 200, resp.text
            assert resp.headers["x-outpost-runner"] == runner_id
    finally:
        lb.close()


def test_request_waiting_for_a_dead_replica_fails_over_after_reconnect(cluster: Cluster) -> None:
    """A request sent right after the holder dies (its entry has not expired yet) is not lost."""
    lb = RoundRobinLB([cluster.b.port, cluster.a.port]).start()
    try:
        runner = cluster.runner(lb.url)
        runner_id = runner.wait_connected(cluster.admin_key)
        cluster.wait_seen_by_both(runner_id)
        holder, survivor = _holder_and_survivor(cluster, lb)
        assert holder.proc is not None
        holder.proc.send_signal(signal.SIGKILL)
        holder.proc.wait(10)
        t0 = time.monotonic()
        resp = cluster.chat(survivor, max_tokens=4)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-outpost-runner"] == runner_id
        assert time.monotonic() - t0 < 20
    finally:
        lb.close()
