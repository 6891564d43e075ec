"""Which API keys and tenants a transaction changed, told to an in-process cache when it commits.

A session whose ``info`` holds :data:`KEY_CACHE_INFO` (a :class:`KeyListener`,
set by the app on its session factory) reports, after each commit, the keys
and tenants whose rows it changed: ORM changes to ``ApiKey`` and ``Tenant``
rows are noticed on their own; Core ``UPDATE`` statements call
:func:`mark_key_changed`. After the commit, not before: a request that read
the row before the commit must not cache the old state after it
(``services.auth_cache`` guards that window with a generation counter).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from sqlalchemy import event
from sqlalchemy.orm import Session

from outpost.control_plane.db.models import ApiKey, Pool, PoolGrant, Tenant

__all__ = ["ALL_TENANTS", "KEY_CACHE_INFO", "KeyListener", "mark_key_changed"]

KEY_CACHE_INFO = "outpost.key_cache"
#: In ``tenant_ids``: every tenant changed (a pool granted to or revoked from every tenant).
ALL_TENANTS = "*"
_CHANGED_INFO = "outpost.keys_changed"


class KeyListener(Protocol):
    def changed_here(self, key_ids: set[str], tenant_ids: set[str]) -> None: ...


def mark_key_changed(
    session: Any, *, key_ids: Iterable[str] = (), tenant_ids: Iterable[str] = ()
) -> None:
    """Report these keys (or all keys of these tenants) changed when ``session`` commits."""
    sync = getattr(session, "sync_session", session)
    keys, tenants = sync.info.setdefault(_CHANGED_INFO, (set(), set()))
    keys.update(key_ids)
    tenants.update(tenant_ids)


@event.listens_for(Session, "before_flush")
def _note_changes(session: Session, _ctx: Any, _instances: Any) -> None:
    if KEY_CACHE_INFO not in session.info:
        return
    for obj in (*session.dirty, *session.deleted):
        if isinstance(obj, ApiKey):
            mark_key_changed(session, key_ids=[obj.id])
        elif isinstance(obj, Tenant):
            mark_key_changed(session, tenant_ids=[obj.id])
    # A key's cached policy holds its tenant's usable pools (store.pools): grants and new pools
    # change them.
    for obj in (*session.new, *session.dirty, *session.deleted):
        if isinstance(obj, PoolGrant):
            mark_key_changed(session, tenant_ids=[obj.grantee_tenant_id or ALL_TENANTS])
        elif isinstance(obj, Pool):
            mark_key_changed(session, tenant_ids=[obj.tenant_id])


@event.listens_for(Session, "after_commit")
def _tell(session: Session) -> None:
    changed = session.info.pop(_CHANGED_INFO, None)
    listener: KeyListener | None = session.info.get(KEY_CACHE_INFO)
    if changed is None or listener is None:
        return
    keys, tenants = changed
    if keys or tenants:
        listener.changed_here(keys, tenants)


@event.listens_for(Session, "after_rollback")
def _forget(session: Session) -> None:
    session.info.pop(_CHANGED_INFO, None)
