"""An engine killed mid-stream fails its own streams, not the tunnel connection they share.

A real control plane and a real runner with two tunnel connections and two real
llama.cpp engines (the embedded SmolLM2 as ``smol-a`` and, from a copy, ``smol-b``).
Four streams run at once, two per engine; ``smol-a``'s engine is killed with
SIGKILL while they stream. The runner must end smol-a's streams with an
``end.v1`` error (the client sees ``engine_error``) and never send a second
``response_start.v1`` — the control plane closes a connection that does (4000),
and every stream on it would die as ``runner_lost``.
"""

from __future__ import annotations

import re
import shutil
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from harness.processes import ControlPlaneProcess, RunnerProcess, wait_until
from outpost.runner.models import embedded_model_path

ARGS = ["--parallel", "2", "--headroom", "0", "--ctx", "2048", "--connections", "2"]


@pytest.fixture
def stack(
    tmp_path: Path,
) -> Iterator[tuple[ControlPlaneProcess, RunnerProcess, str, dict[str, str]]]:
    original = embedded_model_path()
    copy = tmp_path / original.name
    shutil.copyfile(original, copy)
    cp = ControlPlaneProcess(
        tmp_path / "cp", f"sqlite+aiosqlite:///{tmp_path / 'outpost.db'}"
    ).start()
    runner = RunnerProcess(
        cp,
        tmp_path / "runner",
        "two-conns",
        args=[*ARGS, "--model", f"smol-a={original}", "--model", f"smol-b={copy}"],
    )
    try:
        key = cp.api_key()
        runner.start()
        runner.wait_connected(key)
        wait_until(
            lambda: len(re.findall(r"tunnel \d connected", runner.log())) == 2,
            30,
            "two connections",
        )
        yield cp, runner, key, {"smol-a": str(original), "smol-b": str(copy)}
    finally:
        runner.stop()
        cp.stop()


def _engine_pid(runner: RunnerProcess, model_path: str) -> int:
    for child in psutil.Process(runner.proc.pid).children(recursive=True):  # type: ignore[union-attr]
        cmd = child.cmdline()
        if "--model" in cmd and cmd[cmd.index("--model") + 1] == model_path:
            return child.pid
    raise AssertionError(f"no engine for {model_path}")


def test_an_engine_killed_mid_stream_ends_its_streams_with_engine_error_and_the_others_complete(
    stack,
) -> None:
    cp, runner, key, paths = stack
    connects_before = len(re.findall(r"tunnel \d connected", runner.log()))
    streaming = threading.Barrier(5, timeout=120)

    def stream(model: str) -> tuple[int, str]:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": 300,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
        }
        with httpx.stream(
            "POST",
            f"{cp.url}/v1/chat/completions",
            json=body,
            timeout=300,
            headers={"Authorization": f"Bearer {key}"},
        ) as resp:
            chunks = resp.iter_text()
            first = next(chunks)
            streaming.wait()
            return resp.status_code, first + "".join(chunks)

    with ThreadPoolExecutor(4) as pool:
        futures = {m: [pool.submit(stream, m) for _ in range(2)] for m in ("smol-a", "smol-b")}
        streaming.wait()  # all four have their first bytes
        psutil.Process(_engine_pid(runner, paths["smol-a"])).send_signal(signal.SIGKILL)
        results = {m: [f.result(timeout=300) for f in fs] for m, fs in futures.items()}

    for status, text in results["smol-a"]:
        assert status == 200
        assert '"code":"engine_error"' in text.replace(" ", ""), text[-400:]
        assert "runner_lost" not in text
        assert text.rstrip().endswith("data: [DONE]")
    for status, text in results["smol-b"]:
        assert status == 200
        assert "error" not in text, text[-400:]
        assert '"finish_reason":"length"' in text.replace(" ", "")
        assert text.rstrip().endswith("data: [DONE]")
    # The connections stayed up: no close, no reconnect; the runner logged the failures as errors.
    log = runner.log()
    assert len(re.findall(r"tunnel \d connected", log)) == connects_before, log[-3000:]
    assert "reconnecting" not in log
    assert len(re.findall(r"ERROR.*stream \d+ /v1/chat/completions smol-a: error", log)) == 2, log[
        -3000:
    ]
    assert "broke the protocol" not in cp.log()
    # And the runner keeps serving on them.
    resp = httpx.post(
        f"{cp.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
        json={"model": "smol-b", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]},
    )
    assert resp.status_code == 200, resp.text
