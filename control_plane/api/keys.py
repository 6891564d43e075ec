"""API keys of the caller's tenant: list, create (secret shown once), revoke, allowed models.

Reading needs ``view``, writing ``keys.write`` (control_plane.permissions); a
key's role must be one the caller may grant, so no key mints a stronger one.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from outpost.control_plane.actions.keys import create_key as create_key_action
from outpost.control_plane.actions.keys import revoke_key as revoke_key_action
from outpost.control_plane.actions.keys import set_allowed_models
from outpost.control_plane.api.deps import KeysWriteDep, SessionDep, ViewDep
from outpost.control_plane.audit import actor_for_key
from outpost.control_plane.db.models import ApiKey, utcnow
from outpost.control_plane.model_access import MAX_ENTRIES, MAX_ENTRY_LEN
from outpost.control_plane.permissions import Role, key_role
from outpost.control_plane.store.keys import list_api_keys

router = APIRouter(prefix="/api/keys", tags=["keys"])

Scope = Literal["inference", "admin"]
ModelName = Annotated[str, Field(min_length=1, max_length=MAX_ENTRY_LEN)]
AllowList = Annotated[list[ModelName], Field(max_length=MAX_ENTRIES)]


def _inference_only() -> list[Scope]:
    return ["inference"]


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    scopes: list[Scope] = Field(default_factory=_inference_only, min_length=1, max_length=2)
    expires_in_s: int | None = Field(default=None, ge=60, le=10 * 365 * 86400)
    # What the key may administer (control_plane.permissions); none: inference only. The
    # legacy ``admin`` scope is the ``admin`` role.
    role: Role | None = None
    # Model names and glob patterns; omitted or null: every model the tenant can reach.
    allowed_models: AllowList | None = None


class AllowedModelsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # null lifts the list; [] allows no model at all.
    allowed_models: AllowList | None


class ApiKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    prefix: str
    scopes: list[str]
    role: str | None
    allowed_models: list[str] | None
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
            role=key_role(set(row.scopes.split(","))),
            allowed_models=row.allowed_models,
            created_at=row.created_at,
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
        )


class ApiKeyCreated(ApiKeyOut):
    key: str  # the secret, shown once


@router.get("")
async def get_keys(admin: ViewDep, session: SessionDep) -> dict[str, Any]:
    rows = await list_api_keys(session, admin.tenant_id)
    return {"object": "list", "data": [ApiKeyOut.of(r).model_dump(mode="json") for r in rows]}


@router.post("", response_model=ApiKeyCreated, status_code=201)
async def create_key(body: ApiKeyIn, admin: KeysWriteDep, session: SessionDep) -> ApiKeyCreated:
    expires = utcnow() + timedelta(seconds=body.expires_in_s) if body.expires_in_s else None
    role = body.role or ("admin" if "admin" in body.scopes else None)
    scopes = f"inference,{role}" if role else "inference"
    row, secret = await create_key_action(
        session,
        admin.tenant_id,
        body.name,
        actor=actor_for_key(admin.api_key_id),
        scopes=scopes,
        expires_at=expires,
        by_role=admin.role,
        allowed_models=body.allowed_models,
        by_allowed=admin.policy.allowed_models if admin.policy else None,
    )
    await session.commit()
    return ApiKeyCreated(**ApiKeyOut.of(row).model_dump(), key=secret)


@router.post("/{key_id}/revoke", response_model=ApiKeyOut)
async def revoke_key(key_id: str, admin: KeysWriteDep, session: SessionDep) -> ApiKeyOut:
    row = await revoke_key_action(
        session, admin.tenant_id, key_id, actor=actor_for_key(admin.api_key_id), by_role=admin.role
    )
    await session.commit()
    return ApiKeyOut.of(row)


@router.put("/{key_id}/models", response_model=ApiKeyOut)
async def put_allowed_models(
    key_id: str, body: AllowedModelsIn, admin: KeysWriteDep, session: SessionDep
) -> ApiKeyOut:
    """Replace the key's allowed models; the key's cached policy is dropped on commit."""
    row = await set_allowed_models(
        session,
        admin.tenant_id,
        key_id,
        body.allowed_models,
        actor=actor_for_key(admin.api_key_id),
        by_role=admin.role,
        by_allowed=admin.policy.allowed_models if admin.policy else None,
    )
    await session.commit()
    return ApiKeyOut.of(row)
