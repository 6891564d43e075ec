"""The runner's client for inference requests to its engine on loopback.

Every relayed request goes through :class:`EngineClient`, a small seam:
open a request (method, URL, headers, body), read the status and headers,
take the body in batches, and leave it — read to the end, the connection
goes back to the pool; left early (client gone, error, cancellation), the
connection is closed, never reused mid-body. Transport failures (refused,
reset, broken off, timed out) surface as :class:`EngineError`.

:class:`AiohttpEngineClient` is the runner's: ``aiohttp`` costs about a
third of ``httpx``'s CPU per streamed request (docs/performance.md, "the
runner's engine hop"), and its ``readany`` hands over everything that has
arrived, which is the batch the relay wants. :class:`HttpxEngineClient`
wraps an ``httpx.AsyncClient``, so tests and benchmarks can script an
engine with ``httpx.MockTransport``. Health probes, the supervisor and the
control-plane calls stay on ``httpx``: they are not on the per-request path.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from typing import Protocol

import aiohttp
import httpx

from outpost.runner.sse import MAX_READ_AHEAD, read_ahead

#: Idle keep-alive connections are dropped after this long: below the 5 s after which
#: llama.cpp's server and uvicorn (vLLM) close them, so the pool rarely hands out one
#: the engine is closing (aiohttp's default is 15 s).
KEEPALIVE_S = 3.0

__all__ = [
    "AiohttpEngineClient",
    "EngineClient",
    "EngineError",
    "EngineResponse",
    "HttpxEngineClient",
]


class EngineError(Exception):
    """The engine could not be reached, or broke off or timed out its answer."""

    def __init__(self, cause: BaseException) -> None:
        detail = str(cause)
        super().__init__(f"{type(cause).__name__}: {detail}" if detail else type(cause).__name__)
        #: What went wrong, without addresses or payload: the transport's exception name.
        self.kind = type(cause).__name__


class EngineResponse(Protocol):
    status: int
    headers: Mapping[str, str]  # case-insensitive

    def batches(self) -> AsyncGenerator[bytes, None]:
        """The body, as everything that had arrived each time the caller asks (never empty)."""
        ...

    async def read(self) -> bytes:
        """The whole body."""
        ...


class EngineClient(Protocol):
    def request(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes
    ) -> AbstractAsyncContextManager[EngineResponse]:
        """Send a request; the context is the answer, aborted if left before its end."""
        ...

    async def aclose(self) -> None: ...


# --- aiohttp: the runner's -------------------------------------------------------------------


class _AiohttpResponse:
    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers: Mapping[str, str] = resp.headers

    async def batches(self) -> AsyncGenerator[bytes, None]:
        content = self._resp.content
        try:
            while data := await content.readany():
                yield data
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EngineError(exc) from exc

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EngineError(exc) from exc

    @property
    def complete(self) -> bool:
        return self._resp.content.at_eof()


class AiohttpEngineClient:
    """Keep-alive connections to the engine; no timeouts unless given (engines answer slowly
    under load)."""

    def __init__(
        self,
        *,
        limit: int = 512,
        connect_timeout_s: float | None = None,
        read_timeout_s: float | None = None,
        keepalive_s: float = KEEPALIVE_S,
    ) -> None:
        self._limit = limit
        self._keepalive_s = keepalive_s
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Made on first use: a ClientSession belongs to the running event loop.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._limit, keepalive_timeout=self._keepalive_s
                ),
                timeout=self._timeout,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    @asynccontextmanager
    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes
    ) -> AsyncIterator[EngineResponse]:
        session = self._open()
        for attempt in (0, 1):
            try:
                resp = await session.request(method, url, data=body, headers=dict(headers))
                break
            except (aiohttp.ClientError, TimeoutError) as exc:
                # A pooled connection the engine closed just as this request went out
                # (its idle timeout racing ours) fails before any answer: the engine
                # never started on it, so one more try on a fresh connection is safe.
                # Not for a refused connection or a timeout: those would fail again.
                stale = isinstance(
                    exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError
                ) and not isinstance(exc, aiohttp.ClientConnectorError)
                if attempt or not stale:
                    raise EngineError(exc) from exc
        answer = _AiohttpResponse(resp)
        try:
            yield answer
        finally:
            if answer.complete:
                resp.release()  # back to the pool
            else:
                resp.close()  # left mid-body: the connection is dropped, never reused

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# --- httpx: for scripted engines (httpx.MockTransport) ---------------------------------------


class _HttpxResponse:
    def __init__(self, resp: httpx.Response) -> None:
        self._resp = resp
        self.status = resp.status_code
        self.headers: Mapping[str, str] = resp.headers

    async def batches(self) -> AsyncGenerator[bytes, None]:
        # httpx hands over one HTTP chunk at a time even when one read brought many:
        # a reader task groups what has arrived (runner.sse.read_ahead).
        try:
            async with aclosing(read_ahead(self._resp.aiter_bytes(), MAX_READ_AHEAD)) as grouped:
                async for data in grouped:
                    yield data
        except httpx.HTTPError as exc:
            raise EngineError(exc) from exc

    async def read(self) -> bytes:
        try:
            return await self._resp.aread()
        except httpx.HTTPError as exc:
            raise EngineError(exc) from exc


class HttpxEngineClient:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    @asynccontextmanager
    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes
    ) -> AsyncIterator[EngineResponse]:
        try:
            async with self.http.stream(
                method, url, content=body, headers=dict(headers), timeout=None
            ) as resp:
                yield _HttpxResponse(resp)
        except httpx.HTTPError as exc:
            raise EngineError(exc) from exc

    async def aclose(self) -> None:
        await self.http.aclose()
