"""Knowing that a client has gone before its response has started.

uvicorn does not cancel a request's task when the client closes the
connection; it only makes the next ``receive()`` return ``http.disconnect``
(the ASGI contract). Starlette listens for that while it sends a
``StreamingResponse`` body, and nobody listens before: a request waiting in a
runner's fair queue would otherwise be dispatched to the runner, and charged
to its tenant, for a client that is no longer there. The admission queue
waits on :func:`client_gone` beside its slot (services/scheduler.py), and
serving.py reads a runner's answer with :func:`read_or_gone` until its first
byte reaches the client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any

from starlette.types import Receive

from control_plane.errors import ApiError

__all__ = ["ClientGone", "client_gone", "gone_error", "read_or_gone", "watch"]


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
    return ApiError(499, "The client disconnected before the response started.", type="client_disconnected",
                    code="client_disconnected")


async def read_or_gone(read: Coroutine[Any, Any, None], gone: Callable[[], Awaitable[object]] | None) -> None:
    """Run ``read``; raise :class:`ClientGone` (and cancel it) if ``gone()`` returns first.

    Nobody listens for a disconnect while a plain ``Response`` is being
    prepared (see above), so without the watch the engine would
    generate to ``max_tokens`` for nobody. The watch blocks in ``receive()``:
    no polling, and one task per request rather than one per frame.
    """
    if gone is None:
        return await read
    reader = asyncio.ensure_future(read)
    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({reader, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        reader.cancel()
        raise
    finally:
        watcher.cancel()
    if reader.done():
        return reader.result()  # finished in the same turn as the disconnect: the answer is complete
    if watcher.cancelled() or watcher.exception() is not None:
        return await reader  # the watch failed: keep collecting as before
    reader.cancel()
    raise ClientGone
