"""replica.v1 reporting (runner/deployments/reporter.py) on an injected clock: state changes go at
once, download progress at most every 0.5 s per replica, and every frame is within its bounds."""

from __future__ import annotations

import io

from rich.console import Console

from outpost.runner.deployments.reporter import PROGRESS_INTERVAL_S, Replica, Reporter
from outpost.sdk.protocol import DeployFrame, ModelInfo, ReplicaFrame, encode_frame, parse_frame

ORDER = DeployFrame.model_validate(
    {
        "replica_id": "r1",
        "deployment_id": "d1",
        "name": "m",
        "source": {"kind": "url", "url": "https://h/m.gguf", "sha256": "a" * 64},
    }
)


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_progress_is_throttled_and_state_changes_are_not() -> None:
    sent: list[ReplicaFrame] = []

    async def send(frame: ReplicaFrame) -> bool:
        sent.append(parse_frame(encode_frame(frame)))  # type: ignore[arg-type]
        return True

    clock = Clock()
    out = io.StringIO()
    reporter = Reporter(send, Console(file=out, width=120), clock=clock)
    replica = Replica(ORDER)
    await reporter.state(replica, "downloading")
    assert len(sent) == 1
    # 100 progress reports within one interval: none goes out.
    for i in range(100):
        clock.now += PROGRESS_INTERVAL_S / 101
        replica.on_bytes(i * 1000, 10**6)
        await reporter.progress(replica)
    assert len(sent) == 1
    clock.now += PROGRESS_INTERVAL_S / 2
    replica.on_bytes(200_000, 10**6)
    await reporter.progress(replica)
    assert len(sent) == 2
    assert sent[-1].bytes_done == 200_000 and sent[-1].bytes_total == 10**6
    assert sent[-1].rate_bps > 0
    # A change of state goes at once, however soon after.
    clock.now += 0.01
    await reporter.state(replica, "loading")
    assert [f.state for f in sent] == ["downloading", "downloading", "loading"]
    assert sent[-1].rate_bps == 0
    # The console is no terminal: one line per LINE_INTERVAL_S, with bytes and rate.
    lines = out.getvalue().splitlines()
    assert lines[0] == "downloading m (r1): 0.0 MiB, 0.0 MiB/s"
    assert len(lines) == 1


async def test_a_terminal_gets_a_progress_bar() -> None:
    async def send(frame: ReplicaFrame) -> bool:
        return True

    clock, out = Clock(), io.StringIO()
    reporter = Reporter(send, Console(file=out, force_terminal=True, width=120), clock=clock)
    replica = Replica(ORDER)
    await reporter.state(replica, "downloading")
    clock.now += 1
    replica.on_bytes(3 * 1024 * 1024, 10 * 1024 * 1024)
    await reporter.progress(replica)
    await reporter.state(replica, "loading")
    shown = out.getvalue()
    assert "m (r1)" in shown and "3.1/10.5 MB" in shown


async def test_frames_stay_within_bounds() -> None:
    sent: list[ReplicaFrame] = []

    async def send(frame: ReplicaFrame) -> bool:
        sent.append(frame)
        return False  # no connection: dropped, and nothing breaks

    reporter = Reporter(send, Console(file=io.StringIO()), clock=Clock())
    replica = Replica(ORDER)
    # A hub download may report more than its announced total; the frame never does.
    replica.on_bytes(12, 10)
    await reporter.state(replica, "failed", "x" * 5000)
    frame = parse_frame(encode_frame(sent[-1]))
    assert isinstance(frame, ReplicaFrame)
    assert frame.bytes_done == 10 and frame.reason == "x" * 512
    # The model goes out with ready only.
    replica.model = ModelInfo(name="m", engine="xllamacpp")
    await reporter.state(replica, "draining")
    assert sent[-1].model is None
    await reporter.state(replica, "ready")
    assert sent[-1].model is not None and sent[-1].model.name == "m"
