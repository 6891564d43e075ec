"""Finding a runner that answers: pick, admit, open a stream, fail over until the first byte.

A request is retried on the next candidate as long as nothing has reached the
client: the response is held back until the runner's first data frame (or its
end) arrives. What each attempt holds is the request's :class:`RequestLife`'s
to give back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from outpost.control_plane.cluster.remote import RemoteLink
from outpost.control_plane.errors import ApiError
from outpost.control_plane.openai.call import InferenceCall
from outpost.control_plane.openai.disconnect import read_or_gone
from outpost.control_plane.openai.lifecycle import RequestLife
from outpost.control_plane.routing.admission import HolderAdmitted, HolderRefused, Slot
from outpost.control_plane.routing.routing import ENGINE_DOWN, RouteDecision, any_in_pools
from outpost.control_plane.services.scheduler import RunnerGone
from outpost.control_plane.settings import Settings
from outpost.control_plane.state import AppState
from outpost.control_plane.store.runners import known_model
from outpost.control_plane.tunnel.hub import ConnectedRunner
from outpost.control_plane.tunnel.link import RunnerLink, RunnerStream
from outpost.control_plane.tunnel.stream import LinkClosed, response_start_problem
from outpost.sdk.logfmt import REQUEST_ID
from outpost.sdk.protocol import EndFrame, ResetFrame, ResponseStartFrame

__all__ = ["Opened", "open_with_failover"]

log = logging.getLogger("outpost.serving")


@dataclass(frozen=True)
class Opened:
    """A runner that answered: its stream, its response start and first frame."""

    runner: ConnectedRunner
    link: RunnerLink
    stream: RunnerStream
    start: ResponseStartFrame
    first: str | EndFrame  # data as its text (tunnel/stream.py)


@dataclass
class _Picked:
    runner: ConnectedRunner
    link: RunnerLink
    full: bool  # the runner was at capacity: the request queues there


@dataclass
class _Search:
    """What one request's failover remembers between attempts."""

    deadline: float
    failed: set[int] = field(
        default_factory=set
    )  # links that failed it (a reconnect is a new link)
    tried: set[str] = field(default_factory=set)  # runners tried: the next attempt prefers another
    waking: bool = False  # a deployment scaled to zero is waking for this request
    drawn: str | None = None  # the deployment the A/B split drew for the first attempt
    last_error: str = "no runner is connected for this model"

    def link_failed(self, link: RunnerLink, reason: str) -> None:
        self.failed.add(id(link))
        self.last_error = reason


class _AttemptFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def open_with_failover(state: AppState, call: InferenceCall, life: RequestLife) -> Opened:
    # A runner that just lost its tunnel usually reconnects within a second or
    # two; a request that has sent nothing to its client waits for it.
    search = _Search(deadline=time.monotonic() + state.settings.runner_wait_s)
    while life.attempts <= state.settings.max_retries:
        picked = await _next_runner(state, call, life, search)
        if picked is None:
            break
        if (opened := await _attempt(state, call, life, search, picked)) is not None:
            return opened
    if life.attempts == 0:
        if (error := _ineligible_error(call, life.decision)) is not None:
            raise error
        if search.waking:
            raise ApiError.unavailable(
                f"The deployment serving {call.model!r} is waking up or loading; it was not "
                f"ready within {state.settings.deployment_wake_timeout_s:g} s. Retry shortly.",
                code="deployment_waking",
            )
        raise await _no_runner_error(state, call)
    raise ApiError.unavailable(
        f"No runner could serve the request: {search.last_error}.", code="runner_failed"
    )


async def _next_runner(
    state: AppState, call: InferenceCall, life: RequestLife, search: _Search
) -> _Picked | None:
    """The runner to try next, waiting (until the deadline) for one to connect; None when time
    is up."""
    while True:
        if (picked := _pick(state, call, life, search)) is not None:
            return picked
        if life.attempts == 0 and not search.waking:
            if await _wake_deployment(state, call, search):
                continue
            await _refuse_hopeless(state, call, life)
        remaining = search.deadline - time.monotonic()
        if remaining <= 0:
            return None
        await state.hub.wait_changed(remaining)


