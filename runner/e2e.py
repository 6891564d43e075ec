"""The runner's keys for end-to-end mode and its published key document (``docs/e2e.md``).

Sealed requests themselves are relayed by :mod:`runner.sealed`.

The identity key is the one in ``identity.json`` (the tunnel handshake key);
only the HPKE key pair lives here, in ``hpke.json`` (mode 0600). The signed
key document binds the runner id, which the control plane assigns at
registration, so it is uploaded after enrollment — and on every start, which
also gives runners enrolled before e2e existed a key — to
``PUT /api/runners/{id}/e2e-key``. That upload needs no secret: the document
is signed by the identity key the control plane already holds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from outpost.runner.identity import EnrollmentError, RunnerIdentity, load_identity
from outpost.runner.sealed import SealedRelay
from outpost.sdk.e2e import HpkePrivateKey, Kem, RunnerKeys, fingerprint, signed_hpke_key
from outpost.sdk.identity import b64u_decode, b64u_encode

__all__ = ["HPKE_KEY_FILE", "RunnerE2E", "describe_keys", "load_keys"]

log = logging.getLogger("outpost.runner.e2e")

HPKE_KEY_FILE = "hpke.json"


def load_keys(state_dir: Path, identity: RunnerIdentity, kem: Kem = Kem.X25519) -> RunnerKeys:
    """The runner's :class:`RunnerKeys`: its tunnel identity plus an HPKE key made on first use."""
    path = state_dir / HPKE_KEY_FILE
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise EnrollmentError(f"{path} is readable by other users; run: chmod 600 {path}")
        try:
            doc = json.loads(path.read_text())
            hpke = HpkePrivateKey(Kem.parse(doc["kem"]), b64u_decode(doc["hpke"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise EnrollmentError(f"{path} is not a valid HPKE key file: {exc}") from None
    else:
        hpke = HpkePrivateKey.generate(kem)
        _write_private(
            path, json.dumps({"v": 1, "kem": hpke.kem.value, "hpke": b64u_encode(hpke.raw)})
        )
        log.info("generated a %s HPKE key for end-to-end mode", hpke.kem.value)
    return RunnerKeys(Ed25519PrivateKey.from_private_bytes(identity.key.private_bytes()), hpke)


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # mkstemp creates 0600 whatever the umask: the key is never world-readable.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunnerE2E:
    """Keys, the published document and the sealed-request relay of one runner."""

    def __init__(
        self,
        keys: RunnerKeys,
        identity: RunnerIdentity,
        *,
        pad_to: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self.identity = identity
        self.relay = SealedRelay(keys, identity.runner_id, pad_to=pad_to, clock=clock)
        self._clock = clock

    @classmethod
    def load(
        cls, state_dir: Path, identity: RunnerIdentity, *, kem: Kem = Kem.X25519, pad_to: int = 0
    ) -> RunnerE2E:
        return cls(load_keys(state_dir, identity, kem), identity, pad_to=pad_to)

    @property
    def fingerprint(self) -> str:
        return self.keys.fingerprint

    def key_document(self) -> dict[str, Any]:
        return signed_hpke_key(
            self.keys.identity, self.keys.hpke_public, self.identity.runner_id, clock=self._clock
        )

    async def publish_once(self, http: httpx.AsyncClient) -> None:
        base = self.identity.control_plane.rstrip("/")
        url = f"{base}/api/runners/{self.identity.runner_id}/e2e-key"
        resp = await http.put(url, json=self.key_document(), timeout=10)
        if resp.status_code != 200:
            raise RuntimeError(
                f"control plane refused the e2e key ({resp.status_code}): {resp.text[:200]}"
            )

    async def publish(
        self, http: httpx.AsyncClient, *, base_s: float = 0.5, cap_s: float = 30.0
    ) -> None:
        """Upload the signed key document, retrying with full-jitter backoff until it is stored."""
        attempt = 0
        while True:
            try:
                await self.publish_once(http)
            except (httpx.HTTPError, RuntimeError) as exc:
                attempt += 1
                delay = random.uniform(0, min(cap_s, base_s * 2**attempt))
                log.warning("could not publish the e2e key (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            log.info("e2e key published; identity fingerprint %s", self.fingerprint)
            return


def describe_keys(state_dir: Path) -> dict[str, Any]:
    """What ``runner keys`` prints: the fingerprint to pin and the e2e key, without private
    material."""
    identity = load_identity(state_dir)
    if identity is None:
        raise EnrollmentError(f"no identity in {state_dir}: this runner is not enrolled yet")
    public = Ed25519PrivateKey.from_private_bytes(identity.key.private_bytes()).public_key()
    out: dict[str, Any] = {
        "runner_id": identity.runner_id,
        "control_plane": identity.control_plane,
        "identity_fingerprint": fingerprint(public),
        "hpke_kem": None,
    }
    if (state_dir / HPKE_KEY_FILE).exists():
        keys = load_keys(state_dir, identity)
        out["hpke_kem"] = keys.kem.value
        out["hpke_public_key"] = keys.hpke_public.to_b64()
    return out
