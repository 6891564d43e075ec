"""Tamper-evident audit log (docs/audit.md).

Call the ``record_*`` helpers inside the transaction of the action they
record; the format and the offline verifier live in ``sdk.audit``.
"""

from outpost.control_plane.audit.actions import AuditAction
from outpost.control_plane.audit.events import (
    RunnerEvent,
    actor_for_key,
    actor_for_runner,
    actor_for_user,
    operator_actor,
    record_admin,
    record_fairness_probe,
    record_inference,
    record_login,
    record_runner_event,
    record_system,
)
from outpost.control_plane.audit.hooks import audit_runner_event

__all__ = [
    "AuditAction",
    "RunnerEvent",
    "actor_for_key",
    "actor_for_runner",
    "actor_for_user",
    "audit_runner_event",
    "operator_actor",
    "record_admin",
    "record_fairness_probe",
    "record_inference",
    "record_login",
    "record_runner_event",
    "record_system",
]
