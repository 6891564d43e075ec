"""Proxying one OpenAI request to a runner: pick, open a stream, fail over, relay.

A request is retried on the next candidate as long as nothing has reached the
client: the response is held back until the runner's first data frame (or
its end) arrives. After that, a failure becomes an error event and ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import Response
from starlette.background import BackgroundTask

from control_plane.db.models import RequestRecord
from control_plane.errors import ApiError, error_body, sse_error_event
from control_plane.observability import record_id
from control_plane.routing.admission import HolderAdmitted, HolderRefused, Slot
from control_plane.openai.disconnect import ClientGone, gone_error, read_or_gone
from control_plane.openai.relay_response import RelayResponse
from control_plane.routing.routing import (
    ENGINE_DOWN,
    Endpoint,
    RouteDecision,
    RouteRequest,
    any_in_pools,
)
from control_plane.openai.usage import clamp_usage
from control_plane.services.scheduler import RunnerGone
from control_plane.settings import Settings
from control_plane.state import AppState
from control_plane.store.runners import known_model
from control_plane.tunnel.hub import ConnectedRunner
from control_plane.tunnel.link import Link
from control_plane.tunnel.stream import LinkClosed, Stream, response_start_problem
from sdk.logfmt import REQUEST_ID
from sdk.protocol import DataFrame, EndFrame, ResetFrame, ResponseStartFrame, Usage

__all__ = ["InferenceCall", "serve_inference"]

log = logging.getLogger("outpost.serving")
_DONE = "data: [DONE]\n\n"
# After the client has had `[DONE]`, how long the runner's end frame (usage) may take.
_END_AFTER_DONE_S = 10.0
_background: set[asyncio.Task[Any]] = set()


def _spawn(coro: Coroutine[Any, Any, Any]) -> None:
    # Work that must finish even if the client's task is cancelled (reset the
    # runner's stream); keep a reference so it is not GC'd.
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


@dataclass
class InferenceCall:
    tenant_id: str
    api_key_id: str | None
    endpoint: str  # "/v1/chat/completions"
    model: str
    body: str
    stream: bool
    sealed: bool = False
    tenant_weight: float = 1.0  # fair-share weight in the runner queues (Tenant.weight)
    # What the router needs; derived from ``model`` and ``endpoint`` when not given.
    route: RouteRequest | None = None
    # End-to-end: the one runner the sealed body is bound to, and the check that
    # turns its signed receipt into usage (the body cannot be read to count tokens).
    runner_id: str | None = None
    # The token cap the engine was sent (the client's, else the deployment's limit): usage is clamped to it.
    max_tokens_cap: int | None = None
    usage_from_receipt: Callable[[EndFrame], Usage | None] | None = None
    # Returns when the client has disconnected (openai/disconnect.py): a queued request then leaves its queue.
    client_gone: Callable[[], Awaitable[object]] | None = None
    # The record's id: the HTTP request's id when this server made it (control_plane/observability).
    request_id: str = field(default_factory=record_id)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.route is None:
            self.route = RouteRequest(model=self.model, endpoint=endpoint_kind(self.endpoint))


def endpoint_kind(path: str) -> Endpoint:
    """The capability a runner must advertise for ``path``."""
    return {"/v1/completions": "completions", "/v1/embeddings": "embeddings"}.get(path, "chat")  # type: ignore[return-value]


@dataclass
class _Opened:
    runner: ConnectedRunner
    link: Link
    stream: Stream
    start: ResponseStartFrame
    first: DataFrame | EndFrame
    attempts: int


class _Outcome:
    """What the request record needs, filled in as the response goes out."""

    def __init__(self, call: InferenceCall) -> None:
        self.call = call
        self.runner_id: str | None = None
        self.attempts = 0
        self.status = "ok"
        self.http_status = 200
        self.error_type: str | None = None
        self.usage = Usage()
        self.ttft_ms: float | None = None
        self.bytes_out = 0
        # The served model's context window as its runner declared it: no prompt or completion is longer.
        self.context_length: int | None = None
        self.decision: RouteDecision | None = None
        self.queued = False  # the runner was full when the request was sent
        self.slot: Slot | None = None  # the runner slot admission granted: queue wait, engine share, cost
        # Undoes the runner's in-flight count (and resets a stream nobody read); run once, by settle().
        self.release: Callable[[], None] | None = None
        # A stream answered in full whose end frame is still on its way: _finish_answered
        # settles it, and the response's background task must not reset that stream first.
        self.settled_later = False

    def record(self) -> RequestRecord:
        c = self.call
        return RequestRecord(
            id=c.request_id, tenant_id=c.tenant_id, api_key_id=c.api_key_id, model=c.model,
            runner_id=self.runner_id, endpoint=c.endpoint, stream=c.stream, e2e=c.sealed,
            status=self.status, http_status=self.http_status, error_type=self.error_type,
            prompt_tokens=self.usage.prompt_tokens, completion_tokens=self.usage.completion_tokens,
            attempts=self.attempts, ttft_ms=self.ttft_ms,
            latency_ms=(time.monotonic() - c.started) * 1000, bytes_out=self.bytes_out,
            **(self.slot.record_fields() if self.slot is not None else {}),
        )

    def settle(self) -> None:
        """Free the runner slot and price the request; idempotent (finally blocks, background task)."""
        release, self.release = self.release, None
        if release is not None:
            release()
        if self.slot is not None:
            self.slot.finish(self.usage, self.ttft_ms)

    async def settle_async(self) -> None:
        """:meth:`settle` as a response's background task: Starlette runs a plain function
        in its thread pool, a thread hop (and GIL hand-off) at the end of every stream."""
        if not self.settled_later:
            self.settle()


async def serve_inference(state: AppState, call: InferenceCall) -> Response:
    # Back-pressure: refused here, a request is not accepted, so it needs no record.
    state.records.check_capacity()
    outcome = _Outcome(call)
    try:
        budget = await state.admission.check_budget(state.db, call)
        opened = await _open_with_failover(state, call, outcome)
    except ApiError as exc:
        outcome.status, outcome.http_status, outcome.error_type = "error", exc.status, exc.code
        _count(state, outcome)
        _write_record(state, outcome)
        raise
    except ClientGone:
        # Gone before the first byte: the runner's stream is reset already. Still queued at the
        # runner's holder (no runner recorded), it was never dispatched: an error, as in a local queue.
        status = "cancelled" if outcome.runner_id is not None else "error"
        outcome.status, outcome.http_status, outcome.error_type = status, 499, "client_disconnected"
        outcome.settle()
        _count(state, outcome)
        _write_record(state, outcome)
        raise gone_error() from None
    except BaseException:
        outcome.settle()  # cancelled before the first byte: the slot must not leak
        raise
    outcome.runner_id = opened.runner.runner_id
    served = opened.runner.serves(call.model)
    outcome.context_length = served.context_length if served is not None else None
    # An engine's 4xx is the client's mistake and stays a 4xx; its 5xx is the engine's, a 502 engine_error.
    status = opened.start.status if opened.start.status < 500 else 502
    outcome.http_status = status
    headers = {"x-request-id": call.request_id, "x-outpost-runner": opened.runner.runner_id}
    headers.update(budget.headers())
    if outcome.decision is not None:
        headers["x-outpost-routing"] = outcome.decision.header()
    if call.stream and opened.start.status == 200:
        # The background task settles a stream whose body never started (client gone at once).
        return RelayResponse(_relay_stream(state, opened, outcome), opened.stream, media_type="text/event-stream",
                             headers={**headers, "cache-control": "no-cache"},
                             background=BackgroundTask(outcome.settle_async))
    body = await _collect(state, opened, outcome)
    return Response(body, status_code=status, media_type=opened.start.content_type, headers=headers)


async def _open_with_failover(state: AppState, call: InferenceCall, outcome: _Outcome) -> _Opened:
    settings = state.settings
    # A runner that just lost its tunnel usually reconnects within a second or
    # two; a request that has sent nothing to its client waits for it.
    deadline = time.monotonic() + settings.runner_wait_s
    failed: set[int] = set()  # links that failed this request (a reconnect is a new link)
    last_error = "no runner is connected for this model"
    attempt = 0
    tried: set[str] = set()  # runners tried: the next attempt prefers another one
    while attempt <= settings.max_retries:
        picked = _pick(state, call, failed, tried, outcome)
        if picked is None:
            if attempt == 0 and not any_in_pools(state.hub.runners_for(call.model), call.route):
                error = await _no_runner_error(state, call.model, call.route)
                if error.status == 404:
                    raise error
            # A missing capability will not appear by waiting; a residency match might reconnect.
            if attempt == 0 and (error := _ineligible_error(call, outcome.decision)) and error.status == 400:
                raise error
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await state.hub.wait_changed(remaining)
            continue
        runner, link, queued = picked
        tried.add(runner.runner_id)
        attempt += 1
        outcome.attempts = attempt
        # Counted from here, queued or running: routing must see the queue it would join.
        state.router.started(runner)
        prompt_tokens = call.route.prompt_tokens if call.route else 0
        # A runner another replica holds is admitted by that replica's one queue for it (cluster/holder.py).
        at_holder = getattr(link, "holder_admits", False)
        try:
            if at_holder:
                slot = outcome.slot = state.admission.relayed(call, runner, prompt_tokens=prompt_tokens,
                                                              weight=call.tenant_weight)
            else:
                slot = outcome.slot = await state.admission.acquire(call, runner, prompt_tokens=prompt_tokens,
                                                                    weight=call.tenant_weight)
        except RunnerGone:
            state.router.finished(runner)
            continue  # it disconnected while the request queued: pick again
        except BaseException:
            state.router.finished(runner)
            raise
        if link.closed or link.draining:  # the queue outlived the link picked
            link = runner.usable_link() or link
        admit = _admit_at_holder(call, prompt_tokens) if at_holder else None
        try:
            st = await link.open_stream(path=call.endpoint, model=_runner_model(runner, call.model),
                                        body=call.body, stream=call.stream, sealed=call.sealed,
                                        request_id=REQUEST_ID.get(), **({"admit": admit} if admit else {}))
        except BaseException as exc:
            slot.abandon()
            outcome.slot = None
            state.router.finished(runner)
            if not isinstance(exc, ConnectionError):
                raise
            failed.add(id(link))
            last_error = str(exc)
            continue
        try:
            # A non-streaming answer's first byte is its whole body: the client may leave meanwhile.
            start, first = await read_or_gone(_first_byte(st, settings, slot if at_holder else None),
                                               call.client_gone, st)
        except BaseException as exc:
            state.router.finished(runner)
            link.close_stream(st)
            if not isinstance(exc, _AttemptFailed):  # the client went away: the engine must stop too
                _spawn(st.cancel("client disconnected"))
                if slot.started:
                    outcome.runner_id = runner.runner_id
                else:  # refused by, or gone while queued at, the holder: never dispatched, as in a local queue
                    slot.abandon()
                    outcome.slot = None
                raise
            slot.abandon()
            outcome.slot = None
            failed.add(id(link))
            _spawn(st.cancel("failover"))
            last_error = exc.reason
            log.info("request %s: runner %s failed before first byte (%s); trying next",
                     call.request_id, runner.runner_id, exc.reason)
            continue
        outcome.ttft_ms = (time.monotonic() - call.started) * 1000
        outcome.queued = queued or slot.queue_wait_s > 0.001
        outcome.release = _releaser(state, runner, link, st)
        if start.status < 400:
            state.router.served(call.route, runner.runner_id)  # type: ignore[arg-type]
        return _Opened(runner, link, st, start, first, attempt)
    if attempt == 0:
        if (error := _ineligible_error(call, outcome.decision)) is not None:
            raise error
        raise await _no_runner_error(state, call.model, call.route)
    raise ApiError.unavailable(f"No runner could serve the request: {last_error}.", code="runner_failed")


def _releaser(state: AppState, runner: ConnectedRunner, link: Link, st: Stream) -> Callable[[], None]:
    def release() -> None:
        state.router.finished(runner)
        if not st.finished:  # a response nobody started reading (client gone before the first byte went out)
            link.close_stream(st)
            _spawn(st.cancel("client disconnected"))
    return release


def _pick(state: AppState, call: InferenceCall, failed: set[int], tried: set[str],
          outcome: _Outcome) -> tuple[ConnectedRunner, Link, bool] | None:
    """The best runner not tried yet (else one tried on another link), its link, and whether it is full."""
    # Only runners serving the model (the hub's index); with Redis, also those other replicas hold.
    model = call.route.model if call.route is not None else call.model
    runners = state.hub.runners_for(model)
    if call.runner_id is not None:  # sealed to one runner (end-to-end)
        runners = [r for r in runners if r.runner_id == call.runner_id]
    # Each runner tried or link failed can skip at most one candidate: one more is always fresh.
    decision = state.router.route(runners, call.route, limit=len(tried) + len(failed) + 1)  # type: ignore[arg-type]
    outcome.decision = decision
    usable = [(c, ln) for c in decision.candidates
              if (ln := c.runner.usable_link()) is not None and id(ln) not in failed]
    fresh = [(c, ln) for c, ln in usable if c.runner.runner_id not in tried]
    for c, ln in fresh or usable:
        runner, ln = _owner(state, c.runner, ln, failed)
        return runner, ln, c.estimate.load >= c.runner.capacity
    return None


def _owner(state: AppState, runner: ConnectedRunner, link: Link, failed: set[int]) -> tuple[ConnectedRunner, Link]:
    """Where the runner's one fair queue is: with tunnels on several replicas, the lowest replica id's.

    Every replica holding a link could admit the runner's whole capacity; so one of them,
    the same for all, admits for everyone, and the others relay to it (docs/fairness.md).
    """
    cluster = state.cluster
    remote = state.hub.remote.get(runner.runner_id) if cluster is not None else None
    if cluster is None or remote is None:
        return runner, link
    owners = [ln for ln in remote.links if not ln.closed and not ln.draining and id(ln) not in failed]
    owner = min(owners, key=lambda ln: ln.replica_id, default=None)  # type: ignore[attr-defined]
    if owner is None:
        return runner, link
    if remote is runner:  # held only elsewhere, maybe by several: the lowest id among them
        return runner, owner
    if owner.replica_id > cluster.replica_id:  # type: ignore[attr-defined]
        return runner, link  # this replica is the owner
    return remote, owner


def _runner_model(runner: ConnectedRunner, requested: str) -> str:
    """The runner's own name for a requested name or alias: engines know only that one,
    and answers carry it, as OpenAI answers a model alias with the snapshot that served it."""
    info = runner.serves(requested)
    return info.name if info is not None else requested


def _ineligible_error(call: InferenceCall, decision: RouteDecision | None) -> ApiError | None:
    """Runners serve the model but none may take this request: say why, in the caller's terms."""
    if decision is None or decision.candidates or not decision.excluded:
        return None
    reasons = set(decision.excluded.values())
    route = call.route
    assert route is not None
    if reasons == {"endpoint"}:
        return ApiError(400, f"The model '{call.model}' does not support the {route.endpoint} endpoint on any "
                        "connected runner.", code=f"{route.endpoint}_unsupported", param="model")
    if reasons <= ENGINE_DOWN:
        where = ", ".join(sorted(repr(decision.excluded_names.get(i, i)) for i in decision.excluded))
        return ApiError.unavailable(f"The engine serving '{call.model}' is unavailable (restarting or loading) "
                                    f"on runner(s) {where}; retry shortly.")
    if "residency" in reasons and reasons <= {"residency", "endpoint"}:
        rules = ", ".join(f"{k} in {sorted(v)}" for k, v in route.residency.items())
        return ApiError.unavailable(f"No connected runner serving '{call.model}' satisfies this tenant's "
                                    f"residency rules ({rules}).", code="no_eligible_runner")
    return None


