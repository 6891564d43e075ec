"""TLS between runner and control plane: private CA, pinning, mTLS, and a TLS-inspecting
middlebox."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from harness.processes import ControlPlaneProcess, RunnerProcess, wait_until
from outpost.sdk.pins import spki_pin_of_pem
from tests.network.conftest import MODEL, Pki, TlsControlPlane, exit_code, wait_tls_connected
from tests.network.mitm import InterceptingProxy


def _log(runner: RunnerProcess) -> str:
    return " ".join(runner.log().split())  # the console wraps long lines


def _runner(
    cp: TlsControlPlane,
    tmp: Path,
    name: str,
    args: list[str],
    url: str | None = None,
    env: dict[str, str] | None = None,
) -> RunnerProcess:
    return RunnerProcess(
        cp,
        tmp / name,
        name,
        url=url or cp.url,
        extra_env=env,
        args=["--parallel", "1", "--ctx", "1024", *args],
    )


def test_runner_serves_over_tls_with_a_private_ca_and_the_tokens_pin(
    tmp_path: Path, pki: Pki
) -> None:
    cp = TlsControlPlane(tmp_path, pki).start()
    runner = _runner(cp, tmp_path, "tls", ["--ca-bundle", str(pki.ca_file)])
    try:
        admin = cp.cli("keys", "create", "admin", "--admin").splitlines()[-1]
        token = cp.enrollment_token("tls")
        pin = spki_pin_of_pem(pki.server_file.read_bytes())
        assert token.endswith(
            "#" + pin
        )  # the token carries the key of the control plane that made it
        runner.start(token)
        wait_tls_connected(cp, runner, admin)
        assert json.loads((runner.state_dir / "identity.json").read_text())["pins"] == [pin]
        client = openai.OpenAI(
            base_url=f"{cp.url}/v1",
            api_key=admin,
            http_client=openai.DefaultHttpxClient(verify=pki.client_ctx(), trust_env=False),
        )
        reply = client.chat.completions.create(
            model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "Hi"}]
        )
        assert reply.choices[0].message.content is not None
        assert "wss://127.0.0.1" in _log(runner)
    finally:
        runner.stop()
        cp.stop()


def test_an_untrusted_certificate_stops_the_runner_with_a_clear_error(
    tmp_path: Path, pki: Pki
) -> None:
    cp = TlsControlPlane(tmp_path, pki).start()
    runner = _runner(cp, tmp_path, "no-ca", [])  # the system store knows nothing of the test CA
    try:
        runner.start()
        assert exit_code(runner) == 2
        log = _log(runner)
        assert "TLS verification of the control plane failed" in log and "certificate" in log
        assert "--ca-bundle" in log
    finally:
        runner.stop()
        cp.stop()


def test_a_tls_inspecting_proxy_is_refused_by_the_pin(tmp_path: Path, pki: Pki) -> None:
    """The runner trusts the inspection CA too (as machines behind such boxes do): only the pin
    catches it."""
    cp = TlsControlPlane(tmp_path, pki).start()
    mitm = InterceptingProxy(cp.port, pki.rogue_server_ctx(), pki.client_ctx()).start()
    mitm.mode = "intercept"
    # Enrollment through the box: refused inside the TLS handshake, so the token never reaches it.
    victim = _runner(cp, tmp_path, "victim", ["--ca-bundle", str(pki.both_cas_file)], url=mitm.url)
    runner = _runner(cp, tmp_path, "pinned", ["--ca-bundle", str(pki.both_cas_file)], url=mitm.url)
    try:
        admin = cp.cli("keys", "create", "admin", "--admin").splitlines()[-1]
        victim.start()
        assert exit_code(victim) == 2
        assert "TLS pin check failed" in _log(victim) and "matches none of the pinned keys" in _log(
            victim
        )
        assert mitm.intercepted >= 1 and mitm.plaintext_seen == 0
        assert not (victim.state_dir / "identity.json").exists()

        # An enrolled runner whose path is later intercepted stops instead of redialling forever.
        mitm.mode = "pass"
        runner.start()
        wait_tls_connected(cp, runner, admin)
        mitm.mode = "intercept"
        seen_before = mitm.plaintext_seen
        mitm.cut()
        assert exit_code(runner) == 2
        assert "TLS pin check failed" in _log(runner)
        assert mitm.plaintext_seen == seen_before == 0
    finally:
        victim.stop()
        runner.stop()
        mitm.close()
        cp.stop()


def test_mtls_required_refuses_a_runner_without_a_client_certificate(
    tmp_path: Path, pki: Pki
) -> None:
    cp = TlsControlPlane(
        tmp_path,
        pki,
        {"OUTPOST_TLS_CLIENT_CA": str(pki.ca_file), "OUTPOST_TLS_CLIENT_AUTH": "required"},
    )
    cp.client_cert = str(pki.client_file)
    cp.start()
    bare = _runner(cp, tmp_path, "bare", ["--ca-bundle", str(pki.ca_file)])
    good = _runner(
        cp,
        tmp_path,
        "mtls",
        ["--ca-bundle", str(pki.ca_file), "--client-cert", str(pki.client_file)],
    )
    try:
        admin = cp.cli("keys", "create", "admin", "--admin").splitlines()[-1]
        bare.start()
        assert exit_code(bare) == 2
        assert "if it requires client certificates (mTLS), set --client-cert" in _log(bare)
        good.start()
        wait_tls_connected(cp, good, admin)
    finally:
        bare.stop()
        good.stop()
        cp.stop()


def test_an_explicit_pin_that_does_not_match_stops_the_runner(tmp_path: Path, pki: Pki) -> None:
    cp = TlsControlPlane(tmp_path, pki).start()
    wrong = "sha256/" + "A" * 43 + "="
    runner = _runner(
        cp, tmp_path, "wrong-pin", ["--ca-bundle", str(pki.ca_file), "--pin-sha256", wrong]
    )
    try:
        runner.start()
        assert exit_code(runner) == 2
        assert wrong in _log(runner)
        wait_until(
            lambda: runner.proc is not None and runner.proc.poll() is not None, 5, "runner to exit"
        )
    finally:
        runner.stop()
        cp.stop()


def test_every_way_of_making_a_token_carries_the_pin(tmp_path: Path, pki: Pki) -> None:
    cp = TlsControlPlane(tmp_path, pki).start()
    pin = spki_pin_of_pem(pki.server_file.read_bytes())
    try:
        admin = cp.cli("keys", "create", "admin", "--admin").splitlines()[-1]
        assert cp.enrollment_token("by-cli").endswith("#" + pin)
        with cp.http() as c:
            resp = c.post(
                "/api/runners/enroll",
                json={"name": "by-api"},
                headers={"Authorization": f"Bearer {admin}"},
            )
        assert resp.status_code == 201, resp.text
        assert resp.json()["token"].endswith("#" + pin)
    finally:
        cp.stop()


def test_behind_a_terminating_proxy_the_token_carries_the_configured_pin(
    tmp_path: Path, pki: Pki
) -> None:
    pin = spki_pin_of_pem(pki.server_file.read_bytes())  # the proxy's key, in a real deployment
    db = f"sqlite+aiosqlite:///{tmp_path / 'cp.db'}"
    plain = ControlPlaneProcess(tmp_path / "plain", db)
    assert "#" not in plain.enrollment_token("no-tls")
    proxied = ControlPlaneProcess(
        tmp_path / "proxied", db, extra_env={"OUTPOST_TLS_TOKEN_PIN": pin.removeprefix("sha256/")}
    )
    assert proxied.enrollment_token("behind-lb").endswith("#" + pin)
    bad = ControlPlaneProcess(
        tmp_path / "bad", db, extra_env={"OUTPOST_TLS_TOKEN_PIN": "sha256/nope"}
    )
    with pytest.raises(RuntimeError, match="not a SHA-256 public-key pin"):
        bad.enrollment_token("never")
