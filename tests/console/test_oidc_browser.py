"""Console single sign-on in real Chromium against a real OpenID Connect provider on loopback.

The console is opened as ``http://localhost:<port>`` and the provider runs on
``http://127.0.0.1:<port>``: two different sites, as in production, so the
SameSite rules of the cookies are exercised for real.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from harness.processes import ControlPlaneProcess, free_port
from outpost.control_plane.console.sessions import ConsoleKey, load_or_create_key
from outpost.control_plane.db.models import AuditEvent
from outpost.control_plane.store.tenants import get_or_create_tenant
from outpost.control_plane.store.users import get_user_by_email
from tests.conftest import _database
from tests.console.conftest import Account, in_database, make_user
from tests.console.oidc_provider import OidcProvider, Person

CLIENT_ID = "outpost-console"
ROLE_MAP = '{"outpost-admins": "admin", "staff": "viewer"}'


class Sso:
    def __init__(self, cp: ControlPlaneProcess, provider: OidcProvider, base: str) -> None:
        self.cp, self.provider, self.base = cp, provider, base

    @property
    def database_url(self) -> str:
        return self.cp.database_url


def _start_cp(
    tmp: Path, provider_issuer: str, port: int, url: str | None = None, **env: str
) -> ControlPlaneProcess:
    url = url or f"sqlite+aiosqlite:///{tmp / 'outpost.db'}"
    return ControlPlaneProcess(
        tmp,
        url,
        port=port,
        extra_env={
            "OUTPOST_PUBLIC_URL": f"http://localhost:{port}",
            "OUTPOST_OIDC_ISSUER": provider_issuer,
            "OUTPOST_OIDC_CLIENT_ID": CLIENT_ID,
            "OUTPOST_OIDC_TENANT_CLAIM": "tenant",
            "OUTPOST_OIDC_ROLE_MAP": ROLE_MAP,
            "OUTPOST_OIDC_PROVIDER_NAME": "Test IdP",
            "OUTPOST_OIDC_JWKS_MIN_REFRESH_S": "0",
            **env,
        },
    ).start()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def sso(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sso]:
    port = free_port()
    base = f"http://localhost:{port}"
    tmp = tmp_path_factory.mktemp(f"sso-{request.param}")
    database = _database(request.param, tmp)
    provider = OidcProvider(CLIENT_ID, f"{base}/login/oidc/callback").start()
    cp = _start_cp(tmp, provider.issuer, port, next(database))
    in_database(cp.database_url, lambda s: get_or_create_tenant(s, "research"))
    provider.people.update(
        {
            "alice": Person("sub-alice", "alice@corp.example", ("outpost-admins",), "default"),
            "bob": Person("sub-bob", "bob@corp.example", ("staff",), "research"),
            "eve": Person("sub-eve", "eve@corp.example", ("outpost-admins",), "no-such-tenant"),
            "nobody": Person("sub-nobody", "nobody@corp.example", ("interns",), "default"),
        }
    )
    try:
        yield Sso(cp, provider, base)
    finally:
        cp.stop()
        provider.stop()
        database.close()


@pytest.fixture
def page(browser: Any, sso: Sso) -> Iterator[Any]:
    context = browser.new_context(base_url=sso.base)
    try:
        yield context.new_page()
    finally:
        context.close()


def _sso_sign_in(page: Any, username: str) -> Any:
    """From the console's sign-in page through the provider's form; returns the callback's
    response."""
    page.goto("/login")
    page.click("#sso-login")
    page.wait_for_selector("#username")
    page.fill("#username", username)
    with page.expect_response(lambda r: "/login/oidc/callback" in r.url) as answer:
        page.click("#allow")
    response = answer.value
    page.wait_for_load_state()
    return response


def _events(sso: Sso, type_: str) -> list[dict[str, Any]]:
    async def go(session: AsyncSession) -> list[dict[str, Any]]:
        rows = (
            await session.execute(
                select(AuditEvent).where(AuditEvent.type == type_).order_by(AuditEvent.seq)
            )
        ).scalars()
        return [dict(r.data, actor=r.actor, tenant_id=r.tenant_id) for r in rows]

    return in_database(sso.database_url, go)


def _last_failure(sso: Sso) -> dict[str, Any]:
    return _events(sso, "auth.login.failure")[-1]


def test_sign_in_with_sso_creates_the_user_and_audits_the_person(page: Any, sso: Sso) -> None:
    response = _sso_sign_in(page, "alice")
    assert response.status == 200
    page.wait_for_url(f"{sso.base}/")
    assert page.get_by_role("heading", level=1).inner_text() == "Overview"
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert (
        cookies["outpost_session"]["sameSite"] == "Strict"
        and cookies["outpost_session"]["httpOnly"]
    )
    # The provider saw PKCE: a verifier at the token endpoint, checked against the challenge.
    assert sso.provider.token_requests[-1]["code_verifier"]
    user = in_database(sso.database_url, lambda s: get_user_by_email(s, "alice@corp.example"))
    assert user is not None and user.role == "admin"
    success = [e for e in _events(sso, "auth.login.success") if e["email"] == "alice@corp.example"][
        -1
    ]
    assert success["method"] == "oidc" and success["oidc_subject"] == "sub-alice"
    assert success["actor"] == f"user:{user.id}" and success["oidc_issuer"] == sso.provider.issuer
    page.goto("/settings")
    assert sso.provider.issuer in page.locator("#deploy + dl").inner_text()
    # Sign-out ends the provider's session too (RP-initiated logout), then comes back.
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/login?notice=signed_out")
    assert sso.provider.logouts[-1]["client_id"] == CLIENT_ID
    assert (
        sso.provider.logouts[-1]["post_logout_redirect_uri"]
        == f"{sso.base}/login?notice=signed_out"
    )
    assert page.goto("/keys") is not None and "/login" in page.url


def test_the_role_and_tenant_come_from_the_claims(page: Any, sso: Sso) -> None:
    _sso_sign_in(page, "bob")
    page.wait_for_url(f"{sso.base}/")
    assert "research" in page.locator("header").inner_text()
    user = in_database(sso.database_url, lambda s: get_user_by_email(s, "bob@corp.example"))
    assert user is not None and user.role == "viewer"


def test_a_rotated_signing_key_is_fetched_when_first_seen(browser: Any, sso: Sso) -> None:
    for attempt in range(2):
        context = browser.new_context(base_url=sso.base)
        try:
            page = context.new_page()
            if attempt == 1:
                new_kid = sso.provider.rotate_keys()
            assert _sso_sign_in(page, "alice").status == 200
            page.wait_for_url(f"{sso.base}/")
        finally:
            context.close()
    assert sso.provider.signing_key.kid == new_kid


def _forged(provider: OidcProvider) -> Any:
    stranger = RSAKey.generate_key(2048)
    return lambda claims, header: provider.sign(claims, key=stranger, kid=header["kid"])


ATTACKS = {
    "forged_signature": (_forged, "bad_signature", "signature does not match"),
    "unsigned": (
        lambda p: (
            lambda claims, header: jwt.encode({"alg": "none"}, claims, None, algorithms=["none"])
        ),
        "bad_signature",
        "not signed with an accepted algorithm",
    ),
    "wrong_audience": (
        lambda p: lambda claims, header: p.sign({**claims, "aud": ["someone-else"]}),
        "wrong_audience",
        "not issued for this sign-in",
    ),
    "wrong_nonce": (
        lambda p: lambda claims, header: p.sign({**claims, "nonce": "replayed-nonce"}),
        "wrong_nonce",
        "not issued for this sign-in",
    ),
    "expired": (
        lambda p: (
            lambda claims, header: p.sign(
                {**claims, "iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600}
            )
        ),
        "expired_token",
        "has expired",
    ),
}


@pytest.mark.filterwarnings('ignore:JWS algorithm "none" is deprecated')  # the attacker's own token
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_bad_id_token_is_refused_and_audited(page: Any, sso: Sso, attack: str) -> None:
    make, reason, message = ATTACKS[attack]
    sso.provider.tamper = make(sso.provider)
    try:
        response = _sso_sign_in(page, "alice")
    finally:
        sso.provider.tamper = None
    assert response.status == 403
    assert message in page.locator("[role=alert]").inner_text()
    assert "outpost_session" not in {c["name"] for c in page.context.cookies()}
    failure = _last_failure(sso)
    assert failure["reason"] == reason and failure["method"] == "oidc"


def test_an_answer_with_another_state_is_refused(page: Any, sso: Sso) -> None:
    page.goto("/login")
    page.click("#sso-login")
    page.wait_for_selector("#username")
    response = page.goto("/login/oidc/callback?code=whatever&state=not-the-state-this-browser-got")
    assert response is not None and response.status == 403
    assert "does not belong to the sign-in" in page.locator("[role=alert]").inner_text()
    assert _last_failure(sso)["reason"] == "state_mismatch"


def test_a_replayed_code_is_refused_even_with_the_stolen_state_cookie(
    browser: Any, page: Any, sso: Sso
) -> None:
    stolen: dict[str, Any] = {}
    page.on(
        "request",
        lambda r: stolen.setdefault("url", r.url) if "/login/oidc/callback" in r.url else None,
    )
    page.on(
        "response",
        lambda r: (
            stolen.setdefault(
                "cookie", next(c for c in page.context.cookies() if c["name"] == "outpost_oidc")
            )
            if "/authorize" in r.url
            else None
        ),
    )
    assert _sso_sign_in(page, "alice").status == 200
    attacker = browser.new_context(base_url=sso.base)
    try:
        attacker.add_cookies([stolen["cookie"]])
        replay = attacker.new_page()
        response = replay.goto(stolen["url"])
        assert response is not None and response.status == 403
        assert "refused the sign-in (invalid_grant)" in replay.locator("[role=alert]").inner_text()
    finally:
        attacker.close()
    assert _last_failure(sso)["reason"] == "code_refused"


def test_a_tenant_that_does_not_exist_is_refused(page: Any, sso: Sso) -> None:
    assert _sso_sign_in(page, "eve").status == 403
    assert (
        "tenant 'no-such-tenant', which does not exist" in page.locator("[role=alert]").inner_text()
    )
    failure = _last_failure(sso)
    assert failure["reason"] == "unknown_tenant" and failure["oidc_subject"] == "sub-eve"
    assert in_database(sso.database_url, lambda s: get_user_by_email(s, "eve@corp.example")) is None


def test_a_person_without_a_mapped_role_is_refused(page: Any, sso: Sso) -> None:
    assert _sso_sign_in(page, "nobody").status == 403
    assert "no role in this console" in page.locator("[role=alert]").inner_text()
    assert _last_failure(sso)["reason"] == "no_role"


def test_local_passwords_can_be_switched_off(browser: Any, sso: Sso, tmp_path: Path) -> None:
    port = free_port()
    cp = _start_cp(
        tmp_path / "cp", sso.provider.issuer, port, OUTPOST_OIDC_ALLOW_LOCAL_PASSWORDS="false"
    )
    try:
        account = Account("local@corp.example", "admin", "default")
        make_user(cp.database_url, account)
        context = browser.new_context(base_url=f"http://localhost:{port}")
        try:
            page = context.new_page()
            page.goto("/login")
            assert page.locator("#sso-login").is_visible()
            assert page.locator("#password").count() == 0
            assert "Password sign-in is switched off" in page.locator("main").inner_text()
        finally:
            context.close()
        # A POST straight to the form's endpoint, even with a valid form token (made here with the
        # console key itself, as the page no longer renders one), is refused and audited.
        key = ConsoleKey(load_or_create_key(tmp_path / "cp" / "console-secret"))
        with httpx.Client(base_url=f"http://localhost:{port}") as client:
            client.get("/login")
            token = key.login_token(client.cookies["outpost_login"])
            refused = client.post(
                "/login",
                data={
                    "login_token": token,
                    "email": account.email,
                    "password": account.password,
                    "next": "/",
                },
            )
        assert refused.status_code == 403 and "outpost_session" not in refused.cookies

        async def failures(session: AsyncSession) -> list[dict[str, Any]]:
            rows = await session.execute(
                select(AuditEvent).where(AuditEvent.type == "auth.login.failure")
            )
            return [r.data for r in rows.scalars()]

        assert [f["reason"] for f in in_database(cp.database_url, failures)] == [
            "local_passwords_disabled"
        ]
    finally:
        cp.stop()


def test_a_next_path_that_browsers_would_turn_into_another_site_is_dropped(
    page: Any, sso: Sso
) -> None:
    # "/<TAB>/127.0.0.1:1": browsers strip the tab and read "//127.0.0.1:1", another site (a closed
    # loopback port stands in for the attacker's, so nothing leaves the machine).
    page.goto("/login/oidc?next=/%09/127.0.0.1:1/")
    page.wait_for_selector("#username")
    page.fill("#username", "alice")
    with page.expect_response(lambda r: "/login/oidc/callback" in r.url) as answer:
        page.click("#allow")
    assert answer.value.status == 200
    page.wait_for_url(lambda url: "/login/oidc/callback" not in url)
    page.wait_for_load_state()
    assert page.url == f"{sso.base}/", page.url
