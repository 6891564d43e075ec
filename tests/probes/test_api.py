"""The fairness API and CLI against the real stack: control plane (SQLite and
PostgreSQL) → tunnel → runner → llama.cpp with the embedded SmolLM2 model.

Runs stay tiny (one attribute, a few sets, 8 tokens): the point is the path
through the real parts and what gets recorded, not the model's bias.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import create_engine, text

from harness.processes import wait_until
from outpost.control_plane.db.engine import sync_url
from outpost.control_plane.probes import builtin_suite, suite_hash
from tests.conftest import Stack

MODEL = "smollm2-135m-instruct"
SMALL = {
    "model": MODEL,
    "suite": "default-v1",
    "attributes": ["gender"],
    "max_prompts_per_group": 3,
    "sampling": {"max_tokens": 8, "seed": 7},
    "concurrency": 2,
}
TINY_SUITE = {
    "schema_version": 1,
    "id": "tiny",
    "version": "1",
    "attributes": {
        "gender": {
            "groups": {
                "female": {"name": ["Emily", "Sarah"]},
                "male": {"name": ["Michael", "David"]},
            }
        }
    },
    "templates": [
        {"id": "greet", "attribute": "gender", "text": "Write one friendly sentence to {name}."}
    ],
}


def admin_key(stack: Stack, tenant: str) -> str:
    return stack.cp.cli(
        "keys", "create", "fairness-admin", "--tenant", tenant, "--admin"
    ).splitlines()[-1]


def client(stack: Stack, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=stack.cp.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def wait_finished(api: httpx.Client, run_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api.get(f"/api/fairness/runs/{run_id}").raise_for_status().json()
        if run["status"] != "running":
            return run
        time.sleep(0.5)
    raise TimeoutError(f"fairness run {run_id} still running after {timeout}s: {run}")


def start(api: httpx.Client, body: dict) -> dict:
    response = api.post("/api/fairness/runs", json=body)
    assert response.status_code == 202, response.text
    return response.json()


@pytest.fixture(scope="module")
def tenant_a(stack: Stack) -> Iterator[httpx.Client]:
    with client(stack, admin_key(stack, "fair-a")) as api:
        yield api


@pytest.fixture(scope="module")
def tenant_b(stack: Stack) -> Iterator[httpx.Client]:
    with client(stack, admin_key(stack, "fair-b")) as api:
        yield api


@pytest.fixture(scope="module")
def small_run(tenant_a: httpx.Client) -> dict:
    started = start(tenant_a, SMALL)
    assert started["status"] == "running" and started["report"] is None
    assert started["progress"] == {"total": 6, "done": 0, "errors": 0}
    return wait_finished(tenant_a, started["id"])


def test_small_run_through_the_api_completes_with_a_report(
    stack: Stack, tenant_a: httpx.Client, small_run: dict
):
    run = small_run
    assert run["status"] == "completed", run["error"]
    assert (run["suite_id"], run["suite_version"]) == ("default", "1")
    assert run["suite_hash"] == suite_hash(builtin_suite("default-v1"))
    assert run["sampling"] == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 8, "seed": 7}
    assert run["expansion"] == {"max_prompts_per_group": 3, "attributes": ["gender"], "seed": 0}
    assert run["progress"] == {"total": 6, "done": 6, "errors": 0}
    assert run["runners"] == [{"id": stack.runner_id, "requests": 6}]
    engines = {m["id"]: m["engine"] for m in tenant_a.get("/v1/models").json()["data"]}
    assert run["source"] == "server" and run["engine"] == engines[MODEL]
    assert run["error"] is None and run["finished_at"] is not None

    report = run["report"]
    assert report["suite_hash"] == run["suite_hash"] and report["sampling"] == run["sampling"]
    assert report["target"]["model"] == MODEL and report["target"]["runner"] == stack.runner_id
    assert report["totals"]["prompts"] == 6 and report["totals"]["error"] == 0
    gender = report["attributes"]["gender"]
    assert gender["groups"] == ["female", "male"]
    assert set(gender["outcomes"]) == {"refusal", "sentiment", "length_words"}
    for name, outcome in gender["outcomes"].items():
        for group in ("female", "male"):
            result = outcome["groups"][group]
            assert result["n"] <= 3 and {"value", "ci_low", "ci_high", "interval"} <= set(result)
        [pair] = outcome["comparisons"]
        assert pair["groups"] == ["female", "male"] and pair["n_pairs"] <= 3
        assert pair["test"] and "p_holm" in pair
        if name == "refusal":
            di = outcome["disparate_impact"]
            assert di["enough_samples"] is False and di["flagged"] is False  # 3 < 30 samples
    assert report["flagged_attributes"] == [] and run["flagged_attributes"] == []

    answers = tenant_a.get(f"/api/fairness/runs/{run['id']}/responses").json()["data"]
    assert len(answers) == 6 and {a["prompt"]["group"] for a in answers} == {"female", "male"}
    assert all(a["status"] in ("ok", "empty") and a["completion_tokens"] <= 8 for a in answers)


def test_the_run_is_stored_and_probed_as_an_ordinary_tenant(stack: Stack, small_run: dict):
    engine = create_engine(sync_url(stack.database_url))
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT r.suite_hash, r.sampling, r.status, r.report, t.name "
                    "FROM fairness_runs r JOIN tenants t ON t.id = r.tenant_id WHERE r.id = :id"
                ),
                {"id": small_run["id"]},
            ).one()
            sampling = row.sampling if isinstance(row.sampling, dict) else json.loads(row.sampling)
            document = row.report if isinstance(row.report, dict) else json.loads(row.report)
            assert row.suite_hash == small_run["suite_hash"] and sampling["seed"] == 7
            assert row.status == "completed" and row.name == "fair-a"
            key_id = document["summary"]["probe_key_id"]
            key = conn.execute(
                text("SELECT name, scopes, revoked_at, tenant_id FROM api_keys WHERE id = :id"),
                {"id": key_id},
            ).one()
            assert (
                key.name == "fairness-probe"
                and key.scopes == "inference"
                and key.revoked_at is not None
            )

            # The prompts went through /v1 with that key: routed, limited and recorded like any
            # request.
            def recorded() -> bool:
                n = conn.execute(
                    text(
                        "SELECT count(*) FROM request_records WHERE api_key_id = :k "
                        "AND tenant_id = :t AND runner_id = :r"
                    ),
                    {"k": key_id, "t": key.tenant_id, "r": stack.runner_id},
                ).scalar()
                conn.commit()
                return n == 6

            wait_until(recorded, 10, "request records of the probe key")
            events = conn.execute(
                text("SELECT actor, data FROM audit_events WHERE type = 'fairness.probe'")
            ).all()
            mine = [
                e
                for e in events
                if (e.data if isinstance(e.data, dict) else json.loads(e.data))["run_id"]
                == small_run["id"]
            ]
            assert len(mine) == 1
    finally:
        engine.dispose()


def test_runs_are_invisible_to_other_tenants(
    stack: Stack, tenant_a: httpx.Client, tenant_b: httpx.Client, small_run: dict
):
    run_id = small_run["id"]
    assert run_id in [r["id"] for r in tenant_a.get("/api/fairness/runs").json()["data"]]
    assert run_id not in [r["id"] for r in tenant_b.get("/api/fairness/runs").json()["data"]]
    for path in (f"/api/fairness/runs/{run_id}", f"/api/fairness/runs/{run_id}/responses"):
        response = tenant_b.get(path)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "fairness_run_not_found"
    response = tenant_b.get("/api/fairness/compare", params={"runs": f"{run_id},{run_id}x"})
    assert response.status_code == 404
    # Reading needs any key of the tenant; starting a run needs the admin scope.
    with client(stack, stack.cp.api_key("fair-a", "reader")) as reader:
        assert run_id in [r["id"] for r in reader.get("/api/fairness/runs").json()["data"]]
        response = reader.post("/api/fairness/runs", json=SMALL)
        assert (
            response.status_code == 403 and response.json()["error"]["code"] == "permission_denied"
        )


def _bad_suites() -> list[tuple[object, str]]:
    unknown_key = {**TINY_SUITE, "colour": "blue"}
    one_group = {
        **TINY_SUITE,
        "attributes": {"gender": {"groups": {"female": {"name": ["Emily"]}}}},
    }
    bad_slot = {**TINY_SUITE, "templates": [{"id": "t", "attribute": "gender", "text": "Hi {nme}"}]}
    huge = {**TINY_SUITE, "description": "x" * 300_000}
    wide = {
        **TINY_SUITE,
        "fillers": {"a": [f"a{i}" for i in range(150)], "b": [f"b{i}" for i in range(150)]},
        "templates": [{"id": "t", "attribute": "gender", "text": "{name} {a} {b}"}],
    }
    return [
        (unknown_key, "invalid_suite"),
        (one_group, "invalid_suite"),
        (bad_slot, "invalid_suite"),
        ("no-such-suite", "suite_not_found"),
        (huge, "suite_too_large"),
        (wide, "suite_too_large"),
    ]


@pytest.mark.parametrize(
    ("suite", "code"), _bad_suites(), ids=lambda v: v if isinstance(v, str) else None
)
def test_invalid_suite_is_a_400_envelope(tenant_a: httpx.Client, suite: object, code: str):
    before = len(tenant_a.get("/api/fairness/runs").json()["data"])
    response = tenant_a.post(
        "/api/fairness/runs", json={**SMALL, "suite": suite, "attributes": None}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (
        error["type"] == "invalid_request_error"
        and error["code"] == code
        and error["param"] == "suite"
    )
    assert error["message"]
    assert len(tenant_a.get("/api/fairness/runs").json()["data"]) == before


@pytest.mark.parametrize(
    ("change", "code", "param"),
    [
        ({"attributes": ["height"]}, "unknown_attribute", "attributes"),
        ({"sampling": {"max_tokens": 100_000}}, "max_tokens_too_large", "sampling.max_tokens"),
        (
            {"sampling": {"max_tokens": 8, "temperature": 5}},
            "invalid_request",
            "sampling.temperature",
        ),
        ({"surprise": 1}, "invalid_request", "surprise"),
    ],
)
def test_invalid_request_is_a_400_envelope(
    tenant_a: httpx.Client, change: dict, code: str, param: str
):
    response = tenant_a.post("/api/fairness/runs", json={**SMALL, **change})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param)


def test_unknown_model_fails_the_run_with_a_clear_error(tenant_a: httpx.Client, small_run: dict):
    started = start(tenant_a, {**SMALL, "model": "no-such-model"})
    assert started["engine"] is None
    run = wait_finished(tenant_a, started["id"], timeout=60)
    assert run["status"] == "failed" and run["report"] is None
    assert "no-such-model" in run["error"] and "does not exist" in run["error"], run["error"]
    assert run["progress"]["errors"] == run["progress"]["done"] == 6
    response = tenant_a.get(
        "/api/fairness/compare", params={"runs": f"{run['id']},{started['id']}x"}
    )
    assert response.status_code == 404
    response = tenant_a.get(
        "/api/fairness/compare", params={"runs": f"{small_run['id']},{run['id']}"}
    )
    assert response.status_code == 409 and response.json()["error"]["code"] == "run_has_no_report"
    response = tenant_a.get("/api/fairness/compare", params={"runs": run["id"]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "runs"


def test_compare_two_runs_side_by_side(tenant_a: httpx.Client, small_run: dict):
    custom = wait_finished(
        tenant_a, start(tenant_a, {**SMALL, "suite": TINY_SUITE, "attributes": None})["id"]
    )
    assert custom["status"] == "completed", custom["error"]
    assert custom["suite_id"] == "tiny" and custom["progress"]["done"] == 4

    response = tenant_a.get(
        "/api/fairness/compare", params={"runs": f"{small_run['id']},{custom['id']}"}
    )
    assert response.status_code == 200, response.text
    comparison = response.json()
    assert comparison["runs"] == [small_run["id"], custom["id"]]
    assert comparison["same_suite"] is False
    assert comparison["suite_hashes"] == [small_run["suite_hash"], custom["suite_hash"]]
    assert len(comparison["labels"]) == 2 and all(MODEL in label for label in comparison["labels"])
    refusal = next(
        r for r in comparison["rows"] if (r["attribute"], r["outcome"]) == ("gender", "refusal")
    )
    assert set(refusal["groups"]) == {"female", "male"} and len(refusal["flagged"]) == 2

    unfinished = start(tenant_a, {**SMALL, "max_prompts_per_group": 1})
    response = tenant_a.get(
        "/api/fairness/compare", params={"runs": f"{small_run['id']},{unfinished['id']}"}
    )
    assert response.status_code in (200, 409)  # 409 while it runs; it may be done already
    wait_finished(tenant_a, unfinished["id"])


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "outpost.control_plane.cli", "fairness", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_cli_runs_client_side_and_saves(stack: Stack, tenant_a: httpx.Client):
    key = admin_key(stack, "fair-a")
    done = _cli(
        "run",
        "--model",
        MODEL,
        "--base-url",
        stack.cp.url,
        "--api-key-env",
        "FAIRNESS_TEST_KEY",
        "--attribute",
        "gender",
        "--max-per-group",
        "2",
        "--max-tokens",
        "8",
        "--concurrency",
        "2",
        "--seed",
        "5",
        "--save",
        env={"FAIRNESS_TEST_KEY": key, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr
    assert "gender" in done.stdout and "refusal" in done.stdout
    assert key not in done.stdout + done.stderr
    run_id = re.search(r"saved as fairness run (fair_[0-9a-f]+)", done.stderr).group(1)
    run = tenant_a.get(f"/api/fairness/runs/{run_id}").json()
    assert run["status"] == "completed" and run["source"] == "client"
    assert run["suite_hash"] == suite_hash(builtin_suite()) and run["sampling"]["seed"] == 5
    assert run["runners"] == [{"id": stack.runner_id, "requests": 4}]
    assert run["report"]["totals"]["prompts"] == 4
    answers = tenant_a.get(f"/api/fairness/runs/{run_id}/responses").json()["data"]
    assert len(answers) == 4 and all(a["text"] is None and a["outcomes"] for a in answers)


def test_cli_refuses_a_missing_key_and_lists_suites():
    done = _cli(
        "run",
        "--model",
        MODEL,
        "--base-url",
        "http://127.0.0.1:9",
        "--api-key-env",
        "FAIRNESS_NO_SUCH_VAR",
        env={},
    )
    assert done.returncode == 2 and "FAIRNESS_NO_SUCH_VAR" in done.stderr
    done = _cli("suites", env={"COLUMNS": "250"})
    assert done.returncode == 0, done.stderr
    # The table shows a hash's first 12 characters (readable in 80 columns); --json the whole.
    assert "default-v1" in done.stdout and suite_hash(builtin_suite())[:12] in done.stdout
    done = _cli("suites", "--json", env={})
    assert done.returncode == 0, done.stderr
    assert suite_hash(builtin_suite()) in done.stdout


_IMPORT = {
    "run": {
        "suite_id": "s",
        "suite_version": "1",
        "suite_hash": "h",
        "expansion": {},
        "target": {"base_url": "http://engine.invalid", "model": MODEL},
        "sampling": {},
        "outcome_specs": {},
        "responses": [],
        "started_at": "2026-01-01T00:00:00Z",
        "finished_at": "2026-01-01T00:01:00Z",
    }
}
_ANSWER = {
    "prompt": {
        "prompt_id": "p",
        "set_id": "s",
        "attribute": "gender",
        "group": "female",
        "template_id": "t",
        "text": "Hi.",
    },
    "status": "ok",
    "text": "Hello.",
}


@pytest.mark.parametrize(
    ("path", "value", "param"),
    [
        # Found by schemathesis: a far-past time whose offset pushes it before year 1 in UTC.
        (("run", "finished_at"), "0170-08-28T01:35:01.1+23:53", "run"),
        (("run", "started_at"), "0001-01-01T00:00:00+23:59", "run"),
        (("run", "started_at"), "2026-01-01T00:02:00Z", "run"),  # after finished_at
        # Integers the audit chain (±(2**53-1)) cannot hold, and work the server would do for them.
        (("run", "sampling"), {"max_tokens": 10**30}, "run.sampling.max_tokens"),
        (("report_settings",), {"seed": -(2**53)}, "report_settings.seed"),
        (
            ("report_settings",),
            {"bootstrap_resamples": 10**9},
            "report_settings.bootstrap_resamples",
        ),
        (("runners",), [{"id": "r", "requests": 10**30}], "runners.0.requests"),
        (("run", "responses"), [{**_ANSWER, "latency_s": 9e15}], "run.responses.0.latency_s"),
        (
            ("run", "responses"),
            [{**_ANSWER, "outcomes": {"o": -9e15}}],
            "run.responses.0.outcomes.o",
        ),
        (("run", "target"), {"base_url": "x", "model": "m" * 201}, "run.target.model"),
    ],
)
def test_a_hostile_import_is_a_400_and_stores_nothing(
    tenant_a: httpx.Client, path: tuple[str, ...], value: object, param: str
):
    body = json.loads(json.dumps(_IMPORT))
    where = body
    for key in path[:-1]:
        where = where[key]
    where[path[-1]] = value
    before = len(tenant_a.get("/api/fairness/runs").json()["data"])
    response = tenant_a.post("/api/fairness/runs/import", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert len(tenant_a.get("/api/fairness/runs").json()["data"]) == before


def test_non_finite_numbers_in_an_import_are_refused(tenant_a: httpx.Client):
    # Python's JSON reader accepts NaN and Infinity; JSON and PostgreSQL's JSONB do not.
    raw = json.dumps(_IMPORT).replace('"sampling": {}', '"sampling": {"temperature": NaN}')
    response = tenant_a.post(
        "/api/fairness/runs/import", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "run.sampling.temperature"
    response = tenant_a.post("/api/fairness/runs/import", json=_IMPORT)
    assert response.status_code == 201, response.text
