"""How the runner trusts the control plane: CA bundle, client certificate, key pins, proxy.

Every connection to the control plane (enrollment, the e2e key upload, the
tunnel) goes through one :class:`ControlPlaneTransport`, so a pin or a private
CA cannot apply to one of them and be forgotten by another. The pin is checked
inside the TLS handshake (before the first byte of HTTP is written), so a
TLS-intercepting proxy never sees an enrollment token or a hello.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

from outpost.sdk.pins import parse_pin, spki_pin

__all__ = [
    "ControlPlaneTransport",
    "PinMismatch",
    "TrustFailure",
    "pinned_context",
    "trust_failure",
]

#: TLS alerts from the control plane saying it refused our client certificate: retrying cannot help.
_CLIENT_CERT_REFUSED = (
    "CERTIFICATE_REQUIRED",
    "BAD_CERTIFICATE",
    "UNKNOWN_CA",
    "CERTIFICATE_UNKNOWN",
    "CERTIFICATE_EXPIRED",
    "CERTIFICATE_REVOKED",
    "ACCESS_DENIED",
)


class PinMismatch(ssl.SSLCertVerificationError):
    """The control plane's key is none of the pinned ones."""


class TrustFailure(RuntimeError):
    """TLS verification failed one way or the other: the runner stops instead of retrying."""


class _PinnedSSLObject(ssl.SSLObject):
    # asyncio (websockets) and anyio (httpx) both drive TLS through wrap_bio, so
    # this one hook covers every connection the runner makes to the control plane.
    def do_handshake(self) -> None:
        super().do_handshake()
        pins: frozenset[str] = getattr(self.context, "pins", frozenset())
        if not pins:
            return
        der = self.getpeercert(binary_form=True)
        seen = spki_pin(der) if der else "no certificate"
        if seen not in pins:
            raise PinMismatch(
                f"the control plane's public key {seen} matches none of the pinned keys "
                f"({', '.join(sorted(pins))}): a TLS-intercepting proxy is in the path, or the "
                "control plane changed its key (then pin the new one with --pin-sha256)"
            )


class _PinningContext(ssl.SSLContext):
    pins: frozenset[str] = frozenset()
    sslobject_class = _PinnedSSLObject

    # Passes ssl.SSLContext.wrap_socket's arguments through untouched; restating its many
    # overloads here would only copy typeshed.
    def wrap_socket(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        # Blocking sockets would skip the pin check; nothing in the runner uses them.
        if self.pins:
            raise RuntimeError("pinned control-plane contexts are for asyncio connections only")
        return super().wrap_socket(*args, **kwargs)


def pinned_context(
    ca_bundle: Path | None = None,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    pins: tuple[str, ...] | list[str] = (),
) -> ssl.SSLContext:
    """Verify the chain (a private CA bundle, else the system store) and hostname, then the pins."""
    ctx = _PinningContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_bundle is not None:
        ctx.load_verify_locations(cafile=str(ca_bundle))
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if client_cert is not None:
        ctx.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
    ctx.pins = frozenset(parse_pin(p) for p in pins)
    return ctx


def trust_failure(exc: BaseException) -> TrustFailure | None:
    """A TrustFailure naming what did not match, if ``exc`` (or its causes) is a TLS trust error."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, PinMismatch):
            return TrustFailure(f"TLS pin check failed: {cur.args[0] if cur.args else cur}")
        if isinstance(cur, ssl.SSLCertVerificationError):
            detail = cur.verify_message or str(cur)
            return TrustFailure(
                f"TLS verification of the control plane failed: {detail} (set --ca-bundle "
                "to the CA that signed its certificate, or check the URL's host name)"
            )
        if isinstance(cur, ssl.SSLError) and any(
            a in (cur.reason or "") for a in _CLIENT_CERT_REFUSED
        ):
            return TrustFailure(
                f"the control plane refused this runner's client certificate ({cur.reason}): "
                "set --client-cert/--client-key to a certificate its CA signed"
            )
        cur = cur.__cause__ or cur.__context__
    return None


@dataclass(frozen=True)
class ControlPlaneTransport:
    """TLS and proxy settings for every connection to the control plane."""

    ssl: ssl.SSLContext
    #: An explicit proxy URL, None for a direct connection, or True: HTTPS_PROXY/NO_PROXY from the
    #: environment.
    proxy: str | Literal[True] | None = True

    @staticmethod
    def proxy_setting(proxy: str, auth: str | None) -> str | Literal[True] | None:
        """``--proxy``: "" → the environment, "direct" → none, a URL (``--proxy-auth``
        user:password added)."""
        if not proxy:
            return True
        if proxy == "direct":
            return None
        parts = urlsplit(proxy)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"--proxy must be http://host:port (an HTTP CONNECT proxy), not {proxy!r}"
            )
        if auth:
            user, _, password = auth.partition(":")
            host = parts.netloc.rpartition("@")[2]
            netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
            parts = parts._replace(netloc=netloc)
        return urlunsplit(parts)

    def httpx_kwargs(self) -> dict[str, object]:
        kwargs: dict[str, object] = {"verify": self.ssl}
        if self.proxy is None:
            kwargs["trust_env"] = False
        elif isinstance(self.proxy, str):
            kwargs["proxy"] = self.proxy
        return kwargs

    def websocket_kwargs(self, url: str) -> dict[str, object]:
        kwargs: dict[str, object] = {"proxy": self.proxy}
        if url.startswith("wss://"):
            kwargs["ssl"] = self.ssl
        return kwargs
