"""Audit key rotation: a new key, cross-signed with the old one, recorded in the chain."""

from __future__ import annotations

from outpost.control_plane.audit.chain import utc_ts
from outpost.control_plane.audit.checkpoints import register_key, write_checkpoint
from outpost.control_plane.audit.events import record_system
from outpost.control_plane.audit.keys import AuditKeyPair, AuditSigner, generate_key, write_key
from outpost.control_plane.db.engine import Database
from outpost.sdk.audit import rotation_message

__all__ = ["rotate_key"]


async def rotate_key(
    db: Database, signer: AuditSigner, *, actor: str
) -> tuple[AuditKeyPair, AuditKeyPair]:
    """Replace the audit key; returns ``(old, new)``.

    Both keys sign the rotation record, so a verifier that trusts either one
    comes to trust the other (docs/audit.md, "Key rotation"). The database
    learns the new key before the key file changes: a crash in between leaves
    the old key in use, never a key that no export can vouch for.
    """
    old, new = signer.current(), generate_key()
    ts = utc_ts()
    message = rotation_message(old.key_id, old.public_key, new.key_id, new.public_key, ts)
    rotation = {
        "prev_key_id": old.key_id,
        "prev_public_key": old.public_key,
        "ts": ts,
        "prev_signature": old.sign(message),
        "signature": new.sign(message),
    }
    async with db.session() as session:
        await register_key(session, old)
        await register_key(session, new, rotation=rotation)
        await record_system(
            session,
            action="key.rotate",
            actor=actor,
            details={"prev_key_id": old.key_id, "key_id": new.key_id},
        )
        # The last checkpoint by the old key covers everything up to the rotation.
        await write_checkpoint(session, signer)
        await session.commit()
    write_key(signer.path, new, replace=True)
    return old, new
