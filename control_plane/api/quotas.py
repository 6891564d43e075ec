"""Token quotas of the caller's tenant and its keys: read (``view``), set (``limits.write``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from outpost.control_plane.actions.quotas import (
    MAX_CONCURRENT,
    MAX_TOKENS,
    set_key_quotas,
    set_tenant_quotas,
)
from outpost.control_plane.api.deps import LimitsWriteDep, SessionDep, ViewDep
from outpost.control_plane.audit import actor_for_key
from outpost.control_plane.db.models import ApiKey, Tenant
from outpost.control_plane.store.keys import list_api_keys

router = APIRouter(prefix="/api", tags=["quotas"])


class TenantQuotas(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Input + output tokens over all the tenant's keys; null: no limit.
    tokens_per_minute: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    tokens_per_day: int | None = Field(default=None, ge=1, le=MAX_TOKENS)


class KeyQuotas(TenantQuotas):
    # Requests of this key in flight at once; null: no limit.
    max_concurrent: int | None = Field(default=None, ge=1, le=MAX_CONCURRENT)


def _key(row: ApiKey) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "tokens_per_minute": row.tokens_per_minute,
        "tokens_per_day": row.tokens_per_day,
        "max_concurrent": row.max_concurrent,
    }


@router.get("/quotas")
async def get_quotas(caller: ViewDep, session: SessionDep) -> dict[str, Any]:
    tenant = await session.get(Tenant, caller.tenant_id)
    assert tenant is not None  # the key's tenant (foreign key)
    keys = await list_api_keys(session, caller.tenant_id)
    return {
        "tenant": TenantQuotas(
            tokens_per_minute=tenant.tokens_per_minute, tokens_per_day=tenant.tokens_per_day
        ).model_dump(),
        "keys": [_key(k) for k in keys if k.revoked_at is None],
    }


@router.put("/quotas", response_model=TenantQuotas)
async def put_tenant_quotas(
    body: TenantQuotas, caller: LimitsWriteDep, session: SessionDep
) -> TenantQuotas:
    tenant = await session.get(Tenant, caller.tenant_id)
    assert tenant is not None
    await set_tenant_quotas(
        session,
        tenant,
        actor=actor_for_key(caller.api_key_id),
        tokens_per_minute=body.tokens_per_minute,
        tokens_per_day=body.tokens_per_day,
    )
    await session.commit()
    return body


@router.put("/keys/{key_id}/quotas", response_model=KeyQuotas)
async def put_key_quotas(
    key_id: str, body: KeyQuotas, caller: LimitsWriteDep, session: SessionDep
) -> KeyQuotas:
    await set_key_quotas(
        session,
        caller.tenant_id,
        key_id,
        actor=actor_for_key(caller.api_key_id),
        tokens_per_minute=body.tokens_per_minute,
        tokens_per_day=body.tokens_per_day,
        max_concurrent=body.max_concurrent,
    )
    await session.commit()
    return body
