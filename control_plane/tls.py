"""The control plane's own TLS: uvicorn's settings, and the key pin handed to runners."""

from __future__ import annotations

import ssl
from typing import TypedDict

from outpost.control_plane.settings import Settings
from outpost.sdk.pins import spki_pin_of_pem

__all__ = ["UvicornSsl", "certificate_pin", "token_with_pin", "uvicorn_ssl_kwargs"]

_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


class UvicornSsl(TypedDict, total=False):
    """The keyword arguments of ``uvicorn.Config`` that serve TLS (typed, so they spread into
    it)."""

    ssl_certfile: str
    ssl_keyfile: str
    ssl_ca_certs: str
    ssl_cert_reqs: int


def uvicorn_ssl_kwargs(settings: Settings) -> UvicornSsl:
    if settings.tls_certfile is None:
        return {}
    kwargs: UvicornSsl = {
        "ssl_certfile": str(settings.tls_certfile),
        "ssl_cert_reqs": _CERT_REQS[settings.tls_client_auth],
    }
    if settings.tls_keyfile is not None:
        kwargs["ssl_keyfile"] = str(settings.tls_keyfile)
    if settings.tls_client_ca is not None:
        kwargs["ssl_ca_certs"] = str(settings.tls_client_ca)
    return kwargs


def certificate_pin(settings: Settings) -> str | None:
    """``sha256/...`` of the served certificate's public key (or the configured one); None
    without TLS."""
    if settings.tls_token_pin:
        return settings.tls_token_pin
    if settings.tls_certfile is None:
        return None
    return spki_pin_of_pem(settings.tls_certfile.read_bytes())


def token_with_pin(token: str, settings: Settings) -> str:
    """The enrollment token a runner gets: ``SECRET#sha256/PIN`` when this process serves TLS.

    The runner then trusts exactly the control plane that enrolled it (runner/tls.py).
    Behind a terminating proxy, the pin of its key when ``tls_token_pin`` names it, else none.
    """
    pin = certificate_pin(settings)
    return f"{token}#{pin}" if pin else token
