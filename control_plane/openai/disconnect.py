"""Knowing that a client has gone before its response has started.

uvicorn does not cancel a request's task when the client closes the
connection; it only makes the next ``receive()`` return ``http.disconnect``
(the ASGI contract). Starlette listens for that while it sends a
``StreamingResponse`` body, and nobody listens before: a request waiting in a
runner's fair queue would otherwise be dispatched to the runner, and charged
to its tenant, for a client that is no longer there. The admission queue
waits on :func:`client_gone` beside its slot (services/scheduler.py), and
serving.py reads a runner's answer with :func:`read_or_gone` until its first
byte reaches the client. The SSE relay then listens itself
(``openai/relay_response.py``, with :func:`interrupt_when_gone`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Protocol, TypeVar

from starlette.types import Receive

from outpost.control_plane.errors import ApiError

__all__ = [
    "ClientGone",
    "Interruptible",
    "client_gone",
    "gone_error",
    "interrupt_when_gone",
    "read_or_gone",
    "watch",
]

T = TypeVar("T")


class Interruptible(Protocol):
    """What a reader waits on (a tunnel stream's event queue): a disconnect wakes it with an
    error."""

    def interrupt(self, exc: BaseException) -> None: ...
    def resume(self) -> None: ...


async def client_gone(receive: Receive) -> None:
    """Return once the client has disconnected.

    Only for a request whose body has been read (FastAPI has parsed it before
    the route runs): then ``receive()`` blocks until the disconnect, so this
    costs no polling. Cancel it to stop watching.
    """
    while (await receive())["type"] != "http.disconnect":
        pass


def watch(receive: Receive) -> Callable[[], Awaitable[None]]:
    """``client_gone`` bound to one request, for ``InferenceCall.client_gone``."""
    return partial(client_gone, receive)


class ClientGone(Exception):
    """The client disconnected after dispatch, before its response started."""


def gone_error() -> ApiError:
    # Nobody reads it; the request record keeps the status (nginx's "client closed request").
    return ApiError(
        499,
        "The client disconnected before the response started.",
        type="client_disconnected",
        code="client_disconnected",
    )


@contextmanager
def interrupt_when_gone(
    gone: Callable[[], Awaitable[object]] | None, events: Interruptible
) -> Iterator[None]:
    """While inside, a return of ``gone()`` (the client left) makes the next wait on ``events``
    raise :class:`ClientGone`.

    The events queued before the disconnect are still read (an answer that
    arrived with it is complete). A watch that fails (not a disconnect)
    changes nothing. One task per request, blocked in ``receive()``.
    """
    if gone is None:
        yield
        return
    watcher = asyncio.ensure_future(gone())

    def left(w: asyncio.Future[object]) -> None:
        if not w.cancelled() and w.exception() is None:
            events.interrupt(ClientGone())

    watcher.add_done_callback(left)
    try:
        yield
    finally:
        watcher.remove_done_callback(left)
        watcher.cancel()
        events.resume()


async def read_or_gone(
    read: Awaitable[T], gone: Callable[[], Awaitable[object]] | None, events: Interruptible
) -> T:
    """Await ``read``, which waits on ``events``; raise :class:`ClientGone` there if ``gone()``
    returns first.

    Nobody listens for a disconnect while a plain ``Response`` is being
    prepared (see above), so without the watch the engine would
    generate to ``max_tokens`` for nobody.

    ``read`` runs in the caller's task: in a task of its own, each request
    waited twice more for its turn of a busy event loop before its first
    token (starting the task, then waking the caller when it ended).
    """
    with interrupt_when_gone(gone, events):
        return await read
