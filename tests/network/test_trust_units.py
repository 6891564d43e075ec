"""The small pieces of runner/tls.py and sdk/pins.py, on real certificates and a real TLS server."""

from __future__ import annotations

import asyncio
import ssl

import httpx
import pytest
import trustme

from outpost.runner.tls import ControlPlaneTransport, pinned_context, trust_failure
from outpost.sdk.pins import parse_pin, spki_pin_of_pem


def test_pins_are_normalised_and_garbage_is_refused() -> None:
    pin = "sha256/" + "A" * 43 + "="
    assert parse_pin(pin) == pin
    assert parse_pin("A" * 43 + "=") == pin  # the prefix is optional
    assert parse_pin("00" * 32) == "sha256/" + "A" * 43 + "="  # hex, as some tools print it
    for bad in ("sha256/short", "sha256/" + "A" * 40, "not a pin at all", "sha256/" + "*" * 44):
        with pytest.raises(ValueError):
            parse_pin(bad)


def test_proxy_setting_keeps_credentials_out_of_the_flag_and_quotes_them() -> None:
    assert ControlPlaneTransport.proxy_setting("", None) is True  # the environment decides
    assert ControlPlaneTransport.proxy_setting("direct", "u:p") is None
    url = ControlPlaneTransport.proxy_setting("http://proxy.corp:3128", "svc@corp:p@ss:w/rd")
    assert url == "http://svc%40corp:p%40ss%3Aw%2Frd@proxy.corp:3128"
    # Credentials already in the URL are replaced, not doubled.
    assert (
        ControlPlaneTransport.proxy_setting("http://old:x@proxy:3128", "new:y")
        == "http://new:y@proxy:3128"
    )
    for bad in ("socks5://proxy:1080", "proxy.corp:3128", "http://"):
        with pytest.raises(ValueError):
            ControlPlaneTransport.proxy_setting(bad, None)


async def test_the_pin_is_checked_before_any_request_byte_is_written(tmp_path) -> None:
    ca, other = trustme.CA(), trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    received = bytearray()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            received.extend(await r.read(4096))
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            await w.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    right = spki_pin_of_pem(cert.cert_chain_pems[0].bytes())
    wrong = spki_pin_of_pem(other.issue_cert("127.0.0.1").cert_chain_pems[0].bytes())
    try:
        async with httpx.AsyncClient(verify=pinned_context(tmp_path / "ca.pem", pins=[right])) as c:
            assert (await c.get(f"https://127.0.0.1:{port}/")).text == "ok"
        received.clear()
        async with httpx.AsyncClient(verify=pinned_context(tmp_path / "ca.pem", pins=[wrong])) as c:
            with pytest.raises(httpx.HTTPError) as info:
                await c.get(
                    f"https://127.0.0.1:{port}/secret-path",
                    headers={"Authorization": "Bearer t0ken"},
                )
        failure = trust_failure(info.value)
        assert failure is not None and right in str(failure) and wrong in str(failure)
        await asyncio.sleep(0.2)
        assert b"t0ken" not in received and b"secret-path" not in received
        # The system store knows nothing of a test CA: a plain verification failure, also named.
        async with httpx.AsyncClient(verify=pinned_context()) as c:
            with pytest.raises(httpx.HTTPError) as info:
                await c.get(f"https://127.0.0.1:{port}/")
        failure = trust_failure(info.value)
        assert failure is not None and "unable to get local issuer certificate" in str(failure)
        # The right CA, the wrong name: the host name is checked too.
        async with httpx.AsyncClient(verify=pinned_context(tmp_path / "ca.pem", pins=[right])) as c:
            with pytest.raises(httpx.HTTPError) as info:
                await c.get(f"https://localhost:{port}/")
        failure = trust_failure(info.value)
        assert failure is not None and "Hostname mismatch" in str(failure)
    finally:
        server.close()
