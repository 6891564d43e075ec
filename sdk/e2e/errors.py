"""Typed failures of the end-to-end layer.

Every function of :mod:`sdk.e2e` that judges bytes from the network raises
only subclasses of :class:`E2EError`, so a caller can refuse a request or end
a stream with one ``except`` clause while logs still name the precise cause.
"""

from __future__ import annotations

__all__ = [
    "DecryptionError",
    "DuplicateChunkError",
    "E2EError",
    "KeyMismatchError",
    "KeyVerificationError",
    "MalformedError",
    "OutOfOrderChunkError",
    "ReceiptError",
    "ReplayError",
    "StaleEnvelopeError",
    "StreamError",
    "TruncatedStreamError",
    "UnsupportedVersionError",
]


class E2EError(ValueError):
    """Base class: the input cannot be accepted."""


class MalformedError(E2EError):
    """Bytes that do not parse: wrong shape, size, encoding or field type."""


class UnsupportedVersionError(MalformedError):
    """A well-formed object of a format version this build does not speak."""


class KeyVerificationError(E2EError):
    """A signed HPKE key failed its signature, pin or freshness check."""


class KeyMismatchError(E2EError):
    """An envelope addressed to another runner, KEM or key id."""


class DecryptionError(E2EError):
    """Authentication failed: tampered bytes, wrong key or wrong binding."""


class ReplayError(E2EError):
    """An envelope id that was accepted before."""


class StaleEnvelopeError(ReplayError):
    """An envelope too old (or too far in the future) to be checked for replay."""


class StreamError(E2EError):
    """A response stream that broke its order: a chunk missing, moved or extra."""


class OutOfOrderChunkError(StreamError):
    """A chunk whose sequence number is not the next one expected."""

    def __init__(self, message: str, *, expected: int, got: int) -> None:
        super().__init__(message)
        self.expected = expected
        self.got = got


class DuplicateChunkError(OutOfOrderChunkError):
    """A chunk whose sequence number was already consumed."""


class TruncatedStreamError(StreamError):
    """The stream ended without its final chunk."""


class ReceiptError(E2EError):
    """A usage receipt that is forged, altered or for another request."""
