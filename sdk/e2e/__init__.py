"""End-to-end encryption between clients and runners (``docs/e2e.md``).

The control plane routes on clear metadata and relays ciphertext; it never
holds a key that opens a prompt or a completion. The pieces, in flow order:

1. :class:`RunnerKeys` — the runner's Ed25519 identity key and HPKE key pair
   (X25519 by default; the ML-KEM-768 + X25519 hybrid on request).
2. :func:`signed_hpke_key` / :func:`verify_hpke_key` — the HPKE public key
   signed by the identity key; clients pin :func:`fingerprint` out of band.
3. :func:`seal_request` / :func:`open_request` — HPKE-sealed request body
   with a fresh response key; :class:`ReplayGuard` refuses replays.
4. :class:`ChunkSealer` / :class:`ChunkOpener` — ChaCha20-Poly1305 response
   chunks with counter nonces; reordering and truncation are detected.
5. :func:`sign_receipt` / :func:`verify_receipt` — signed token usage, so
   cost accounting works without plaintext.

Pure library: no network, no global state. Every rejection of untrusted
input is an :class:`E2EError`.
"""

from .envelope import (
    ENVELOPE_VERSION,
    MAX_BODY_BYTES,
    MAX_ENVELOPE_CHARS,
    Envelope,
    OpenedRequest,
    ResponseKey,
    open_request,
    parse_envelope,
    seal_request,
)
from .errors import (
    DecryptionError,
    DuplicateChunkError,
    E2EError,
    KeyMismatchError,
    KeyVerificationError,
    MalformedError,
    OutOfOrderChunkError,
    ReceiptError,
    ReplayError,
    StaleEnvelopeError,
    StreamError,
    TruncatedStreamError,
    UnsupportedVersionError,
)
from .keydoc import VerifiedHpkeKey, signed_hpke_key, verify_hpke_key
from .keys import HpkePrivateKey, HpkePublicKey, Kem, RunnerKeys, fingerprint, normalize_fingerprint
from .receipts import MAX_RECEIPT_CHARS, Receipt, sign_receipt, verify_receipt
from .replay import ReplayGuard
from .stream import MAX_CHUNK_BYTES, MAX_CHUNK_CHARS, ChunkOpener, ChunkSealer

__all__ = [
    "ENVELOPE_VERSION",
    "MAX_BODY_BYTES",
    "MAX_CHUNK_BYTES",
    "MAX_CHUNK_CHARS",
    "MAX_ENVELOPE_CHARS",
    "MAX_RECEIPT_CHARS",
    "ChunkOpener",
    "ChunkSealer",
    "DecryptionError",
    "DuplicateChunkError",
    "E2EError",
    "Envelope",
    "HpkePrivateKey",
    "HpkePublicKey",
    "Kem",
    "KeyMismatchError",
    "KeyVerificationError",
    "MalformedError",
    "OpenedRequest",
    "OutOfOrderChunkError",
    "Receipt",
    "ReceiptError",
    "ReplayError",
    "ReplayGuard",
    "ResponseKey",
    "RunnerKeys",
    "StaleEnvelopeError",
    "StreamError",
    "TruncatedStreamError",
    "UnsupportedVersionError",
    "VerifiedHpkeKey",
    "fingerprint",
    "normalize_fingerprint",
    "open_request",
    "parse_envelope",
    "seal_request",
    "sign_receipt",
    "signed_hpke_key",
    "verify_hpke_key",
    "verify_receipt",
]
