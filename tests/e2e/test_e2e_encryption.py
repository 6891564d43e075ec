"""End-to-end encryption through the real stack: SDK → control plane → tunnel → runner → llama.cpp.

The control plane is the adversary here: a canary in the prompt and in the
completion must never reach its database, its log, its audit log or its
request records; it must not be able to replay a sealed request, swap a
runner's key, or bill from a forged receipt.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import MetaData, create_engine, select, text

from harness.processes import wait_until
from outpost.control_plane.db.engine import sync_url
from outpost.runner.e2e import RunnerE2E, describe_keys, load_keys
from outpost.runner.engine_client import HttpxEngineClient
from outpost.runner.identity import enroll
from outpost.runner.relay import EngineEndpoint, relay
from outpost.runner.sealed import SealedRelay
from outpost.runner.tunnel import TunnelClient
from outpost.sdk.client import AsyncClient, Client
from outpost.sdk.client._e2e import SealedDecoder, open_body, seal_call
from outpost.sdk.e2e import RunnerKeys, signed_hpke_key
from outpost.sdk.errors import APIStatusError, RunnerKeyError
from outpost.sdk.identity import b64u_decode, b64u_encode
from outpost.sdk.models import ChatCompletion
from outpost.sdk.protocol import StatusFrame
from outpost.sdk.sealed import RUNNER_HEADER
from tests.conftest import Stack, build_stack

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A stack of this module's own: its tests count records and keys exactly, so the
    shared session stack (used by hundreds of other tests) would make them order-dependent."""
    yield from build_stack(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def admin_key(stack: Stack) -> str:
    return stack.cp.cli("keys", "create", "e2e-admin", "--admin").splitlines()[-1]


@pytest.fixture(scope="module")
def fingerprint(stack: Stack) -> str:
    """Read off the runner's machine, as an operator would (``runner keys``)."""
    return describe_keys(stack.runner.state_dir)["identity_fingerprint"]


@pytest.fixture(scope="module")
def client(stack: Stack, fingerprint: str) -> Iterator[Client]:
    c = Client(
        stack.cp.url,
        api_key=stack.api_key,
        e2e=True,
        pins={stack.runner_id: fingerprint},
        timeout=120,
    )
    # The runner uploads its key document while its engine loads; it is there by the time it
    # connects.
    wait_until(
        lambda: any(r.runner_id == stack.runner_id for r in c.runners.e2e_candidates(MODEL)),
        30,
        "the runner's e2e key",
    )
    yield c
    c.close()


def db_rows(stack: Stack) -> dict[str, list[dict[str, Any]]]:
    engine = create_engine(sync_url(stack.database_url))
    try:
        meta = MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            return {
                name: [dict(r._mapping) for r in conn.execute(select(table))]
                for name, table in meta.tables.items()
            }
    finally:
        engine.dispose()


def e2e_records(stack: Stack) -> list[dict[str, Any]]:
    engine = create_engine(sync_url(stack.database_url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT * FROM request_records WHERE e2e ORDER BY created_at")
                if not stack.database_url.startswith("sqlite")
                else text("SELECT * FROM request_records WHERE e2e = 1 ORDER BY created_at")
            )
            return [dict(r._mapping) for r in rows]
    finally:
        engine.dispose()


def e2e_count(stack: Stack) -> int:
    """How many e2e records there are once those of requests already answered are written.

    The writer commits a record up to ``records_linger_s`` (0.25 s) after its request
    ended, batched with others (services/record_writer.py): count once nothing new has
    appeared for three times that.
    """
    count, stable_since = len(e2e_records(stack)), time.monotonic()
    while time.monotonic() - stable_since < 0.75:
        time.sleep(0.1)
        if (now := len(e2e_records(stack))) != count:
            count, stable_since = now, time.monotonic()
    return count


def next_record(stack: Stack, before: int) -> dict[str, Any]:
    """The e2e request record written after ``before`` existed (records are written in the
    background)."""
    wait_until(lambda: len(e2e_records(stack)) > before, 15, "the e2e request record")
    return e2e_records(stack)[before]


def test_canaries_never_reach_the_control_plane(
    stack: Stack, client: Client, admin_key: str
) -> None:
    prompt_canary = f"PROMPTCANARY{secrets.token_hex(6)}"
    answer_canary = f"ANSWERCANARY{secrets.token_hex(6)}"
    # A grammar forces the completion to contain the canary; it travels sealed like the rest.
    grammar = f'root ::= "{answer_canary}"'
    messages = [
        {"role": "system", "content": f"The password is {prompt_canary}."},
        {"role": "user", "content": f"Repeat the password {prompt_canary}."},
    ]
    before = e2e_count(stack)
    reply = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=32, temperature=0, grammar=grammar
    )
    assert answer_canary in reply.choices[0].message.content
    chunks = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=32, temperature=0, grammar=grammar, stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert answer_canary in streamed
    completion = client.completions.create(
        model=MODEL, prompt=f"Password: {prompt_canary}", max_tokens=32, grammar=grammar
    )
    assert answer_canary in completion.choices[0].text
    wait_until(lambda: len(e2e_records(stack)) >= before + 3, 15, "three e2e request records")

    canaries = (prompt_canary, answer_canary)
    # The database: every row of every table, and for SQLite the raw files (WAL included).
    dump = repr(db_rows(stack))
    assert not any(c in dump for c in canaries)
    if stack.database_url.startswith("sqlite"):
        db_file = Path(stack.database_url.split("///", 1)[1])
        for path in db_file.parent.glob(db_file.name + "*"):
            raw = path.read_bytes()
            assert not any(c.encode() in raw for c in canaries), path
    # The request records exist, flagged e2e, with usage from receipts.
    records = e2e_records(stack)[before:]
    assert {r["endpoint"] for r in records} == {"/v1/chat/completions", "/v1/completions"}
    assert all(r["status"] == "ok" and r["completion_tokens"] > 0 for r in records)
    # The control plane's own log (stdout and stderr of the process).
    log = stack.cp.log()
    assert "POST /v1/e2e/chat/completions" in log
    assert not any(c in log for c in canaries)
    # The audit log, through the API an auditor uses.
    admin = Client(stack.cp.url, api_key=admin_key)
    try:
        events = admin.audit.list(limit=500)
        export = admin.audit.export()
    finally:
        admin.close()
    assert any(
        e.get("type") == "inference" and (e.get("data") or {}).get("e2e") for e in events.data
    )
    for blob in (repr(events.data), export):
        assert not any(c in blob for c in canaries)


def test_replayed_sealed_request_is_refused_by_the_runner(stack: Stack, client: Client) -> None:
    target = client.runners.e2e_key(stack.runner_id)
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    body, call = seal_call(target, payload, stream=False)
    url = f"{stack.cp.url}/v1/e2e/chat/completions"
    headers = {"Authorization": f"Bearer {stack.api_key}", RUNNER_HEADER: stack.runner_id}
    first = httpx.post(url, json=body, headers=headers, timeout=60)
    assert first.status_code == 200
    reply = open_body(
        SealedDecoder(call, ChatCompletion.model_validate, stream=False), first.content
    )
    assert reply.choices and reply.usage.completion_tokens > 0
    again = httpx.post(url, json=body, headers=headers, timeout=60)
    assert again.status_code == 400, again.text
    assert again.json()["error"]["code"] == "e2e_replay"


def test_swapped_runner_key_is_refused(stack: Stack, fingerprint: str) -> None:
    impostor = RunnerKeys.generate()
    # A client that pinned someone else's identity refuses this runner's (genuine) key...
    pins = {stack.runner_id: impostor.fingerprint}
    with (
        Client(stack.cp.url, api_key=stack.api_key, e2e=True, pins=pins) as c,
        pytest.raises(RunnerKeyError),
    ):
        c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
    # ...and the control plane refuses a key document the runner's identity did not sign.
    doc = signed_hpke_key(impostor.identity, impostor.hpke_public, stack.runner_id)
    resp = httpx.put(f"{stack.cp.url}/api/runners/{stack.runner_id}/e2e-key", json=doc, timeout=10)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "e2e_key_invalid"
    with Client(stack.cp.url, api_key=stack.api_key, pins={stack.runner_id: fingerprint}) as c:
        assert c.runners.e2e_key(stack.runner_id).identity_fingerprint == fingerprint


def test_usage_and_cost_come_from_the_verified_receipt(stack: Stack, client: Client) -> None:
    before = e2e_count(stack)
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count to 3"}],
        max_tokens=6,
        temperature=0,
    )
    record = next_record(stack, before)
    assert record["runner_id"] == stack.runner_id and record["e2e"]
    assert (record["prompt_tokens"], record["completion_tokens"]) == (
        reply.usage.prompt_tokens,
        reply.usage.completion_tokens,
    )
    assert record["error_type"] is None
    assert record["cost_usd"] is not None and record["cost_usd"] > 0