async def _wake_deployment(state: AppState, call: InferenceCall, search: _Search) -> bool:
    """No runner serves the model, but a deployment of that name is scaled to zero: wake it
    and wait for it up to ``deployment_wake_timeout_s`` (docs/deployments.md)."""
    if state.deployments is None or any_in_pools(state.hub.runners_for(call.model), call.route):
        return False
    if not await state.deployments.wake_for(call.model, call.route.pools):
        return False
    search.waking = True
    search.deadline = max(
        search.deadline, time.monotonic() + state.settings.deployment_wake_timeout_s
    )
    return True


async def _refuse_hopeless(state: AppState, call: InferenceCall, life: RequestLife) -> None:
    """Errors that waiting will not cure: an unknown model, a capability no runner has."""
    if not any_in_pools(state.hub.runners_for(call.model), call.route):
        unknown = await _no_runner_error(state, call)
        if unknown.status == 404:
            raise unknown
    # A missing capability will not appear by waiting; a residency match might reconnect.
    if (error := _ineligible_error(call, life.decision)) is not None and error.status == 400:
        raise error


async def _attempt(
    state: AppState, call: InferenceCall, life: RequestLife, search: _Search, picked: _Picked
) -> Opened | None:
    """Try one runner: its response start and first frame, or None to try the next."""
    runner, link = picked.runner, picked.link
    search.tried.add(runner.runner_id)
    life.attempt(runner)
    try:
        slot = await _admit(state, call, runner, link)
    except RunnerGone:
        life.fail_over()  # it disconnected while the request queued: pick again
        return None
    life.admitted(slot)
    if link.closed or link.draining:  # the queue outlived the link picked
        link = runner.usable_link() or link
    admit = _admit_at_holder(call) if link.holder_admits else None
    model, life.deployment_id = _runner_model(state, runner, call.model, search.drawn)
    try:
        stream = await link.open_stream(
            path=call.path,
            model=model,
            body=call.body,
            stream=call.stream,
            sealed=call.sealed,
            request_id=REQUEST_ID.get(),
            admit=admit,
        )
    except ConnectionError as exc:
        search.link_failed(link, str(exc))
        life.fail_over()
        return None
    life.dispatched(link, stream)
    try:
        # A non-streaming answer's first byte is its whole body: the client may leave meanwhile.
        first_byte = _first_byte(stream, state.settings, slot if link.holder_admits else None)
        start, first = await read_or_gone(first_byte, call.client_gone, stream)
    except _AttemptFailed as exc:
        search.link_failed(link, exc.reason)
        log.info(
            "request %s: runner %s failed before first byte (%s); trying next",
            call.request_id,
            runner.runner_id,
            exc.reason,
        )
        life.fail_over()
        return None
    life.opened(start, queued=picked.full)
    return Opened(runner, link, stream, start, first)


async def _admit(
    state: AppState, call: InferenceCall, runner: ConnectedRunner, link: RunnerLink
) -> Slot:
    prompt_tokens = call.route.prompt_tokens
    if (
        link.holder_admits
    ):  # another replica holds the runner: its one queue admits (cluster/holder.py)
        return state.admission.relayed(
            call, runner, prompt_tokens=prompt_tokens, weight=call.tenant_weight
        )
    return await state.admission.acquire(
        call, runner, prompt_tokens=prompt_tokens, weight=call.tenant_weight
    )


