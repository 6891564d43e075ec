"""A runner's signed HPKE key document, kept on its row.

The row's ``hpke_public_key`` column holds the document's signed fields as
canonical JSON and ``hpke_key_signature`` its signature, so the document a
client receives is byte-for-byte what the runner signed. The control plane
checks the signature on upload only to refuse garbage; clients check it
again against the fingerprint they pinned, which is what protects them.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.db.models import Runner
from outpost.sdk.e2e import VerifiedHpkeKey

__all__ = ["hpke_key_document", "store_hpke_key"]


def hpke_key_document(runner: Runner) -> dict[str, Any] | None:
    """The signed document as the runner uploaded it, or ``None`` if it has none."""
    if not runner.hpke_public_key or not runner.hpke_key_signature:
        return None
    try:
        fields = json.loads(runner.hpke_public_key)
    except ValueError:
        return None  # a raw key from an older registration: not a signed document
    if not isinstance(fields, dict) or "sig" in fields:
        return None
    return {**fields, "sig": runner.hpke_key_signature}


async def store_hpke_key(
    session: AsyncSession, runner: Runner, doc: dict[str, Any], verified: VerifiedHpkeKey
) -> None:
    fields = {k: v for k, v in doc.items() if k != "sig"}
    runner.hpke_public_key = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    runner.hpke_key_signature = doc["sig"]
    await session.flush()
