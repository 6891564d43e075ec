"""Who may do what: the one table of actions and the roles allowed each.

The API (a key's role), the console (a user's role) and the CLI (the role
names it accepts) all ask :func:`allowed`; no door compares role names itself.
A new admin action is a new :class:`Permission` member and one row below.

Granting a role (a user's, or a new key's) is allowed only when every
permission of that role is one the granter holds (:func:`may_grant`): a
developer can mint viewer and developer keys but not an operator's, an admin
cannot make an owner, and nobody can raise themselves past what they have.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from outpost.control_plane.domain_errors import Forbidden, Invalid

__all__ = [
    "PERMISSIONS",
    "ROLES",
    "SHELL_ROLE",
    "Permission",
    "Role",
    "allowed",
    "check_grant",
    "key_role",
    "may_grant",
    "parse_role",
    "permissions_of",
    "require",
]

Role = Literal["owner", "admin", "operator", "developer", "viewer", "auditor"]
#: Most powerful first (the order the console and the CLI list them in).
ROLES: tuple[Role, ...] = ("owner", "admin", "operator", "developer", "viewer", "auditor")
#: Whoever runs the CLI on the control plane's host: every permission of every tenant.
SHELL_ROLE: Role = "owner"


class Permission(StrEnum):
    # Read the tenant's runners, pools, keys, usage, budgets, probe runs.
    VIEW = "view"
    # List, export and verify the audit log, and read its checkpoints.
    AUDIT_READ = "audit.read"
    # Send requests from the console's playground.
    PLAYGROUND = "playground"
    KEYS_WRITE = "keys.write"
    LIMITS_WRITE = "limits.write"
    RUNNERS_WRITE = "runners.write"
    POOLS_WRITE = "pools.write"
    DEPLOYMENTS_WRITE = "deployments.write"
    PROBES_RUN = "probes.run"
    TENANT_WRITE = "tenant.write"
    USERS_WRITE = "users.write"
    # Only an owner can make (or unmake) an owner.
    OWNERS_WRITE = "owners.write"


_ALL: frozenset[Role] = frozenset(ROLES)
_ADMINS: frozenset[Role] = frozenset({"owner", "admin"})
_OPERATORS: frozenset[Role] = _ADMINS | {"operator"}

#: Permission -> the roles that hold it. The auditor reads the audit log and nothing else.
PERMISSIONS: dict[Permission, frozenset[Role]] = {
    Permission.VIEW: _ALL - {"auditor"},
    Permission.AUDIT_READ: _ADMINS | {"auditor"},
    Permission.PLAYGROUND: _OPERATORS | {"developer"},
    Permission.KEYS_WRITE: _ADMINS | {"developer"},
    Permission.LIMITS_WRITE: _ADMINS,
    Permission.RUNNERS_WRITE: _OPERATORS,
    Permission.POOLS_WRITE: _OPERATORS,
    Permission.DEPLOYMENTS_WRITE: _OPERATORS,
    Permission.PROBES_RUN: _OPERATORS,
    Permission.TENANT_WRITE: _ADMINS,
    Permission.USERS_WRITE: _ADMINS,
    Permission.OWNERS_WRITE: frozenset({"owner"}),
}


def allowed(role: str | None, permission: Permission) -> bool:
    """Whether ``role`` holds ``permission``; an unknown role or ``None`` holds nothing."""
    return role in PERMISSIONS[permission]


def permissions_of(role: str | None) -> frozenset[Permission]:
    return frozenset(p for p, roles in PERMISSIONS.items() if role in roles)


def require(role: str | None, permission: Permission) -> None:
    """Raise :class:`Forbidden` unless ``role`` holds ``permission``."""
    if not allowed(role, permission):
        held = f"the {role!r} role lacks it" if role else "a key without a role has none"
        raise Forbidden(
            f"This action needs the {permission.value!r} permission; {held} "
            f"(roles with it: {', '.join(r for r in ROLES if r in PERMISSIONS[permission])}).",
            code="permission_denied",
        )


def parse_role(value: str, *, param: str = "role") -> Role:
    if value not in ROLES:
        raise Invalid(f"Choose a role: {', '.join(ROLES)}.", param=param)
    return value


def may_grant(granter: str | None, role: str) -> bool:
    """Whether ``granter`` may give ``role`` to someone: only a subset of its own permissions."""
    return role in ROLES and permissions_of(role) <= permissions_of(granter)


def check_grant(granter: str | None, role: str, *, param: str = "role") -> Role:
    checked = parse_role(role, param=param)
    if not may_grant(granter, checked):
        raise Forbidden(
            f"Your role cannot grant the {checked!r} role: it holds permissions yours does not.",
            code="permission_denied",
        )
    return checked


def key_role(scopes: frozenset[str] | set[str]) -> Role | None:
    """An API key's role, kept in its scopes: a role name, or the legacy ``admin`` scope.

    A key with no role is inference-only: it can call the OpenAI endpoints and
    read what concerns itself, and it passes no check of this table.
    """
    for role in ROLES:
        if role in scopes:
            return role
    return None