def _pick(
    state: AppState, call: InferenceCall, life: RequestLife, search: _Search
) -> _Picked | None:
    """The best runner not tried yet (else one tried on another link), its link, and whether it
    is full."""
    # Only runners serving the model (the hub's index); with Redis, also those other replicas hold.
    runners = state.hub.runners_for(call.model)
    if state.deployments is not None and not search.tried and not search.failed:
        # Deployments sharing the name split by weight (A/B); a retry may go to any of them.
        runners, search.drawn = state.deployments.split(call.model, runners, call.route.pools)
    if call.runner_id is not None:  # sealed to one runner (end-to-end)
        runners = [r for r in runners if r.runner_id == call.runner_id]
    # Each runner tried or link failed can skip at most one candidate: one more is always fresh.
    decision = state.router.route(
        runners, call.route, limit=len(search.tried) + len(search.failed) + 1
    )
    life.decision = decision
    usable = [
        (c, ln)
        for c in decision.candidates
        if (ln := c.runner.usable_link()) is not None and id(ln) not in search.failed
    ]
    fresh = [(c, ln) for c, ln in usable if c.runner.runner_id not in search.tried]
    for c, ln in fresh or usable:
        runner, owner = _owner(state, c.runner, ln, search.failed)
        return _Picked(runner, owner, c.estimate.load >= c.runner.capacity)
    return None


def _owner(
    state: AppState, runner: ConnectedRunner, link: RunnerLink, failed: set[int]
) -> tuple[ConnectedRunner, RunnerLink]:
    """Where the runner's one fair queue is: with tunnels on several replicas, the lowest replica
    id's.

    Every replica holding a link could admit the runner's whole capacity; so one of them,
    the same for all, admits for everyone, and the others relay to it (docs/fairness.md).
    """
    cluster = state.cluster
    remote = state.hub.remote.get(runner.runner_id) if cluster is not None else None
    if cluster is None or remote is None:
        return runner, link
    relays: list[RunnerLink] = list(remote.links)
    owners = [
        ln
        for ln in relays
        if isinstance(ln, RemoteLink) and not ln.closed and not ln.draining and id(ln) not in failed
    ]
    owner = min(owners, key=lambda ln: ln.replica_id, default=None)
    if owner is None:
        return runner, link
    if remote is runner:  # held only elsewhere, maybe by several: the lowest id among them
        return runner, owner
    if owner.replica_id > cluster.replica_id:
        return runner, link  # this replica is the owner
    return remote, owner


def _runner_model(
    state: AppState, runner: ConnectedRunner, requested: str, drawn: str | None
) -> tuple[str, str | None]:
    """The runner's own name for a requested name or alias, and the deployment serving it there
    (None: a static model). Engines know only that name, and answers carry it, as OpenAI
    answers a model alias with the snapshot that served it; a deployment replica's runner-side
    name (its deployment's id, docs/deployments.md) is answered with the public name."""
    if state.deployments is not None and runner.deployed:
        return state.deployments.served_name(runner, requested, drawn)
    info = runner.serves(requested)
    return (info.name if info is not None else requested), None


def _admit_at_holder(call: InferenceCall) -> dict[str, Any]:
    """What the holder's fair queue needs to admit a relayed request (cluster/holder.py)."""
    return {
        "tenant_id": call.tenant_id,
        "api_key_id": call.api_key_id,
        "weight": call.tenant_weight,
        "prompt_tokens": call.route.prompt_tokens,
        "max_tokens": call.usage_cap,
    }


async def _first_byte(
    st: RunnerStream, settings: Settings, at_holder: Slot | None = None
) -> tuple[ResponseStartFrame, str | EndFrame]:
    """The runner's response start and first frame; ``_AttemptFailed`` when another runner may
    serve it.

    A request the holder admits (``at_holder``) waits in the holder's queue first: the
    first-byte timeout starts once it is admitted, and a refusal is the caller's error.
    """
    timeout = settings.first_byte_timeout_s
    waiting = settings.scheduler_queue_timeout_s + timeout if at_holder is not None else 0.0
    loop = asyncio.get_running_loop()
    # One timeout for the whole wait, moved when the holder admits: not one per event.
    try:
        async with asyncio.timeout_at(loop.time() + timeout + waiting) as deadline:
            return await _start_and_first(
                st, at_holder, lambda: deadline.reschedule(loop.time() + timeout)
            )
    except TimeoutError:
        raise _AttemptFailed("timed out waiting for the runner") from None


