"""One request's life, from acceptance to its committed record, as one object.

:class:`RequestLife` owns what a request holds while it runs: the router's
count of it on a runner, its admission slot, the runner's stream, and its
record. Each is taken by one method and given back in one place,
:meth:`RequestLife.settle`, run once, whatever ended the request. The request
path enters it as an async context manager: serve_inference while it looks
for a runner (and reads a whole answer), then the SSE relay while it streams
one; how the ``async with`` exits decides the record (docs/api.md).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from outpost.control_plane.db.rows import RequestRow
from outpost.control_plane.errors import ApiError
from outpost.control_plane.observability.tracing import request_trace
from outpost.control_plane.openai.call import InferenceCall
from outpost.control_plane.openai.disconnect import ClientGone, gone_error
from outpost.control_plane.openai.usage import clamp_usage
from outpost.control_plane.routing.admission import Slot
from outpost.control_plane.routing.routing import RouteDecision
from outpost.control_plane.state import AppState
from outpost.control_plane.tunnel.hub import ConnectedRunner
from outpost.control_plane.tunnel.link import RunnerLink, RunnerStream
from outpost.sdk.protocol import EndFrame, ResponseStartFrame, Usage

__all__ = ["Phase", "RequestLife", "bounded_usage", "spawn"]

log = logging.getLogger("outpost.serving")
# After the client has had its whole answer, how long the runner's end frame (usage) may take.
END_AFTER_ANSWER_S = 10.0
_background: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any]) -> None:
    """Run work that must finish even if the client's task is cancelled (reset a runner's
    stream)."""
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)  # keep a reference so it is not GC'd
    task.add_done_callback(_background.discard)


def bounded_usage(usage: Usage, call: InferenceCall, context_length: int | None = None) -> Usage:
    """Runner output is untrusted: usage cannot exceed what the request allows
    (:func:`clamp_usage`)."""
    bounded = clamp_usage(
        usage, body_chars=len(call.body), max_tokens=call.usage_cap, context_length=context_length
    )
    if bounded != usage:
        log.warning(
            "request %s: runner reported usage %s beyond the request's bounds; clamped",
            call.request_id,
            usage.model_dump(),
        )
    return bounded


class Phase(enum.Enum):
    QUEUED = "queued"  # accepted: routing and admission look for a runner
    DISPATCHED = "dispatched"  # a runner has the request; nothing has come back yet
    STREAMING = "streaming"  # the runner answers; the response is going out
    ANSWERED = "answered"  # the runner's part is over (or the client has the whole answer)
    SETTLED = "settled"  # runner and slot freed, priced, counted, record submitted


@dataclass
class _Attempt:
    """One runner tried: what must be given back if it fails or when the request ends."""

    runner: ConnectedRunner
    link: RunnerLink | None = None
    stream: RunnerStream | None = None


class RequestLife:
    def __init__(self, state: AppState, call: InferenceCall) -> None:
        self.state, self.call = state, call
        self.phase = Phase.QUEUED
        # What the record says, filled in as the request goes.
        self.runner_id: str | None = None
        self.deployment_id: str | None = None  # the deployment whose replica served it, if one
        self.attempts = 0
        self.status = "ok"
        self.http_status = 200
        self.error_type: str | None = None
        self.usage = Usage()
        self.ttft_ms: float | None = None
        self.bytes_out = 0
        self.decision: RouteDecision | None = None  # the router's last answer: errors explain it
        self.start: ResponseStartFrame | None = None
        self._context_length: int | None = None  # the served model's window: no usage is longer
        self._queued = False  # the runner was full when the request was sent (teaches the router)
        self._end: EndFrame | None = None
        self._attempt: _Attempt | None = None
        self._slot: Slot | None = (
            None  # the runner slot admission granted: queue wait, engine share, cost
        )
        self._record: asyncio.Future[bool] | None = None
        # Spans for each step (observability/tracing.py); a shared no-op unless traces are on.
        served = call.model if state.hub.is_served(call.model) else "other"
        self.trace = request_trace(call, served)

    # --- the request path reports what happened -------------------------------------

    def attempt(self, runner: ConnectedRunner) -> None:
        """A runner is tried: counted on it from here, queued or running (routing sees the
        queue)."""
        self.state.router.started(runner)
        self.attempts += 1
        self._attempt = _Attempt(runner)
        self.trace.attempt(runner.runner_id)

    def admitted(self, slot: Slot) -> None:
        self._slot = slot
        self.trace.admitted(slot.queue_wait_s)

    def dispatched(self, link: RunnerLink, stream: RunnerStream) -> None:
        assert self._attempt is not None
        self._attempt.link, self._attempt.stream = link, stream
        self.phase = Phase.DISPATCHED
        self.trace.dispatched()

    def fail_over(self) -> None:
        """The runner tried failed before the client saw anything: give it back, try another."""
        self._end_attempt("failover")
        self.phase = Phase.QUEUED
        self.trace.fail_over()

    def opened(self, start: ResponseStartFrame, queued: bool) -> None:
        """The runner's first byte: the response goes out from here, no failover after it."""
        attempt = self._attempt
        assert attempt is not None and self._slot is not None
        runner = attempt.runner
        self.phase, self.start = Phase.STREAMING, start
        self.trace.opened(start.status)
        self.runner_id = runner.runner_id
        self.ttft_ms = (time.monotonic() - self.call.started) * 1000
        self._queued = queued or self._slot.queue_wait_s > 0.001
        served = runner.serves(self.call.model)
        self._context_length = served.context_length if served is not None else None
        # An engine's 4xx is the client's mistake and stays a 4xx; its 5xx is the engine's, a 502
        # engine_error.
        self.http_status = start.status if start.status < 500 else 502
        if start.status < 400:
            self.state.router.served(self.call.route, runner.runner_id)

    @property
    def relays(self) -> bool:
        """The answer streams to the client as it comes (SSE): its status went out with the
        headers."""
        return self.call.stream and self.start is not None and self.start.status == 200

    @property
    def answered_in_full(self) -> bool:
        return self.phase is Phase.ANSWERED

    def answered(self) -> None:
        """The client has (or will have, with the runner's end) the whole answer."""
        self.phase = Phase.ANSWERED

    def ended(self, end: EndFrame) -> None:
        """The runner's end frame: its usage, bounded by what the request allows."""
        self._end, self.phase = end, Phase.ANSWERED
        check = self.call.usage_from_receipt
        usage = (
            end.usage if check is None else check(end)
        )  # a refused receipt is logged by the check
        if usage is None:
            if check is not None:
                self.error_type = self.error_type or "receipt_rejected"
            return
        self.usage = self._bounded(usage)

    def failed(self, error_type: str) -> None:
        """The request ends in an error the response itself reports (an SSE event, an envelope)."""
        self.status, self.error_type = "error", error_type

    def lost(self) -> None:
        """The runner went away mid-answer: the relay tells the client; the record says so."""
        self.failed("runner_lost")
        self.phase = Phase.ANSWERED

    # --- the one place a request ends --------------------------------------------------

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.phase is Phase.SETTLED:
            return
        if exc is None:
            if (
                self.phase is not Phase.STREAMING
            ):  # else the response body relays the rest, in its own ``with``
                await self._settle_durably()
            return
        if isinstance(exc, ApiError):
            self.status, self.http_status, self.error_type = "error", exc.status, exc.code
            if self.phase in (Phase.QUEUED, Phase.DISPATCHED):
                self.settle()  # refused, not answered: nothing to hold back for the commit
            else:
                await self._settle_durably()  # the error goes out once the record is committed
            return
        if self.phase is Phase.ANSWERED and self._end is None:
            # The client read the whole answer and left before the runner's end frame (with the
            # usage): the request succeeded; wait for that frame off the client's task.
            spawn(self._finish_answered())
            return
        self._end_early(gone=isinstance(exc, ClientGone))

    def _end_early(self, *, gone: bool) -> None:
        """The client left (``gone``) or the task was cancelled before the request ended."""
        if self.phase in (Phase.QUEUED, Phase.DISPATCHED):
            self._end_attempt("client disconnected")
            if not gone:  # cancelled before the first byte: the slot must not leak; no record
                self._release()
                self.phase = Phase.SETTLED
                self.trace.abandoned()
                return
            # Still queued at the runner's holder (no runner recorded), it was never dispatched:
            # an error, as in a local queue.
            status = "cancelled" if self.runner_id is not None else "error"
            self.status, self.http_status, self.error_type = status, 499, "client_disconnected"
        else:
            self.status, self.error_type = "cancelled", "client_disconnected"
            if not self.relays:  # nothing went out: the record says who stopped it
                self.http_status = 499
        self.settle()
        if gone and not self.relays:
            raise gone_error() from None

    async def close(self) -> None:
        """The streamed response's background task: settles a relay whose body never ran."""
        if self.phase is Phase.STREAMING:
            self.status, self.error_type = "cancelled", "client_disconnected"
            self.settle()

    def settle(self) -> asyncio.Future[bool]:
        """Give everything back, price, count and submit the record: once, whatever ended the
        request."""
        if self._record is not None:
            return self._record
        self.phase = Phase.SETTLED
        self.trace.settling()
        self._release()
        self._observe()
        self._count()
        if self.call.on_settled is not None:
            self.call.on_settled(self.usage)
        # The writer commits it with its audit event, in a batch (services/record_writer.py).
        self._record = self.state.records.submit(self._as_record())
        self.trace.settled(
            status=self.status,
            http_status=self.http_status,
            error_type=self.error_type,
            usage=self.usage,
            attempts=self.attempts,
            runner_id=self.runner_id,
        )
        return self._record

    async def _settle_durably(self) -> None:
        """Settle and wait (bounded) until the record and its audit event are committed: the
        client's end of response comes after it, so an answered request survives a crash
        (docs/audit.md)."""
        await self.state.records.wait(self.settle(), self.state.settings.records_commit_wait_s)

    async def _finish_answered(self) -> None:
        stream = self._attempt.stream if self._attempt is not None else None
        try:
            while stream is not None:
                ev = await stream.next_event(END_AFTER_ANSWER_S)
                if isinstance(ev, EndFrame):
                    self.ended(ev)
                    break
                if not isinstance(ev, str | ResponseStartFrame):
                    break  # the runner went away after answering: the answer stands, without usage
        except Exception:  # noqa: BLE001 - a timeout or a dropped stream: stop the engine, keep the record
            self.status, self.error_type = "cancelled", "client_disconnected"
        finally:
            self.settle()

    def _end_attempt(self, reason: str) -> None:
        """Give back the runner tried: its router count, its stream, and its slot unless it did
        work."""
        attempt, self._attempt = self._attempt, None
        if attempt is None:
            return
        self.state.router.finished(attempt.runner)
        stream, link = attempt.stream, attempt.link
        answering = self.start is not None  # the runner answered: its stream may have ended already
        if stream is not None and link is not None and not (answering and stream.finished):
            link.close_stream(stream)
            spawn(stream.cancel(reason))  # the engine stops too
        slot = self._slot
        if slot is None or answering:
            return
        if stream is not None and slot.started and reason != "failover":
            self.runner_id = (
                attempt.runner.runner_id
            )  # dispatched: the engine worked, the slot is paid for
        # refused by, gone while queued at, or failed before the runner answered: nothing is billed
        else:
            slot.abandon()
            self._slot = None

    def _release(self) -> None:
        self._end_attempt("client disconnected")
        if self._slot is not None:
            self._slot.finish(self.usage, self.ttft_ms)

    # --- what the record, the router and the metrics learn ------------------------------

    def _bounded(self, usage: Usage) -> Usage:
        return bounded_usage(usage, self.call, self._context_length)

    def _observe(self) -> None:
        """Teach the router this runner's speed from a request that completed normally."""
        if (
            self.status != "ok"
            or self.start is None
            or self.start.status >= 400
            or self.ttft_ms is None
        ):
            return
        assert self.runner_id is not None
        self.state.router.observe(
            self.runner_id,
            prompt_tokens=self.usage.prompt_tokens,
            completion_tokens=self.usage.completion_tokens,
            ttft_s=self.ttft_ms / 1000,
            total_s=time.monotonic() - self.call.started,
            queued=self._queued,
            streamed=self.call.stream,
        )

    def _count(self) -> None:
        """The request is over: Prometheus counters and one log line
        (control_plane/observability)."""
        c, state = self.call, self.state
        rejected = self.status == "ok" and self.http_status >= 400  # the engine refused it
        status = "error" if rejected else self.status
        code = self.error_type or ("engine_rejected" if rejected else None)
        # Model names come from clients: only served ones become label values.
        model = c.model if state.hub.is_served(c.model) else "other"
        state.metrics.observe_inference(
            endpoint=c.path,
            model=model,
            tenant_id=c.tenant_id,
            outcome=status,
            code=code,
            ttft_s=None if self.ttft_ms is None else self.ttft_ms / 1000,
            prompt_tokens=self.usage.prompt_tokens,
            completion_tokens=self.usage.completion_tokens,
        )
        log.info(
            "%s %s: %s%s, runner %s, %d+%d tokens, %.0f ms, record %s",
            c.path,
            model,
            status,
            f" ({code})" if code else "",
            self.runner_id or "-",
            self.usage.prompt_tokens,
            self.usage.completion_tokens,
            (time.monotonic() - c.started) * 1000,
            c.request_id,
        )

    def _as_record(self) -> RequestRow:
        c = self.call
        return RequestRow(
            id=c.request_id,
            tenant_id=c.tenant_id,
            api_key_id=c.api_key_id,
            model=c.model,
            runner_id=self.runner_id,
            deployment_id=self.deployment_id,
            endpoint=c.path,
            stream=c.stream,
            e2e=c.sealed,
            status=self.status,
            http_status=self.http_status,
            error_type=self.error_type,
            prompt_tokens=self.usage.prompt_tokens,
            completion_tokens=self.usage.completion_tokens,
            attempts=self.attempts,
            ttft_ms=self.ttft_ms,
            latency_ms=(time.monotonic() - c.started) * 1000,
            bytes_out=self.bytes_out,
            **(self._slot.record_fields() if self._slot is not None else {}),
        )
