"""The runner's persisted identity: keys on disk (0600) and its registration."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import httpx

from outpost.runner.tls import trust_failure
from outpost.sdk.identity import IdentityKey, b64u_decode, b64u_encode
from outpost.sdk.pins import parse_pin

__all__ = ["EnrollmentError", "RunnerIdentity", "enroll", "load_identity", "split_token"]

IDENTITY_FILE = "identity.json"


class EnrollmentError(RuntimeError):
    pass


@dataclass
class RunnerIdentity:
    runner_id: str
    key: IdentityKey
    control_plane: str
    #: The control plane's key pins the enrollment token carried, kept for every later connection.
    pins: tuple[str, ...] = ()

    def save(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = state_dir / IDENTITY_FILE
        data = json.dumps(
            {
                "runner_id": self.runner_id,
                "control_plane": self.control_plane,
                "identity_private_key": b64u_encode(self.key.private_bytes()),
                "pins": list(self.pins),
            }
        )
        # Written beside it and renamed into place: a crash mid-write (or a reader at the wrong
        # moment) sees the old file or the whole new one, never a torn one — an enrollment token
        # is spent once, so a torn identity would strand the runner. Created 0600 from the
        # start: no window where the key is world-readable.
        tmp = path.with_name(f".{IDENTITY_FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def load_identity(state_dir: Path) -> RunnerIdentity | None:
    path = state_dir / IDENTITY_FILE
    if not path.exists():
        return None
    if path.stat().st_mode & 0o077:
        raise EnrollmentError(f"{path} is readable by other users; run: chmod 600 {path}")
    try:
        data = json.loads(path.read_text())
        return RunnerIdentity(
            runner_id=data["runner_id"],
            control_plane=data["control_plane"],
            key=IdentityKey.from_private_bytes(b64u_decode(data["identity_private_key"])),
            pins=tuple(data.get("pins", ())),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise EnrollmentError(
            f"{path} is not a runner identity ({type(exc).__name__}); move it away and enroll "
            "again with a new token"
        ) from None


def split_token(token: str) -> tuple[str, str | None]:
    """``SECRET#sha256/PIN`` → (secret, pin): a control plane serving TLS appends its key's pin."""
    secret, sep, pin = token.strip().partition("#")
    if not sep:
        return secret, None
    try:
        return secret, parse_pin(pin)
    except ValueError as exc:
        raise EnrollmentError(f"the enrollment token's pin is malformed: {exc}") from None


async def enroll(
    control_plane: str,
    token: str,
    client: httpx.AsyncClient,
    extra_keys: dict[str, str] | None = None,
    pins: tuple[str, ...] = (),
) -> RunnerIdentity:
    """Exchange a one-time token for a registration of a fresh identity key.

    ``client`` must already check ``pins`` (runner/tls.py): they are only recorded here.
    """
    token, _ = split_token(token)  # the pin suffix is for the runner, not a part of the secret
    key = IdentityKey.generate()
    body = {"identity_public_key": key.public_b64, **(extra_keys or {})}
    try:
        resp = await client.post(
            f"{control_plane.rstrip('/')}/api/runners/register",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        )
    except httpx.HTTPError as exc:
        if (failure := trust_failure(exc)) is not None:
            raise EnrollmentError(str(failure)) from None
        if isinstance(exc, httpx.ProxyError):
            raise EnrollmentError(
                f"the proxy refused to connect to the control plane at {control_plane}: "
                f"{exc} (check --proxy and OUTPOST_PROXY_AUTH)"
            ) from None
        hint = ""
        if control_plane.startswith("https://") and isinstance(
            exc, (httpx.ReadError, httpx.RemoteProtocolError)
        ):
            # A server that requires a client certificate resets the connection; the alert is lost.
            hint = (
                " (the control plane hung up without answering: if it requires client certificates "
                "(mTLS), set --client-cert and --client-key)"
            )
        raise EnrollmentError(
            f"cannot reach the control plane at {control_plane}: {exc or type(exc).__name__}{hint}"
        ) from None
    if resp.status_code != 201:
        try:
            message = resp.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = resp.text[:200]
        raise EnrollmentError(f"enrollment refused ({resp.status_code}): {message}")
    return RunnerIdentity(
        runner_id=resp.json()["runner_id"], key=key, control_plane=control_plane, pins=pins
    )