def test_sealed_requests_count_against_token_quotas(stack: Stack, fingerprint: str) -> None:
    """The control plane cannot read a sealed prompt, yet its token quota holds: the estimate is
    the envelope's size plus the cap, and the reservation settles to the receipt's usage."""
    key = stack.cp.cli("keys", "create", "e2e-quota", "--tenant", "e2e-quota").splitlines()[-1]
    stack.cp.cli("quotas", "set", "--tenant", "e2e-quota", "--tokens-per-minute", "300")
    with Client(
        stack.cp.url, api_key=key, e2e=True, pins={stack.runner_id: fingerprint}, timeout=120
    ) as client:
        ask = [{"role": "user", "content": "Hi"}]
        with pytest.raises(APIStatusError) as refused:
            client.chat.completions.create(model=MODEL, messages=ask, max_tokens=400)
        assert refused.value.status_code == 429 and refused.value.code == "request_too_large"
        reply = client.chat.completions.create(model=MODEL, messages=ask, max_tokens=4)
        assert reply.usage.completion_tokens > 0


# --- a runner that lies about usage -----------------------------------------------------

USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


def _engine(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "id": "x",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "ok"},
                    "finish_reason": "stop",
                }
            ],
            "usage": USAGE,
        },
    )


async def test_forged_receipt_is_rejected_and_not_billed(
    stack: Stack, admin_key: str, tmp_path: Path
) -> None:
    model = f"forgery-{secrets.token_hex(3)}"
    admin = AsyncClient(stack.cp.url, api_key=admin_key)
    http = httpx.AsyncClient()
    engine = HttpxEngineClient(httpx.AsyncClient(transport=httpx.MockTransport(_engine)))
    token = (await admin.runners.enroll(f"forger-{secrets.token_hex(3)}")).token
    identity = await enroll(stack.cp.url, token, http)
    keys = load_keys(tmp_path, identity)
    await RunnerE2E(keys, identity).publish_once(http)
    # Same HPKE key (the request opens), receipts signed by a key the control plane never saw.
    relays = {
        "current": SealedRelay(
            RunnerKeys(Ed25519PrivateKey.generate(), keys.hpke_key), identity.runner_id
        )
    }
    endpoint = EngineEndpoint("http://engine.test", {}, {})

    async def on_stream(out: Any) -> None:
        await relay(out, endpoint, engine, sealed=relays["current"])

    tunnel = TunnelClient(
        identity=identity,
        on_stream=on_stream,
        status=StatusFrame,
        connections=1,
        hello_fields=lambda: {"models": [{"name": model, "engine": "fake"}], "capacity": 2},
    )
    task = asyncio.create_task(tunnel.run())
    client = AsyncClient(
        stack.cp.url, api_key=stack.api_key, e2e=True, pins={identity.runner_id: keys.fingerprint}
    )
    try:
        await asyncio.wait_for(tunnel.connected.wait(), 15)
        messages = [{"role": "user", "content": "Hi"}]
        before = await asyncio.to_thread(e2e_count, stack)
        reply = await client.chat.completions.create(model=model, messages=messages, max_tokens=16)
        assert reply.choices[0].message.content == "ok"  # the client is served...
        forged = await asyncio.to_thread(next_record, stack, before)
        # ...but no usage is taken from a receipt the runner's identity did not sign. (Cost is
        # the control plane's own measure of engine time, docs/cost.md; it never reads the receipt.)
        assert (forged["prompt_tokens"], forged["completion_tokens"]) == (0, 0)
        assert forged["error_type"] == "receipt_rejected"
        assert f"receipt from runner {identity.runner_id} REJECTED" in stack.cp.log()

        # The honest runner (same process, so the same replay guard).
        relays["current"] = SealedRelay(keys, identity.runner_id, guard=relays["current"].guard)
        await client.chat.completions.create(model=model, messages=messages, max_tokens=16)
        honest = await asyncio.to_thread(next_record, stack, before + 1)
        assert (honest["prompt_tokens"], honest["completion_tokens"]) == (11, 7)
        assert honest["error_type"] is None
    finally:
        try:
            await admin.runners.revoke(identity.runner_id)
        except APIStatusError:
            pass
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for c in (client, admin):
            await c.close()
        await http.aclose()
        await engine.aclose()
    # A revoked runner cannot publish a key any more.
    async with httpx.AsyncClient() as h:
        resp = await h.put(
            f"{stack.cp.url}/api/runners/{identity.runner_id}/e2e-key",
            timeout=10,
            json=RunnerE2E(keys, identity).key_document(),
        )
    assert resp.status_code == 403