async def _start_and_first(
    st: RunnerStream, at_holder: Slot | None, admitted: Callable[[], None]
) -> tuple[ResponseStartFrame, str | EndFrame]:
    start: ResponseStartFrame | None = None
    while True:
        ev = await st.next_event()
        if isinstance(ev, HolderAdmitted):
            if at_holder is not None:
                at_holder.admitted(ev.queue_wait_s)
            admitted()
            continue
        if isinstance(ev, HolderRefused):
            raise ev.error
        if at_holder is not None and not at_holder.started:
            at_holder.admitted(
                0.0
            )  # a holder that does not admit (an older version) opened it at once
        if isinstance(ev, ResponseStartFrame):
            start = _checked_start(ev)
            continue
        if isinstance(ev, LinkClosed | ResetFrame):
            raise _AttemptFailed(
                f"tunnel closed: {ev.reason}"
                if isinstance(ev, LinkClosed)
                else f"runner reset the stream: {ev.reason}"
            )
        assert start is not None  # Stream.deliver enforces response_start first
        if isinstance(ev, EndFrame) and ev.error and start.status >= 500:
            raise _AttemptFailed(f"engine error: {ev.error}")
        return start, ev


def _checked_start(start: ResponseStartFrame) -> ResponseStartFrame:
    if (problem := response_start_problem(start)) is not None:
        # Not the client's fault and not an answer to relay: the engine (or a runner) is broken.
        raise ApiError(
            502,
            f"The runner's engine answered with {problem}.",
            type="server_error",
            code="engine_error",
        )
    return start


def _ineligible_error(call: InferenceCall, decision: RouteDecision | None) -> ApiError | None:
    """Runners serve the model but none may take this request: say why, in the caller's terms."""
    if decision is None or decision.candidates or not decision.excluded:
        return None
    reasons = set(decision.excluded.values())
    route = call.route
    if "capability" in reasons and reasons <= {"capability", "endpoint"}:
        wanted = ", ".join(sorted(route.needs))
        return ApiError(
            400,
            f"The model '{call.model}' cannot make {wanted} calls on any connected runner: "
            'its engine or chat template has no tool support (docs/api.md "Tool calls"). '
            "Send the request without tools, or use a model whose runner advertises them.",
            code=f"{'_'.join(sorted(route.needs))}_unsupported",
            param="tools",
        )
    if reasons == {"endpoint"}:
        return ApiError(
            400,
            f"The model '{call.model}' does not support the {route.endpoint} endpoint on any "
            "connected runner.",
            code=f"{route.endpoint}_unsupported",
            param="model",
        )
    if reasons <= ENGINE_DOWN:
        where = ", ".join(
            sorted(repr(decision.excluded_names.get(i, i)) for i in decision.excluded)
        )
        return ApiError.unavailable(
            f"The engine serving '{call.model}' is unavailable (restarting or loading) "
            f"on runner(s) {where}; retry shortly."
        )
    if "residency" in reasons and reasons <= {"residency", "endpoint"}:
        rules = ", ".join(f"{k} in {sorted(v)}" for k, v in route.residency.items())
        return ApiError.unavailable(
            f"No connected runner serving '{call.model}' satisfies this tenant's "
            f"residency rules ({rules}).",
            code="no_eligible_runner",
        )
    return None


async def _no_runner_error(state: AppState, call: InferenceCall) -> ApiError:
    # Only the caller's pools count: another tenant's runners do not exist for it.
    model, route = call.model, call.route
    if any_in_pools(state.hub.runners_for(model), route):
        return ApiError.unavailable(
            f"Every runner serving '{model}' is busy or draining; retry shortly."
        )
    async with state.db.session() as session:
        if await known_model(session, model, route.pools):
            return ApiError.unavailable(f"No runner serving '{model}' is connected.")
    return ApiError.not_found(
        f"The model '{model}' does not exist or no runner serves it.",
        code="model_not_found",
        param="model",
    )
