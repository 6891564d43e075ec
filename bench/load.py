"""Shared parts of the overhead, tunnel and scale benchmarks.

* :func:`stream_request` — a deliberately cheap streaming HTTP client (asyncio
  streams + llama.cpp's own C parser, ``httptools``, as uvicorn uses). On a
  2-core machine the load generator competes with the system under test for
  CPU; ``httpx`` spends several times more per chunk, so it would inflate the
  very overhead being measured. Every path in a comparison uses this client.
* :class:`ProcWatch` — CPU seconds and RSS of processes over a window.
* :func:`machine` — the one-line machine description every table carries.
* :func:`write_section` — rewrite one marked section of bench/README.md.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import signal
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import httptools
import psutil

__all__ = [
    "Conn",
    "ProcWatch",
    "Sample",
    "cpu_model",
    "chat_body",
    "fmt_ms",
    "load_at_end",
    "machine",
    "pct",
    "run_async",
    "stream_request",
    "versions",
    "write_section",
]

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "bench" / "README.md"


@dataclass
class Sample:
    """One request as the client saw it. Times are ``time.perf_counter()`` seconds."""

    sent: float
    status: int = 0
    ttft: float | None = None  # request written → first content token read
    gaps: list[float] = field(default_factory=list)  # between consecutive content tokens
    tokens: int = 0
    done: float = 0.0
    error: str | None = None
    request_id: str | None = None  # the control plane's x-request-id: its request record's id

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == 200 and self.tokens > 0


class _Parser:
    """httptools callbacks for one response; counts SSE content tokens as they arrive."""

    def __init__(self, sample: Sample) -> None:
        self.s = sample
        self.now = 0.0
        self.last: float | None = None
        self.complete = False
        self.keep_alive = True
        self.body = bytearray()
        self.p = httptools.HttpResponseParser(self)
        self._tail = b""  # an SSE event split across two reads

    def on_body(self, data: bytes) -> None:
        if self.s.status != 200:
            self.body += data
            return
        data = self._tail + data
        cut = data.rfind(b"\n\n")
        whole, self._tail = (data[: cut + 2], data[cut + 2 :]) if cut >= 0 else (b"", data)
        # One token per content chunk; the role chunk carries content null.
        n = whole.count(b'"content":"') - whole.count(b'"content":""')
        if n <= 0:
            if b'"error"' in whole and b"data: " in whole:
                self.s.error = whole[:200].decode(errors="replace")
            return
        if self.last is None:
            self.s.ttft = self.now - self.s.sent
        else:
            self.s.gaps.append(self.now - self.last)
        self.s.gaps.extend([0.0] * (n - 1))  # several tokens in one read arrived together
        self.last = self.now
        self.s.tokens += n

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"x-request-id":
            self.s.request_id = value.decode()

    def on_headers_complete(self) -> None:
        self.s.status = self.p.get_status_code()
        self.keep_alive = self.p.should_keep_alive()

    def on_message_complete(self) -> None:
        self.complete = True


class Conn:
    """One keep-alive connection, reopened when the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            self.host, self.port, limit=1 << 20
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def stream_request(
    conn: Conn,
    path: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    timeout: float = 300.0,
    record: list[Sample] | None = None,
) -> Sample:
    """POST ``body`` and read the (streamed) response to its end.

    With ``record``, the sample is appended before the request is sent and
    filled in as tokens arrive, so a request cancelled mid-stream still
    counts what it received.
    """
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {conn.host}:{conn.port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Accept: text/event-stream",
    ]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    raw = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    for attempt in (0, 1):  # a keep-alive connection the server closed meanwhile: reopen once
        if conn.writer is None:
            await conn.open()
        sample = Sample(sent=time.perf_counter())
        if record is not None:
            record.append(sample)
        parser = _Parser(sample)
        try:
            assert conn.writer is not None and conn.reader is not None
            conn.writer.write(raw)
            async with asyncio.timeout(timeout):
                while not parser.complete:
                    data = await conn.reader.read(1 << 16)
                    parser.now = time.perf_counter()
                    if not data:
                        raise ConnectionError("server closed the connection")
                    parser.p.feed_data(data)
        except (ConnectionError, httptools.HttpParserError, TimeoutError) as exc:
            conn.close()
            if attempt == 0 and sample.status == 0 and not isinstance(exc, TimeoutError):
                if record is not None:
                    record.remove(sample)
                continue
            sample.error = f"{type(exc).__name__}: {exc}"[:200]
        sample.done = time.perf_counter()
        if not parser.keep_alive:
            conn.close()
        if sample.status and sample.status != 200 and sample.error is None:
            sample.error = (
                f"HTTP {sample.status}: {bytes(parser.body[:200]).decode(errors='replace')}"
            )
        return sample
    raise AssertionError("unreachable")


