"""Usage of an end-to-end request, from the runner's signed receipt.

The control plane cannot count the tokens of a sealed request, so it takes
them from ``EndFrame.receipt`` — only after checking the signature against
the identity key the runner registered, the request id the client sealed to
and the runner id. A receipt that fails is logged and recorded as nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from outpost.sdk.e2e import E2EError, verify_receipt
from outpost.sdk.identity import b64u_decode
from outpost.sdk.protocol import EndFrame, Usage

__all__ = ["ReceiptCheck", "receipt_check"]

log = logging.getLogger("outpost.receipts")

#: EndFrame → verified usage, or ``None`` when the receipt is missing or refused.
ReceiptCheck = Callable[[EndFrame], Usage | None]


def receipt_check(identity_public_key: str, runner_id: str, request_id: str) -> ReceiptCheck:
    """A check bound to one runner's registered identity key and one sealed request."""
    key = Ed25519PublicKey.from_public_bytes(b64u_decode(identity_public_key))

    def check(end: EndFrame) -> Usage | None:
        if not end.receipt:
            log.warning(
                "e2e request %s: runner %s sent no usage receipt; usage not recorded",
                request_id,
                runner_id,
            )
            return None
        try:
            receipt = verify_receipt(key, end.receipt, request_id)
            if receipt.runner_id != runner_id:
                raise E2EError(f"receipt names runner {receipt.runner_id!r}")
        except E2EError as exc:
            log.warning(
                "e2e request %s: receipt from runner %s REJECTED (%s: %s); usage not recorded",
                request_id,
                runner_id,
                type(exc).__name__,
                exc,
            )
            return None
        return Usage(
            prompt_tokens=receipt.prompt_tokens, completion_tokens=receipt.completion_tokens
        )

    return check
