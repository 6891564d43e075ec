"""Simulated runners for routing tests: real hub objects, no network.

A :class:`ConnectedRunner` with one :class:`Link` whose send function only
records frames, so the router sees exactly what it sees in production: the
runner's hello (models, capacity, labels, cost) and its last status frame.
"""

from __future__ import annotations

from outpost.control_plane.tunnel.hub import ConnectedRunner
from outpost.control_plane.tunnel.link import Link
from outpost.sdk.protocol import ModelInfo, StatusFrame

__all__ = ["MODEL", "set_status", "simulated_runner"]

MODEL = "chat-model"


async def _send(_: str) -> None:
    return None


async def _close(_: int, __: str) -> None:
    return None


def simulated_runner(
    runner_id: str,
    *,
    capacity: int = 4,
    usd_per_hour: float | None = None,
    labels: dict[str, str] | None = None,
    model: str = MODEL,
    aliases: tuple[str, ...] = (),
    endpoints: tuple[str, ...] = ("chat", "completions"),
    engine: str = "xllamacpp",
    in_flight: int = 0,
    pool_id: str = "pool_sim",
) -> ConnectedRunner:
    runner = ConnectedRunner(
        runner_id=runner_id,
        tenant_id="ten_1",
        name=runner_id,
        models=[
            ModelInfo(name=model, engine=engine, aliases=list(aliases), endpoints=list(endpoints))
        ],
        capacity=capacity,
        labels=labels or {},
        cost={"usd_per_hour": usd_per_hour} if usd_per_hour is not None else {},
        pool_id=pool_id,
    )
    runner.links.append(Link(runner_id, f"sess-{runner_id}", _send, 256, _close))
    runner.in_flight = in_flight
    return runner


def set_status(
    runner: ConnectedRunner,
    *,
    running: int = 0,
    waiting: int = 0,
    kv: float | None = None,
    healthy: bool = True,
) -> None:
    """Deliver a status frame, as the runner's tunnel would."""
    for link in runner.links:
        link.dispatch(
            StatusFrame(running=running, waiting=waiting, kv_cache_usage=kv, healthy=healthy)
        )