class _AttemptFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _admit_at_holder(call: InferenceCall, prompt_tokens: int) -> dict[str, Any]:
    """What the holder's fair queue needs to admit a relayed request (cluster/holder.py)."""
    return {"tenant_id": call.tenant_id, "api_key_id": call.api_key_id, "weight": call.tenant_weight,
            "prompt_tokens": prompt_tokens, "max_tokens": _usage_cap(call)}


async def _first_byte(st: Stream, settings: Settings,
                      at_holder: Slot | None = None) -> tuple[ResponseStartFrame, DataFrame | EndFrame]:
    """The runner's response start and first frame; ``_AttemptFailed`` when another runner may serve it.

    A request the holder admits (``at_holder``) waits in the holder's queue first: the
    first-byte timeout starts once it is admitted, and a refusal is the caller's error.
    """
    timeout = settings.first_byte_timeout_s
    waiting = settings.scheduler_queue_timeout_s + timeout if at_holder is not None else 0.0
    deadline = time.monotonic() + timeout + waiting
    start: ResponseStartFrame | None = None
    while True:
        remaining = deadline - time.monotonic()
        try:
            ev = await st.next_event(max(remaining, 0.001))
        except TimeoutError:
            raise _AttemptFailed("timed out waiting for the runner") from None
        if isinstance(ev, HolderAdmitted):
            if at_holder is not None:
                at_holder.admitted(ev.queue_wait_s)
            deadline = time.monotonic() + timeout
            continue
        if isinstance(ev, HolderRefused):
            raise ev.error
        if at_holder is not None and not at_holder.started:
            at_holder.admitted(0.0)  # a holder that does not admit (an older version) opened it at once
        if isinstance(ev, LinkClosed):
            raise _AttemptFailed(f"tunnel closed: {ev.reason}")
        if isinstance(ev, ResetFrame):
            raise _AttemptFailed(f"runner reset the stream: {ev.reason}")
        if isinstance(ev, ResponseStartFrame):
            if (problem := response_start_problem(ev)) is not None:
                # Not the client's fault and not an answer to relay: the engine (or a runner) is broken.
                raise ApiError(502, f"The runner's engine answered with {problem}.", type="server_error",
                               code="engine_error")
            start = ev
            continue
        assert start is not None  # Stream.deliver enforces response_start first
        if isinstance(ev, EndFrame) and ev.error and start.status >= 500:
            raise _AttemptFailed(f"engine error: {ev.error}")
        return start, ev


