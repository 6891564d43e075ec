"""The runner's HPKE public key, signed by its identity key.

The control plane stores and serves this document, but it cannot alter it:
a client checks the signature against an identity key it pinned out of
band (the fingerprint), so a key swapped by the control plane is refused.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ._codec import b64d, b64e, canonical_json, check_id
from .errors import KeyVerificationError, MalformedError, UnsupportedVersionError
from .keys import HpkePublicKey, fingerprint, normalize_fingerprint

__all__ = ["VerifiedHpkeKey", "signed_hpke_key", "verify_hpke_key"]

_CONTEXT = b"outpost-e2e/v1 hpke-key\x00"
_TYPE = "outpost.hpke-key"
_FIELDS = frozenset(
    {"v", "typ", "runner_id", "kem", "hpke_public_key", "identity_public_key", "issued_at", "sig"}
)
_RUNNER_ID_MAX = 64


@dataclass(frozen=True)
class VerifiedHpkeKey:
    """What a client may trust after :func:`verify_hpke_key`."""

    runner_id: str
    hpke_public_key: HpkePublicKey
    identity_fingerprint: str
    issued_at: int


def signed_hpke_key(
    identity_priv: Ed25519PrivateKey,
    hpke_pub: HpkePublicKey,
    runner_id: str,
    *,
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """A JSON-ready document binding ``hpke_pub`` to ``runner_id`` under the identity key."""
    check_id(runner_id, "runner_id", _RUNNER_ID_MAX)
    body: dict[str, Any] = {
        "v": 1,
        "typ": _TYPE,
        "runner_id": runner_id,
        "kem": hpke_pub.kem.value,
        "hpke_public_key": hpke_pub.to_b64(),
        "identity_public_key": b64e(identity_priv.public_key().public_bytes_raw()),
        "issued_at": int(clock()),
    }
    body["sig"] = b64e(identity_priv.sign(_CONTEXT + canonical_json(body)))
    return body


def verify_hpke_key(
    doc: Mapping[str, Any],
    pin: str | Ed25519PublicKey,
    *,
    max_age_s: float | None = None,
    clock: Callable[[], float] = time.time,
) -> VerifiedHpkeKey:
    """Check a signed HPKE key against a pinned fingerprint or identity key.

    Raises :class:`KeyVerificationError` when the document is signed by any
    key other than the pinned one, its signature does not hold, or (with
    ``max_age_s``) it was issued too long ago; :class:`MalformedError` when
    it does not parse.
    """
    if isinstance(pin, Ed25519PublicKey):
        pinned = fingerprint(pin)
    else:
        pinned = normalize_fingerprint(pin)
    if not isinstance(doc, Mapping) or set(doc) != _FIELDS:
        raise MalformedError(f"signed HPKE key: expected exactly the fields {sorted(_FIELDS)}")
    if type(doc["v"]) is not int or doc["v"] != 1 or doc["typ"] != _TYPE:
        raise UnsupportedVersionError("signed HPKE key: unsupported v or typ")
    runner_id = check_id(doc["runner_id"], "runner_id", _RUNNER_ID_MAX)
    issued_at = doc["issued_at"]
    if type(issued_at) is not int or not 0 <= issued_at < 2**53:
        raise MalformedError("signed HPKE key: issued_at must be a non-negative integer")
    identity_raw = b64d(doc["identity_public_key"], "identity public key")
    if len(identity_raw) != 32:
        raise MalformedError("identity public key must be 32 bytes")
    identity = Ed25519PublicKey.from_public_bytes(identity_raw)
    got = fingerprint(identity)
    if not hmac.compare_digest(got, pinned):
        raise KeyVerificationError(
            f"runner identity {got} does not match the pinned fingerprint {pinned}"
        )
    hpke_pub = HpkePublicKey.from_b64(doc["kem"], doc["hpke_public_key"])
    signature = b64d(doc["sig"], "signature")
    unsigned = {k: v for k, v in doc.items() if k != "sig"}
    try:
        identity.verify(signature, _CONTEXT + canonical_json(unsigned))
    except InvalidSignature:
        raise KeyVerificationError("signed HPKE key: bad signature") from None
    if max_age_s is not None and clock() - issued_at > max_age_s:
        raise KeyVerificationError("signed HPKE key: issued too long ago")
    return VerifiedHpkeKey(runner_id, hpke_pub, got, issued_at)
