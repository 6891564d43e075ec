"""A streamed chat answer re-dressed in another dialect, at the ASGI layer.

The chat path may answer a stream in more than one way: the relay itself, or
headers at once and ``: keep-alive`` comments while the request waits, then the
relay or an error event (openai/early_stream.py). :class:`DialectStream` wraps
whatever response it returns and translates the body messages it sends, so every
one of those ways reaches the client in its dialect, and the chat response
itself still runs to its end (its end commits the request's record).
"""

from __future__ import annotations

import codecs
from typing import Protocol

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from outpost.control_plane.dialects.chat import ChatReader, Failed, Piece

__all__ = ["Dialect", "DialectStream", "Translation"]


class Dialect(Protocol):
    def start(self) -> list[str]: ...

    def on(self, piece: Piece) -> list[str]:
        """The events for one piece; ``ValueError`` when the dialect cannot carry it."""
        ...

    def fail(self, failure: Failed) -> list[str]: ...

    def finish(self) -> list[str]: ...


class Translation:
    """Chat SSE text in, the dialect's SSE text out; a failure is the last thing said."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect, self.reader = dialect, ChatReader()
        self.started = self.ended = False

    def feed(self, text: str, final: bool = False) -> str:
        out = [] if self.started else self.dialect.start()
        self.started = True
        for piece in self.reader.feed(text):
            if self.ended:
                break
            if isinstance(piece, Failed):
                out += self._fail(piece)
                continue
            try:
                out += self.dialect.on(piece)
            except ValueError as exc:
                out += self._fail(Failed(str(exc)))
        if final and not self.ended:
            self.ended = True
            out += self.dialect.finish()
        return "".join(out)

    def _fail(self, failure: Failed) -> list[str]:
        self.ended = True
        return self.dialect.fail(failure)


class DialectStream(Response):
    """``inner``, a streamed chat response, with its body translated by ``dialect``."""

    def __init__(self, inner: Response, dialect: Dialect) -> None:
        # Not Response.__init__: the inner response sends the status and headers.
        self.inner, self.translation = inner, Translation(dialect)
        self.status_code, self.raw_headers = inner.status_code, inner.raw_headers
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")

        async def translated(message: Message) -> None:
            if message["type"] != "http.response.body":
                await send(message)
                if message["type"] == "http.response.start":
                    # The dialect's opening event goes with the headers, not with the first
                    # token: a client (and a proxy) behind a long queue sees it at once.
                    opening = self.translation.feed("").encode()
                    await send({"type": "http.response.body", "body": opening, "more_body": True})
                return
            more = bool(message.get("more_body", False))
            text = decoder.decode(bytes(message.get("body", b"")), final=not more)
            out = self.translation.feed(text, final=not more)
            if out or not more:
                await send({"type": "http.response.body", "body": out.encode(), "more_body": more})

        await self.inner(scope, receive, translated)
