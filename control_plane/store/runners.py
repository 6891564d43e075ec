"""Runner rows and the models they serve."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.db.models import Runner, ServedModel, new_id, utcnow
from sdk.protocol import ModelInfo

__all__ = ["create_runner", "get_runner", "known_model", "list_runners", "record_hello", "revoke_runner"]


async def create_runner(session: AsyncSession, *, tenant_id: str, name: str, identity_public_key: str,
                        hpke_public_key: str | None, hpke_key_signature: str | None) -> Runner:
    runner = Runner(id=new_id("run"), tenant_id=tenant_id, name=name,
                    identity_public_key=identity_public_key, hpke_public_key=hpke_public_key,
                    hpke_key_signature=hpke_key_signature)
    session.add(runner)
    await session.flush()
    return runner


async def get_runner(session: AsyncSession, runner_id: str, tenant_id: str | None = None) -> Runner | None:
    stmt = select(Runner).where(Runner.id == runner_id)
    if tenant_id is not None:
        stmt = stmt.where(Runner.tenant_id == tenant_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_runners(session: AsyncSession, tenant_id: str) -> list[Runner]:
    stmt = select(Runner).where(Runner.tenant_id == tenant_id).order_by(Runner.created_at)
    return list((await session.execute(stmt)).scalars())


async def record_hello(session: AsyncSession, runner: Runner, *, models: list[ModelInfo], capacity: int,
                       labels: dict[str, str], hardware: dict[str, Any], cost: dict[str, Any]) -> None:
    runner.capacity, runner.labels, runner.hardware, runner.cost = capacity, labels, hardware, cost
    runner.last_seen_at = utcnow()
    await session.execute(delete(ServedModel).where(ServedModel.runner_id == runner.id))
    for m in models:
        session.add(ServedModel(runner_id=runner.id, name=m.name, engine=m.engine,
                                context_length=m.context_length, quantization=m.quantization,
                                aliases=list(m.aliases)))
    await session.flush()


async def revoke_runner(session: AsyncSession, runner: Runner) -> None:
    runner.revoked_at = utcnow()
    await session.flush()


async def known_model(session: AsyncSession, name: str) -> bool:
    """Whether any registered (possibly offline) runner has served ``name``."""
    rows = (await session.execute(select(ServedModel.name, ServedModel.aliases))).all()
    return any(n == name or name in (aliases or []) for n, aliases in rows)
