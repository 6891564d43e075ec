"""Runner registration: malformed, unknown, expired, used and doubly spent enrollment tokens are
refused with one typed error (401 ``invalid_enrollment_token``) and register nothing.

"Nothing registered" is checked where it would show: no runner row, no ``runner.enroll`` audit
event, and a valid token that a refused attempt touched is not burned.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import create_engine, text

from outpost.control_plane.db.engine import sync_url
from outpost.sdk.identity import IdentityKey
from tests.conftest import Stack


class Registry:
    """The control plane's database, read directly: what a refused registration must not change."""

    def __init__(self, stack: Stack) -> None:
        self.engine = create_engine(sync_url(stack.database_url))

    def scalar(self, sql: str, **params: object) -> object:
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def runners(self) -> int:
        return int(self.scalar("SELECT count(*) FROM runners"))  # type: ignore[arg-type]

    def enroll_events(self) -> int:
        return int(self.scalar("SELECT count(*) FROM audit_events WHERE type = 'runner.enroll'"))  # type: ignore[arg-type]

    def execute(self, sql: str, **params: object) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(sql), params)


@pytest.fixture(scope="module")
def registry(stack: Stack) -> Iterator[Registry]:
    r = Registry(stack)
    yield r
    r.engine.dispose()


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Iterator[httpx.Client]:
    key = stack.cp.cli(
        "keys", "create", "enroll-admin", "--tenant", "enroll", "--admin"
    ).splitlines()[-1]
    with httpx.Client(
        base_url=stack.cp.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as c:
        yield c


def _token(admin: httpx.Client, name: str) -> str:
    response = admin.post("/api/runners/enroll", json={"name": name})
    assert response.status_code == 201, response.text
    return response.json()["token"]


def _register(
    stack: Stack, authorization: str | bytes | None, body: dict | None = None
) -> httpx.Response:
    headers = (
        []
        if authorization is None
        else [
            (
                b"Authorization",
                authorization.encode() if isinstance(authorization, str) else authorization,
            )
        ]
    )
    return httpx.post(
        f"{stack.cp.url}/api/runners/register",
        headers=headers,
        timeout=10,
        json=body
        if body is not None
        else {"identity_public_key": IdentityKey.generate().public_b64},
    )


def _assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json() == {
        "error": {
            "message": response.json()["error"]["message"],
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_enrollment_token",
        }
    }
    assert response.headers["www-authenticate"] == "Bearer"


class Unchanged:
    """Asserts the registry is as it was when entered."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def __enter__(self) -> None:
        self.before = (self.registry.runners(), self.registry.enroll_events())

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            assert (self.registry.runners(), self.registry.enroll_events()) == self.before, (
                "something registered"
            )


MALFORMED = [
    None,
    "",
    "Bearer",
    "Basic dXNlcjpwYXNz",
    "Token opet-abc",
    "Bearer opet-",
    "Bearer opet-zz",
    "Bearer opet-" + "0" * 12,
    "Bearer opet-" + "0" * 12 + "x" * 43,
    "Bearer opsk-" + "0" * 12 + "x" * 43,
    "Bearer " + "A" * 5000,
    "Bearer opet-\u00e9\u00e9".encode(),
    b"Bearer opet-\xff\xfe",
    "Bearer opet-000000000000-' OR 1=1 --",
]


@pytest.mark.parametrize("authorization", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_or_unknown_tokens_are_refused(
    stack: Stack, registry: Registry, authorization: str | bytes | None
) -> None:
    with Unchanged(registry):
        _assert_refused(_register(stack, authorization))


def test_wrong_secret_for_a_real_prefix_is_refused_and_does_not_burn_the_token(
    stack: Stack, admin: httpx.Client, registry: Registry
) -> None:
    token = _token(admin, "enroll-wrong-secret")
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with Unchanged(registry):
        _assert_refused(_register(stack, f"Bearer {forged}"))
        # A body the schema refuses is answered before the token is looked at: not burned either.
        bad = _register(stack, f"Bearer {token}", {"identity_public_key": "not a key"})
        assert bad.status_code in (400, 422), bad.text
    assert _register(stack, f"Bearer {token}").status_code == 201


def test_expired_token_is_refused(stack: Stack, admin: httpx.Client, registry: Registry) -> None:
    token = _token(admin, "enroll-expired")
    prefix = token.split("-", 2)[1]
    registry.execute(
        "UPDATE enrollment_tokens SET expires_at = :t WHERE prefix = :p",
        t="2000-01-01 00:00:00",
        p=prefix,
    )
    with Unchanged(registry):
        _assert_refused(_register(stack, f"Bearer {token}"))
    assert (
        registry.scalar("SELECT used_at FROM enrollment_tokens WHERE prefix = :p", p=prefix) is None
    )


def test_used_token_is_refused_even_after_its_runner_is_revoked(
    stack: Stack, admin: httpx.Client, registry: Registry
) -> None:
    token = _token(admin, "enroll-once")
    first = _register(stack, f"Bearer {token}")
    assert first.status_code == 201, first.text
    with Unchanged(registry):
        _assert_refused(_register(stack, f"Bearer {token}"))
    runner_id = first.json()["runner_id"]
    assert admin.post(f"/api/runners/{runner_id}/revoke").status_code == 200
    with Unchanged(registry):  # revocation frees neither the token nor the name
        _assert_refused(_register(stack, f"Bearer {token}"))


def test_a_token_spent_twice_at_once_registers_one_runner(
    stack: Stack, admin: httpx.Client, registry: Registry
) -> None:
    token = _token(admin, "enroll-race")
    before = registry.runners()
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: _register(stack, f"Bearer {token}"), range(6)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(201) == 1, [r.text for r in responses]
    # The losers are refused with the typed error: the token is spent (compare-and-set in the
    # store).
    for loser in (r for r in responses if r.status_code != 201):
        _assert_refused(loser)
    assert registry.runners() == before + 1
    assert registry.scalar("SELECT count(*) FROM runners WHERE name = 'enroll-race'") == 1