def chat_body(
    model: str,
    max_tokens: int,
    prompt: str = "Write a short story about a lighthouse.",
    **extra: object,
) -> bytes:
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "stream": True,
            "temperature": 0,
            **extra,
        }
    ).encode()


def run_async(coro):
    """Run on uvloop when installed: the control plane does (uvicorn's default), and it is cheaper.

    SIGTERM becomes SystemExit, so the ``finally`` blocks that stop the engine, control
    plane and runners run when bench/run.py stops a benchmark at its time limit.
    """
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


# --- statistics ------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


# --- processes -------------------------------------------------------------------------


class ProcWatch:
    """CPU seconds used and peak RSS of some processes (and their children) between start and
    stop."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._cpu0: dict[str, float] = {}
        self._t0 = 0.0
        self.cpu_s: dict[str, float] = {}
        self.rss_mb: dict[str, float] = {}
        self.wall_s = 0.0
        self._peak: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def _cpu(p: psutil.Process) -> float:
        t = p.cpu_times()
        return t.user + t.system

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._cpu0 = {n: self._cpu(p) for n, p in self.procs.items()}
        self._peak = {n: p.memory_info().rss / 2**20 for n, p in self.procs.items()}
        try:
            self._task = asyncio.get_running_loop().create_task(self._sample())
        except RuntimeError:
            self._task = None

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            for n, p in self.procs.items():
                try:
                    self._peak[n] = max(self._peak[n], p.memory_info().rss / 2**20)
                except psutil.Error:
                    pass

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.wall_s = time.perf_counter() - self._t0
        for n, p in self.procs.items():
            try:
                self.cpu_s[n] = self._cpu(p) - self._cpu0[n]
                self._peak[n] = max(self._peak[n], p.memory_info().rss / 2**20)
            except psutil.Error:
                self.cpu_s[n] = math.nan
        self.rss_mb = dict(self._peak)

    def cores(self, name: str) -> float:
        """Average cores busy in the window (1.0 = one core fully used)."""
        return self.cpu_s.get(name, math.nan) / self.wall_s if self.wall_s else math.nan


# --- reporting -------------------------------------------------------------------------


def versions(*names: str) -> str:
    out = []
    for n in names:
        try:
            out.append(f"{n} {metadata.version(n)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(out)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows: machine lines start so."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return cpu


def machine() -> str:
    cpu = cpu_model()
    mem = psutil.virtual_memory().total / 2**30
    load = os.getloadavg()[0]
    return (
        f"{cpu}, {os.cpu_count()} logical cores, {mem:.0f} GiB RAM, {platform.system()} "
        f"{platform.release()}; "
        f"Python {platform.python_version()}; "
        + versions(
            "uvicorn",
            "uvloop",
            "httptools",
            "websockets",
            "fastapi",
            "starlette",
            "pydantic",
            "httpx",
            "xllamacpp",
        )
        + f"; 1-minute load average {load:.1f} at the start"
    )


def load_at_end() -> str:
    return f"1-minute load average {os.getloadavg()[0]:.1f} at the end"


def write_section(begin: str, end: str, text: str, path: Path = README) -> None:
    """Replace the text between ``begin`` and ``end`` (append the section if missing); nothing
    else."""
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        updated = head + section + rest.split(end, 1)[1]
    else:
        updated = current.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(updated)


def fmt_ms(seconds: float, digits: int = 1) -> str:
    return "–" if seconds is None or math.isnan(seconds) else f"{seconds * 1000:.{digits}f}"
