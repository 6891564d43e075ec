"""A TLS-intercepting proxy owned by the tests: the middlebox the pin must catch.

In ``pass`` mode it forwards TCP untouched (TLS runs end to end to the control
plane). In ``intercept`` mode it terminates TLS with a certificate of another
CA, one the runner is configured to trust, reads the plaintext, and re-encrypts
it to the control plane: exactly what a corporate TLS-inspection box does.
It is a test tool at the network seam, not a fake of any Outpost component.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading

__all__ = ["InterceptingProxy"]


class InterceptingProxy:
    def __init__(
        self, target_port: int, server_ctx: ssl.SSLContext, upstream_ctx: ssl.SSLContext
    ) -> None:
        self.target_port = target_port
        self.server_ctx, self.upstream_ctx = server_ctx, upstream_ctx
        self.mode = "pass"
        self.port = 0
        self.plaintext_seen = 0  # bytes the runner sent that this box could read
        self.intercepted = 0  # TLS sessions it tried to terminate
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> InterceptingProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, r_client: asyncio.StreamReader, w_client: asyncio.StreamWriter) -> None:
        self._writers.add(w_client)
        try:
            if self.mode == "intercept":
                self.intercepted += 1
                await w_client.start_tls(self.server_ctx)
                r_up, w_up = await asyncio.open_connection(
                    "127.0.0.1",
                    self.target_port,
                    ssl=self.upstream_ctx,
                    server_hostname="127.0.0.1",
                )
            else:
                r_up, w_up = await asyncio.open_connection("127.0.0.1", self.target_port)
            self._writers.add(w_up)
            await asyncio.gather(
                self._pipe(r_client, w_up, count=self.mode == "intercept"),
                self._pipe(r_up, w_client, count=False),
                return_exceptions=True,
            )
        except (OSError, ssl.SSLError):
            pass  # the runner hung up on our certificate: that is the point
        finally:
            for w in (w_client,):
                w.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, count: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if count:
                    self.plaintext_seen += len(data)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def cut(self) -> None:
        """Drop every connection (the runner redials, then meets the current mode)."""

        def do() -> None:
            for w in list(self._writers):
                w.transport.abort()
            self._writers.clear()

        self._loop.call_soon_threadsafe(do)

    def close(self) -> None:
        self.cut()

        async def stop() -> None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