async def test_key_document_uploads_are_checked(
    stack: Stack, admin_key: str, tmp_path: Path
) -> None:
    """Only the runner's identity can publish its key, and an old document cannot roll a new one
    back."""
    async with AsyncClient(stack.cp.url, api_key=admin_key) as admin, httpx.AsyncClient() as http:
        identity = await enroll(
            stack.cp.url, (await admin.runners.enroll(f"keys-{secrets.token_hex(3)}")).token, http
        )
        keys = load_keys(tmp_path, identity)
        url = f"{stack.cp.url}/api/runners/{identity.runner_id}/e2e-key"
        now = time.time()

        def doc(
            runner_id: str = identity.runner_id, at: float = now, signer: RunnerKeys = keys
        ) -> dict:
            return signed_hpke_key(signer.identity, keys.hpke_public, runner_id, clock=lambda: at)

        assert (
            await http.get(url, headers={"Authorization": f"Bearer {admin_key}"})
        ).status_code == 404
        stored = await http.put(url, json=doc())
        assert (
            stored.status_code == 200 and stored.json()["identity_fingerprint"] == keys.fingerprint
        )
        assert (
            await http.put(url, json=doc())
        ).status_code == 200  # the same document again: idempotent
        older = await http.put(url, json=doc(at=now - 60))
        assert older.status_code == 409 and older.json()["error"]["code"] == "e2e_key_stale"
        for bad in (
            doc(runner_id=stack.runner_id),
            doc(at=now + 3600),
            doc(signer=RunnerKeys.generate()),
            {**doc(), "sig": _flip_first_byte(doc()["sig"])},
        ):
            resp = await http.put(url, json=bad)
            assert resp.status_code == 400 and resp.json()["error"]["code"] == "e2e_key_invalid", (
                resp.text
            )
        served = await http.get(url, headers={"Authorization": f"Bearer {admin_key}"})
        assert served.json() == doc()  # byte-for-byte what the runner signed
        await admin.runners.revoke(identity.runner_id)
        assert (await http.put(url, json=doc(at=now + 1))).status_code == 403


def _flip_first_byte(sig: str) -> str:
    """A signature that is certainly wrong. (Rewriting its last base64 characters is not: the
    final character of 64 bytes carries padding bits a decoder ignores, so the bytes may not
    change.)"""
    raw = b64u_decode(sig)
    return b64u_encode(bytes([raw[0] ^ 0xFF]) + raw[1:])
