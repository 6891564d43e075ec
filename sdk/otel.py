"""OpenTelemetry tracing from the standard ``OTEL_*`` variables (docs/deploy.md "Traces").

Both the control plane and the runner call :func:`setup_tracing` once at start. Tracing is
opt-in: without ``OTEL_TRACES_EXPORTER`` or an OTLP endpoint in the environment nothing is
built and :func:`tracer` answers None, so the request path pays one ``is None`` test per
step and no span objects. The exporter reads its own variables (endpoint, headers, timeout,
compression), as every OpenTelemetry SDK does; only the choice of exporter is made here.
"""

from __future__ import annotations

import contextvars
import logging
import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

__all__ = [
    "TRACEPARENT",
    "setup_tracing",
    "shutdown_tracing",
    "tracer",
    "tracing_wanted",
    "use_provider",
]

log = logging.getLogger("outpost.tracing")
_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None
#: The span a request frame sent from this task belongs under, as a W3C ``traceparent``: the
#: control plane's request path sets it, the tunnel link puts it in ``request.v1``.
TRACEPARENT: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "outpost_traceparent", default=None
)


def tracing_wanted(env: Mapping[str, str]) -> bool:
    """Traces are on when an exporter or an OTLP endpoint is named, and the SDK not disabled."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters == "none":
        return False
    return bool(exporters) or any(env.get(name, "").strip() for name in _ENDPOINT_VARS)


def _exporters(env: Mapping[str, str]) -> list[SpanExporter]:
    names = [n.strip() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",")]
    out: list[SpanExporter] = []
    for name in [n for n in names if n and n != "none"] or ["otlp"]:
        if name == "otlp":
            protocol = env.get(
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
            )
            if protocol.strip() not in ("", "http/protobuf"):
                # Only the HTTP exporter ships (one dependency tree, no gRPC stack on a runner).
                log.warning("OTLP protocol %r is not supported; using http/protobuf", protocol)
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            out.append(OTLPSpanExporter())
        elif name == "console":
            out.append(ConsoleSpanExporter())
        else:
            log.warning("unknown OTEL_TRACES_EXPORTER %r: ignored", name)
    return out


def setup_tracing(service_name: str, env: Mapping[str, str] | None = None) -> bool:
    """Build the tracer provider if the environment asks for traces; True when it did."""
    env = os.environ if env is None else env
    if not tracing_wanted(env):
        return False
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over the default name (Resource.create
    # reads them); the default tells the control plane from a runner.
    attrs = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    provider = TracerProvider(resource=Resource.create(attrs))
    for exporter in _exporters(env):
        provider.add_span_processor(BatchSpanProcessor(exporter))
    use_provider(provider)
    log.info("OpenTelemetry traces on (%s)", service_name)
    return True


def use_provider(provider: TracerProvider | None) -> None:
    """Trace through ``provider`` (None: tracing off). Tests pass one with an in-memory
    exporter; the global provider is left alone so libraries keep their own choice."""
    global _provider, _tracer
    _provider = provider
    _tracer = None if provider is None else provider.get_tracer("outpost")


def tracer() -> trace.Tracer | None:
    """The tracer, or None when traces are off (the request path then builds no spans)."""
    return _tracer


def shutdown_tracing() -> None:
    """Export what is queued and stop (the runner leaves through ``os._exit``)."""
    global _provider, _tracer
    if _provider is not None:
        _provider.shutdown()
    _provider, _tracer = None, None
