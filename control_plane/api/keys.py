"""API keys of the caller's tenant: list, create (secret shown once), revoke. Admin only."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from control_plane.api.deps import AdminDep, SessionDep
from control_plane.audit import actor_for_key, record_admin
from control_plane.db.models import ApiKey, utcnow
from control_plane.errors import ApiError
from control_plane.store.keys import create_api_key, get_api_key, list_api_keys, revoke_api_key

router = APIRouter(prefix="/api/keys", tags=["keys"])

Scope = Literal["inference", "admin"]


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    scopes: list[Scope] = Field(default_factory=lambda: ["inference"], min_length=1, max_length=2)
    expires_in_s: int | None = Field(default=None, ge=60, le=10 * 365 * 86400)


class ApiKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiKey) -> ApiKeyOut:
        return cls(id=row.id, name=row.name, prefix=row.prefix, scopes=row.scopes.split(","),
                   created_at=row.created_at, expires_at=row.expires_at, revoked_at=row.revoked_at)


class ApiKeyCreated(ApiKeyOut):
    key: str  # the secret, shown once


@router.get("")
async def get_keys(admin: AdminDep, session: SessionDep) -> dict:
    rows = await list_api_keys(session, admin.tenant_id)
    return {"object": "list", "data": [ApiKeyOut.of(r).model_dump(mode="json") for r in rows]}


@router.post("", response_model=ApiKeyCreated, status_code=201)
async def create_key(body: ApiKeyIn, admin: AdminDep, session: SessionDep) -> ApiKeyCreated:
    expires = utcnow() + timedelta(seconds=body.expires_in_s) if body.expires_in_s else None
    scopes = ",".join(s for s in ("inference", "admin") if s in body.scopes)
    row, secret = await create_api_key(session, admin.tenant_id, body.name, expires_at=expires, scopes=scopes)
    await record_admin(session, actor=actor_for_key(admin.api_key_id), action="api_key.create",
                       tenant_id=admin.tenant_id, target=row.id, details={"name": body.name, "scopes": scopes})
    await session.commit()
    return ApiKeyCreated(**ApiKeyOut.of(row).model_dump(), key=secret)


@router.post("/{key_id}/revoke", response_model=ApiKeyOut)
async def revoke_key(key_id: str, admin: AdminDep, session: SessionDep) -> ApiKeyOut:
    row = await get_api_key(session, key_id, admin.tenant_id)
    if row is None:
        raise ApiError.not_found(f"No API key {key_id!r} in this tenant.", code="api_key_not_found")
    await revoke_api_key(session, row)
    await record_admin(session, actor=actor_for_key(admin.api_key_id), action="api_key.revoke",
                       tenant_id=admin.tenant_id, target=row.id, details={"name": row.name})
    await session.commit()
    return ApiKeyOut.of(row)