async def _no_runner_error(state: AppState, model: str, route: RouteRequest | None) -> ApiError:
    # Only the caller's pools count: another tenant's runners do not exist for it.
    if any_in_pools(state.hub.runners_for(model), route):
        return ApiError.unavailable(f"Every runner serving '{model}' is busy or draining; retry shortly.")
    async with state.db.session() as session:
        if await known_model(session, model, route.pools if route is not None else None):
            return ApiError.unavailable(f"No runner serving '{model}' is connected.")
    return ApiError.not_found(f"The model '{model}' does not exist or no runner serves it.",
                              code="model_not_found", param="model")


async def _events(opened: _Opened) -> AsyncIterator[DataFrame | EndFrame | ResetFrame | LinkClosed]:
    yield opened.first
    while not isinstance(opened.first, EndFrame):
        ev = await opened.stream.next_event()
        if isinstance(ev, ResponseStartFrame):
            continue
        yield ev
        if not isinstance(ev, DataFrame):
            return


async def _relay_stream(state: AppState, opened: _Opened, outcome: _Outcome) -> AsyncIterator[str]:
    finished = False
    answered = False  # the engine's closing `data: [DONE]` has arrived (held back: see below)
    recorded = False
    tail = ""  # what goes out once the record is committed: the `[DONE]` (after an error event, if any)
    try:
        async for ev in _events(opened):
            if isinstance(ev, DataFrame):
                # Data that queued up behind this frame goes out in the same write.
                data = ev.data + opened.stream.take_data()
                outcome.bytes_out += len(data)
                size = len(data)
                if data.endswith(_DONE):
                    # The end of the answer waits for the runner's end frame (usage) and the commit.
                    answered, data, tail = True, data[:-len(_DONE)], _DONE
                if data:
                    yield data
                await opened.stream.consumed(size)
            elif isinstance(ev, EndFrame):
                finished = True
                _take_usage(outcome, ev)
                if ev.error:
                    outcome.status, outcome.error_type = "error", "engine_error"
                    tail = sse_error_event(ev.error, "server_error", "engine_error").decode() + _DONE
            elif answered:
                finished = True  # the runner went away after answering: the answer stands, without usage
            else:
                finished = True
                reason = ev.reason
                outcome.status, outcome.error_type = "error", "runner_lost"
                tail = sse_error_event(f"The runner stopped mid-stream: {reason}", "server_error",
                                       "runner_lost").decode() + _DONE
        recorded = True
        await _close_out_durably(state, opened, outcome)
        if tail:
            yield tail
    finally:
        if recorded:
            pass  # submitted above (even if this task was cancelled while it waited for the commit)
        elif not finished and answered:
            # The client read the whole answer and hung up before the runner's end frame
            # (with the usage) arrived: the request succeeded; wait for that frame off the client's task.
            outcome.settled_later = True
            _spawn(_finish_answered(state, opened, outcome))
        else:  # the client went away mid-answer (or this task was cancelled): recorded, nobody waits
            if not finished:
                _abandon(opened, outcome)
            _close_out(state, opened, outcome)


