"""Streams behind a real reverse proxy: headers at once, keep-alives while queued (issue 23).

nginx (Debian's package, run unprivileged from its own prefix in a temporary
directory) fronts a real control plane whose runner has one llama.cpp slot,
with ``proxy_read_timeout 2s`` and its default buffering. A streamed request
queued behind a running one for longer than that survives: it has its headers
at once and an SSE ``: keep-alive`` comment every half second. An unstreamed
request queued as long is cut by nginx (504): the proxy's timeout is real.
So does one of several choices (``n`` = 2). After the headers, an error (here
the fair queue's timeout) is an SSE error event in OpenAI's envelope, then
``[DONE]``.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from harness.processes import free_port, one_slot_stack, tenant_records, wait_until

MODEL = "smollm2"
PROXY_READ_TIMEOUT_S = 2
HELD_S = 3.5  # how long the busy stream holds the one slot: beyond the proxy's timeout
QUEUE_TIMEOUT_S = 12  # the fair-queue timeout: beyond HELD_S and the queued work after it

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@contextmanager
def nginx(tmp: Path, upstream_port: int) -> Iterator[str]:
    """nginx on a free port in front of ``upstream_port``; yields its URL."""
    prefix = tmp / "nginx"
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""
daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/logs/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream_port};
            proxy_http_version 1.1;
            proxy_read_timeout {PROXY_READ_TIMEOUT_S}s;
        }}
    }}
}}
"""
    )
    proc = subprocess.Popen(
        [NGINX, "-p", str(prefix), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: _listening(port), 10, "nginx to listen")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Env:
    def __init__(self, cp_url: str, cp_port: int, proxy: str, key: str, db: str) -> None:
        self.cp_url, self.cp_port, self.proxy, self.key, self.db = cp_url, cp_port, proxy, key, db

    def in_flight(self) -> int:
        runners = httpx.get(
            f"{self.cp_url}/api/runners",
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=10,
        ).json()["data"]
        return sum(r["in_flight"] for r in runners)

    def hold_the_slot(self) -> socket.socket:
        """A long stream straight to the control plane, generating: the one slot is taken."""
        wait_until(lambda: self.in_flight() == 0, 30, "a free slot")
        payload = json.dumps(
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "Write a very long story."}],
                "max_tokens": 3000,
                "ignore_eos": True,
                "stream": True,
            }
        ).encode()
        sock = socket.create_connection(("127.0.0.1", self.cp_port), timeout=60)
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: outpost\r\n"
            b"Content-Type: application/json\r\n"
            + f"Authorization: Bearer {self.key}\r\n".encode()
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        seen = b""
        while b'"content"' not in seen:
            chunk = sock.recv(65536)
            assert chunk, seen[:300]
            seen += chunk
        return sock


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("proxy")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OUTPOST_STREAM_HEADERS_AFTER_S", "0.2")
        mp.setenv("OUTPOST_STREAM_KEEPALIVE_S", "0.5")
        mp.setenv("OUTPOST_SCHEDULER_QUEUE_TIMEOUT_S", str(QUEUE_TIMEOUT_S))
        with one_slot_stack(tmp, 2048) as (cp, _runner, _rid, url):
            key = cp.api_key()
            with nginx(tmp, cp.port) as proxy:
                yield Env(cp.url, cp.port, proxy, key, url)


class Reader(threading.Thread):
    """Reads one request's raw response through the proxy, line by line, with arrival times."""

    def __init__(self, url: str, key: str, body: dict) -> None:
        super().__init__(daemon=True)
        self.url, self.key, self.body = url, key, body
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.lines: list[tuple[float, str]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.stream(
                "POST",
                f"{self.url}/v1/chat/completions",
                json=self.body,
                headers={"Authorization": f"Bearer {self.key}"},
                timeout=120,
            ) as response:
                self.status, self.headers = response.status_code, dict(response.headers)
                for line in response.iter_lines():
                    self.lines.append((time.monotonic(), line))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def text(self) -> list[str]:
        return [line for _, line in self.lines]


def _chat(**fields: object) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **fields}


