"""vLLM 0.24's recorded answers through a real control plane and runner (issue 25).

The engine here is an honest stand-in, named as such: a loopback HTTP server that replays what
vLLM 0.24.0 answered on an H100 (tests/runner/data/vllm_0.24_*: /v1/models, a chat answer, a
streamed answer, and /metrics before and after load). Everything else is real: the control
plane process, the runner process attached to it (``--attach``), the WebSocket tunnel, the
official ``openai`` client. After answered requests, ``GET /api/runners`` shows the runner's
served count and slots, and the runner's own ``/metrics`` carries the counters vLLM reported.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import openai
import pytest

from harness.processes import ControlPlaneProcess, RunnerProcess, free_port, wait_until

DATA = Path(__file__).parent / "data"
RECORD = json.loads((DATA / "vllm_0.24_record.json").read_text())
IDLE = (DATA / "vllm_0.24_metrics_idle.txt").read_text()
AFTER = (DATA / "vllm_0.24_metrics_after.txt").read_text()
MODEL = "SmolLM2-135M-Instruct"


class _ReplayVllm(BaseHTTPRequestHandler):
    """Stand-in for vLLM 0.24's OpenAI server: its recorded answers, byte for byte."""

    answered = 0  # chat requests so far; /metrics is the recorded idle text until the first

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _send(self, body: bytes, ctype: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._send(json.dumps(RECORD["models"]).encode(), "application/json")
        elif self.path == "/metrics":
            text = AFTER if type(self).answered else IDLE
            self._send(text.encode(), "text/plain; version=0.0.4; charset=utf-8")
        else:
            self.send_error(404)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).answered += 1
        if body.get("stream"):
            self._send(
                RECORD["chat_stream_direct_sse"].encode(), "text/event-stream; charset=utf-8"
            )
        else:
            self._send(json.dumps(RECORD["chat_direct"]).encode(), "application/json")


@pytest.fixture
def replay_vllm() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ReplayVllm)
    _ReplayVllm.answered = 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_runners_api_and_runner_metrics_with_vllm_0_24(tmp_path: Path, replay_vllm: str) -> None:
    cp = ControlPlaneProcess(
        tmp_path / "cp", f"sqlite+aiosqlite:///{tmp_path / 'cp' / 'outpost.db'}"
    ).start()
    metrics_port = free_port()
    runner = RunnerProcess(
        cp,
        tmp_path / "runner",
        "vllm-runner",
        args=["--attach", replay_vllm, "--parallel", "8"],
        extra_env={"OUTPOST_METRICS_PORT": str(metrics_port)},
    )
    try:
        key = cp.api_key()
        runner.start()
        runner.wait_connected(key)
        client = openai.OpenAI(base_url=f"{cp.url}/v1", api_key=key, max_retries=0)
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Capital?"}]
        )
        assert answer.choices[0].message.content == "The capital of France is Paris."
        assert answer.usage is not None and answer.usage.completion_tokens == 8
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Capital?"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        assert (
            "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            == "The capital of France"
        )
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4

        auth = {"Authorization": f"Bearer {key}"}

        def runner_row() -> dict:
            (row,) = httpx.get(f"{cp.url}/api/runners", headers=auth, timeout=5).json()["data"]
            return row

        # The runner reports status every 2 s: wait for the one that counts both answers.
        wait_until(
            lambda: runner_row()["served_total"] == 2, 20, "served_total 2 in GET /api/runners"
        )
        row = runner_row()
        assert row["connected"] and row["models"] == [MODEL]
        assert (
            row["capacity"] + row["headroom"] == 8
        )  # the slots: --parallel 8, fair headroom apart

        def runner_metrics() -> str:
            return httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text

        # vLLM's own counters, read from its /metrics by the runner and exported with its own.
        wait_until(
            lambda: "outpost_runner_engine_requests_total" in runner_metrics(),
            20,
            "the engine's request counter in the runner's /metrics",
        )
        lines = {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in runner_metrics().splitlines()
            if line.startswith("outpost_runner_engine_")
        }
        labels = f'{{engine="attach",model="{MODEL}"}}'
        assert lines[f"outpost_runner_engine_requests_total{labels}"] == 5444
        assert lines[f"outpost_runner_engine_prompt_tokens_total{labels}"] == 206872
        assert lines[f"outpost_runner_engine_generation_tokens_total{labels}"] == 696832
        assert lines["outpost_runner_engine_running"] == 0
    finally:
        runner.stop()
        cp.stop()