def _abandon(opened: _Opened, outcome: _Outcome) -> None:
    outcome.status, outcome.error_type = "cancelled", "client_disconnected"
    opened.link.close_stream(opened.stream)
    _spawn(opened.stream.cancel("client disconnected"))


def _close_out(state: AppState, opened: _Opened, outcome: _Outcome) -> asyncio.Future[bool]:
    outcome.settle()
    _observe(state, opened, outcome)
    _count(state, outcome)
    return _write_record(state, outcome)


async def _close_out_durably(state: AppState, opened: _Opened, outcome: _Outcome) -> None:
    """Close out and wait (bounded) until the record and its audit event are committed: the client's
    end of response comes after it, so an answered request survives a crash (docs/audit.md)."""
    await state.records.wait(_close_out(state, opened, outcome), state.settings.records_commit_wait_s)


async def _finish_answered(state: AppState, opened: _Opened, outcome: _Outcome) -> None:
    try:
        while True:
            ev = await opened.stream.next_event(_END_AFTER_DONE_S)
            if isinstance(ev, EndFrame):
                _take_usage(outcome, ev)
                break
            if not isinstance(ev, DataFrame | ResponseStartFrame):
                break  # the runner went away after answering: the answer stands, without usage
    except Exception:  # noqa: BLE001 - a timeout or a dropped stream: stop the engine, keep the record
        _abandon(opened, outcome)
    finally:
        _close_out(state, opened, outcome)


