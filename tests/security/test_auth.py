"""Authentication: expired, revoked and malformed keys and tokens answer a 401 envelope; secrets
never reach the logs or a URL."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import create_engine, text

from outpost.control_plane.db.engine import sync_url
from tests.conftest import Stack


class Secrets:
    """Every secret this module creates, to look for in the logs afterwards."""

    def __init__(self) -> None:
        self.values: list[str] = []

    def add(self, secret: str) -> str:
        self.values.append(secret)
        return secret


@pytest.fixture(scope="module")
def created(stack: Stack) -> Secrets:
    return Secrets()


@pytest.fixture(scope="module")
def admin(stack: Stack, created: Secrets) -> Iterator[httpx.Client]:
    key = created.add(
        stack.cp.cli("keys", "create", "auth-admin", "--tenant", "auth", "--admin").splitlines()[-1]
    )
    with httpx.Client(
        base_url=stack.cp.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as c:
        yield c


def _new_key(admin: httpx.Client, created: Secrets, **body: object) -> dict:
    response = admin.post("/api/keys", json={"name": "auth-test", **body})
    assert response.status_code == 201, response.text
    created.add(response.json()["key"])
    return response.json()


def _assert_401(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.headers["www-authenticate"] == "Bearer"
    assert "Traceback" not in response.text


def _models(stack: Stack, authorization: str | None) -> httpx.Response:
    headers = {} if authorization is None else {"Authorization": authorization}
    return httpx.get(f"{stack.cp.url}/v1/models", headers=headers, timeout=10)


def test_expired_key_is_401(stack: Stack, admin: httpx.Client, created: Secrets) -> None:
    key = _new_key(admin, created, expires_in_s=60)
    assert _models(stack, f"Bearer {key['key']}").status_code == 200
    engine = create_engine(sync_url(stack.database_url))
    try:
        with engine.begin() as conn:  # the clock moves on: expired a second ago
            conn.execute(
                text("UPDATE api_keys SET expires_at = :t WHERE id = :id"),
                {"t": "2000-01-01 00:00:00", "id": key["id"]},
            )
    finally:
        engine.dispose()
    # Written behind the control plane's back (SQL), so its key cache may serve the key for up to
    # auth_cache_ttl_s (5 s, docs/performance.md); after that the expiry holds.
    deadline = time.monotonic() + 5 + 3
    while (
        response := _models(stack, f"Bearer {key['key']}")
    ).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    _assert_401(response)


def test_revoked_key_is_401_at_once(stack: Stack, admin: httpx.Client, created: Secrets) -> None:
    key = _new_key(admin, created)
    assert _models(stack, f"Bearer {key['key']}").status_code == 200
    assert admin.post(f"/api/keys/{key['id']}/revoke").status_code == 200
    _assert_401(_models(stack, f"Bearer {key['key']}"))
    chat = httpx.post(
        f"{stack.cp.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key['key']}"},
        json={"model": "x", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    _assert_401(chat)


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "bearer opsk-",
        "Bearer opsk-zz",
        "Bearer opet-abc",
        "Bearer " + "A" * 5000,
        "Bearer opsk-" + "0" * 12 + "x" * 43,
        "Bearer opsk-\u00e9\u00e9",
        "Token abc",
    ],
)
def test_malformed_keys_are_401(stack: Stack, authorization: str | None) -> None:
    try:
        response = _models(stack, authorization)
    except UnicodeEncodeError:  # a non-ASCII header cannot even be sent; send it as raw bytes
        response = httpx.get(
            f"{stack.cp.url}/v1/models",
            headers=[(b"Authorization", authorization.encode())],
            timeout=10,
        )
    _assert_401(response)


def test_a_key_of_the_wrong_kind_is_refused(
    stack: Stack, admin: httpx.Client, created: Secrets
) -> None:
    token = created.add(
        admin.post("/api/runners/enroll", json={"name": "auth-never-used"}).json()["token"]
    )
    _assert_401(_models(stack, f"Bearer {token}"))  # an enrollment token is not an API key
    key = _new_key(admin, created)
    register = httpx.post(
        f"{stack.cp.url}/api/runners/register",
        headers={"Authorization": f"Bearer {key['key']}"},
        json={"identity_public_key": "A" * 43},
        timeout=10,
    )
    assert register.status_code in (400, 401), (
        register.text
    )  # and an API key is not an enrollment token
    inference_only = _new_key(admin, created)
    forbidden = httpx.get(
        f"{stack.cp.url}/api/keys",
        headers={"Authorization": f"Bearer {inference_only['key']}"},
        timeout=10,
    )
    assert forbidden.status_code == 403 and forbidden.json()["error"]["type"] == "permission_error"


def test_zz_no_secret_in_logs_or_urls(stack: Stack, created: Secrets) -> None:
    """Runs last in the module (name): scans everything the processes logged so far."""
    assert len(created.values) >= 5
    logs = {"control plane": stack.cp.log(), "runner": stack.runner.log()}
    for name, text_ in logs.items():
        assert text_, name
        for secret in [*created.values, stack.api_key]:
            assert secret not in text_, f"a secret ({secret[:9]}…) is in the {name} log"
            # Not even the secret part without its public prefix.
            assert secret[-20:] not in text_, f"part of a secret is in the {name} log"
    access = [line for line in logs["control plane"].splitlines() if "HTTP/1.1" in line]
    assert access, "no access log lines to check"
    assert not [line for line in access if re.search(r"op(sk|et)-", line)], "a token is in a URL"
