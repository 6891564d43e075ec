"""Single sign-on without a browser: claim mapping, ID-token checks and JWKS refetching against the
real test provider on loopback, and the ``next`` paths the flow accepts."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest

from outpost.control_plane.console.oidc import OidcClient, OidcRefused, map_identity
from outpost.control_plane.console.pages.auth import safe_next
from outpost.control_plane.settings import Settings
from tests.console.oidc_provider import OidcProvider, Person

CLIENT_ID = "outpost-console"
NONCE = "the-nonce"


def _settings(issuer: str = "https://sso.example", **kw: Any) -> Settings:
    return Settings(
        oidc_issuer=issuer,
        oidc_client_id=CLIENT_ID,
        oidc_tenant_claim="tenant",
        oidc_role_map={"admins": "admin", "staff": "viewer"},
        public_url="http://localhost:1",
        **kw,
    )


def own_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run a coroutine test on a loop of its own, in a thread.

    The browser tests of this folder hold Playwright's sync API open for the whole session, and
    it keeps its event loop marked running in the main thread, so a coroutine test run after
    them in the same process could not start pytest-asyncio's loop there.
    """

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, test(*args, **kwargs)).result()

    return run


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    p = OidcProvider(CLIENT_ID, "http://localhost:1/login/oidc/callback").start()
    try:
        yield p
    finally:
        p.stop()


def _claims(provider: OidcProvider, now: float | None = None, **extra: Any) -> dict[str, Any]:
    now = int(now if now is not None else time.time())
    return {
        "iss": provider.issuer,
        "aud": [CLIENT_ID],
        "sub": "s-1",
        "iat": now,
        "exp": now + 300,
        "nonce": NONCE,
        "email": "a@corp.example",
        **extra,
    }


@pytest.mark.parametrize(
    "target",
    [
        "/\t/evil.example",
        "/\n/evil.example",
        "/ /evil.example",
        "//evil.example",
        "/\\evil.example",
        "https://evil.example/",
        "/\x7f/x",
    ],
)
def test_next_paths_a_browser_could_read_as_another_site_are_dropped(target: str) -> None:
    assert safe_next(target) == "/"


def test_a_plain_next_path_is_kept() -> None:
    assert safe_next("/keys?tab=budgets") == "/keys?tab=budgets"


def test_the_highest_mapped_role_wins_and_a_list_or_a_string_claim_both_work() -> None:
    settings = _settings()
    claims = {
        "sub": "s",
        "email": "A@Corp.example",
        "tenant": "t",
        "groups": ["staff", "admins", "x"],
    }
    identity = map_identity(claims, settings)
    assert (identity.email, identity.tenant, identity.role) == ("a@corp.example", "t", "admin")
    assert map_identity({**claims, "groups": "staff"}, settings).role == "viewer"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"sub": "s", "tenant": "t", "groups": ["admins"]}, "no_email"),
        (
            {
                "sub": "s",
                "email": "a@b.c",
                "email_verified": False,
                "tenant": "t",
                "groups": ["admins"],
            },
            "email_unverified",
        ),
        ({"sub": "s", "email": "a@b.c", "groups": ["admins"]}, "no_tenant"),
        ({"sub": "s", "email": "a@b.c", "tenant": "t", "groups": ["interns"]}, "no_role"),
        ({"sub": "s", "email": "a@b.c", "tenant": "t", "groups": {"admins": True}}, "no_role"),
    ],
)
def test_claims_the_settings_do_not_map_are_refused(claims: dict[str, Any], reason: str) -> None:
    with pytest.raises(OidcRefused) as refused:
        map_identity(claims, _settings())
    assert refused.value.reason == reason


def test_a_default_role_admits_people_no_group_maps() -> None:
    claims = {"sub": "s", "email": "a@b.c", "tenant": "t", "groups": ["interns"]}
    assert map_identity(claims, _settings(oidc_default_role="viewer")).role == "viewer"


@own_loop
async def test_a_discovery_document_naming_another_issuer_is_refused() -> None:
    # An honest fake at the HTTP seam: a provider whose document claims to be someone else.
    transport = httpx2.MockTransport(
        lambda r: httpx2.Response(200, json={"issuer": "https://evil.example"})
    )
    client = OidcClient(_settings(), transport=transport)
    with pytest.raises(OidcRefused) as refused:
        await client.begin("/")
    assert refused.value.reason == "provider_misconfigured"


@own_loop
async def test_an_unseen_key_id_refetches_the_jwks_at_most_once_per_interval(
    provider: OidcProvider,
) -> None:
    clock = [time.time()]
    client = OidcClient(
        _settings(provider.issuer, oidc_jwks_min_refresh_s=3600), clock=lambda: clock[0]
    )
    assert (await client.verify(provider.sign(_claims(provider, clock[0])), NONCE))["sub"] == "s-1"
    fetched = provider.jwks_fetches
    # An hour later the provider rotates its key: the first token with the new kid refetches the
    # JWKS...
    clock[0] += 3601
    provider.rotate_keys()
    assert (await client.verify(provider.sign(_claims(provider, clock[0])), NONCE))["sub"] == "s-1"
    assert provider.jwks_fetches == fetched + 1
    # ...but a stream of made-up key ids cannot make the console hammer the provider.
    for n in range(3):
        with pytest.raises(OidcRefused) as refused:
            await client.verify(
                provider.sign(_claims(provider, clock[0]), kid=f"made-up-{n}"), NONCE
            )
        assert refused.value.reason == "bad_signature"
    assert provider.jwks_fetches == fetched + 1