async def _collect(state: AppState, opened: _Opened, outcome: _Outcome) -> str:
    parts: list[str] = []
    refused: ApiError | None = None  # answered with an error, once the record is committed
    try:
        await read_or_gone(_read_body(opened, outcome, parts), outcome.call.client_gone, opened.stream)
        body = "".join(parts)
        outcome.bytes_out = len(body)
        if opened.start.status >= 400:
            # Set before the record is written (finally): the engine refused the request, or failed.
            failed = opened.start.status >= 500
            outcome.status, outcome.error_type = "error", "engine_error" if failed else "engine_rejected"
            body = _as_error_envelope(body, opened.start.status)
    except ClientGone:
        # Nothing has been sent: the engine must stop, and the record says who stopped it.
        outcome.status, outcome.http_status, outcome.error_type = "cancelled", 499, "client_disconnected"
        opened.link.close_stream(opened.stream)
        _spawn(opened.stream.cancel("client disconnected"))
        raise gone_error() from None
    except ApiError as exc:
        outcome.status, outcome.http_status, outcome.error_type = "error", exc.status, exc.code
        refused = exc
    finally:
        written = _close_out(state, opened, outcome)
    # The body (or the error) goes out once the record is committed (docs/audit.md).
    await state.records.wait(written, state.settings.records_commit_wait_s)
    if refused is not None:
        raise refused
    return body