def test_a_queued_stream_survives_the_proxy_read_timeout(env: Env) -> None:
    busy = env.hold_the_slot()
    started = time.monotonic()
    stream = Reader(env.proxy, env.key, _chat(max_tokens=8, stream=True))
    whole = Reader(env.proxy, env.key, _chat(max_tokens=8))  # the control: not streamed
    stream.start()
    whole.start()
    try:
        time.sleep(HELD_S)  # both queue behind the busy stream, beyond the proxy's timeout
        assert stream.is_alive() and stream.status == 200, (stream.status, stream.error)
        assert ": keep-alive" in stream.text()
        whole.join(30)
        assert whole.status == 504, (whole.status, whole.error)  # nginx cut the silent one
    finally:
        busy.close()  # the slot frees: the queued stream is admitted
    stream.join(120)
    assert stream.error is None and stream.status == 200
    text = stream.text()
    events = [json.loads(line[6:]) for line in text if line.startswith("data: {")]
    assert events and "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
    assert text[-1] == "data: [DONE]" or text[-2:] == ["data: [DONE]", ""]
    assert stream.headers["content-type"].startswith("text/event-stream")
    first_data = next(t for t, line in stream.lines if line.startswith("data: {"))
    assert first_data - started > PROXY_READ_TIMEOUT_S  # it did wait longer than the proxy's limit
    # Keep-alives came at least once per proxy timeout (or nginx would have cut it).
    kept = [t for t, line in stream.lines if line == ": keep-alive"]
    assert len(kept) >= 2


def test_a_queued_stream_of_several_choices_survives_too(env: Env) -> None:
    """n = 2: each choice queues as its own request; the merged stream keeps the proxy awake."""
    busy = env.hold_the_slot()
    stream = Reader(env.proxy, env.key, _chat(max_tokens=4, stream=True, n=2))
    stream.start()
    try:
        time.sleep(HELD_S)
        assert stream.is_alive() and stream.status == 200, (stream.status, stream.error)
        assert ": keep-alive" in stream.text()
    finally:
        busy.close()
    stream.join(120)
    assert stream.error is None and stream.headers["x-outpost-choices"] == "2"
    events = [json.loads(line[6:]) for line in stream.text() if line.startswith("data: {")]
    assert all("choices" in e for e in events), events
    assert {c["index"] for e in events for c in e["choices"]} == {0, 1}
    assert [line for line in stream.text() if line][-1] == "data: [DONE]"


def test_the_headers_say_do_not_buffer(env: Env) -> None:
    with httpx.stream(
        "POST",
        f"{env.cp_url}/v1/chat/completions",
        json=_chat(max_tokens=3, stream=True),
        headers={"Authorization": f"Bearer {env.key}"},
        timeout=60,
    ) as response:
        assert response.status_code == 200
        assert response.headers["x-accel-buffering"] == "no"
        assert response.headers["cache-control"] == "no-cache"
        response.read()


def test_an_error_after_the_headers_is_an_sse_error_event(env: Env) -> None:
    busy = env.hold_the_slot()
    try:
        stream = Reader(env.cp_url, env.key, _chat(max_tokens=8, stream=True))
        stream.start()
        stream.join(QUEUE_TIMEOUT_S + 60)
    finally:
        busy.close()
    assert stream.error is None and stream.status == 200  # the headers went before the error
    text = [line for line in stream.text() if line]
    assert ": keep-alive" in text
    errors = [json.loads(line[6:]) for line in text if line.startswith('data: {"error"')]
    assert len(errors) == 1, text
    error = errors[0]["error"]
    assert error["code"] == "queue_timeout" and error["type"] and error["message"]
    assert text[-1] == "data: [DONE]"
    rid = stream.headers["x-request-id"]

    def recorded() -> dict | None:
        return next((r for r in tenant_records(env.db, "default") if r["id"] == rid), None)

    wait_until(lambda: recorded() is not None, 10, "the request's record")
    record = recorded()
    assert record is not None  # the record keeps what the status line could not say
    assert (record["error_type"], record["http_status"]) == ("queue_timeout", 503), record
