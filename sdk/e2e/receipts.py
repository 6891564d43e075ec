"""Usage receipts: token counts signed by the runner's identity key.

In end-to-end mode the control plane cannot count tokens itself, so the
runner signs them. The control plane verifies the receipt against the
runner's registered identity key before it records cost; a receipt that
was forged, altered, or issued for another request is refused.

Format: ``b64url(payload) "." b64url(signature)`` where ``payload`` is the
canonical JSON of the receipt fields plus ``"v"`` and ``"typ"``, and the
signature is Ed25519 over ``"outpost-e2e/v1 receipt\\0" ‖ payload``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ._codec import b64d, b64e, canonical_json, check_id, loads_strict, to_text
from .errors import MalformedError, ReceiptError, UnsupportedVersionError

__all__ = ["MAX_RECEIPT_CHARS", "Receipt", "sign_receipt", "verify_receipt"]

#: Fits ``sdk.protocol.EndFrame.receipt``.
MAX_RECEIPT_CHARS = 4096
_CONTEXT = b"outpost-e2e/v1 receipt\x00"
_TYPE = "outpost.receipt"
_MAX_TOKENS = 2**53 - 1
_RUNNER_ID_MAX = 64


@dataclass(frozen=True)
class Receipt:
    """Usage of one request, as the runner attests it. Times are Unix seconds."""

    request_id: str
    runner_id: str
    prompt_tokens: int
    completion_tokens: int
    started_at: float
    finished_at: float

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_mapping(cls, fields: Mapping[str, Any]) -> Receipt:
        """Validate exactly the receipt fields; raise :class:`MalformedError`."""
        names = {f for f in cls.__dataclass_fields__}
        if not isinstance(fields, Mapping) or set(fields) != names:
            raise MalformedError(f"receipt: expected exactly the fields {sorted(names)}")
        for name in ("prompt_tokens", "completion_tokens"):
            value = fields[name]
            if type(value) is not int or not 0 <= value <= _MAX_TOKENS:
                raise MalformedError(f"receipt: {name} must be a non-negative integer")
        for name in ("started_at", "finished_at"):
            value = fields[name]
            if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
                raise MalformedError(f"receipt: {name} must be a finite non-negative number")
        if fields["finished_at"] < fields["started_at"]:
            raise MalformedError("receipt: finished_at is before started_at")
        return cls(
            request_id=check_id(fields["request_id"], "receipt request_id"),
            runner_id=check_id(fields["runner_id"], "receipt runner_id", _RUNNER_ID_MAX),
            prompt_tokens=fields["prompt_tokens"],
            completion_tokens=fields["completion_tokens"],
            started_at=float(fields["started_at"]),
            finished_at=float(fields["finished_at"]),
        )


def sign_receipt(identity_priv: Ed25519PrivateKey, fields: Receipt | Mapping[str, Any]) -> str:
    """Sign usage for one request; ``fields`` holds exactly the :class:`Receipt` fields."""
    receipt = fields if isinstance(fields, Receipt) else Receipt.from_mapping(fields)
    payload = canonical_json({"v": 1, "typ": _TYPE, **asdict(receipt)})
    signature = identity_priv.sign(_CONTEXT + payload)
    return f"{b64e(payload)}.{b64e(signature)}"


def verify_receipt(
    identity_pub: Ed25519PublicKey, receipt: str | bytes, expected_request_id: str
) -> Receipt:
    """Check a receipt's signature and request id; return the attested usage."""
    text = to_text(receipt, "receipt", MAX_RECEIPT_CHARS)
    parts = text.split(".")
    if len(parts) != 2:
        raise MalformedError("receipt: expected payload.signature")
    payload = b64d(parts[0], "receipt payload")
    signature = b64d(parts[1], "receipt signature")
    try:
        identity_pub.verify(signature, _CONTEXT + payload)
    except InvalidSignature:
        raise ReceiptError("receipt signature does not verify (forged or altered)") from None
    doc = loads_strict(payload.decode("ascii", errors="replace"), "receipt payload")
    version, typ = doc.pop("v", None), doc.pop("typ", None)
    if type(version) is not int or version != 1 or typ != _TYPE:
        raise UnsupportedVersionError("receipt: unsupported v or typ")
    result = Receipt.from_mapping(doc)
    if result.request_id != expected_request_id:
        raise ReceiptError(
            f"receipt is for request {result.request_id!r}, not {expected_request_id!r}"
        )
    return result
