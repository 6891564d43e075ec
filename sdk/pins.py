"""Public-key pins (SPKI SHA-256, as HPKP and curl's --pinnedpubkey write them).

A pin names a key, not a certificate: a control plane that renews its
certificate on the same key keeps its pin, and a TLS-intercepting proxy, whose
certificate a private CA may well make "valid", cannot match it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = ["PIN_PREFIX", "parse_pin", "spki_pin", "spki_pin_of_pem"]

PIN_PREFIX = "sha256/"


def spki_pin(der_certificate: bytes) -> str:
    """``sha256/<base64>`` of the certificate's SubjectPublicKeyInfo."""
    spki = (
        x509.load_der_x509_certificate(der_certificate)
        .public_key()
        .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    return PIN_PREFIX + base64.b64encode(hashlib.sha256(spki).digest()).decode()


def spki_pin_of_pem(pem: bytes) -> str:
    """The pin of the first (leaf) certificate of a PEM file, as a server's cert chain file
    holds it."""
    return spki_pin(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER))


def parse_pin(value: str) -> str:
    """Normalise ``sha256/<base64>`` (the prefix optional; hex accepted) or raise ValueError."""
    raw = value.strip()
    raw = raw.removeprefix(PIN_PREFIX)
    try:
        digest = bytes.fromhex(raw) if len(raw) == 64 else base64.b64decode(raw, validate=True)
    except (ValueError, binascii.Error):
        raise ValueError(f"not a SHA-256 public-key pin: {value!r}") from None
    if len(digest) != 32:
        raise ValueError(
            f"not a SHA-256 public-key pin (need 32 bytes, got {len(digest)}): {value!r}"
        )
    return PIN_PREFIX + base64.b64encode(digest).decode()
