"""The runner's metrics and logs: an opt-in loopback listener, and JSON console lines.

The runner opens no inbound port by design (it dials out). ``--metrics-port``
opts into one small listener for a local Prometheus agent or node exporter
sidecar, bound to ``--metrics-host`` (127.0.0.1 by default). It answers
``GET /metrics`` and nothing else, one request per connection; every number
is read from the agent at scrape time on the event loop's thread, so the
request path pays only for one histogram observation per stream.
"""

from __future__ import annotations

import asyncio
import io
import logging
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collections.abc import Iterator

    from outpost.runner.agent import Agent
    from outpost.runner.streams import OutboundStream

__all__ = ["ConsoleToLog", "MetricsServer", "RunnerMetrics"]

log = logging.getLogger("outpost.runner.metrics")

_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_MAX_REQUEST_BYTES = 8 * 1024
_READ_TIMEOUT_S = 5.0


class RunnerMetrics:
    """Per-stream counters (observed by the tunnel) plus the agent's state, read when scraped."""

    def __init__(self, agent: Agent) -> None:
        self.registry = CollectorRegistry()
        for collector in (
            PROCESS_COLLECTOR,
            PLATFORM_COLLECTOR,
            GC_COLLECTOR,
        ):  # process_*, python_*
            self.registry.register(collector)
        self.requests = Counter(
            "outpost_runner_requests",
            "Streams served, by endpoint and outcome (ok, error, cancelled).",
            ["path", "outcome"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "outpost_runner_request_duration_seconds",
            "From request.v1 to the end of the stream (engine time included).",
            ["path"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_AgentCollector(agent))

    def observe_stream(self, out: OutboundStream, seconds: float, outcome: str) -> None:
        path = out.request.path  # validated by the protocol: /v1/[a-z/]+, a handful of values
        self.requests.labels(path, outcome).inc()
        self.duration.labels(path).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _AgentCollector(Collector):
    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def collect(self) -> Iterator[Metric]:
        yield from self._tunnel()
        yield from self._engines()

    def _tunnel(self) -> Iterator[Metric]:
        tunnel = self._agent.tunnel
        yield GaugeMetricFamily(
            "outpost_runner_tunnel_connections_configured",
            "Tunnel connections this runner keeps (--connections).",
            value=self._agent.settings.connections,
        )
        yield GaugeMetricFamily(
            "outpost_runner_tunnel_connections",
            "Tunnel connections up now.",
            value=tunnel.open_connections if tunnel else 0,
        )
        yield GaugeMetricFamily(
            "outpost_runner_draining",
            "1 while the runner drains for shutdown.",
            value=int(bool(tunnel and tunnel.draining)),
        )
        yield GaugeMetricFamily(
            "outpost_runner_streams_in_flight",
            "Request streams being served now.",
            value=tunnel.active_streams if tunnel else 0,
        )
        yield CounterMetricFamily(
            "outpost_runner_tunnel_connects",
            "Handshakes completed (the first connections and every reconnect).",
            value=tunnel.connects if tunnel else 0,
        )
        yield CounterMetricFamily(
            "outpost_runner_tunnel_disconnects",
            "Handshaken connections that went away.",
            value=tunnel.disconnects if tunnel else 0,
        )
        frames = CounterMetricFamily(
            "outpost_runner_tunnel_frames", "Tunnel frames, by direction.", labels=["direction"]
        )
        sizes = CounterMetricFamily(
            "outpost_runner_tunnel_bytes",
            "Tunnel frame bytes (JSON text), by direction.",
            labels=["direction"],
        )
        for direction in ("sent", "received"):
            frames.add_metric([direction], tunnel.frames[direction] if tunnel else 0)
            sizes.add_metric([direction], tunnel.bytes[direction] if tunnel else 0)
        yield frames
        yield sizes

    def _engines(self) -> Iterator[Metric]:
        fleet = self._agent.fleet
        healthy = GaugeMetricFamily(
            "outpost_runner_engine_healthy",
            "1 when the engine answers its health check.",
            labels=["engine", "model"],
        )
        restarts = CounterMetricFamily(
            "outpost_runner_engine_restarts",
            "Engine processes restarted by the supervisor.",
            labels=["engine", "model"],
        )
        # The engine's own counters where its metrics have them (vLLM): requests it served, tokens.
        counters = {
            field: CounterMetricFamily(
                f"outpost_runner_engine_{name}", doc, labels=["engine", "model"]
            )
            for field, name, doc in (
                (
                    "requests_finished",
                    "requests",
                    "Requests the engine reports answered to the end.",
                ),
                ("prompt_tokens", "prompt_tokens", "Prompt tokens the engine reports processed."),
                ("generation_tokens", "generation_tokens", "Tokens the engine reports generated."),
            )
        }
        for e in fleet.engines:
            labels = [e.adapter.name, e.label]
            healthy.add_metric(labels, int(e.healthy))
            restarts.add_metric(labels, e.supervisor.restarts)
            for field, family in counters.items():
                if (value := getattr(e.load, field)) is not None:
                    family.add_metric(labels, value)
        yield healthy
        yield restarts
        yield from (family for family in counters.values() if family.samples)
        load = fleet.load
        yield GaugeMetricFamily(
            "outpost_runner_engine_running",
            "Requests the engines report running.",
            value=load.running,
        )
        yield GaugeMetricFamily(
            "outpost_runner_engine_waiting",
            "Requests the engines report queued.",
            value=load.waiting,
        )
        if load.kv_cache_usage is not None:
            yield GaugeMetricFamily(
                "outpost_runner_engine_kv_cache_usage",
                "KV cache in use (0-1), as the engine reports it.",
                value=load.kv_cache_usage,
            )


class MetricsServer:
    """``GET /metrics`` on one address; anything else is a 404; one request per connection."""

    def __init__(self, metrics: RunnerMetrics, host: str, port: int) -> None:
        self._metrics = metrics
        self._host, self._port = host, port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)
        log.info("metrics on http://%s:%d/metrics", self._host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT_S)
            if len(head) > _MAX_REQUEST_BYTES:
                raise ValueError("request head too large")
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            if method in ("GET", "HEAD") and target.split("?", 1)[0] == "/metrics":
                body = self._metrics.render()
                status, ctype = "200 OK", CONTENT_TYPE_LATEST
            else:
                body, status, ctype = (
                    b"not found: the runner serves only GET /metrics\n",
                    "404 Not Found",
                    "text/plain",
                )
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode("latin-1")
            )
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ValueError,
            ConnectionError,
        ):
            pass  # a port scan or a slow client: nothing to answer
        finally:
            writer.close()


class ConsoleToLog(io.TextIOBase):
    """A file for rich's Console that turns each printed line into a log record.

    With ``--log-format json`` the runner's human progress lines ("engine
    ready", the identity fingerprint…) become JSON log lines like the rest, so
    stderr stays one object per line.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: Any) -> int:
        lines = (self._partial + str(text)).split("\n")
        self._partial = lines.pop()
        for line in lines:
            if line.strip():
                self._log.info("%s", line.rstrip())
        return len(text)

    def flush(self) -> None:
        if self._partial.strip():
            self._log.info("%s", self._partial.rstrip())
        self._partial = ""
