"""ChaosProxy: a real TCP proxy between a runner and the control plane, for fault injection.

It forwards bytes both ways and can cut every connection (a network drop),
freeze them (a dead peer: sockets open, nothing moves) or stop one direction.
It is a test tool at an I/O seam, not a fake of any Outpost component.
"""

from __future__ import annotations

import asyncio
import threading

__all__ = ["ChaosProxy"]


class ChaosProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._flowing = {
            "up": asyncio.Event(),
            "down": asyncio.Event(),
        }  # up: runner → control plane
        self.accepting = True
        self.connections_made = 0
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> ChaosProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        for ev in self._flowing.values():
            ev.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, r_client: asyncio.StreamReader, w_client: asyncio.StreamWriter) -> None:
        if not self.accepting:
            w_client.close()
            return
        try:
            r_up, w_up = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            w_client.close()
            return
        self.connections_made += 1
        pair = (w_client, w_up)
        self._conns.add(pair)
        try:
            await asyncio.gather(
                self._pipe(r_client, w_up, "up"),
                self._pipe(r_up, w_client, "down"),
                return_exceptions=True,
            )
        finally:
            self._conns.discard(pair)
            for w in pair:
                w.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str
    ) -> None:
        while data := await reader.read(65536):
            await self._flowing[direction].wait()
            writer.write(data)
            await writer.drain()
        writer.close()

    def _call(self, fn) -> None:
        async def run() -> None:
            fn()

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def cut(self) -> None:
        """Drop every live connection abruptly (RST), as a network failure would."""

        def do() -> None:
            for pair in list(self._conns):
                for w in pair:
                    w.transport.abort()
            self._conns.clear()

        self._call(do)

    def freeze(self, direction: str | None = None) -> None:
        """Stop forwarding (both ways, or one) while keeping the sockets open."""
        self._call(
            lambda: [ev.clear() for d, ev in self._flowing.items() if direction in (None, d)]
        )

    def thaw(self) -> None:
        self._call(lambda: [ev.set() for ev in self._flowing.values()])

    def set_accepting(self, accepting: bool) -> None:
        self.accepting = accepting

    @property
    def live_connections(self) -> int:
        return len(self._conns)

    def close(self) -> None:
        def do() -> None:
            self._server.close()
            for pair in list(self._conns):
                for w in pair:
                    w.transport.abort()

        self._call(do)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