async def _read_body(opened: _Opened, outcome: _Outcome, parts: list[str]) -> None:
    async for ev in _events(opened):
        if isinstance(ev, DataFrame):
            parts.append(ev.data)
            await opened.stream.consumed(len(ev.data))
        elif isinstance(ev, EndFrame):
            _take_usage(outcome, ev)
            if ev.error:
                raise ApiError(502, f"The engine failed: {ev.error}", type="server_error", code="engine_error")
        else:
            raise ApiError(502, f"The runner stopped before answering: {ev.reason}",
                           type="server_error", code="runner_lost")


def _take_usage(outcome: _Outcome, end: EndFrame) -> None:
    check = outcome.call.usage_from_receipt
    if check is None:
        if end.usage:
            outcome.usage = _bounded(end.usage, outcome.call, outcome.context_length)
        return
    usage = check(end)  # logs a refused receipt itself
    if usage is None:
        outcome.error_type = outcome.error_type or "receipt_rejected"
    else:
        outcome.usage = _bounded(usage, outcome.call, outcome.context_length)


def _usage_cap(call: InferenceCall) -> int | None:
    """The completion tokens a request may be billed: the client's cap, else the one the engine was sent."""
    route = call.route
    return route.max_tokens if route is not None and route.max_tokens is not None else call.max_tokens_cap


