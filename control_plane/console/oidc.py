"""Console single sign-on: OpenID Connect authorization code flow with PKCE (docs/console.md).

authlib builds the authorization request and exchanges the code; joserfc
(authlib's JOSE library) checks the ID token's signature against the
provider's JWKS, refetched when a token names a key id not seen before (the
provider rotated its keys). Nothing here trusts the browser: state, nonce and
the PKCE verifier travel in a cookie signed with the console key, and the ID
token comes from the token endpoint, never from the redirect.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx2
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError
from joserfc import jws, jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    InvalidKeyIdError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import KeySet

from outpost.control_plane.permissions import ROLES, Role
from outpost.control_plane.settings import Settings

__all__ = ["Identity", "OidcClient", "OidcRefused", "PendingLogin", "map_identity"]

# Signature algorithms an ID token may use; "none" and HMAC (keyed with the client secret) are
# refused.
_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
_LEEWAY_S = 60
# Several mapped roles: the first in ``permissions.ROLES`` order (most powerful) wins.
ROLE_RANK = {role: len(ROLES) - i for i, role in enumerate(ROLES)}


class OidcRefused(Exception):
    """A sign-in refused: ``reason`` goes to the audit log, ``message`` to the person."""

    def __init__(
        self, reason: str, message: str, *, email: str | None = None, subject: str | None = None
    ) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason, self.message, self.email, self.subject = reason, message, email, subject


@dataclass(frozen=True)
class PendingLogin:
    """What the callback needs from the request that started the flow (kept in a signed cookie)."""

    state: str
    nonce: str
    verifier: str
    next: str
    expires_at: int

    def dumps(self) -> str:
        return json.dumps(
            {
                "s": self.state,
                "n": self.nonce,
                "v": self.verifier,
                "x": self.next,
                "e": self.expires_at,
            },
            separators=(",", ":"),
        )

    @classmethod
    def loads(cls, raw: str) -> PendingLogin:
        data = json.loads(raw)
        return cls(
            state=str(data["s"]),
            nonce=str(data["n"]),
            verifier=str(data["v"]),
            next=str(data["x"]),
            expires_at=int(data["e"]),
        )


@dataclass(frozen=True)
class Identity:
    """The person an ID token names, mapped to this deployment."""

    subject: str
    email: str
    tenant: str
    role: Role


def _claim_values(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.split() if " " in value else [value]
    if isinstance(value, list):
        return [str(v) for v in value if isinstance(v, (str, int))]
    return []


def map_identity(claims: dict[str, Any], settings: Settings) -> Identity:
    """Email, tenant and role from verified ID-token claims; refuses what the settings do not
    map."""
    subject = str(claims.get("sub", ""))
    email = claims.get(settings.oidc_email_claim)
    if not isinstance(email, str) or "@" not in email:
        raise OidcRefused(
            "no_email",
            f"Your identity provider sent no email address (claim '{settings.oidc_email_claim}').",
            subject=subject,
        )
    email = email.strip().lower()
    if claims.get("email_verified") is False:
        raise OidcRefused(
            "email_unverified",
            "Your identity provider says this email address is not verified.",
            email=email,
            subject=subject,
        )
    if settings.oidc_tenant_claim:
        tenant = claims.get(settings.oidc_tenant_claim)
        if not isinstance(tenant, str) or not tenant:
            raise OidcRefused(
                "no_tenant",
                f"Your identity provider sent no tenant (claim '{settings.oidc_tenant_claim}').",
                email=email,
                subject=subject,
            )
    else:
        tenant = settings.oidc_default_tenant
    roles = [
        settings.oidc_role_map[v]
        for v in _claim_values(claims.get(settings.oidc_role_claim))
        if v in settings.oidc_role_map
    ]
    role: Role | Literal[""] = settings.oidc_default_role
    if roles:
        highest: Role = max(roles, key=ROLE_RANK.__getitem__)
        role = highest
    if not role:
        raise OidcRefused(
            "no_role",
            "Your account has no role in this console: ask an administrator to add you "
            "to a group that maps to one.",
            email=email,
            subject=subject,
        )
    return Identity(subject=subject, email=email, tenant=tenant, role=role)


class OidcClient:
    """The console's relying party: discovery, authorization URL, code exchange, ID-token checks.

    ``transport`` is the HTTP seam (tests pass none: they run a real provider on loopback).
    Everything here speaks httpx2, the client authlib's OAuth integration is built on, so one
    transport and one family of errors cover discovery, the JWKS and the code exchange.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._transport = transport
        self._clock = clock
        self._metadata: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._keys_fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    @property
    def issuer(self) -> str:
        return self.settings.oidc_issuer.rstrip("/")

    @property
    def redirect_uri(self) -> str:
        return self.settings.public_url.rstrip("/") + "/login/oidc/callback"

    def _client_secret(self) -> str | None:
        if self.settings.oidc_client_secret_file is not None:
            return self.settings.oidc_client_secret_file.read_text().strip()
        secret = self.settings.oidc_client_secret
        return secret.get_secret_value() if secret is not None else None

    def _http(self, **kwargs: Any) -> AsyncOAuth2Client:
        secret = self._client_secret()
        return AsyncOAuth2Client(
            client_id=self.settings.oidc_client_id,
            client_secret=secret,
            scope=self.settings.oidc_scopes,
            redirect_uri=self.redirect_uri,
            code_challenge_method="S256",
            token_endpoint_auth_method="client_secret_basic" if secret else "none",
            transport=self._transport,
            timeout=10.0,
            **kwargs,
        )

    def _plain(self) -> httpx2.AsyncClient:
        # Discovery and JWKS are public documents: no client authentication.
        return httpx2.AsyncClient(transport=self._transport, timeout=10.0)

    async def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            async with self._plain() as http:
                try:
                    resp = await http.get(f"{self.issuer}/.well-known/openid-configuration")
                    resp.raise_for_status()
                    meta = resp.json()
                except (httpx2.HTTPError, ValueError) as exc:
                    raise OidcRefused(
                        "provider_unreachable",
                        "The identity provider cannot be reached right now. Try again in a minute.",
                    ) from exc
            # OpenID Connect Discovery 4.3: the document must name the issuer we asked.
            if not isinstance(meta, dict) or str(meta.get("issuer", "")).rstrip("/") != self.issuer:
                raise OidcRefused(
                    "provider_misconfigured",
                    "The identity provider's discovery document names another issuer.",
                )
            self._metadata = meta
        return self._metadata

    async def _jwks(self, *, refresh: bool) -> KeySet:
        async with self._lock:
            due = self._clock() - self._keys_fetched_at >= self.settings.oidc_jwks_min_refresh_s
            if self._keys is None or (refresh and due):
                meta = await self.metadata()
                async with self._plain() as http:
                    try:
                        resp = await http.get(meta["jwks_uri"])
                        resp.raise_for_status()
                        self._keys = KeySet.import_key_set(resp.json())
                    except (httpx2.HTTPError, ValueError, KeyError, JoseError) as exc:
                        raise OidcRefused(
                            "provider_unreachable",
                            "The identity provider's keys cannot be "
                            "read right now. Try again in a minute.",
                        ) from exc
                self._keys_fetched_at = self._clock()
            return self._keys

    async def begin(self, next_path: str, ttl_s: int = 600) -> tuple[str, PendingLogin]:
        """The provider URL to send the browser to, and what to remember until it comes back."""
        meta = await self.metadata()
        pending = PendingLogin(
            state=secrets.token_urlsafe(24),
            nonce=secrets.token_urlsafe(24),
            verifier=secrets.token_urlsafe(48),
            next=next_path,
            expires_at=int(self._clock()) + ttl_s,
        )
        async with self._http() as http:
            url, _ = http.create_authorization_url(
                meta["authorization_endpoint"],
                state=pending.state,
                nonce=pending.nonce,
                code_verifier=pending.verifier,
            )
        return url, pending

    async def finish(self, code: str, pending: PendingLogin) -> dict[str, Any]:
        """Exchange the code (with the PKCE verifier) and return the verified ID-token claims."""
        meta = await self.metadata()
        async with self._http() as http:
            try:
                token = await http.fetch_token(
                    meta["token_endpoint"],
                    grant_type="authorization_code",
                    code=code,
                    code_verifier=pending.verifier,
                    redirect_uri=self.redirect_uri,
                )
            except OAuthError as exc:
                raise OidcRefused(
                    "code_refused",
                    f"The identity provider refused the sign-in ({exc.error}). "
                    "Start again from the sign-in page.",
                ) from exc
            except (
                httpx2.HTTPError,
                ValueError,
            ) as exc:  # ValueError: a token response that is not JSON
                raise OidcRefused(
                    "provider_unreachable", "The identity provider cannot be reached right now."
                ) from exc
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise OidcRefused(
                "no_id_token",
                "The identity provider sent no ID token (is 'openid' in the scopes?).",
            )
        return await self.verify(id_token, pending.nonce)

    async def verify(self, id_token: str, nonce: str) -> dict[str, Any]:
        """Signature (a known key, refetching the JWKS once for an unseen key id), then iss,
        aud, exp, nonce."""
        try:
            header = jws.extract_compact(id_token.encode()).protected
        except (JoseError, ValueError) as exc:
            raise OidcRefused(
                "malformed_token", "The identity provider sent an ID token that cannot be read."
            ) from exc
        if header.get("alg") not in _ALGORITHMS:
            raise OidcRefused(
                "bad_signature",
                f"The ID token is not signed with an accepted algorithm ({header.get('alg')!r}).",
            )
        keys = await self._jwks(refresh=False)
        if header.get("kid") and not any(k.kid == header["kid"] for k in keys):
            keys = await self._jwks(refresh=True)  # the provider rotated its keys
        try:
            decoded = jwt.decode(id_token, keys, algorithms=list(_ALGORITHMS))
        except (BadSignatureError, InvalidKeyIdError) as exc:
            raise OidcRefused(
                "bad_signature",
                "The ID token's signature does not match the identity provider's keys.",
            ) from exc
        except (JoseError, ValueError) as exc:
            raise OidcRefused(
                "malformed_token", "The identity provider sent an ID token that cannot be read."
            ) from exc
        claims = decoded.claims
        registry = jwt.JWTClaimsRegistry(
            now=lambda: int(self._clock()),
            leeway=_LEEWAY_S,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.settings.oidc_client_id},
            sub={"essential": True},
            exp={"essential": True},
            nonce={"essential": True, "value": nonce},
        )
        try:
            registry.validate(claims)
        except ExpiredTokenError as exc:
            raise OidcRefused(
                "expired_token",
                "The ID token has expired. Sign in again.",
                subject=str(claims.get("sub")),
            ) from exc
        except (InvalidClaimError, MissingClaimError) as exc:
            name = getattr(exc, "claim", "")
            reason = {"aud": "wrong_audience", "nonce": "wrong_nonce", "iss": "wrong_issuer"}.get(
                name, "invalid_claims"
            )
            raise OidcRefused(
                reason,
                f"The ID token was not issued for this sign-in (claim '{name}').",
                subject=str(claims.get("sub")),
            ) from exc
        except JoseError as exc:
            raise OidcRefused("invalid_claims", "The ID token's claims are not valid.") from exc
        # OIDC Core 3.1.3.7: with several audiences, azp must name this client.
        aud = claims.get("aud")
        if (
            isinstance(aud, list)
            and len(aud) > 1
            and claims.get("azp") != self.settings.oidc_client_id
        ):
            raise OidcRefused(
                "wrong_audience",
                "The ID token was issued to another client (azp).",
                subject=str(claims.get("sub")),
            )
        return claims

    async def logout_url(self, post_logout_redirect_uri: str) -> str | None:
        """RP-initiated logout, when the provider offers it (``end_session_endpoint``)."""
        try:
            endpoint = (await self.metadata()).get("end_session_endpoint")
        except OidcRefused:
            return None
        if not isinstance(endpoint, str) or not endpoint:
            return None
        query = httpx2.QueryParams(
            {
                "client_id": self.settings.oidc_client_id,
                "post_logout_redirect_uri": post_logout_redirect_uri,
            }
        )
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"
