"""API1 (BOLA): every ID-bearing route, called by another tenant's admin with this tenant's ids, is
refused.

The matrix is built from the live OpenAPI document: a new path with ``{...}`` that
is not listed in :data:`MATRIX` (or :data:`NOT_TENANT_RESOURCES`, with a reason)
fails :func:`test_matrix_covers_every_id_bearing_route`.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Stack

#: Path parameters that do not name a tenant's resource, and why.
NOT_TENANT_RESOURCES = {
    # ``{endpoint}`` names an OpenAI endpoint (chat/completions, ...), not an object. The runner is
    # named in X-Outpost-Runner and must be in a pool the caller may use
    # (tests/security/test_pools_trust.py).
    ("post", "/v1/e2e/{endpoint}"),
    # Public signed key material of a runner, served to the tenants that may use its pool
    # (``/v1/e2e/runners`` lists the same documents): they need it to seal. Checked below: it holds
    # no tenant data.
    ("get", "/api/runners/{runner_id}/e2e-key"),
}

#: (method, path) -> the resource kind whose id goes in the path.
MATRIX = {
    ("delete", "/api/budgets/{budget_id}"): "budget",
    ("put", "/api/runners/{runner_id}/e2e-key"): "runner",
    ("get", "/api/fairness/runs/{run_id}"): "fairness_run",
    ("get", "/api/fairness/runs/{run_id}/responses"): "fairness_run",
    ("post", "/api/keys/{key_id}/revoke"): "key",
    ("put", "/api/keys/{key_id}/models"): "key",
    ("put", "/api/keys/{key_id}/quotas"): "key",
    ("post", "/api/runners/{runner_id}/revoke"): "runner",
    ("patch", "/api/runners/{runner_id}"): "runner",
    ("post", "/api/pools/{pool}/grants"): "pool",
    ("post", "/api/pools/grants/{grant_id}/revoke"): "grant",
    ("get", "/api/deployments/{deployment_id}"): "deployment",
    ("patch", "/api/deployments/{deployment_id}"): "deployment",
    ("delete", "/api/deployments/{deployment_id}"): "deployment",
    ("post", "/api/deployments/{deployment_id}/scale"): "deployment",
}
#: Bodies that pass validation, so the refusal is the ownership check's (a 422 would prove nothing).
BODIES = {
    ("post", "/api/pools/{pool}/grants"): {"tenant": "bola-other"},
    ("patch", "/api/runners/{runner_id}"): {"usd_per_hour": 1000},
    ("put", "/api/keys/{key_id}/models"): {"allowed_models": []},
    ("put", "/api/keys/{key_id}/quotas"): {"tokens_per_minute": 1, "max_concurrent": 1},
    ("patch", "/api/deployments/{deployment_id}"): {"weight": 7},
    ("post", "/api/deployments/{deployment_id}/scale"): {"replicas": 0},
}

TINY_SUITE = {
    "schema_version": 1,
    "id": "tiny",
    "version": "1",
    "attributes": {
        "gender": {"groups": {"female": {"name": ["Emily"]}, "male": {"name": ["David"]}}}
    },
    "templates": [{"id": "greet", "attribute": "gender", "text": "Say hi to {name}."}],
}


def _client(stack: Stack, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=stack.cp.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


class Tenants:
    def __init__(self, stack: Stack) -> None:
        self.a = _client(
            stack,
            stack.cp.cli("keys", "create", "bola-a", "--tenant", "default", "--admin").splitlines()[
                -1
            ],
        )
        self.b = _client(
            stack,
            stack.cp.cli(
                "keys", "create", "bola-b", "--tenant", "bola-other", "--admin"
            ).splitlines()[-1],
        )
        created = self.a.post("/api/keys", json={"name": "victim"})
        assert created.status_code == 201, created.text
        self.victim_key = created.json()
        budget = self.a.post(
            "/api/budgets",
            json={"amount_usd": 5, "period": "day", "api_key_id": self.victim_key["id"]},
        )
        assert budget.status_code in (200, 201), budget.text
        run = self.a.post(
            "/api/fairness/runs",
            json={
                "model": "smollm2-135m-instruct",
                "suite": TINY_SUITE,
                "attributes": ["gender"],
                "max_prompts_per_group": 1,
                "sampling": {"max_tokens": 1, "seed": 1},
                "concurrency": 1,
            },
        )
        assert run.status_code == 202, run.text
        pool = next(
            p["id"] for p in self.a.get("/api/pools").json()["data"] if p["name"] == "default"
        )
        stack.cp.cli("keys", "create", "third", "--tenant", "bola-third")
        grant = self.a.post(f"/api/pools/{pool}/grants", json={"tenant": "bola-third"})
        assert grant.status_code == 201, grant.text
        # Scaled to zero: the resource is the row, whether or not a runner takes a replica.
        deployment = self.a.post(
            "/api/deployments",
            json={
                "name": "bola-deployment",
                "source": {"kind": "url", "url": "https://models.lan/m.gguf", "sha256": "a" * 64},
                "min_replicas": 0,
                "max_replicas": 1,
            },
        )
        assert deployment.status_code == 201, deployment.text
        self.ids = {
            "deployment": deployment.json()["id"],
            "budget": budget.json()["id"],
            "key": self.victim_key["id"],
            "runner": stack.runner_id,
            "fairness_run": run.json()["id"],
            "pool": pool,
            "grant": grant.json()["id"],
        }


@pytest.fixture(scope="module")
def tenants(stack: Stack) -> Iterator[Tenants]:
    t = Tenants(stack)
    yield t
    t.a.close()
    t.b.close()


def _id_bearing(stack: Stack) -> set[tuple[str, str]]:
    spec = httpx.get(f"{stack.cp.url}/openapi.json", timeout=10).json()
    return {
        (method, path)
        for path, ops in spec["paths"].items()
        if "{" in path
        for method in ops
        if method in {"get", "put", "post", "delete", "patch"}
    }


def test_matrix_covers_every_id_bearing_route(stack: Stack) -> None:
    missing = _id_bearing(stack) - set(MATRIX) - NOT_TENANT_RESOURCES
    assert not missing, f"add these ID-bearing routes to the BOLA matrix: {sorted(missing)}"


@pytest.mark.parametrize(("method", "path"), sorted(MATRIX))
def test_other_tenants_ids_are_refused(tenants: Tenants, method: str, path: str) -> None:
    kind = MATRIX[(method, path)]
    target = tenants.ids[kind]
    url = path.replace("{" + path.split("{")[1].split("}")[0] + "}", target)
    body = BODIES.get((method, path), {} if method in {"put", "post"} else None)
    response = tenants.b.request(method.upper(), url, json=body)
    # The e2e-key upload is authenticated by the runner's signature, not by a tenant key: refused as
    # invalid.
    allowed = {400, 403, 404} if path.endswith("/e2e-key") else {403, 404}
    assert response.status_code in allowed, (method, url, response.status_code, response.text)
    assert set(response.json()) == {"error"}
    assert (
        target not in response.text
        or kind in {"runner", "fairness_run", "budget", "key", "pool", "grant", "deployment"}
        and "in this tenant" in response.text
        or path.endswith("/e2e-key")
    )


def test_resources_survive_the_other_tenants_attempts(tenants: Tenants, stack: Stack) -> None:
    # Ordered after the matrix by name; each attempt above must have changed nothing.
    with _client(stack, tenants.victim_key["key"]) as victim:
        models = victim.get("/v1/models")
        assert models.status_code == 200  # the key was not revoked
        assert models.json()["data"]  # nor its allow-list emptied by B's PUT
    quotas = {k["id"]: k for k in tenants.a.get("/api/quotas").json()["keys"]}
    assert quotas[tenants.victim_key["id"]]["max_concurrent"] is None  # B's PUT set nothing
    budgets = tenants.a.get("/api/budgets").json()["data"]
    assert tenants.ids["budget"] in {b["id"] for b in budgets}
    runners = tenants.a.get("/api/runners").json()["data"]
    assert any(
        r["id"] == stack.runner_id and r["connected"] and r["revoked_at"] is None for r in runners
    )
    assert all(r["usd_per_hour"] != 1000 for r in runners)  # B's PATCH of the price changed nothing
    grants = tenants.a.get("/api/pools/grants").json()["data"]
    assert any(g["id"] == tenants.ids["grant"] and g["revoked_at"] is None for g in grants)
    deployment = tenants.a.get(f"/api/deployments/{tenants.ids['deployment']}")
    assert deployment.status_code == 200  # B's DELETE removed nothing
    assert deployment.json()["weight"] != 7  # nor did B's PATCH change it


def test_lists_and_queries_hold_no_other_tenants_data(tenants: Tenants) -> None:
    ids = tenants.ids
    for url in (
        "/api/keys",
        "/api/budgets",
        "/api/runners",
        "/api/fairness/runs",
        "/api/audit?limit=200",
        "/api/usage",
        "/api/pools",
        "/api/deployments",
    ):
        response = tenants.b.get(url)
        assert response.status_code == 200, (url, response.text)
        for target in ids.values():
            assert target not in response.text, (url, target)
    export = tenants.b.get("/api/audit/export")
    assert export.status_code == 200
    assert not any(target in export.text for target in ids.values())
    # Ids in query strings and bodies are scoped too.
    compare = tenants.b.get(
        "/api/fairness/compare", params={"runs": f"{ids['fairness_run']},{ids['fairness_run']}x"}
    )
    assert compare.status_code == 404, compare.text
    budget = tenants.b.post("/api/budgets", json={"amount_usd": 1, "api_key_id": ids["key"]})
    assert budget.status_code == 404, budget.text


def test_runner_key_document_is_public_material_only(tenants: Tenants, stack: Stack) -> None:
    response = tenants.b.get(f"/api/runners/{stack.runner_id}/e2e-key")
    assert response.status_code in (200, 404)
    assert "default" not in response.text  # no tenant, name or usage of the owning tenant
