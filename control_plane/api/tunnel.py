"""The runner tunnel endpoint: handshake, then one reader loop per connection."""

from __future__ import annotations

import asyncio
import logging
import secrets

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from outpost.control_plane.audit import audit_runner_event, record_runner_event
from outpost.control_plane.state import AppState
from outpost.control_plane.store.runners import get_runner, record_hello
from outpost.control_plane.tunnel.hub import ConnectedRunner
from outpost.control_plane.tunnel.link import Link
from outpost.control_plane.tunnel.records import dispatch_records
from outpost.sdk.identity import verify_signature
from outpost.sdk.pricing import CostModel
from outpost.sdk.protocol import (
    CAPABILITIES,
    PROTOCOL_VERSIONS,
    ChallengeFrame,
    CloseCode,
    FrameError,
    HelloFrame,
    WelcomeFrame,
    encode_frame,
    handshake_message,
    negotiate_version,
    parse_frame,
)

log = logging.getLogger("outpost.tunnel")
router = APIRouter()


class HandshakeRefused(Exception):
    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


@router.websocket("/tunnel/v1")
async def tunnel(ws: WebSocket) -> None:
    state: AppState = ws.app.state.outpost
    await ws.accept()
    try:
        hello, info = await asyncio.wait_for(
            _handshake(ws, state), state.settings.tunnel_handshake_timeout_s
        )
    except HandshakeRefused as exc:
        log.warning("tunnel handshake refused: %s", exc.reason)
        await _close(ws, exc.code, exc.reason)
        return
    except TimeoutError:
        await _close(ws, CloseCode.HANDSHAKE_TIMEOUT, "handshake timeout")
        return
    except WebSocketDisconnect:
        return

    session_id = secrets.token_hex(8)

    async def close(code: int, reason: str) -> None:
        await _close(ws, code, reason)

    version = hello.version
    caps = sorted(CAPABILITIES & set(hello.capabilities))
    if (taken := _slot_taken(state, info.runner_id, hello.connection_index)) is not None:
        await _refuse_duplicate(ws, info.runner_id, taken)
        return
    link = Link(
        info.runner_id,
        session_id,
        ws.send_text,
        state.settings.tunnel_max_streams_per_connection,
        close,
        stream_window=state.settings.tunnel_stream_window,
        capabilities=frozenset(caps),
        connection_index=hello.connection_index,
    )
    if state.deployments is not None:  # replica.v1 reports (capability ``deployments``)
        link.on_replica = state.deployments.replica_report
    await ws.send_text(
        encode_frame(WelcomeFrame(version=version, capabilities=caps, session_id=session_id))
    )
    # Checked again with no await before attach: two connections racing through the welcome.
    if (taken := _slot_taken(state, info.runner_id, hello.connection_index)) is not None:
        await _refuse_duplicate(ws, info.runner_id, taken)
        return
    state.hub.attach(link, info)
    log.info(
        "runner %s connected (link %s, connection %d)",
        info.runner_id,
        session_id,
        hello.connection_index,
    )
    reason = "runner disconnected"
    try:
        await audit_runner_event(
            state.db,
            "connect",
            runner_id=info.runner_id,
            tenant_id=info.tenant_id,
            details={
                "link": session_id,
                "protocol_version": version,
                "connection_index": hello.connection_index,
                "models": [m.name for m in info.models],
            },
        )
        while True:
            message = await _receive(ws)
            if isinstance(message, bytes):
                dispatch_records(link, message)  # binary-data: refused unless negotiated
            else:
                link.dispatch(parse_frame(message))
    except FrameError as exc:
        reason = str(exc)
        log.warning("runner %s broke the protocol: %s", info.runner_id, exc)
        await _close(ws, exc.code, reason[:120])
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        link.fail_all(reason)
        state.hub.detach(link)
        log.info("runner %s link %s closed: %s", info.runner_id, session_id, reason)
        await audit_runner_event(
            state.db,
            "disconnect",
            runner_id=info.runner_id,
            tenant_id=info.tenant_id,
            details={"link": session_id, "reason": reason[:200]},
        )


