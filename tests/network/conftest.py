"""Real networks for runners: a private PKI made at test time, a TLS control plane, a real proxy.

Certificates come from ``trustme`` when the tests run; none is checked in.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme

from harness.processes import ControlPlaneProcess, RunnerProcess, _tool, free_port, wait_until

MODEL = "smollm2-135m-instruct"


@dataclass
class Pki:
    """The control plane's CA and certificate, a client certificate, and a second CA (the
    middlebox's)."""

    dir: Path
    ca: trustme.CA
    rogue_ca: trustme.CA

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def server_file(self) -> Path:
        return self.dir / "server.pem"

    @property
    def client_file(self) -> Path:
        return self.dir / "client.pem"

    @property
    def both_cas_file(self) -> Path:
        """What a machine behind TLS inspection trusts: the real CA and the inspection CA."""
        return self.dir / "both-cas.pem"

    def rogue_server_ctx(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.rogue_ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
        return ctx

    def client_ctx(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, rogue = (
        trustme.CA(organization_name="Outpost test CA"),
        trustme.CA(organization_name="Inspection CA"),
    )
    p = Pki(d, ca, rogue)
    ca.cert_pem.write_to_path(str(p.ca_file))
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
        str(p.server_file)
    )
    ca.issue_cert("runner-1.example").private_key_and_cert_chain_pem.write_to_path(
        str(p.client_file)
    )
    p.both_cas_file.write_bytes(ca.cert_pem.bytes() + rogue.cert_pem.bytes())
    for f in d.iterdir():
        f.chmod(0o600)
    return p


class TlsControlPlane(ControlPlaneProcess):
    """``control-plane serve`` with its own TLS (OUTPOST_TLS_*), reached at https://127.0.0.1."""

    def __init__(self, tmp: Path, pki: Pki, extra_env: dict[str, str] | None = None) -> None:
        env = {"OUTPOST_TLS_CERTFILE": str(pki.server_file), **(extra_env or {})}
        super().__init__(tmp / "cp", f"sqlite+aiosqlite:///{tmp / 'cp.db'}", extra_env=env)
        self.pki = pki
        self.url = f"https://127.0.0.1:{self.port}"
        self.client_cert: str | None = None  # presented by the tests' own HTTP calls (mTLS)

    def http(self) -> httpx.Client:
        ctx = self.pki.client_ctx()
        if self.client_cert:
            ctx.load_cert_chain(self.client_cert)
        return httpx.Client(base_url=self.url, verify=ctx, timeout=10, trust_env=False)

    def start(self) -> TlsControlPlane:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*_tool("control-plane"), "serve"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        with self.http() as c:
            wait_until(
                lambda: c.get("/readyz").status_code == 200, 60, f"TLS control plane\n{self.log()}"
            )
        return self

    def connected(self, admin_key: str, runner_id: str) -> bool:
        with self.http() as c:
            data = c.get("/api/runners", headers={"Authorization": f"Bearer {admin_key}"}).json()[
                "data"
            ]
        return any(r["id"] == runner_id and r["connected"] for r in data)


def wait_tls_connected(
    cp: TlsControlPlane, runner: RunnerProcess, admin_key: str, timeout: float = 180
) -> str:
    def ready() -> bool:
        if runner.proc is not None and runner.proc.poll() is not None:
            raise RuntimeError(f"runner exited with {runner.proc.returncode}:\n{runner.log()}")
        return (runner.state_dir / "identity.json").exists() and cp.connected(
            admin_key, runner.identity()["runner_id"]
        )

    try:
        wait_until(ready, timeout, f"runner {runner.name} over TLS")
    except TimeoutError as exc:  # the logs as they are now, not as they were when the wait began
        raise TimeoutError(
            f"{exc}\nrunner log:\n{runner.log()[-3000:]}\ncontrol plane log:\n{cp.log()[-3000:]}"
        ) from None
    return runner.identity()["runner_id"]


def exit_code(runner: RunnerProcess, timeout: float = 60) -> int:
    assert runner.proc is not None
    try:
        return runner.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"runner kept retrying instead of stopping:\n{runner.log()}") from None


@dataclass
class Tinyproxy:
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes]

    def url(self, auth: str | None = None) -> str:
        return f"http://{auth + '@' if auth else ''}127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


PROXY_USER, PROXY_PASSWORD = "runner", "pr0xy-pw"


@pytest.fixture
def tinyproxy(tmp_path: Path) -> Iterator[Tinyproxy]:
    """Debian's tinyproxy with basic auth, as a corporate egress proxy (scripts/test installs
    it)."""
    exe = shutil.which("tinyproxy")
    if exe is None:
        pytest.fail(
            "tinyproxy is not installed: scripts/test installs it (apt-get install tinyproxy)"
        )
    port = free_port()
    conf = tmp_path / "tinyproxy.conf"
    # No ConnectPort line: CONNECT to any port (the tests' control planes listen on free ports).
    conf.write_text(
        f"Port {port}\nListen 127.0.0.1\nTimeout 600\nLogLevel Connect\nMaxClients 100\n"
        f"BasicAuth {PROXY_USER} {PROXY_PASSWORD}\nDisableViaHeader Yes\n"
    )
    log_path = tmp_path / "tinyproxy.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([exe, "-d", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    tp = Tinyproxy(port, log_path, proc)
    try:
        wait_until(
            lambda: "Reloading config file finished" in tp.log() or _listening(port),
            10,
            "tinyproxy",
        )
        yield tp
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
