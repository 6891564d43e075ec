"""What a request's trace costs the control plane, traces off and on (issue 26).

The request path reports nine steps to its trace (control_plane/observability/tracing.py):
start, attempt, admitted, dispatched, opened, settling, settled, and the request frame's
traceparent. Off, that is one shared no-op object; on, seven spans through the
OpenTelemetry SDK's batch processor to an exporter that drops them (the cost of export
itself is the collector's network, not the request path's). In process, no network.

    .venv/bin/python bench/bench_tracing.py [--repeat N] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import _repo  # noqa: F401 (puts the checkout on sys.path)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from bench.load import machine, write_section
from outpost.control_plane.observability.tracing import request_trace
from outpost.control_plane.openai.call import InferenceCall
from outpost.control_plane.routing.routing import RouteRequest
from outpost.sdk.otel import use_provider
from outpost.sdk.protocol import Usage

BEGIN, END = "<!-- tracing:begin -->", "<!-- tracing:end -->"


class _Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def one_request(call: InferenceCall, usage: Usage) -> None:
    trace = request_trace(call, "m")
    trace.attempt("run_a")
    trace.admitted(0.0)
    trace.dispatched()
    trace.opened(200)
    trace.settling()
    trace.settled(
        status="ok", http_status=200, error_type=None, usage=usage, attempts=1, runner_id="run_a"
    )


def measure(repeat: int) -> float:
    """Median microseconds per request over 20 batches of ``repeat`` requests."""
    call = InferenceCall(
        tenant_id="t", api_key_id=None, route=RouteRequest(model="m"), body="{}", stream=True
    )
    usage = Usage(prompt_tokens=10, completion_tokens=20)
    for _ in range(200):
        one_request(call, usage)  # warm-up
    batches = []
    for _ in range(20):
        t0 = time.perf_counter()
        for _ in range(repeat):
            one_request(call, usage)
        batches.append((time.perf_counter() - t0) / repeat * 1e6)
    return statistics.median(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=500)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    use_provider(None)
    off = measure(args.repeat)
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Drop(), max_queue_size=1 << 16))
    use_provider(provider)
    on = measure(args.repeat)
    use_provider(None)
    provider.shutdown()
    text = f"""## Trace cost per request (`bench/bench_tracing.py`)

Machine: {machine()}.
Taken: {time.strftime("%Y-%m-%d %H:%M", time.gmtime())} UTC. Median of 20 batches of
{args.repeat} requests' trace calls, in process; on: the SDK's batch processor and an
exporter that drops the spans.
Reproduce: `.venv/bin/python bench/bench_tracing.py`.

| traces | µs per request |
|---|---:|
| off (no `OTEL_*` variables) | {off:.2f} |
| on | {on:.1f} |
"""
    print(text)
    if not args.no_write:
        write_section(BEGIN, END, text)


if __name__ == "__main__":
    main()
