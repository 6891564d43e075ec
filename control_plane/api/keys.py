"""API keys of the caller's tenant: list, create (secret shown once), revoke. Admin only."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from outpost.control_plane.actions.keys import create_key as create_key_action
from outpost.control_plane.actions.keys import revoke_key as revoke_key_action
from outpost.control_plane.api.deps import AdminDep, SessionDep
from outpost.control_plane.audit import actor_for_key
from outpost.control_plane.db.models import ApiKey, utcnow
from outpost.control_plane.store.keys import list_api_keys

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
        return cls(
            id=row.id,
            name=row.name,
            prefix=row.prefix,
            scopes=row.scopes.split(","),
            created_at=row.created_at,
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
        )


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
    row, secret = await create_key_action(
        session,
        admin.tenant_id,
        body.name,
        actor=actor_for_key(admin.api_key_id),
        scopes=scopes,
        expires_at=expires,
    )
    await session.commit()
    return ApiKeyCreated(**ApiKeyOut.of(row).model_dump(), key=secret)


@router.post("/{key_id}/revoke", response_model=ApiKeyOut)
async def revoke_key(key_id: str, admin: AdminDep, session: SessionDep) -> ApiKeyOut:
    row = await revoke_key_action(
        session, admin.tenant_id, key_id, actor=actor_for_key(admin.api_key_id)
    )
    await session.commit()
    return ApiKeyOut.of(row)