def _bounded(usage: Usage, call: InferenceCall, context_length: int | None = None) -> Usage:
    """Runner output is untrusted: usage cannot exceed what the request allows (:func:`clamp_usage`)."""
    bounded = clamp_usage(usage, body_chars=len(call.body), max_tokens=_usage_cap(call),
                          context_length=context_length)
    if bounded != usage:
        log.warning("request %s: runner reported usage %s beyond the request's bounds; clamped",
                    call.request_id, usage.model_dump())
    return bounded


def _observe(state: AppState, opened: _Opened, outcome: _Outcome) -> None:
    """Teach the router this runner's speed from a request that completed normally."""
    if outcome.status != "ok" or opened.start.status >= 400 or outcome.ttft_ms is None:
        return
    state.router.observe(opened.runner.runner_id, prompt_tokens=outcome.usage.prompt_tokens,
                         completion_tokens=outcome.usage.completion_tokens, ttft_s=outcome.ttft_ms / 1000,
                         total_s=time.monotonic() - outcome.call.started, queued=outcome.queued,
                         streamed=outcome.call.stream)


def _count(state: AppState, outcome: _Outcome) -> None:
    """The request is over: Prometheus counters and one log line (control_plane/observability)."""
    c = outcome.call
    rejected = outcome.status == "ok" and outcome.http_status >= 400  # the engine refused it
    status = "error" if rejected else outcome.status
    code = outcome.error_type or ("engine_rejected" if rejected else None)
    # Model names come from clients: only served ones become label values.
    model = c.model if state.hub.is_served(c.model) else "other"
    state.metrics.observe_inference(
        endpoint=c.endpoint, model=model, tenant_id=c.tenant_id, outcome=status, code=code,
        ttft_s=None if outcome.ttft_ms is None else outcome.ttft_ms / 1000,
        prompt_tokens=outcome.usage.prompt_tokens, completion_tokens=outcome.usage.completion_tokens)
    log.info("%s %s: %s%s, runner %s, %d+%d tokens, %.0f ms, record %s", c.endpoint, model, status,
             f" ({code})" if code else "", outcome.runner_id or "-", outcome.usage.prompt_tokens,
             outcome.usage.completion_tokens, (time.monotonic() - c.started) * 1000, c.request_id)


def _as_error_envelope(body: str, status: int) -> str:
    """Engines disagree on error shapes; clients get OpenAI's envelope. An engine's 5xx is a 502
    ``engine_error`` whatever the engine called it (the client's status is 502 too)."""
    failed = status >= 500
    message, kind, code = body[:500] or "engine error", "invalid_request_error", None
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            err = parsed["error"]
            message = str(err.get("message", "engine error"))
            kind = str(err.get("type", "invalid_request_error"))
            code = err.get("code") if isinstance(err.get("code"), str) else None
    except ValueError:
        pass
    if failed:
        kind, code = "server_error", "engine_error"
    return json.dumps(error_body(message, kind, code))


def _write_record(state: AppState, outcome: _Outcome) -> asyncio.Future[bool]:
    # The writer commits it with its audit event, in a batch (services/record_writer.py).
    return state.records.submit(outcome.record())
