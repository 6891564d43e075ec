"""The test suite's name for harness.processes, where the process helpers live (shared with
bench/). New code imports ``harness.processes``; this keeps ``from tests.utils import ...``
working in the tests written before the harness existed."""

from __future__ import annotations

from harness.processes import (
    ControlPlaneProcess,
    RunnerProcess,
    _tool,
    free_port,
    one_slot_stack,
    run_db,
    share_default_pool,
    tenant_records,
    wait_until,
)

__all__ = [
    "ControlPlaneProcess",
    "RunnerProcess",
    "_tool",
    "free_port",
    "one_slot_stack",
    "run_db",
    "share_default_pool",
    "tenant_records",
    "wait_until",
]