@own_loop
async def test_several_audiences_need_azp_naming_this_client(provider: OidcProvider) -> None:
    client = OidcClient(_settings(provider.issuer))
    token = provider.sign(_claims(provider, aud=[CLIENT_ID, "other-app"]))
    with pytest.raises(OidcRefused) as refused:
        await client.verify(token, NONCE)
    assert refused.value.reason == "wrong_audience"
    token = provider.sign(_claims(provider, aud=[CLIENT_ID, "other-app"], azp=CLIENT_ID))
    assert (await client.verify(token, NONCE))["sub"] == "s-1"


@own_loop
async def test_a_token_from_another_issuer_is_refused(provider: OidcProvider) -> None:
    client = OidcClient(_settings(provider.issuer))
    with pytest.raises(OidcRefused) as refused:
        await client.verify(provider.sign(_claims(provider, iss="https://evil.example")), NONCE)
    assert refused.value.reason == "wrong_issuer"


@own_loop
async def test_an_hmac_signed_token_is_refused(provider: OidcProvider) -> None:
    # HMAC ID tokens are keyed with the client secret, which a public client does not have: an
    # HS256 token naming the provider's key id is refused before any key is tried.
    from joserfc import jwt
    from joserfc.jwk import OctKey

    token = jwt.encode(
        {"alg": "HS256", "kid": provider.signing_key.kid},
        _claims(provider),
        OctKey.generate_key(256),
    )
    with pytest.raises(OidcRefused) as refused:
        await OidcClient(_settings(provider.issuer)).verify(token, NONCE)
    assert refused.value.reason == "bad_signature"


@pytest.mark.parametrize("fresh_database_url", ["postgres"], indirect=True)
@own_loop
async def test_two_first_sign_ins_of_one_person_at_once_make_one_user(
    fresh_database_url: str,
) -> None:
    from outpost.control_plane.console.auth import sso_login
    from outpost.control_plane.console.oidc import Identity
    from outpost.control_plane.db.engine import Database
    from outpost.control_plane.db.migrate import upgrade_to_head
    from outpost.control_plane.db.models import utcnow
    from outpost.control_plane.store.tenants import get_or_create_tenant

    upgrade_to_head(fresh_database_url)
    db = Database(fresh_database_url)
    try:
        async with db.session() as session:
            await get_or_create_tenant(session, "default")
            await session.commit()
        identity = Identity(
            subject="s-race", email="race@corp.example", tenant="default", role="viewer"
        )
        login: dict[str, Any] = {
            "now": utcnow(),
            "remote_addr": None,
            "issuer": "https://sso.example",
        }
        async with db.session() as first, db.session() as second:
            winner = await sso_login(first, identity, **login)
            # The second insert waits on the first's uncommitted row, then collides with it.
            racing = asyncio.create_task(sso_login(second, identity, **login))
            await asyncio.sleep(0.5)
            await first.commit()
            loser = await racing
            await second.commit()
        assert winner.id == loser.id
    finally:
        await db.dispose()


@pytest.fixture(scope="module")
def confidential() -> Iterator[OidcProvider]:
    p = OidcProvider(
        CLIENT_ID, "http://localhost:1/login/oidc/callback", client_secret="s3cret-of-the-console"
    )
    p.people["carol"] = Person("sub-carol", "carol@corp.example", ("staff",), "default")
    p.start()
    try:
        yield p
    finally:
        p.stop()


async def _code_flow(client: OidcClient, username: str) -> dict[str, Any]:
    """The browser's part, by hand: the provider's form, then its redirect back with the code."""
    url, pending = await client.begin("/")
    async with httpx.AsyncClient() as browser:
        form = dict(httpx.URL(url).params)
        answer = await browser.post(url.split("?")[0], data={**form, "username": username})
    assert answer.status_code == 302, answer.text
    back = httpx.URL(answer.headers["location"])
    assert back.params["state"] == pending.state
    return await client.finish(back.params["code"], pending)


@own_loop
async def test_a_confidential_client_reads_its_secret_from_a_file(
    confidential: OidcProvider, tmp_path: Path
) -> None:
    secret = tmp_path / "client-secret"
    secret.write_text("s3cret-of-the-console\n")
    client = OidcClient(_settings(confidential.issuer, oidc_client_secret_file=secret))
    assert (await _code_flow(client, "carol"))["email"] == "carol@corp.example"
    secret.write_text("not-the-secret\n")
    with pytest.raises(OidcRefused) as refused:
        await _code_flow(client, "carol")
    assert refused.value.reason == "code_refused" and "invalid_client" in refused.value.message


def test_an_issuer_without_a_client_id_stops_the_control_plane_at_start() -> None:
    from fastapi import FastAPI

    from outpost.control_plane.console import install_console

    with pytest.raises(ValueError, match="OUTPOST_OIDC_CLIENT_ID"):
        install_console(FastAPI(), Settings(oidc_issuer="https://sso.example"))


@pytest.mark.parametrize(("status", "body"), [(502, "<html>Bad gateway</html>"), (200, "[]")])
@own_loop
async def test_a_token_endpoint_answering_garbage_is_a_clear_refusal(
    status: int, body: str
) -> None:
    # An honest fake at the HTTP seam: a broken token endpoint (a gateway's error page, a JSON
    # list).
    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.path.endswith("/openid-configuration"):
            return httpx2.Response(
                200,
                json={
                    "issuer": "https://sso.example",
                    "token_endpoint": "https://sso.example/token",
                    "authorization_endpoint": "https://sso.example/auth",
                    "jwks_uri": "https://sso.example/jwks",
                },
            )
        return httpx2.Response(status, text=body)

    client = OidcClient(_settings(), transport=httpx2.MockTransport(handler))
    _, pending = await client.begin("/")
    with pytest.raises(OidcRefused) as refused:
        await client.finish("a-code", pending)
    assert refused.value.reason == "provider_unreachable"
