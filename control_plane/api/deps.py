"""Dependency aliases so routes read as lists of nouns."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.domain_errors import Forbidden
from outpost.control_plane.errors import ApiError
from outpost.control_plane.permissions import Permission, Role, allowed, key_role, require
from outpost.control_plane.services.auth_cache import authenticate
from outpost.control_plane.state import AppState
from outpost.control_plane.store.policies import KeyPolicy

__all__ = [
    "AdminDep",
    "AppStateDep",
    "AuditReadDep",
    "LimitsWriteDep",
    "Caller",
    "CallerDep",
    "DeploymentsWriteDep",
    "KeysWriteDep",
    "PoolsWriteDep",
    "ProbesRunDep",
    "RunnersWriteDep",
    "SessionDep",
    "TenantWriteDep",
    "ViewDep",
    "bearer_token",
    "requires",
]


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.outpost
    return state


async def _state_dependency(request: Request) -> AppState:
    # async: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop
    # (and a GIL hand-off) on every request, in front of its first token.
    state: AppState = request.app.state.outpost
    return state


AppStateDep = Annotated[AppState, Depends(_state_dependency)]


async def get_session(state: AppStateDep) -> AsyncIterator[AsyncSession]:
    # Routes own the transaction: they commit; anything else rolls back.
    async with state.db.session() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


@dataclass(frozen=True)
class Caller:
    tenant_id: str
    api_key_id: str
    scopes: frozenset[str]
    # The key's routing and limit settings, read with the key (and cached with it).
    policy: KeyPolicy | None = None

    @property
    def role(self) -> Role | None:
        """The key's role (``permissions.key_role``); ``None`` for an inference-only key."""
        return key_role(self.scopes)

    def can(self, permission: Permission) -> bool:
        return allowed(self.role, permission)


async def get_caller(request: Request, state: AppStateDep) -> Caller:
    token = bearer_token(request)
    if token is None:
        raise ApiError.unauthorized("Missing API key: send 'Authorization: Bearer <key>'.")
    key = await authenticate(state.db, state.key_cache, token)
    if key is None:
        raise ApiError.unauthorized()
    return Caller(
        tenant_id=key.tenant_id, api_key_id=key.api_key_id, scopes=key.scopes, policy=key.policy
    )


CallerDep = Annotated[Caller, Depends(get_caller)]


def requires(permission: Permission) -> Callable[[Caller], Awaitable[Caller]]:
    """A dependency that lets through only a key whose role holds ``permission``."""

    async def check(caller: CallerDep) -> Caller:
        try:
            require(caller.role, permission)
        except Forbidden as exc:
            raise ApiError(403, exc.message, type="permission_error", code=exc.code) from None
        return caller

    return check


ViewDep = Annotated[Caller, Depends(requires(Permission.VIEW))]
KeysWriteDep = Annotated[Caller, Depends(requires(Permission.KEYS_WRITE))]
LimitsWriteDep = Annotated[Caller, Depends(requires(Permission.LIMITS_WRITE))]
RunnersWriteDep = Annotated[Caller, Depends(requires(Permission.RUNNERS_WRITE))]
PoolsWriteDep = Annotated[Caller, Depends(requires(Permission.POOLS_WRITE))]
DeploymentsWriteDep = Annotated[Caller, Depends(requires(Permission.DEPLOYMENTS_WRITE))]
ProbesRunDep = Annotated[Caller, Depends(requires(Permission.PROBES_RUN))]
TenantWriteDep = Annotated[Caller, Depends(requires(Permission.TENANT_WRITE))]
AuditReadDep = Annotated[Caller, Depends(requires(Permission.AUDIT_READ))]
# Tenant-wide administration (users, tenant settings, service-wide views): owner and admin.
AdminDep = TenantWriteDep
