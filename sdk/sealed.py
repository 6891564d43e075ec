"""End-to-end requests on the wire: client → control plane → runner, and back.

:mod:`sdk.e2e` is the cryptography; this module is the envelope around it
that the three parties exchange (``docs/e2e.md``, "Wiring"):

1. The SDK posts a :class:`SealedRequest` (JSON) to ``/v1/e2e/<endpoint>``
   with the :data:`RUNNER_HEADER`. Everything but ``envelope`` is clear
   routing metadata; the OpenAI body is inside the envelope.
2. The control plane validates it, routes to exactly that runner and
   forwards the same JSON as the tunnel body with ``RequestFrame.sealed``.
3. The runner answers ``text/event-stream``: each event's data is one sealed
   chunk (:class:`sdk.e2e.ChunkSealer`). Inside, every chunk's plaintext
   starts with a kind byte: :data:`HEAD` (the engine's status and content
   type, JSON, always first), :data:`MORE` (part of a body piece, more
   follows) or :data:`PIECE` (the end of a piece: one SSE event's data when
   streaming, else the body). The last chunk is empty and flagged final.
   Usage goes to the control plane as a signed receipt in ``EndFrame``.

Refusals the runner makes *before* it decrypts anything (a replay, a stale
key) are clear OpenAI error envelopes with one of the ``E2E_*`` codes.
"""

from __future__ import annotations

import secrets

from pydantic import BaseModel, ConfigDict, Field

from outpost.sdk.e2e import MAX_CHUNK_BYTES, MAX_ENVELOPE_CHARS

__all__ = [
    "E2E_DECRYPT_FAILED",
    "E2E_KEY_MISMATCH",
    "E2E_MALFORMED",
    "E2E_MISMATCH",
    "E2E_PREFIX",
    "E2E_REPLAY",
    "E2E_STALE",
    "E2E_UNSUPPORTED",
    "ENDPOINTS",
    "HEAD",
    "MORE",
    "PIECE",
    "PIECE_BYTES",
    "RUNNER_HEADER",
    "ResponseHead",
    "SealedRequest",
    "new_request_id",
    "pieces",
]

#: Path prefix of the e2e routes on the control plane.
E2E_PREFIX = "/v1/e2e"
#: The runner a sealed request is bound to; the control plane routes to it only.
RUNNER_HEADER = "X-Outpost-Runner"
#: e2e route suffix → the engine path the runner posts the opened body to.
ENDPOINTS: dict[str, str] = {
    "chat/completions": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
}

HEAD, MORE, PIECE = b"H", b"M", b"P"
#: Payload bytes per chunk after the kind byte.
PIECE_BYTES = MAX_CHUNK_BYTES - 1

# Error codes of refusals (clear, before or instead of decryption).
E2E_MALFORMED = "e2e_malformed"
E2E_KEY_MISMATCH = "e2e_key_mismatch"  # sealed to a rotated-away key: refetch and reseal
E2E_DECRYPT_FAILED = "e2e_decrypt_failed"
E2E_REPLAY = "e2e_replay"
E2E_STALE = "e2e_stale"  # sealed too long ago, in the future, or before the runner started
E2E_MISMATCH = "e2e_mismatch"  # clear routing fields disagree with the sealed body
E2E_UNSUPPORTED = "e2e_unsupported"

_REQUEST_ID = r"^e2e_[A-Za-z0-9_-]{16,64}$"


class SealedRequest(BaseModel):
    """The body of ``POST /v1/e2e/...`` and of a sealed tunnel request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1, max_length=200)
    stream: bool = False
    # Clear so the control plane can check limits and schedule; the runner
    # refuses a sealed body asking for more.
    max_tokens: int | None = Field(default=None, ge=1)
    # Chosen by the client and bound into the envelope and every chunk.
    request_id: str = Field(pattern=_REQUEST_ID)
    envelope: str = Field(min_length=1, max_length=MAX_ENVELOPE_CHARS)


class ResponseHead(BaseModel):
    """The first sealed chunk: what the engine answered, hidden from the relay."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: int = Field(ge=100, le=599)
    content_type: str = Field(default="application/json", max_length=128)


def new_request_id() -> str:
    return "e2e_" + secrets.token_urlsafe(24)


def pieces(data: bytes) -> list[bytes]:
    """Chunk plaintexts carrying ``data``: ``MORE``-prefixed parts, then one ``PIECE``."""
    parts = [data[i : i + PIECE_BYTES] for i in range(0, len(data), PIECE_BYTES)] or [b""]
    return [MORE + p for p in parts[:-1]] + [PIECE + parts[-1]]
