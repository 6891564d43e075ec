"""Knowing that a client has gone before its response has started.

uvicorn does not cancel a request's task when the client closes the
connection; it only makes the next ``receive()`` return ``http.disconnect``
(the ASGI contract). Starlette listens for that while it sends a
``StreamingResponse`` body, and nobody listens before: a request waiting in a
runner's fair queue would otherwise be dispatched to the runner, and charged
to its tenant, for a client that is no longer there. The admission queue
waits on :func:`client_gone` beside its slot (services/scheduler.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

from starlette.types import Receive

__all__ = ["client_gone", "watch"]


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
