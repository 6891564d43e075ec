"""Sealed requests: the client encrypts a request body to one runner.

Construction (HPKE base mode, RFC 9180, single shot)::

    info      = "outpost-e2e/v1 request\\0" ‖ lp(kem) ‖ lp(runner_id) ‖ lp(request_id)
    plaintext = response_key[32] ‖ envelope_id[16] ‖ issued_at_ms[u64]
                ‖ body_length[u32] ‖ body ‖ zero padding
    envelope  = {"v":1,"kem":…,"rid":runner_id,"kid":b64url(key_id),"ct":b64url(enc ‖ ct)}

``lp`` is a 2-byte length prefix. Binding the runner and request ids into
``info`` means an envelope opened under any other request id (or by any
other runner) fails authentication, so the control plane cannot graft a
sealed request onto another stream. The response key inside lets the
runner encrypt the answer (:mod:`sdk.e2e.stream`) to this client only.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag

from ._codec import b64d, b64e, check_id, length_prefixed, loads_strict, to_text
from .errors import (
    DecryptionError,
    KeyMismatchError,
    MalformedError,
    UnsupportedVersionError,
)
from .keys import HpkePublicKey, Kem, RunnerKeys
from .replay import ReplayGuard

__all__ = [
    "ENVELOPE_VERSION",
    "MAX_BODY_BYTES",
    "MAX_ENVELOPE_CHARS",
    "Envelope",
    "OpenedRequest",
    "ResponseKey",
    "open_request",
    "parse_envelope",
    "seal_request",
]

ENVELOPE_VERSION = 1
#: Largest request body that can be sealed (the tunnel allows 16 MiB per body).
MAX_BODY_BYTES = 8 * 1024 * 1024
_HEADER = 32 + 16 + 8 + 4
_TAG = 16
_MAX_CT = max(k.enc_length for k in Kem) + _HEADER + MAX_BODY_BYTES + _TAG
#: Largest envelope string :func:`parse_envelope` reads before giving up.
MAX_ENVELOPE_CHARS = (_MAX_CT * 4 + 2) // 3 + 512
_RUNNER_ID_MAX = 64
_FIELDS = frozenset({"v", "kem", "rid", "kid", "ct"})
_CONTEXT = b"outpost-e2e/v1 request\x00"


@dataclass(frozen=True, repr=False)
class ResponseKey:
    """The 32-byte ChaCha20-Poly1305 key for one response stream."""

    secret: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) != 32:
            raise MalformedError("response key must be 32 bytes")

    def __repr__(self) -> str:
        return "ResponseKey(<redacted>)"

    @classmethod
    def generate(cls) -> ResponseKey:
        return cls(os.urandom(32))


@dataclass(frozen=True)
class Envelope:
    """A parsed envelope: everything in it but ``ciphertext`` is clear text."""

    kem: Kem
    runner_id: str
    key_id: bytes
    ciphertext: bytes = field(repr=False)
    version: int = ENVELOPE_VERSION

    def encode(self) -> str:
        doc = {
            "v": self.version,
            "kem": self.kem.value,
            "rid": self.runner_id,
            "kid": b64e(self.key_id),
            "ct": b64e(self.ciphertext),
        }
        # Version and routing fields first, so a truncated log line still shows them.
        return json.dumps(doc, separators=(",", ":"))


@dataclass(frozen=True)
class OpenedRequest:
    """A request the runner has decrypted and checked for replay."""

    body: bytes = field(repr=False)
    response_key: ResponseKey
    envelope_id: str
    issued_at: float


def _info(kem: Kem, runner_id: str, request_id: str) -> bytes:
    return _CONTEXT + length_prefixed(kem.value.encode(), runner_id.encode(), request_id.encode())


def _padded_length(n: int, pad_to: int) -> int:
    if pad_to <= 0:
        return n
    return min(-(-n // pad_to) * pad_to, _HEADER + MAX_BODY_BYTES)


def seal_request(
    runner_hpke_pub: HpkePublicKey,
    runner_id: str,
    body: bytes,
    request_id: str,
    *,
    pad_to: int = 0,
    clock: Callable[[], float] = time.time,
) -> tuple[str, ResponseKey]:
    """Encrypt ``body`` to a runner; return the envelope and the response key.

    ``pad_to`` rounds the sealed plaintext up to a multiple of that many
    bytes so the envelope size reveals only a bucket, not the prompt length.
    """
    check_id(runner_id, "runner_id", _RUNNER_ID_MAX)
    check_id(request_id, "request_id")
    if not isinstance(body, bytes | bytearray | memoryview):
        raise TypeError("body must be bytes")
    if len(body) > MAX_BODY_BYTES:
        raise MalformedError(f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    if pad_to < 0:
        raise ValueError("pad_to must be >= 0")
    response_key = ResponseKey.generate()
    issued_at_ms = int(clock() * 1000)
    plaintext = bytearray()
    plaintext += response_key.secret
    plaintext += os.urandom(16)
    plaintext += issued_at_ms.to_bytes(8, "big")
    plaintext += len(body).to_bytes(4, "big")
    plaintext += body
    plaintext += bytes(_padded_length(len(plaintext), pad_to) - len(plaintext))
    kem = runner_hpke_pub.kem
    ciphertext = kem.suite.encrypt(
        bytes(plaintext), runner_hpke_pub.key, info=_info(kem, runner_id, request_id)
    )
    envelope = Envelope(kem, runner_id, runner_hpke_pub.key_id, ciphertext)
    return envelope.encode(), response_key


def parse_envelope(raw: str | bytes) -> Envelope:
    """Validate an envelope's shape and sizes without decrypting it.

    The control plane may call this to route (``runner_id``) and to refuse
    garbage early; only :func:`open_request` proves the ciphertext genuine.
    """
    doc = loads_strict(to_text(raw, "envelope", MAX_ENVELOPE_CHARS), "envelope")
    if set(doc) != _FIELDS:
        raise MalformedError(f"envelope: expected exactly the fields {sorted(_FIELDS)}")
    if type(doc["v"]) is not int or doc["v"] != ENVELOPE_VERSION:
        raise UnsupportedVersionError(f"envelope: unsupported version {str(doc['v'])[:16]!r}")
    kem = Kem.parse(doc["kem"])
    runner_id = check_id(doc["rid"], "envelope runner id", _RUNNER_ID_MAX)
    key_id = b64d(doc["kid"], "envelope key id")
    if len(key_id) != 8:
        raise MalformedError("envelope key id must be 8 bytes")
    ciphertext = b64d(doc["ct"], "envelope ciphertext")
    if len(ciphertext) < kem.enc_length + _HEADER + _TAG:
        raise MalformedError("envelope ciphertext too short")
    return Envelope(kem, runner_id, key_id, ciphertext)


def open_request(
    keys: RunnerKeys,
    envelope: str | bytes | Envelope,
    request_id: str,
    replay_guard: ReplayGuard,
    *,
    runner_id: str,
) -> OpenedRequest:
    """Decrypt a sealed request addressed to this runner and reject replays.

    ``runner_id`` is this runner's own id and ``request_id`` the id the
    control plane gave the stream: both must match what the client sealed.
    """
    check_id(request_id, "request_id")
    env = envelope if isinstance(envelope, Envelope) else parse_envelope(envelope)
    if env.runner_id != runner_id:
        raise KeyMismatchError(f"envelope is for runner {env.runner_id!r}, not {runner_id!r}")
    public = keys.hpke_public
    if env.kem is not public.kem or env.key_id != public.key_id:
        raise KeyMismatchError("envelope sealed to another HPKE key (client holds a stale key?)")
    try:
        plaintext = env.kem.suite.decrypt(
            env.ciphertext, keys.hpke_key.key, info=_info(env.kem, runner_id, request_id)
        )
    except (InvalidTag, ValueError):
        raise DecryptionError("envelope failed authentication") from None
    if len(plaintext) < _HEADER:
        raise MalformedError("sealed request too short")
    response_key = ResponseKey(plaintext[:32])
    envelope_id = plaintext[32:48]
    issued_at_ms = int.from_bytes(plaintext[48:56], "big")
    body_len = int.from_bytes(plaintext[56:60], "big")
    end = _HEADER + body_len
    if end > len(plaintext) or any(plaintext[end:]):
        raise MalformedError("sealed request: bad body length or padding")
    replay_guard.check(envelope_id, issued_at_ms / 1000)
    return OpenedRequest(
        body=plaintext[_HEADER:end],
        response_key=response_key,
        envelope_id=envelope_id.hex(),
        issued_at=issued_at_ms / 1000,
    )
