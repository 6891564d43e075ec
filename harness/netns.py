"""Network namespaces made by the tests: the control plane in one, a runner in another.

Each namespace has one veth pair to the root namespace; the test process (the
clients, and the fault proxy the runner dials) lives in the root. A partition is
an iptables DROP on the runner namespace's veth; latency, jitter and loss come
from :class:`FaultProxy` (this kernel has no netem qdisc).
"""

from __future__ import annotations

import asyncio
import random
import secrets
import subprocess
import threading
import time
from dataclasses import dataclass, field

__all__ = ["FaultProxy", "Namespace", "netns_unavailable"]


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", "netns", "exec", ns, *args] if ns else list(args)
    subprocess.run(cmd, check=True, capture_output=True, timeout=10)


def netns_unavailable() -> str | None:
    """Why namespaces cannot be used here, or None if they can."""
    name = f"op-probe-{secrets.token_hex(3)}"
    try:
        _ip("ip", "netns", "add", name)
    except (OSError, subprocess.CalledProcessError) as exc:
        return (
            f"cannot create network namespaces here (`ip netns add` failed: {exc}); needs root "
            "and iproute2"
        )
    try:
        _ip("iptables", "-L", "-n", ns=name)
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"iptables does not work inside a namespace here: {exc}"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True, timeout=10)
    return None


@dataclass
class Namespace:
    """A namespace joined to the root by a veth pair: root side ``host_ip``, namespace side
    ``ip``."""

    subnet: int  # 10.<subnet>.<tag>.0/30
    name: str = field(default_factory=lambda: f"op-{secrets.token_hex(4)}")

    def __post_init__(self) -> None:
        tag = random.randint(1, 250)
        self.host_ip, self.ip = f"10.{self.subnet}.{tag}.1", f"10.{self.subnet}.{tag}.2"
        self.veth_host, self.veth_ns = f"{self.name[:10]}h", f"{self.name[:10]}n"

    def create(self) -> Namespace:
        _ip("ip", "netns", "add", self.name)
        _ip("ip", "link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_ns)
        _ip("ip", "link", "set", self.veth_ns, "netns", self.name)
        _ip("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.veth_host)
        _ip("ip", "link", "set", self.veth_host, "up")
        _ip("ip", "addr", "add", f"{self.ip}/30", "dev", self.veth_ns, ns=self.name)
        _ip("ip", "link", "set", self.veth_ns, "up", ns=self.name)
        _ip(
            "ip", "link", "set", "lo", "up", ns=self.name
        )  # the runner's engine listens on loopback
        return self

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def partition(self) -> None:
        """Drop every packet on the namespace's link; established TCP connections go silent."""
        for chain, flag in (("OUTPUT", "-o"), ("INPUT", "-i")):
            _ip("iptables", "-A", chain, flag, self.veth_ns, "-j", "DROP", ns=self.name)

    def heal(self) -> None:
        for chain, flag in (("OUTPUT", "-o"), ("INPUT", "-i")):
            _ip("iptables", "-D", chain, flag, self.veth_ns, "-j", "DROP", ns=self.name)

    def destroy(self) -> None:
        subprocess.run(
            ["ip", "link", "del", self.veth_host], check=False, capture_output=True, timeout=10
        )
        subprocess.run(
            ["ip", "netns", "del", self.name], check=False, capture_output=True, timeout=10
        )


class FaultProxy:
    """A TCP proxy that delays every chunk (latency + jitter) and stalls some (loss).

    TCP hides loss from the application as a retransmission stall, so "loss" here
    holds a chunk back for ``loss_stall_s``, as a lost segment's retransmission
    would; bytes are never dropped or reordered (the stream stays TCP-correct).
    A test tool at the network seam, not a fake of any Outpost component.
    """

    def __init__(
        self,
        listen_host: str,
        target: tuple[str, int],
        *,
        delay_s: float = 0.0,
        jitter_s: float = 0.0,
        loss: float = 0.0,
        loss_stall_s: float = 0.3,
    ) -> None:
        self.listen_host, self.target = listen_host, target
        self.delay_s, self.jitter_s, self.loss, self.loss_stall_s = (
            delay_s,
            jitter_s,
            loss,
            loss_stall_s,
        )
        self.port = 0
        self.connections = 0
        self.stalls = 0
        self._rng = random.Random(27)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.listen_host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, r_in: asyncio.StreamReader, w_in: asyncio.StreamWriter) -> None:
        try:
            r_out, w_out = await asyncio.open_connection(*self.target)
        except OSError:
            w_in.close()
            return
        self.connections += 1
        await asyncio.gather(
            self._pipe(r_in, w_out), self._pipe(r_out, w_in), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Chunks leave in order, each no earlier than its arrival + delay: latency, not a bandwidth
        # cap.
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        try:
            while data := await reader.read(65536):
                extra = self.delay_s + self._rng.uniform(0, self.jitter_s)
                if self._rng.random() < self.loss:
                    self.stalls += 1
                    extra += self.loss_stall_s
                await queue.put((time.monotonic() + extra, data))
        except OSError:
            pass
        finally:
            await queue.put((0.0, b""))
            try:
                await asyncio.wait_for(sender, 30)
            except (OSError, TimeoutError, asyncio.CancelledError):
                sender.cancel()
            writer.close()

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
