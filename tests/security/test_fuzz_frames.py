"""Fuzzing the tunnel frame decoder: any input yields a frame or a FrameError, nothing else."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from outpost.sdk.protocol import MAX_FRAME_BYTES, FrameError, parse_frame

FRAME_TYPES = [
    "challenge.v1",
    "hello.v1",
    "welcome.v1",
    "request.v1",
    "response_start.v1",
    "data.v1",
    "end.v1",
    "reset.v1",
    "window_update.v1",
    "status.v1",
    "goaway.v1",
    "bogus",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=2000) | st.binary(max_size=2000))
def test_arbitrary_input_never_escapes_as_another_exception(raw: str | bytes) -> None:
    try:
        parse_frame(raw)
    except FrameError:
        pass


@settings(max_examples=250, deadline=None)
@given(
    st.sampled_from(FRAME_TYPES),
    st.dictionaries(
        st.sampled_from(
            [
                "stream_id",
                "data",
                "nonce",
                "versions",
                "runner_id",
                "version",
                "signature",
                "status",
                "usage",
                "increment",
                "body",
                "body_length",
                "path",
                "model",
                "window",
                "reason",
                "drain_s",
                "models",
                "capacity",
                "labels",
            ]
        ),
        json_values,
        max_size=8,
    ),
)
def test_structured_garbage_is_rejected_cleanly(frame_type: str, fields: dict) -> None:
    try:
        raw = json.dumps({"type": frame_type, **fields})
    except (ValueError, OverflowError):
        return
    try:
        frame = parse_frame(raw)
    except FrameError:
        return
    # Whatever was accepted is within the contract's bounds.
    assert frame.type == frame_type
    if hasattr(frame, "stream_id"):
        assert frame.stream_id >= 1


def test_oversized_frame_is_rejected_before_parsing() -> None:
    try:
        parse_frame('{"type": "data.v1", "stream_id": 1, "data": "' + "x" * MAX_FRAME_BYTES + '"}')
    except FrameError as exc:
        assert exc.code == 4009
    else:  # pragma: no cover
        raise AssertionError("oversized frame accepted")
