"""Per-key model allow-lists, end to end: a real control plane and runner with the embedded model,
the official ``openai`` client, the SDK, the CLI and the console's key form.

A key may call only models its list names (exact names or glob patterns): others are refused
with ``403 model_not_allowed`` and left out of ``/v1/models``. Attacks: an allow-listed key
widening its own list or minting an unlisted key, lists the schema allows but nobody meant (too
many entries, control characters), and another tenant setting this tenant's key's list.
"""

from __future__ import annotations

import json
import re
from contextlib import closing

import httpx
import openai
import pytest

from harness.processes import wait_until
from outpost.sdk.client import Client
from tests.conftest import Stack
from tests.security.test_roles import _login, _make_users

MODEL = "smollm2-135m-instruct"


def _admin(stack: Stack) -> httpx.Client:
    key = stack.cp.cli("keys", "create", "allow-admin", "--admin").splitlines()[-1]
    return httpx.Client(
        base_url=stack.cp.url, headers={"Authorization": f"Bearer {key}"}, timeout=120
    )


def _models(stack: Stack, key: str) -> list[str]:
    response = httpx.get(
        f"{stack.cp.url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    assert response.status_code == 200, response.text
    return [m["id"] for m in response.json()["data"]]


def _chat(stack: Stack, key: str, model: str = MODEL) -> httpx.Response:
    return httpx.post(
        f"{stack.cp.url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )


def test_a_pattern_admits_its_models_and_refuses_the_rest(stack: Stack) -> None:
    with closing(_admin(stack)) as admin:
        served = _models(stack, stack.api_key)
        assert MODEL in served
        narrow = admin.post("/api/keys", json={"name": "smol", "allowed_models": ["smollm2-*"]})
        assert narrow.status_code == 201, narrow.text
        assert narrow.json()["allowed_models"] == ["smollm2-*"]
        wrong = admin.post("/api/keys", json={"name": "gpt", "allowed_models": ["gpt-*"]})
        assert wrong.status_code == 201, wrong.text
    smol, gpt = narrow.json()["key"], wrong.json()["key"]
    assert _models(stack, smol) == sorted(m for m in served if m.startswith("smollm2-"))
    assert _models(stack, gpt) == []
    assert _chat(stack, smol).status_code == 200
    # The official client sees an OpenAI-style 403 it raises as PermissionDeniedError.
    client = openai.OpenAI(base_url=stack.base_url, api_key=gpt, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
    body = refused.value.body
    assert isinstance(body, dict)
    error = body.get("error", body)
    assert error["code"] == "model_not_allowed" and error["param"] == "model"
    assert MODEL in error["message"]


def test_the_cli_sets_and_lifts_a_list(stack: Stack) -> None:
    secret = stack.cp.cli("keys", "create", "cli-listed", "--models", "nothing-*").splitlines()[-1]
    rows = [json.loads(line) for line in stack.cp.cli("keys", "list", "--json").splitlines()]
    row = next(r for r in rows if r["name"] == "cli-listed")
    assert row["allowed_models"] == ["nothing-*"]
    assert _chat(stack, secret).json()["error"]["code"] == "model_not_allowed"
    out = json.loads(stack.cp.cli("keys", "models", row["id"], "--all"))
    assert out["allowed_models"] is None
    # A CLI write is seen within the auth cache's TTL (docs/performance.md): poll, do not time.
    wait_until(lambda: _chat(stack, secret).status_code == 200, 60, "the lifted list seen")


def test_the_sdk_narrows_a_key(stack: Stack) -> None:
    with closing(_admin(stack)) as admin:
        made = admin.post("/api/keys", json={"name": "sdk-listed"})
        assert made.status_code == 201
        admin_key = admin.headers["authorization"].split()[1]
    key_id, secret = made.json()["id"], made.json()["key"]
    assert _chat(stack, secret).status_code == 200
    with Client(base_url=stack.base_url, api_key=admin_key) as sdk:
        changed = sdk.keys.set_models(key_id, [MODEL])
        assert changed.allowed_models == [MODEL]
        assert {k.id: k for k in sdk.keys.list()}[key_id].allowed_models == [MODEL]
        created = sdk.keys.create("sdk-new", allowed_models=["other"], role="viewer")
        assert created.allowed_models == ["other"] and created.role == "viewer"
    assert _chat(stack, secret).status_code == 200  # exactly the model it names
    assert _chat(stack, created.key).json()["error"]["code"] == "model_not_allowed"


def test_an_allow_listed_key_cannot_widen_its_reach(stack: Stack) -> None:
    with closing(_admin(stack)) as admin:
        made = admin.post(
            "/api/keys", json={"name": "narrow-dev", "role": "developer", "allowed_models": [MODEL]}
        )
        assert made.status_code == 201, made.text
    own_id = made.json()["id"]
    with httpx.Client(
        base_url=stack.cp.url,
        headers={"Authorization": f"Bearer {made.json()['key']}"},
        timeout=60,
    ) as dev:
        for method, path, body in (
            ("put", f"/api/keys/{own_id}/models", {"allowed_models": None}),
            ("put", f"/api/keys/{own_id}/models", {"allowed_models": [MODEL, "gpt-*"]}),
            ("post", "/api/keys", {"name": "escape"}),
            ("post", "/api/keys", {"name": "escape", "allowed_models": ["*"]}),
        ):
            response = dev.request(method.upper(), path, json=body)
            assert response.status_code == 403, (path, body, response.text)
            assert response.json()["error"]["code"] == "permission_denied"
        same = dev.post("/api/keys", json={"name": "same", "allowed_models": [MODEL]})
        assert same.status_code == 201, same.text
        listed = {k["id"]: k for k in dev.get("/api/keys").json()["data"]}
        assert listed[own_id]["allowed_models"] == [MODEL]


@pytest.mark.parametrize(
    "bad",
    [
        [f"m-{i}" for i in range(101)],  # more entries than a list holds
        ["bad\u0000name"],  # a control character
        [""],
        ["x" * 201],
        "smollm2-*",  # a string, not a list
        [7],
    ],
)
def test_lists_nobody_meant_are_refused_cleanly(stack: Stack, bad: object) -> None:
    with closing(_admin(stack)) as admin:
        made = admin.post("/api/keys", json={"name": "odd", "allowed_models": bad})
        assert made.status_code in (400, 422), made.text
        assert set(made.json()) == {"error"}


def test_another_tenant_cannot_set_this_tenants_list(stack: Stack) -> None:
    other = stack.cp.cli(
        "keys", "create", "other-admin", "--tenant", "allow-other", "--admin"
    ).splitlines()[-1]
    with closing(_admin(stack)) as admin:
        victim = admin.post("/api/keys", json={"name": "victim-listed"}).json()
    response = httpx.put(
        f"{stack.cp.url}/api/keys/{victim['id']}/models",
        json={"allowed_models": []},
        headers={"Authorization": f"Bearer {other}"},
        timeout=30,
    )
    assert response.status_code == 404, response.text
    assert MODEL in _models(stack, victim["key"])


def test_the_console_key_form_sets_a_list(stack: Stack) -> None:
    _make_users(stack.database_url)  # one of each role, in this stack's database
    client, csrf = _login(stack.cp, "developer@roles.example")
    with closing(client):
        created = client.post(
            "/keys",
            data={
                "csrf_token": csrf,
                "name": "console-listed",
                "expires": "never",
                "allowed_models": "smollm2-*, other-*",
            },
        )
        assert created.status_code == 201, created.text[:500]
        secret = re.search(r"opsk-[0-9a-f]{12}-[A-Za-z0-9_-]+", created.text)
        assert secret, created.text[:1000]
        assert _models(stack, secret.group(0)) == [
            m for m in _models(stack, stack.api_key) if m.startswith("smollm2-")
        ]
        page = client.get("/keys")
        assert "models: smollm2-*, other-*" in page.text
        key_id = re.search(
            r'data-key-id="(key_[0-9a-f]+)">\s*<th scope="row">console-listed', page.text
        )
        assert key_id, page.text[:500]
        narrowed = client.post(
            f"/keys/{key_id.group(1)}/models", data={"csrf_token": csrf, "allowed_models": "none-*"}
        )
        assert narrowed.status_code == 303, narrowed.text[:500]
        assert _models(stack, secret.group(0)) == []  # a console write drops the cached key
        # A developer cannot give the key a role above its own.
        stronger = client.post(
            "/keys",
            data={"csrf_token": csrf, "name": "console-op", "expires": "never", "role": "operator"},
        )
        assert stronger.status_code == 403, stronger.text[:500]


def test_a_sealed_request_obeys_the_list_too(stack: Stack) -> None:
    """End-to-end requests carry the model in clear: the same list applies, and the sealed
    runners listing leaves the model out."""
    from outpost.runner.e2e import describe_keys
    from outpost.sdk.client._e2e import seal_call
    from outpost.sdk.sealed import RUNNER_HEADER

    with closing(_admin(stack)) as admin:
        made = admin.post("/api/keys", json={"name": "sealed-gpt", "allowed_models": ["gpt-*"]})
        assert made.status_code == 201, made.text
    narrow = made.json()["key"]
    fingerprint = describe_keys(stack.runner.state_dir)["identity_fingerprint"]
    with Client(
        stack.cp.url, api_key=stack.api_key, e2e=True, pins={stack.runner_id: fingerprint}
    ) as wide:
        wait_until(
            lambda: any(r.runner_id == stack.runner_id for r in wide.runners.e2e_candidates()),
            120,
            "the runner's key document",
        )
        target = wide.runners.e2e_key(stack.runner_id)
    listed = httpx.get(
        f"{stack.cp.url}/v1/e2e/runners",
        headers={"Authorization": f"Bearer {narrow}"},
        timeout=30,
    ).json()["data"]
    assert listed and all(MODEL not in r["models"] for r in listed)
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    body, _ = seal_call(target, payload, stream=False)
    refused = httpx.post(
        f"{stack.cp.url}/v1/e2e/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {narrow}", RUNNER_HEADER: stack.runner_id},
        timeout=60,
    )
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "model_not_allowed"
