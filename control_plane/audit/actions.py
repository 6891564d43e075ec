"""Every administrative audit action, spelled once.

A :class:`~enum.StrEnum`: members are the very strings stored in the chain
(``admin.<value>``), so chains written before the enum verify unchanged.
Add a member here before recording a new action.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["AuditAction"]


class AuditAction(StrEnum):
    API_KEY_CREATE = "api_key.create"
    API_KEY_REVOKE = "api_key.revoke"
    API_KEY_LIMITS = "api_key.limits"
    API_KEY_MODELS = "api_key.models"
    QUOTA_SET = "quota.set"
    BUDGET_SET = "budget.set"
    BUDGET_DELETE = "budget.delete"
    ENROLLMENT_TOKEN_CREATE = "enrollment_token.create"
    RUNNER_REVOKE = "runner.revoke"
    RUNNER_UPDATE = "runner.update"
    RUNNER_E2E_KEY = "runner.e2e_key"
    TENANT_UPDATE = "tenant.update"
    TENANT_PLATFORM_OPERATOR = "tenant.platform_operator"
    POOL_CREATE = "pool.create"
    POOL_GRANT = "pool.grant"
    POOL_REVOKE_GRANT = "pool.revoke_grant"
    POOL_REFUSE_SHARED = "pool.refuse_shared"
    DEPLOYMENT_CREATE = "deployment.create"
    DEPLOYMENT_UPDATE = "deployment.update"
    DEPLOYMENT_SCALE = "deployment.scale"
    DEPLOYMENT_DELETE = "deployment.delete"
    USER_CREATE = "user.create"
    USER_UNLOCK = "user.unlock"
    USER_ROLE = "user.role"
    USER_PASSWORD = "user.password"
