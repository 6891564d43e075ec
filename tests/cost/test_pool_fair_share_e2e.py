"""An operator's pool granted to exactly two tenants still shares its runner by VTC (issue 19).

The cost stack's runner belongs to the platform operator (tenant ``runners``). Here it is moved
to a pool granted to two tenants only, not to every tenant: a third tenant cannot reach it,
and between the two the Virtual Token Counter serves the light tenant ahead of the heavy
tenant's backlog, as on any shared runner (tests/cost/test_scheduling_e2e.py).
"""

from __future__ import annotations

import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.cost.conftest import QUEUE_PER_TENANT, CostStack
from tests.cost.test_scheduling_e2e import _post, _queued, _records


def _api(stack: CostStack, key: str, method: str, path: str, body: object = None) -> httpx.Response:
    return httpx.request(
        method,
        f"{stack.cp.url}{path}",
        json=body,
        timeout=10,
        headers={"Authorization": f"Bearer {key}"},
    )


def test_an_operator_pool_granted_to_two_tenants_gives_vtc_fair_share(
    cost_stack: CostStack,
) -> None:
    stack = cost_stack
    tag = secrets.token_hex(2)
    heavy_t, light_t, outsider_t = f"pool-heavy-{tag}", f"pool-light-{tag}", f"pool-outsider-{tag}"
    _, operator = stack.key("runners", f"pool-op-{tag}", admin=True)
    _, heavy = stack.key(heavy_t)
    _, light = stack.key(light_t)
    _, light_admin = stack.key(light_t, "admin", admin=True)
    _, outsider = stack.key(outsider_t)
    pool = _api(stack, operator, "POST", "/api/pools", {"name": f"gpu-{tag}"})
    assert pool.status_code == 201, pool.text
    grants = [
        _api(
            stack, operator, "POST", f"/api/pools/{pool.json()['id']}/grants", {"tenant": t}
        ).json()["id"]
        for t in (heavy_t, light_t)
    ]
    moved = _api(
        stack, operator, "PATCH", f"/api/runners/{stack.runner_id}", {"pool": pool.json()["id"]}
    )
    assert moved.status_code == 200, moved.text
    try:
        assert (
            _post(stack, outsider, 4).status_code == 404
        )  # not granted: the runner does not exist for it
        burst = 1 + QUEUE_PER_TENANT
        with ThreadPoolExecutor(burst + 1) as workers:
            heavy_futures = [workers.submit(_post, stack, heavy, 24) for _ in range(burst)]
            deadline = time.monotonic() + 30
            while _queued(stack, light_admin) < QUEUE_PER_TENANT:
                assert time.monotonic() < deadline, "the heavy burst never queued"
                time.sleep(0.02)
            light_future = workers.submit(_post, stack, light, 24)
            responses = [f.result() for f in heavy_futures] + [light_future.result()]
        assert all(r.status_code == 200 for r in responses), [
            r.text for r in responses if r.status_code != 200
        ]
        assert {r.headers["x-outpost-runner"] for r in responses} == {stack.runner_id}
        ids = [r.headers["x-request-id"] for r in responses]
        records = _records(stack, ids)
        order = sorted(ids, key=lambda i: records[i]["created_at"])
        assert order.index(ids[-1]) <= 2, (
            order
        )  # FCFS would finish it last (see test_scheduling_e2e)
        assert records[ids[-1]]["queue_ms"] < max(records[i]["queue_ms"] for i in ids[:-1])
    finally:
        _api(stack, operator, "PATCH", f"/api/runners/{stack.runner_id}", {"pool": "default"})
        for grant in grants:
            _api(stack, operator, "POST", f"/api/pools/grants/{grant}/revoke")
