"""Strict encodings shared by the e2e formats.

Lenient decoders make ciphertext malleable in ways that no MAC sees (two
spellings of one value), so these helpers accept exactly one spelling.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from .errors import MalformedError

__all__ = [
    "b64d",
    "b64e",
    "canonical_json",
    "check_id",
    "length_prefixed",
    "loads_strict",
    "to_text",
]

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_UNUSED_BITS = {2: 0b1111, 3: 0b11}
MAX_ID_CHARS = 128


def b64e(data: bytes) -> str:
    """Base64url without padding (RFC 4648 §5, as JOSE uses it)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str, what: str) -> bytes:
    """Decode canonical unpadded base64url or raise :class:`MalformedError`."""
    # b64decode(validate=True) refuses characters outside its alphabet; '+',
    # '/' and '=' are inside it but not part of unpadded base64url.
    if not isinstance(text, str) or len(text) % 4 == 1 or any(c in text for c in "+/="):
        raise MalformedError(f"{what}: not unpadded base64url")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except ValueError:  # binascii.Error, or a non-ASCII str
        raise MalformedError(f"{what}: not unpadded base64url") from None
    # Non-zero unused bits in the last character decode to the same bytes:
    # refuse that second spelling.
    if len(text) % 4 and _ALPHABET.index(text[-1]) & _UNUSED_BITS[len(text) % 4]:
        raise MalformedError(f"{what}: non-canonical base64url")
    return data


def to_text(raw: str | bytes, what: str, max_chars: int) -> str:
    """Accept a str, or bytes that are ASCII, no longer than ``max_chars``."""
    if isinstance(raw, bytes | bytearray | memoryview):
        if len(raw) > max_chars:
            raise MalformedError(f"{what}: {len(raw)} bytes exceeds {max_chars}")
        try:
            return bytes(raw).decode("ascii")
        except UnicodeDecodeError:
            raise MalformedError(f"{what}: not ASCII") from None
    if not isinstance(raw, str):
        raise MalformedError(f"{what}: expected str or bytes, got {type(raw).__name__}")
    if len(raw) > max_chars:
        raise MalformedError(f"{what}: {len(raw)} characters exceeds {max_chars}")
    return raw


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise MalformedError(f"duplicate JSON key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise MalformedError(f"JSON constant {name} is not allowed")


def loads_strict(text: str, what: str) -> dict[str, Any]:
    """Parse one JSON object: no duplicate keys, no NaN/Infinity."""
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except MalformedError as exc:
        raise MalformedError(f"{what}: {exc}") from None
    # RecursionError: deeply nested arrays; ValueError: bad JSON, huge ints.
    except (ValueError, RecursionError):
        raise MalformedError(f"{what}: not valid JSON") from None
    if not isinstance(value, dict):
        raise MalformedError(f"{what}: expected a JSON object")
    return value


def canonical_json(value: dict[str, Any]) -> bytes:
    """The one byte string a signer and a verifier both derive from ``value``."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def check_id(value: object, what: str, max_chars: int = MAX_ID_CHARS) -> str:
    """A runner or request id: a non-empty str of bounded length."""
    if not isinstance(value, str) or not 1 <= len(value) <= max_chars:
        raise MalformedError(f"{what}: expected a string of 1..{max_chars} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedError(f"{what}: not encodable as UTF-8") from None
    return value


def length_prefixed(*parts: bytes) -> bytes:
    """Concatenate with 2-byte length prefixes, so no two inputs collide."""
    return b"".join(len(p).to_bytes(2, "big") + p for p in parts)
