"""Schemathesis against the live control plane's OpenAPI, with every check: no 5xx, no schema
violations.

Runs over the session stack (real uvicorn, sqlite and postgres) with an admin key
of a tenant of its own, so admin routes are exercised and nothing it creates or
revokes touches other tests' tenants. Examples per operation are bounded and
shrinking is off, so the whole run stays around a minute per backend.

(Driven through the Python API rather than schemathesis' pytest plugin, whose
lazy fixture loading does not work with pytest 9.)
"""

from __future__ import annotations

import re

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import CHECKS
from schemathesis.specs.openapi import checks as _openapi_checks  # noqa: F401 - registers the OpenAPI checks

from tests.conftest import Stack

MAX_EXAMPLES = 10

#: Operations not fuzzed, and why.
EXCLUDED = [
    # The tunnel websocket is not in the OpenAPI document at all (tests/tunnel and
    # tests/security/test_fuzz_frames.py cover it). The sealed routes need an HPKE envelope sealed
    # to a live runner's key: random bodies stop at the envelope parser, which tests/sdk/test_e2e.py
    # fuzzes.
    (None, r"^/v1/e2e/"),
    # Starting a fairness run launches a background probe job of many inference requests per
    # example; its validation is tested in tests/probes/test_api.py.
    ("POST", r"^/api/fairness/runs$"),
    # Streaming export: a long-lived response of the whole chain; tests/audit/test_stack.py reads
    # it.
    ("GET", r"^/api/audit/export$"),
]


def _excluded(method: str, path: str) -> bool:
    return any((m is None or m == method) and re.search(p, path) for m, p in EXCLUDED)


def test_openapi_contract(stack: Stack) -> None:
    key = stack.cp.cli(
        "keys", "create", "schemathesis", "--tenant", "schemathesis", "--admin"
    ).splitlines()[-1]
    schema = schemathesis.openapi.from_url(f"{stack.cp.url}/openapi.json")
    # positive_data_acceptance is left out: schema-valid requests the API refuses on purpose, with a
    # 400 envelope, are semantic (an unknown model, ``end`` before ``start``, fewer than two run
    # ids).
    checks = [c for c in CHECKS.get_all() if c.__name__ != "positive_data_acceptance"]
    failures: list[str] = []
    tested = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if _excluded(operation.method.upper(), operation.path):
            continue
        tested += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def run(case) -> None:
            # Keep inference cheap on the shared one-thread runner (the schema allows up to the
            # limit).
            if isinstance(case.body, dict):
                for field in ("max_tokens", "max_completion_tokens", "n"):
                    if isinstance(case.body.get(field), int) and case.body[field] > 2:
                        case.body[field] = 2
            case.call_and_validate(
                headers={"Authorization": f"Bearer {key}"}, checks=checks, timeout=60
            )

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - collect all failures, report them all
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}"[:3000])
    assert tested >= 20
    assert not failures, "\n\n".join(failures)
