"""A runner behind a corporate HTTP CONNECT proxy (Debian's tinyproxy, with basic auth)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.processes import ControlPlaneProcess, RunnerProcess
from tests.network.conftest import (
    PROXY_PASSWORD,
    PROXY_USER,
    Pki,
    Tinyproxy,
    TlsControlPlane,
    exit_code,
    wait_tls_connected,
)

ARGS = ["--parallel", "1", "--ctx", "1024"]


def _connects_through(proxy: Tinyproxy, port: int) -> int:
    return len(re.findall(rf"CONNECT 127\.0\.0\.1:{port} ", proxy.log()))


def test_wss_through_an_explicit_proxy_with_basic_auth(
    tmp_path: Path, pki: Pki, tinyproxy: Tinyproxy
) -> None:
    cp = TlsControlPlane(tmp_path, pki).start()
    runner = RunnerProcess(
        cp,
        tmp_path / "runner",
        "proxied",
        url=cp.url,
        args=[*ARGS, "--ca-bundle", str(pki.ca_file), "--proxy", tinyproxy.url()],
        extra_env={"OUTPOST_PROXY_AUTH": f"{PROXY_USER}:{PROXY_PASSWORD}"},
    )
    try:
        admin = cp.cli("keys", "create", "admin", "--admin").splitlines()[-1]
        runner.start()
        wait_tls_connected(cp, runner, admin)
        # Enrollment, the e2e key upload and both tunnel connections all went out through the proxy.
        assert _connects_through(tinyproxy, cp.port) >= 3, tinyproxy.log()
        assert PROXY_PASSWORD not in runner.log()
    finally:
        runner.stop()
        cp.stop()


def test_ws_through_the_proxy_named_by_the_environment(
    tmp_path: Path, tinyproxy: Tinyproxy
) -> None:
    cp = ControlPlaneProcess(tmp_path / "cp", f"sqlite+aiosqlite:///{tmp_path / 'cp.db'}").start()
    proxy = tinyproxy.url(f"{PROXY_USER}:{PROXY_PASSWORD}")
    runner = RunnerProcess(
        cp,
        tmp_path / "runner",
        "env-proxied",
        args=ARGS,
        extra_env={"HTTP_PROXY": proxy, "http_proxy": proxy, "NO_PROXY": "", "no_proxy": ""},
    )
    try:
        admin = cp.api_key()
        runner.start()
        runner.wait_connected(admin)
        assert _connects_through(tinyproxy, cp.port) >= 2, (
            tinyproxy.log()
        )  # the tunnel's connections
    finally:
        runner.stop()
        cp.stop()


@pytest.mark.parametrize("auth", [None, f"{PROXY_USER}:wrong"])
def test_a_proxy_refusing_the_runner_stops_it_with_a_clear_error(
    tmp_path: Path, pki: Pki, tinyproxy: Tinyproxy, auth: str | None
) -> None:
    cp = TlsControlPlane(tmp_path, pki).start()
    env = {"OUTPOST_PROXY_AUTH": auth} if auth else {}
    runner = RunnerProcess(
        cp,
        tmp_path / "runner",
        "refused",
        url=cp.url,
        extra_env=env,
        args=[*ARGS, "--ca-bundle", str(pki.ca_file), "--proxy", tinyproxy.url()],
    )
    try:
        runner.start()
        assert exit_code(runner) == 2
        log = " ".join(runner.log().split())
        assert "the proxy refused to connect to the control plane" in log
        assert re.search(r": 40[17] ", log), log
    finally:
        runner.stop()
        cp.stop()


async def test_an_enrolled_runner_whose_proxy_refuses_it_stops_too(tinyproxy: Tinyproxy) -> None:
    """The tunnel's own dial (not only enrollment) treats 401/407 from the proxy as final."""
    import asyncio

    from outpost.runner.identity import RunnerIdentity
    from outpost.runner.tls import ControlPlaneTransport, pinned_context
    from outpost.runner.tunnel import TunnelClient, TunnelTerminated
    from outpost.sdk.identity import IdentityKey
    from outpost.sdk.protocol import StatusFrame

    async def never(_out: object) -> None:
        raise AssertionError("no stream can arrive")

    identity = RunnerIdentity(
        runner_id="run-x", key=IdentityKey.generate(), control_plane="https://127.0.0.1:9"
    )
    transport = ControlPlaneTransport(
        ssl=pinned_context(), proxy=tinyproxy.url(f"{PROXY_USER}:wrong")
    )
    tunnel = TunnelClient(
        identity=identity,
        hello_fields=dict,
        on_stream=never,
        status=lambda: StatusFrame(),
        connections=1,
        transport=transport,
    )
    with pytest.raises(ExceptionGroup) as info:
        await asyncio.wait_for(tunnel.run(), 30)
    (exc,) = info.value.exceptions
    assert isinstance(
        exc, TunnelTerminated
    ) and "the proxy refused the runner's credentials" in str(exc)
