"""Per-stream credit windows, on both ends, without a network."""

from __future__ import annotations

import asyncio

import pytest

from outpost.control_plane.tunnel.stream import Stream
from outpost.runner.streams import OutboundStream
from outpost.sdk.protocol import (
    MAX_DATA_BYTES,
    DataFrame,
    FrameError,
    RequestFrame,
    ResponseStartFrame,
)


def _request(window: int) -> RequestFrame:
    return RequestFrame(
        stream_id=1,
        path="/v1/chat/completions",
        model="m",
        body="{}",
        body_length=2,
        stream=True,
        window=window,
    )


async def test_runner_never_sends_more_than_its_window() -> None:
    sent: list[object] = []

    async def send(frame: object) -> None:
        sent.append(frame)

    out = OutboundStream(_request(MAX_DATA_BYTES), send)
    payload = "x" * (MAX_DATA_BYTES * 3)
    task = asyncio.create_task(out.data(payload))
    await asyncio.sleep(0.05)
    # One window's worth went out; the rest waits for credit (it is not buffered on the wire).
    assert sum(len(f.data) for f in sent if isinstance(f, DataFrame)) == MAX_DATA_BYTES
    assert not task.done()
    out.grant(MAX_DATA_BYTES)
    await asyncio.sleep(0.05)
    assert sum(len(f.data) for f in sent if isinstance(f, DataFrame)) == 2 * MAX_DATA_BYTES
    out.grant(MAX_DATA_BYTES)
    await asyncio.wait_for(task, 1)
    assert "".join(f.data for f in sent if isinstance(f, DataFrame)) == payload


async def test_control_plane_rejects_a_runner_that_overruns_its_window() -> None:
    grants: list[int] = []

    async def grant(_sid: int, n: int) -> None:
        grants.append(n)

    async def reset(_sid: int, _reason: str) -> None:
        pass

    st = Stream(1, MAX_DATA_BYTES, grant, reset)
    st.deliver(ResponseStartFrame(stream_id=1, status=200))
    st.deliver(DataFrame(stream_id=1, data="a" * MAX_DATA_BYTES))
    with pytest.raises(FrameError, match="window"):
        st.deliver(DataFrame(stream_id=1, data="b"))


async def test_credit_is_granted_back_only_as_the_client_consumes() -> None:
    grants: list[int] = []

    async def grant(_sid: int, n: int) -> None:
        grants.append(n)

    async def reset(_sid: int, _reason: str) -> None:
        pass

    window = 4 * MAX_DATA_BYTES
    st = Stream(1, window, grant, reset)
    st.deliver(ResponseStartFrame(stream_id=1, status=200))
    for _ in range(4):
        st.deliver(DataFrame(stream_id=1, data="c" * MAX_DATA_BYTES))
    assert grants == []  # nothing consumed, nothing granted: the runner is now blocked
    await st.consumed(MAX_DATA_BYTES)
    assert grants == []  # grants are batched to half a window
    await st.consumed(MAX_DATA_BYTES)
    assert grants == [2 * MAX_DATA_BYTES]
    st.deliver(DataFrame(stream_id=1, data="d" * MAX_DATA_BYTES))  # within the renewed credit


async def test_data_before_response_start_is_a_protocol_error() -> None:
    async def noop(*_: object) -> None:
        pass

    st = Stream(1, MAX_DATA_BYTES, noop, noop)
    with pytest.raises(FrameError, match="before response_start"):
        st.deliver(DataFrame(stream_id=1, data="x"))
