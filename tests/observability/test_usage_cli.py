"""``control-plane usage`` reports what ``GET /api/usage`` reports (CLI parity, issue 26)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from harness.processes import wait_until
from tests.observability.conftest import ObservedStack

CHAT = "/v1/chat/completions"


def test_the_cli_and_the_api_count_the_same_requests(observed: ObservedStack) -> None:
    resp = httpx.post(
        f"{observed.cp.url}{CHAT}",
        headers={"Authorization": f"Bearer {observed.api_key}"},
        json={
            "model": "smollm2-135m-instruct",
            "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": 4,
        },
        timeout=120,
    )
    assert resp.status_code == 200, resp.text

    # The CLI reports the whole tenant; only an admin key's GET /api/usage does too (any other key
    # sees its own requests, and other tests of this stack make requests with keys of their own).
    admin = observed.cp.cli(
        "keys", "create", "usage-admin", "--tenant", "default", "--admin"
    ).splitlines()[-1]

    def both() -> tuple[dict[str, Any], dict[str, Any]]:
        api = httpx.get(
            f"{observed.cp.url}/api/usage",
            params={"period": "month"},
            headers={"Authorization": f"Bearer {admin}"},
            timeout=10,
        ).json()
        return api, json.loads(observed.cp.cli("usage", "--period", "month", "--json"))

    # Records are committed in batches after the answer (docs/performance.md): a request of an
    # earlier test may land between the two reads. Read again until no record lands in between.
    seen: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def settled() -> bool:
        seen.append(both())
        api, cli = seen[-1]
        return bool(api["total"]["requests"] == cli["total"]["requests"])

    wait_until(settled, 30, "the API and the CLI to read the same records")
    api, cli = seen[-1]
    assert cli["total"]["requests"] == api["total"]["requests"] >= 1
    assert cli["total"]["completion_tokens"] == api["total"]["completion_tokens"] >= 1
    assert cli["start"] == api["start"] and cli["end"] == api["end"]
    assert {r["group"]: r["requests"] for r in cli["by_model"]} == {
        r["model"]: r["requests"] for r in api["by_model"]
    }
    lines = observed.cp.cli("usage", "--by", "model").splitlines()
    assert any(line.startswith("smollm2-135m-instruct  requests=") for line in lines)
