"""A small OpenID Connect provider for the tests, built on authlib's server side, served by real
uvicorn.

It speaks the real protocol: a discovery document, an authorization endpoint
with a sign-in form, a token endpoint that checks the PKCE verifier and
refuses a code used twice, a JWKS, RS256-signed ID tokens, and an
end-session endpoint. ``rotate_keys`` starts signing with a new key id.
``tamper`` makes the provider misbehave on purpose (a forged signature, the
wrong audience...): an attacker's or a broken provider, honestly named.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from html import escape
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from authlib.oauth2 import AuthorizationServer, OAuth2Request
from authlib.oauth2.rfc6749 import ClientMixin, OAuth2Error, OAuth2Payload
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import UserInfo
from authlib.oidc.core.grants import OpenIDCode
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from harness.processes import free_port, wait_until

__all__ = ["OidcProvider", "Person"]


@dataclass(frozen=True)
class Person:
    subject: str
    email: str
    groups: tuple[str, ...] = ()
    tenant: str | None = None


@dataclass
class _Client(ClientMixin):
    client_id: str
    redirect_uris: tuple[str, ...]
    client_secret: str | None = None

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(s for s in scope.split() if s in ("openid", "email", "profile"))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return self.client_secret is not None and secrets.compare_digest(
            client_secret, self.client_secret
        )

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        # A public client has only PKCE to bind the code to the console; a confidential one also its
        # secret.
        return method == ("client_secret_basic" if self.client_secret else "none")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class _Code:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    person: Person
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: int = field(default_factory=lambda: int(time.time()))

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


class _Payload(OAuth2Payload):
    def __init__(self, values: dict[str, str]) -> None:
        self._values = values

    @property
    def data(self) -> dict[str, str]:
        return self._values

    @property
    def datalist(self) -> dict[str, list[str]]:
        return {k: [v] for k, v in self._values.items()}


class _Request(OAuth2Request):
    def __init__(
        self,
        method: str,
        uri: str,
        headers: Mapping[str, str],
        args: dict[str, str],
        form: dict[str, str],
    ) -> None:
        super().__init__(method=method, uri=uri, headers=headers)
        self._args, self._form = args, form
        self.payload = _Payload({**args, **form})

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


class OidcProvider:
    """The provider on ``http://127.0.0.1:<port>``; ``people`` are the accounts its sign-in form
    knows."""

    def __init__(self, client_id: str, redirect_uri: str, client_secret: str | None = None) -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.client = _Client(client_id, (redirect_uri,), client_secret)
        self.people: dict[str, Person] = {}
        self.codes: dict[str, _Code] = {}
        self.keys: list[RSAKey] = []
        self.rotate_keys()
        self.tamper: Callable[[dict[str, Any], dict[str, Any]], str] | None = None
        self.token_requests: list[dict[str, str]] = []
        self.logouts: list[dict[str, str]] = []
        self.jwks_fetches = 0
        self.server = self._authorization_server()
        self._uvicorn: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # --- keys ---------------------------------------------------------------

    def rotate_keys(self) -> str:
        """Sign with a new key from now on; the JWKS lists it first (and still the old one)."""
        key = RSAKey.generate_key(
            2048,
            parameters={
                "kid": f"key-{len(self.keys) + 1}-{secrets.token_hex(3)}",
                "use": "sig",
                "alg": "RS256",
            },
        )
        self.keys.insert(0, key)
        return key.kid

    @property
    def signing_key(self) -> RSAKey:
        return self.keys[0]

    def sign(
        self, claims: dict[str, Any], *, key: RSAKey | None = None, kid: str | None = None
    ) -> str:
        key = key or self.signing_key
        return jwt.encode({"alg": "RS256", "kid": kid or key.kid}, claims, key)

    # --- the authlib server -------------------------------------------------

    def _authorization_server(self) -> AuthorizationServer:
        Grant, IdToken, Server = _grant(self), _id_token(self), _server(self)
        server = Server()
        server.register_token_generator(
            "default",
            BearerTokenGenerator(
                access_token_generator=lambda client, grant_type, user, scope: (
                    secrets.token_urlsafe(32)
                )
            ),
        )
        server.register_grant(Grant, [CodeChallenge(required=True), IdToken(require_nonce=True)])
        return server

    # --- HTTP ---------------------------------------------------------------

    async def _as_request(self, request: Request) -> _Request:
        form: dict[str, str] = {}
        if request.method == "POST":
            form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        return _Request(
            request.method, str(request.url), request.headers, dict(request.query_params), form
        )

    async def discovery(self, _: Request) -> Response:
        return JSONResponse(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "end_session_endpoint": f"{self.issuer}/logout",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["none"],
                "scopes_supported": ["openid", "email", "profile"],
            }
        )

    async def jwks(self, _: Request) -> Response:
        self.jwks_fetches += 1
        return JSONResponse(KeySet(list(self.keys)).as_dict(private=False))

    async def authorize(self, request: Request) -> Response:
        oauth = await self._as_request(request)
        grant = self.server.get_authorization_grant(oauth)
        if request.method == "GET":
            try:
                grant.validate_authorization_request()
            except OAuth2Error as exc:  # shown to the person, as a provider would
                return HTMLResponse(f"<p id='error'>{escape(str(exc))}</p>", status_code=400)
            hidden = "".join(
                f"<input type='hidden' name='{escape(k)}' value='{escape(v)}'>"
                for k, v in request.query_params.items()
            )
            return HTMLResponse(
                "<!doctype html><title>Test provider</title><h1>Test identity provider</h1>"
                f"<form method='post' action='/authorize'>{hidden}"
                "<label for='username'>Username</label><input id='username' name='username'>"
                "<button id='allow' type='submit'>Sign in</button></form>"
            )
        person = self.people.get(oauth.form.get("username", ""))
        if person is None:
            return HTMLResponse("<p id='error'>unknown user</p>", status_code=401)
        # authlib validates the parameters again before it issues the code.
        return self.server.create_authorization_response(oauth, grant_user=person, grant=grant)

    async def token(self, request: Request) -> Response:
        oauth = await self._as_request(request)
        self.token_requests.append(dict(oauth.form))
        return self.server.create_token_response(oauth)

    async def logout(self, request: Request) -> Response:
        self.logouts.append(dict(request.query_params))
        target = request.query_params.get("post_logout_redirect_uri", "")
        if target:
            return RedirectResponse(target, status_code=302)
        return HTMLResponse("<p>signed out</p>")

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self.discovery),
                Route("/jwks", self.jwks),
                Route("/authorize", self.authorize, methods=["GET", "POST"]),
                Route("/token", self.token, methods=["POST"]),
                Route("/logout", self.logout),
            ]
        )

    def start(self) -> OidcProvider:
        config = uvicorn.Config(
            self.app(), host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._uvicorn = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._uvicorn.serve()), daemon=True
        )
        self._thread.start()
        wait_until(
            lambda: self._uvicorn is not None and self._uvicorn.started,
            10,
            "the test OIDC provider",
        )
        return self

    def stop(self) -> None:
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(10)


# The authlib server's parts, each a class bound to the provider it serves.


def _grant(provider: OidcProvider) -> type[AuthorizationCodeGrant]:
    class Grant(AuthorizationCodeGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = ("none", "client_secret_basic")

        def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
            data = request.payload.data
            provider.codes[code] = _Code(
                code=code,
                client_id=request.client.get_client_id(),
                redirect_uri=data["redirect_uri"],
                scope=request.client.get_allowed_scope(data.get("scope", "")),
                person=request.user,
                nonce=data.get("nonce"),
                code_challenge=data.get("code_challenge"),
                code_challenge_method=data.get("code_challenge_method"),
            )

        def query_authorization_code(self, code: str, client: ClientMixin) -> _Code | None:
            found = provider.codes.get(code)
            return (
                found if found is not None and found.client_id == client.get_client_id() else None
            )

        def delete_authorization_code(self, authorization_code: _Code) -> None:
            provider.codes.pop(authorization_code.code, None)  # a code works once

        def authenticate_user(self, authorization_code: _Code) -> Person:
            return authorization_code.person

    return Grant


def _id_token(provider: OidcProvider) -> type[OpenIDCode]:
    class IdToken(OpenIDCode):
        def exists_nonce(self, nonce: str, request: OAuth2Request) -> bool:
            return any(c.nonce == nonce for c in provider.codes.values())

        def get_client_algorithm(self, client: ClientMixin) -> str:
            return "RS256"

        def resolve_client_private_key(self, client: ClientMixin) -> RSAKey:
            return provider.signing_key

        def get_encode_header(self, client: ClientMixin) -> dict[str, str]:
            return {"alg": "RS256", "kid": provider.signing_key.kid}

        def get_client_claims(self, client: ClientMixin) -> dict[str, Any]:
            return {"iss": provider.issuer, "aud": [client.get_client_id()]}

        def generate_user_info(self, user: Person, scope: str) -> UserInfo:
            info = UserInfo(
                sub=user.subject,
                email=user.email,
                email_verified=True,
                groups=list(user.groups),
            )
            if user.tenant is not None:
                info["tenant"] = user.tenant
            return info

        def encode_id_token(self, token: dict[str, Any], request: OAuth2Request) -> str:
            if provider.tamper is None:
                return super().encode_id_token(token, request)
            claims = {
                **self.get_compatible_claims(request),
                **self.get_authorization_code_claims(request.authorization_code),
                **self.generate_user_info(request.user, token["scope"]),
            }
            return provider.tamper(claims, {"alg": "RS256", "kid": provider.signing_key.kid})

    return IdToken


def _server(provider: OidcProvider) -> type[AuthorizationServer]:
    class Server(AuthorizationServer):
        def query_client(self, client_id: str) -> ClientMixin | None:
            return provider.client if client_id == provider.client.client_id else None

        def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
            pass

        def create_oauth2_request(self, request: _Request) -> _Request:
            return request

        def handle_response(
            self, status: int, body: Any, headers: list[tuple[str, str]]
        ) -> Response:
            if isinstance(body, dict):
                return JSONResponse(body, status_code=status, headers=dict(headers))
            return Response(body or "", status_code=status, headers=dict(headers))

        def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
            pass

    return Server
