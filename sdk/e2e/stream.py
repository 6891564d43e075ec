"""The encrypted response stream, runner → client.

Each chunk is ChaCha20-Poly1305 under the request's fresh response key::

    chunk     = b64url( 0x01 ‖ flags[1] ‖ seq[u64] ‖ AEAD(key, nonce, plaintext, ad) )
    nonce     = seq as a 96-bit big-endian counter
    ad        = "outpost-e2e/v1 chunk\\0" ‖ lp(request_id) ‖ seq[u64] ‖ final[1]
    plaintext = data_length[u32] ‖ data ‖ zero padding

The sequence number and final flag travel in clear (a relay sees order and
end of stream anyway) and are authenticated through ``ad``. The opener
accepts only the next sequence number, so a chunk dropped, moved, repeated
or taken from another request is refused; a stream that stops before a
chunk flagged final is refused by :meth:`ChunkOpener.finish`. The key is
used for one stream only, so counter nonces never repeat under a key.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ._codec import b64d, b64e, check_id, length_prefixed, to_text
from .envelope import ResponseKey
from .errors import (
    DecryptionError,
    DuplicateChunkError,
    MalformedError,
    OutOfOrderChunkError,
    StreamError,
    TruncatedStreamError,
    UnsupportedVersionError,
)

__all__ = ["MAX_CHUNK_BYTES", "MAX_CHUNK_CHARS", "ChunkOpener", "ChunkSealer"]

_VERSION = 1
_FINAL = 0x01
_HEAD = 1 + 1 + 8
_TAG = 16
_LEN = 4
#: Largest ``data`` one chunk carries. Chosen so a sealed chunk (base64url)
#: fits one tunnel data frame (``sdk.protocol.MAX_DATA_BYTES``, 16 KiB).
MAX_CHUNK_BYTES = 12 * 1024 - 64
_MAX_PLAINTEXT = _LEN + MAX_CHUNK_BYTES
#: Longest sealed chunk string an opener reads.
MAX_CHUNK_CHARS = ((_HEAD + _MAX_PLAINTEXT + _TAG) * 4 + 2) // 3
_MAX_SEQ = 2**64 - 1
_CONTEXT = b"outpost-e2e/v1 chunk\x00"


def _ad_prefix(request_id: str) -> bytes:
    return _CONTEXT + length_prefixed(check_id(request_id, "request_id").encode())


def _ad_and_nonce(prefix: bytes, seq: int, final: bool) -> tuple[bytes, bytes]:
    seq_bytes = seq.to_bytes(8, "big")
    return prefix + seq_bytes + (b"\x01" if final else b"\x00"), b"\x00\x00\x00\x00" + seq_bytes


class ChunkSealer:
    """Runner side: seal response chunks in order, the last one ``final``.

    ``pad_to`` > 0 rounds every chunk's plaintext up to a multiple of that
    many bytes (capped at the chunk maximum), so chunk sizes reveal buckets
    rather than token lengths.
    """

    def __init__(self, response_key: ResponseKey, request_id: str, *, pad_to: int = 0) -> None:
        if not isinstance(response_key, ResponseKey):
            raise TypeError("response_key must be a ResponseKey")
        if not 0 <= pad_to <= _MAX_PLAINTEXT:
            raise ValueError(f"pad_to must be in 0..{_MAX_PLAINTEXT}")
        self._aead = ChaCha20Poly1305(response_key.secret)
        self._ad_prefix = _ad_prefix(request_id)
        self._pad_to = pad_to
        self._seq = 0
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def seal(self, data: bytes, final: bool = False) -> str:
        if self._done:
            raise StreamError("stream already sealed its final chunk")
        if len(data) > MAX_CHUNK_BYTES:
            raise ValueError(f"chunk of {len(data)} bytes exceeds {MAX_CHUNK_BYTES}; split it")
        if self._seq > _MAX_SEQ:
            raise StreamError("sequence number space exhausted")
        size = _LEN + len(data)
        if self._pad_to:
            size = min(-(-size // self._pad_to) * self._pad_to, _MAX_PLAINTEXT)
        plaintext = len(data).to_bytes(4, "big") + bytes(data) + bytes(size - _LEN - len(data))
        seq = self._seq
        ad, nonce = _ad_and_nonce(self._ad_prefix, seq, final)
        ct = self._aead.encrypt(nonce, plaintext, ad)
        self._seq += 1
        self._done = final
        head = bytes((_VERSION, _FINAL if final else 0)) + nonce[4:]  # nonce[4:] is seq
        return b64e(head + ct)


class ChunkOpener:
    """Client side: open chunks strictly in order; call :meth:`finish` at end of stream.

    After any failure the opener refuses everything: a broken stream must
    not be resumed past a gap.
    """

    def __init__(self, response_key: ResponseKey, request_id: str) -> None:
        if not isinstance(response_key, ResponseKey):
            raise TypeError("response_key must be a ResponseKey")
        self._aead = ChaCha20Poly1305(response_key.secret)
        self._ad_prefix = _ad_prefix(request_id)
        self._seq = 0
        self._done = False
        self._failed = False

    @property
    def done(self) -> bool:
        """True once the final chunk has been opened."""
        return self._done

    def open(self, chunk: str | bytes) -> bytes:
        if self._failed:
            raise StreamError("stream already failed")
        try:
            return self._open(chunk)
        except Exception:
            self._failed = True
            raise

    def finish(self) -> None:
        """Declare end of stream; raise :class:`TruncatedStreamError` if it is cut short."""
        if self._failed:
            raise StreamError("stream already failed")
        if not self._done:
            self._failed = True
            raise TruncatedStreamError(f"stream ended after {self._seq} chunks without a final one")

    def _open(self, chunk: str | bytes) -> bytes:
        raw = b64d(to_text(chunk, "chunk", MAX_CHUNK_CHARS), "chunk")
        if len(raw) < _HEAD + _LEN + _TAG:
            raise MalformedError("chunk too short")
        if raw[0] != _VERSION:
            raise UnsupportedVersionError(f"chunk format version {raw[0]} is not supported")
        flags = raw[1]
        if flags & ~_FINAL:
            raise MalformedError("chunk has unknown flags")
        final = bool(flags & _FINAL)
        seq = int.from_bytes(raw[2:10], "big")
        if self._done:
            raise StreamError("chunk after the final chunk")
        if seq != self._seq:
            kind = DuplicateChunkError if seq < self._seq else OutOfOrderChunkError
            raise kind(f"expected chunk {self._seq}, got {seq}", expected=self._seq, got=seq)
        ad, nonce = _ad_and_nonce(self._ad_prefix, seq, final)
        try:
            plaintext = self._aead.decrypt(nonce, raw[_HEAD:], ad)
        except InvalidTag:
            raise DecryptionError(f"chunk {seq} failed authentication") from None
        n = int.from_bytes(plaintext[:_LEN], "big")
        if _LEN + n > len(plaintext) or any(plaintext[_LEN + n :]):
            raise MalformedError(f"chunk {seq}: bad length or padding")
        self._seq += 1
        self._done = final
        return plaintext[_LEN : _LEN + n]
