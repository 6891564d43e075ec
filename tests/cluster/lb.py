"""A tiny round-robin TCP load balancer for the cluster tests.

Like an L4 load balancer in front of control-plane replicas: each new
connection goes to the next backend in turn; a backend that refuses the
connection (a dead replica) is skipped, as a load balancer's health check
would. It only ever listens and dials on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import Counter

__all__ = ["RoundRobinLB"]


class RoundRobinLB:
    def __init__(self, backends: list[int]) -> None:
        self.backends = list(backends)
        self.port = 0
        self._order = itertools.cycle(range(len(self.backends)))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._live: Counter[int] = Counter()  # backend port -> open connections
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> RoundRobinLB:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def live(self, backend: int) -> int:
        """Connections open now to ``backend``."""
        return self._live[backend]

    async def _handle(self, r_client: asyncio.StreamReader, w_client: asyncio.StreamWriter) -> None:
        for _ in range(len(self.backends)):
            backend = self.backends[next(self._order)]
            try:
                r_up, w_up = await asyncio.open_connection("127.0.0.1", backend)
                break
            except OSError:
                continue
        else:
            w_client.close()
            return
        self._live[backend] += 1
        self._writers |= {w_client, w_up}
        try:
            await asyncio.gather(
                _pipe(r_client, w_up), _pipe(r_up, w_client), return_exceptions=True
            )
        finally:
            self._live[backend] -= 1
            for w in (w_client, w_up):
                self._writers.discard(w)
                w.close()

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()  # one side ended: end the other, as a proxy does
