"""harness/gpu_measure.py: CPU per process tree and py-spy's profile, on real processes.

The GPU benchmark's CPU-per-token columns and its profile summary are what the relay work is
steered by (docs/performance.md, "GPU host profile"), so both are checked against processes
whose CPU use is known: a child that burns a fixed amount of CPU time in a named function.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.gpu_measure import (
    LOOP,
    CpuWindow,
    _package,
    finish_profiles,
    py_spy,
    read_raw,
    start_profiles,
    summarize,
)

# Burns CPU_S seconds of its own CPU time in burn_here(), says so, then waits for stdin to close:
# it is still alive when the window closes (psutil cannot read an ended process).
BURNER = """
import sys, time
def burn_here(limit):
    x = 0
    while time.process_time() < limit:
        x += 1
    return x
print("ready", flush=True)
burn_here(float(sys.argv[1]))
print("done", flush=True)
sys.stdin.read()
"""


Burner = tuple[Callable[[float], "subprocess.Popen[str]"], Path]


@pytest.fixture
def burner(tmp_path: Path) -> Iterator[Burner]:
    script = tmp_path / "burner.py"
    script.write_text(BURNER)
    procs: list[subprocess.Popen[str]] = []

    def start(cpu_s: float) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(cpu_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    yield start, tmp_path
    for proc in procs:
        proc.kill()
        proc.wait()


def test_cpu_window_counts_a_tree_and_leaves_out_what_is_excluded(burner: Burner) -> None:
    start, _ = burner
    child = start(0.6)
    window = CpuWindow(
        {
            "child": (child.pid, frozenset()),
            # this test's own process, the child left out: it only waits on a pipe meanwhile
            "parent_without_child": (os.getpid(), frozenset({child.pid})),
            "parent_with_child": (os.getpid(), frozenset()),
        }
    )
    window.start()
    assert child.stdout is not None and child.stdout.readline().strip() == "done"
    window.stop()
    assert 0.5 <= window.cpu_s["child"] <= 0.9
    assert window.cpu_s["parent_without_child"] < 0.3
    # The tree is read process by process, each rounded to the kernel's 10 ms clock tick.
    assert window.cpu_s["parent_with_child"] >= window.cpu_s["child"] - 0.02
    assert window.wall_s > 0 and window.host_busy_cores > 0


def test_py_spy_profile_names_the_function_that_burns(burner: Burner) -> None:
    if py_spy() is None:
        pytest.fail("py-spy is a test dependency (pyproject.toml) but was not found")
    start, tmp = burner
    child = start(30.0)  # killed at teardown; the profile lasts 2 s
    started = start_profiles({"burner": child.pid}, 2.0, tmp / "prof")
    raws = finish_profiles(started)
    assert "burner" in raws, (tmp / "prof" / "pyspy-burner.log").read_text()
    prof = read_raw(raws["burner"])
    assert prof.samples > 50  # 100 Hz for 2 s of a process that never sleeps
    top, n = prof.self_counts.most_common(1)[0]
    assert top.startswith("burn_here (") and n / prof.samples > 0.8
    text = summarize(raws["burner"], 10.0)
    assert "burn_here" in text and "µs/tok" in text


@pytest.mark.parametrize(
    ("frame", "package"),
    [
        ("OutboundStream.data (outpost/runner/streams.py)", "outpost.runner"),
        ("Link.dispatch (outpost/control_plane/tunnel/link.py)", "outpost.control_plane"),
        ("Frame.parse (websockets/frames.py)", "websockets"),
        ("dumps (json/__init__.py)", "json"),
        ("_AsyncGeneratorContextManager.__aenter__ (contextlib.py)", "contextlib"),
        ("Runner.run (asyncio/runners.py)", LOOP),
        ("Queue.get (asyncio/queues.py)", "asyncio"),
    ],
)
def test_frames_are_grouped_by_the_package_of_their_code(frame: str, package: str) -> None:
    assert _package(frame) == package
