"""``Stream.take_data``: data frames queued behind the one just read leave in the same client write.

Pure unit tests of the control plane's stream object (no processes): the
order of events and the flow-control credit must be exactly those of reading
the frames one by one.
"""

from __future__ import annotations

from outpost.control_plane.cluster.remote import RemoteLink, RemoteStream
from outpost.control_plane.routing.admission import HolderAdmitted
from outpost.control_plane.tunnel.stream import LinkClosed, Stream
from outpost.sdk.protocol import DataFrame, EndFrame, ResponseStartFrame


class Grants:
    def __init__(self) -> None:
        self.granted: list[int] = []
        self.resets: list[str] = []

    async def grant(self, sid: int, n: int) -> None:
        self.granted.append(n)

    async def reset(self, sid: int, reason: str) -> None:
        self.resets.append(reason)


def _stream(window: int = 16 * 1024) -> tuple[Stream, Grants]:
    g = Grants()
    return Stream(1, window, g.grant, g.reset), g


async def test_queued_data_is_joined_up_to_the_next_other_event() -> None:
    st, _ = _stream()
    st.deliver(ResponseStartFrame(stream_id=1, status=200))
    for part in ("a", "b", "c"):
        st.deliver(DataFrame(stream_id=1, data=part))
    st.deliver(EndFrame(stream_id=1))
    assert isinstance(await st.next_event(), ResponseStartFrame)
    first = await st.next_event()
    assert first == "a"  # a reader gets data as its text
    assert st.take_data() == "bc"
    assert st.take_data() == "", "the end frame is held for next_event, not skipped"
    assert isinstance(await st.next_event(timeout=1), EndFrame)


async def test_nothing_queued_takes_nothing() -> None:
    st, _ = _stream()
    st.deliver(ResponseStartFrame(stream_id=1, status=200))
    await st.next_event()
    assert st.take_data() == ""
    st.link_closed("gone")
    assert isinstance(await st.next_event(), LinkClosed)


async def test_credit_is_granted_for_joined_data_as_for_single_frames() -> None:
    st, g = _stream(window=16 * 1024)
    st.deliver(ResponseStartFrame(stream_id=1, status=200))
    await st.next_event()
    for _ in range(4):
        st.deliver(DataFrame(stream_id=1, data="x" * 4096))  # the whole window
    first = await st.next_event()
    data = first + st.take_data()
    assert len(data) == 16 * 1024
    await st.consumed(len(data))
    assert g.granted == [16 * 1024]
    st.deliver(
        DataFrame(stream_id=1, data="y" * 16 * 1024)
    )  # accepted: the window was granted back


async def test_a_stream_relayed_through_another_replica_takes_data_the_same_way() -> None:
    # The cluster's RemoteStream is read by the same SSE relay (openai/serving.py).
    sent: list[tuple[str, str, object]] = []

    async def send(replica: str, kind: str, key: str, payload: object) -> bool:
        sent.append((kind, key, payload))
        return True

    link = RemoteLink("replica-b", "run_x", send, lambda st, key: None, stream_window=16 * 1024)
    st = RemoteStream("k", 16 * 1024, link)
    st.admitted(0.0)
    st.deliver(ResponseStartFrame(stream_id=1, status=200))
    for part in ("a", "b", "c"):
        st.deliver(DataFrame(stream_id=1, data=part))
    st.deliver(EndFrame(stream_id=1))
    assert isinstance(await st.next_event(), HolderAdmitted)
    assert st.take_data() == "", "only data frames are taken ahead"
    assert isinstance(await st.next_event(), ResponseStartFrame)
    assert await st.next_event() == "a"
    assert st.take_data() == "bc"
    assert isinstance(await st.next_event(timeout=1), EndFrame)