async def _handshake(ws: WebSocket, state: AppState) -> tuple[HelloFrame, ConnectedRunner[Link]]:
    nonce = secrets.token_urlsafe(32)
    await ws.send_text(encode_frame(ChallengeFrame(nonce=nonce, versions=list(PROTOCOL_VERSIONS))))
    try:
        hello = parse_frame(await _recv_text(ws))
    except FrameError as exc:
        raise HandshakeRefused(exc.code, str(exc)[:120]) from None
    if not isinstance(hello, HelloFrame):
        raise HandshakeRefused(CloseCode.PROTOCOL_ERROR, "expected hello.v1")
    if negotiate_version([hello.version]) is None:
        raise HandshakeRefused(
            CloseCode.UNSUPPORTED_VERSION, f"protocol version {hello.version} unsupported"
        )
    async with state.db.session() as session:
        runner = await get_runner(session, hello.runner_id)
        # One answer for unknown id and bad signature: no oracle for valid ids.
        if runner is None or not verify_signature(
            runner.identity_public_key,
            handshake_message(nonce, hello.runner_id, hello.version),
            hello.signature,
        ):
            raise HandshakeRefused(CloseCode.AUTH_FAILED, "runner identity not verified")
        if runner.revoked_at is not None:
            await record_runner_event(
                session,
                event="refused",
                runner_id=runner.id,
                tenant_id=runner.tenant_id,
                details={"reason": "revoked"},
            )
            await session.commit()
            raise HandshakeRefused(CloseCode.REVOKED, "runner revoked")
        hardware = hello.hardware.to_dict() if hello.hardware is not None else {}
        await record_hello(
            session,
            runner,
            models=hello.models,
            capacity=hello.capacity,
            labels=hello.labels,
            hardware=hardware,
            cost=hello.cost,
        )
        await session.commit()
        # Labels, cost and pool from the row (the owner's), never from the hello.
        info: ConnectedRunner[Link] = ConnectedRunner(
            runner_id=runner.id,
            tenant_id=runner.tenant_id,
            name=runner.name,
            models=list(hello.models),
            capacity=hello.capacity,
            labels=dict(runner.labels),
            cost=CostModel.from_mapping(runner.cost),
            hardware=hardware,
            pool_id=runner.pool_id,
        )
    return hello, info


def _slot_taken(state: AppState, runner_id: str, index: int) -> str | None:
    """Why this runner may not open one more connection here, or ``None``.

    A second connection with a ``connection_index`` already live is a duplicate (a copy of the
    runner's identity, or a reconnect before the old connection's death is noticed: the runner
    retries with backoff, and the dead link goes within the ping timeout); and the number of
    connections is bounded, so one identity cannot hold sockets and streams without end.
    """
    runner = state.hub.runners.get(runner_id)
    links = [ln for ln in runner.links if not ln.closed] if runner is not None else []
    if any(ln.connection_index == index for ln in links):
        return f"connection_index {index} is already connected"
    limit = state.settings.tunnel_max_connections_per_runner
    if len(links) >= limit:
        return f"runner already holds {limit} connections"
    return None


async def _refuse_duplicate(ws: WebSocket, runner_id: str, why: str) -> None:
    log.warning("runner %s: connection refused: %s", runner_id, why)
    await _close(ws, CloseCode.DUPLICATE, why)


async def _recv_text(ws: WebSocket) -> str:
    message = await _receive(ws)
    if isinstance(message, bytes):
        raise FrameError("binary messages are not part of protocol v1")
    return message


async def _receive(ws: WebSocket) -> str | bytes:
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    text: str | None = message.get("text")
    if text is not None:
        return text
    data: bytes | None = message.get("bytes")
    if data is None:
        raise FrameError("empty websocket message")
    return data


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    if (
        ws.application_state != WebSocketState.DISCONNECTED
        and ws.client_state != WebSocketState.DISCONNECTED
    ):
        try:
            await ws.close(code=int(code), reason=reason[:120])
        except RuntimeError:
            pass
