"""Runner rows and the models they serve.

What routing and billing rely on is the owner's: a runner's pool, its
residency ``labels`` and its cost model are set in the control plane. A
hello's labels are kept as ``reported_labels`` only; its cost model is a
proposal taken once, at the runner's first hello, within bounds
(docs/security.md, "What a runner can claim").
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.db.models import Runner, ServedModel, new_id, utcnow
from outpost.sdk.pricing import CostModel, hourly_rate
from outpost.sdk.protocol import ModelInfo

__all__ = [
    "MAX_USD_PER_HOUR",
    "check_usd_per_hour",
    "create_runner",
    "get_runner",
    "known_model",
    "list_runners",
    "proposed_cost",
    "record_hello",
    "revoke_runner",
    "update_runner",
]

#: The highest price a runner may have, $/hour: above any rented GPU machine
#: (8x H200 is about 30-40 $/h), far below a price that could empty a budget in one request.
MAX_USD_PER_HOUR = 1000.0


def check_usd_per_hour(value: float) -> float:
    """``value`` if it is a price a runner may have (finite, 0..MAX_USD_PER_HOUR); else
    ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("usd_per_hour must be a number")  # noqa: TRY004 - user input
    number = float(value)
    if not math.isfinite(number) or not 0.0 <= number <= MAX_USD_PER_HOUR:
        raise ValueError(f"usd_per_hour must be finite, between 0 and {MAX_USD_PER_HOUR:g}")
    return number


def proposed_cost(hello_cost: CostModel) -> dict[str, Any]:
    """The cost model a first hello proposes, within bounds; out of bounds, its hardware class's
    default.

    Returned in the row's stored form (:meth:`CostModel.to_dict`), read back with
    ``CostModel.from_mapping``.
    """
    rate = hourly_rate(hello_cost)
    if not 0.0 <= rate <= MAX_USD_PER_HOUR:
        hardware_only = CostModel(hardware_class=hello_cost.hardware_class, count=hello_cost.count)
        rate = min(hourly_rate(hardware_only), MAX_USD_PER_HOUR)
    return CostModel(usd_per_hour=rate, set_by="hello").to_dict()


async def create_runner(
    session: AsyncSession,
    *,
    tenant_id: str,
    pool_id: str,
    name: str,
    identity_public_key: str,
    hpke_public_key: str | None,
    hpke_key_signature: str | None,
    labels: dict[str, str] | None = None,
) -> Runner:
    runner = Runner(
        id=new_id("run"),
        tenant_id=tenant_id,
        pool_id=pool_id,
        name=name,
        identity_public_key=identity_public_key,
        hpke_public_key=hpke_public_key,
        hpke_key_signature=hpke_key_signature,
        labels=dict(labels or {}),
    )
    session.add(runner)
    await session.flush()
    return runner


async def get_runner(
    session: AsyncSession, runner_id: str, tenant_id: str | None = None
) -> Runner | None:
    stmt = select(Runner).where(Runner.id == runner_id)
    if tenant_id is not None:
        stmt = stmt.where(Runner.tenant_id == tenant_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_runners(session: AsyncSession, tenant_id: str) -> list[Runner]:
    stmt = select(Runner).where(Runner.tenant_id == tenant_id).order_by(Runner.created_at)
    return list((await session.execute(stmt)).scalars())


async def record_hello(
    session: AsyncSession,
    runner: Runner,
    *,
    models: list[ModelInfo],
    capacity: int,
    labels: dict[str, str],
    hardware: dict[str, Any],
    cost: CostModel,
) -> None:
    """Store what a hello reports. Its labels are kept as reported only; its cost model is
    taken at the runner's first hello only (one cost model per runner, not per connection)."""
    if runner.last_seen_at is None and not runner.cost:
        runner.cost = proposed_cost(cost)
    runner.capacity, runner.reported_labels, runner.hardware = capacity, labels, hardware
    runner.last_seen_at = utcnow()
    await session.execute(delete(ServedModel).where(ServedModel.runner_id == runner.id))
    for m in models:
        session.add(
            ServedModel(
                runner_id=runner.id,
                name=m.name,
                engine=m.engine,
                context_length=m.context_length,
                quantization=m.quantization,
                aliases=list(m.aliases),
            )
        )
    await session.flush()


async def update_runner(
    session: AsyncSession,
    runner: Runner,
    *,
    labels: dict[str, str] | None = None,
    usd_per_hour: float | None = None,
    pool_id: str | None = None,
) -> None:
    """The owner's changes: residency labels, price (checked by :func:`check_usd_per_hour`),
    pool."""
    if labels is not None:
        runner.labels = dict(labels)
    if usd_per_hour is not None:
        runner.cost = CostModel(
            usd_per_hour=check_usd_per_hour(usd_per_hour), set_by="owner"
        ).to_dict()
    if pool_id is not None:
        runner.pool_id = pool_id
    await session.flush()


async def revoke_runner(session: AsyncSession, runner: Runner) -> None:
    runner.revoked_at = utcnow()
    await session.flush()


async def known_model(
    session: AsyncSession, name: str, pools: frozenset[str] | None = None
) -> bool:
    """Whether any registered (possibly offline) runner, in ``pools`` if given, has served
    ``name``."""
    stmt = select(ServedModel.name, ServedModel.aliases)
    if pools is not None:
        stmt = stmt.join(Runner, Runner.id == ServedModel.runner_id).where(
            Runner.pool_id.in_(pools)
        )
    rows = (await session.execute(stmt)).all()
    return any(n == name or name in (aliases or []) for n, aliases in rows)
