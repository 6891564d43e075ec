"""The SDK against FakeOutpost (an httpx handler): both clients, errors, retries, e2e.

Every test runs with the blocking :class:`Client` and the :class:`AsyncClient`,
which must behave the same (the first is generated from the second).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from outpost.sdk.client import AsyncClient, Client, RetryPolicy
from outpost.sdk.e2e import (
    DecryptionError,
    OutOfOrderChunkError,
    RunnerKeys,
    TruncatedStreamError,
    signed_hpke_key,
)
from outpost.sdk.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BudgetExceededError,
    ConflictError,
    InternalServerError,
    NoPinnedRunnerError,
    NotFoundError,
    OutpostError,
    PermissionDeniedError,
    RateLimitError,
    RunnerKeyError,
    ServiceUnavailableError,
    StreamIntegrityError,
)
from outpost.sdk.models import ChatCompletion, ChatCompletionChunk, Completion, EmbeddingResponse
from tests.sdk.fakes import CHAT, MODEL, FakeOutpost, error

ROOT = Path(__file__).resolve().parents[2]
BASE = "http://outpost.test"
FAST = RetryPolicy(max_retries=2, backoff_base_s=0.001, backoff_cap_s=0.002, retry_after_cap_s=0.01)
MESSAGES = [{"role": "user", "content": "Say hello"}]


class Driver:
    """Runs one call on either client, so each test is written once for both."""

    def __init__(self, client: Client | AsyncClient) -> None:
        self.client = client
        self.is_async = isinstance(client, AsyncClient)

    def __call__(self, fn: Callable[[Any], Any]) -> Any:
        if not self.is_async:
            return fn(self.client)

        async def go() -> Any:
            return await fn(self.client)

        return asyncio.run(go())

    def stream(self, fn: Callable[[Any], Any]) -> list[Any]:
        if not self.is_async:
            return list(fn(self.client))

        async def go() -> list[Any]:
            return [item async for item in await fn(self.client)]

        return asyncio.run(go())


@pytest.fixture(params=["sync", "async"])
def connect(request: pytest.FixtureRequest) -> Callable[..., Driver]:
    def make(fake: FakeOutpost, **kwargs: Any) -> Driver:
        cls = Client if request.param == "sync" else AsyncClient
        kwargs.setdefault("retry", FAST)
        kwargs.setdefault("api_key", fake.api_key)
        return Driver(cls(BASE, transport=fake.transport(), **kwargs))

    return make


@pytest.fixture
def fake() -> FakeOutpost:
    return FakeOutpost()


def chat(**kw: Any) -> Callable[[Any], Any]:
    return lambda c: c.chat.completions.create(model=MODEL, messages=MESSAGES, **kw)


# --- inference ---------------------------------------------------------------------


def test_chat_completion_is_typed_and_authenticated(connect, fake: FakeOutpost) -> None:
    reply = connect(fake)(chat(max_tokens=8, temperature=0, top_k=3))
    assert isinstance(reply, ChatCompletion)
    assert reply.choices[0].message.content == "Hello there" and reply.usage.total_tokens == 7
    sent = fake.calls[-1]
    assert sent.url == f"{BASE}/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert json.loads(sent.content) == {
        "model": MODEL,
        "messages": MESSAGES,
        "max_tokens": 8,
        "temperature": 0,
        "top_k": 3,
    }


def test_chat_stream_yields_typed_chunks(connect, fake: FakeOutpost) -> None:
    chunks = connect(fake).stream(chat(stream=True))
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert "".join(c.choices[0].delta.content for c in chunks) == "Hello there"
    assert json.loads(fake.calls[-1].content)["stream"] is True


def test_error_event_after_first_byte_raises(connect, fake: FakeOutpost) -> None:
    body = (
        'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n'
        'data: {"error":{"message":"The runner stopped '
        'mid-stream","type":"server_error","code":"runner_lost"}}\n\n'
        "data: [DONE]\n\n"
    )
    fake.script.append(
        (
            "/v1/chat",
            httpx.Response(
                200, content=body.encode(), headers={"content-type": "text/event-stream"}
            ),
        )
    )
    with pytest.raises(InternalServerError) as info:
        connect(fake).stream(chat(stream=True))
    assert info.value.code == "runner_lost"


def test_completions_embeddings_and_models(connect, fake: FakeOutpost) -> None:
    drive = connect(fake)
    completion = drive(lambda c: c.completions.create(model=MODEL, prompt="Hello", max_tokens=1))
    assert isinstance(completion, Completion) and completion.choices[0].text == " world"
    emb = drive(lambda c: c.embeddings.create(model=MODEL, input="Hello"))
    assert isinstance(emb, EmbeddingResponse) and emb.data[0].embedding == [0.1, 0.2]
    assert [m.id for m in drive(lambda c: c.models.list())] == [MODEL]


def test_base_url_may_end_in_v1(fake: FakeOutpost) -> None:
    client = Client(BASE + "/v1/", api_key=fake.api_key, transport=fake.transport())
    client.models.list()
    assert fake.calls[-1].url == f"{BASE}/v1/models"


def test_timeout_travels_with_each_request(connect, fake: FakeOutpost) -> None:
    drive = connect(fake, timeout=12.5)
    drive(lambda c: c.models.list())
    assert fake.calls[-1].extensions["timeout"]["read"] == 12.5
    drive(chat(timeout=3.0))
    assert fake.calls[-1].extensions["timeout"] == {
        "connect": 3.0,
        "read": 3.0,
        "write": 3.0,
        "pool": 3.0,
    }


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "type_", "cls"),
    [
        (400, "invalid_request", "invalid_request_error", BadRequestError),
        (401, "invalid_api_key", "invalid_request_error", AuthenticationError),
        (403, "forbidden", "permission_error", PermissionDeniedError),
        (404, "model_not_found", "invalid_request_error", NotFoundError),
        (409, "runner_exists", "invalid_request_error", ConflictError),
        (429, "budget_exceeded", "budget_exceeded", BudgetExceededError),
        (500, "internal_error", "server_error", InternalServerError),
    ],
)
def test_error_envelope_maps_to_exception(
    connect, fake: FakeOutpost, status: int, code: str, type_: str, cls: type[APIStatusError]
) -> None:
    fake.script.append(
        ("/v1/chat", error(status, "nope", code, type_, headers={"x-request-id": "req_1"}))
    )
    with pytest.raises(cls) as info:
        connect(fake)(chat())
    err = info.value
    assert isinstance(err, OutpostError)
    assert (err.status_code, err.code, err.type, err.message, err.request_id) == (
        status,
        code,
        type_,
        "nope",
        "req_1",
    )
    assert len(fake.calls) == 1, "none of these is retried for a POST"


def test_wrong_api_key_is_authentication_error(connect, fake: FakeOutpost) -> None:
    with pytest.raises(AuthenticationError):
        connect(fake, api_key="sk-wrong")(lambda c: c.models.list())


def test_non_json_error_body_still_maps(connect, fake: FakeOutpost) -> None:
    fake.script.append(("/v1/models", httpx.Response(502, text="Bad Gateway")))
    fake.script.append(("/v1/models", httpx.Response(502, text="Bad Gateway")))
    fake.script.append(("/v1/models", httpx.Response(502, text="Bad Gateway")))
    with pytest.raises(InternalServerError) as info:
        connect(fake)(lambda c: c.models.list())
    assert info.value.status_code == 502 and "Bad Gateway" in info.value.message
    assert len(fake.calls) == 3, "a GET is retried max_retries times"


# --- retries ----------------------------------------------------------------------------


def test_rate_limit_is_retried_honouring_retry_after(connect, fake: FakeOutpost) -> None:
    fake.script.append(
        (
            "/v1/chat",
            error(
                429,
                "slow down",
                "rate_limit_exceeded",
                "rate_limit_error",
                headers={"Retry-After": "0"},
            ),
        )
    )
    assert connect(fake)(chat()).id == CHAT["id"]
    assert len(fake.calls) == 2


def test_rate_limit_gives_up_after_max_retries(connect, fake: FakeOutpost) -> None:
    for _ in range(3):
        fake.script.append(
            ("/v1/chat", error(429, "slow down", "rate_limit_exceeded", "rate_limit_error"))
        )
    with pytest.raises(RateLimitError):
        connect(fake)(chat())
    assert len(fake.calls) == 3


def test_budget_exceeded_is_not_retried(connect, fake: FakeOutpost) -> None:
    fake.script.append(
        (
            "/v1/chat",
            error(
                429,
                "budget spent",
                "budget_exceeded",
                "budget_exceeded",
                headers={"Retry-After": "86400"},
            ),
        )
    )
    with pytest.raises(BudgetExceededError) as info:
        connect(fake)(chat())
    assert info.value.retry_after == 86400 and len(fake.calls) == 1


def test_post_is_retried_when_the_control_plane_dispatched_nothing(
    connect, fake: FakeOutpost
) -> None:
    fake.script.append(
        ("/v1/chat", error(503, "no runner", "no_runner_available", "service_unavailable"))
    )
    assert connect(fake)(chat()).id == CHAT["id"]
    assert len(fake.calls) == 2


def test_post_is_not_retried_after_a_runner_may_have_run_it(connect, fake: FakeOutpost) -> None:
    fake.script.append(
        ("/v1/chat", error(503, "runner failed", "runner_failed", "service_unavailable"))
    )
    with pytest.raises(ServiceUnavailableError):
        connect(fake)(chat())
    assert len(fake.calls) == 1


def test_get_is_retried_on_server_errors(connect, fake: FakeOutpost) -> None:
    fake.script.append(("/v1/models", error(503, "busy", None, "service_unavailable")))
    fake.script.append(("/v1/models", httpx.ReadTimeout("slow")))
    assert [m.id for m in connect(fake)(lambda c: c.models.list())] == [MODEL]
    assert len(fake.calls) == 3


def test_connect_error_is_retried_even_for_post(connect, fake: FakeOutpost) -> None:
    fake.script.append(("/v1/chat", httpx.ConnectError("refused")))
    assert connect(fake)(chat()).id == CHAT["id"]
    assert len(fake.calls) == 2


def test_read_timeout_on_post_is_not_retried(connect, fake: FakeOutpost) -> None:
    fake.script.append(("/v1/chat", httpx.ReadTimeout("slow")))
    with pytest.raises(APITimeoutError):
        connect(fake)(chat())
    assert len(fake.calls) == 1


def test_connection_failure_after_retries_is_connection_error(connect, fake: FakeOutpost) -> None:
    for _ in range(3):
        fake.script.append(("/v1/models", httpx.ConnectError("refused")))
    with pytest.raises(APIConnectionError):
        connect(fake)(lambda c: c.models.list())
    assert len(fake.calls) == 3


def test_backoff_is_exponential_with_full_jitter() -> None:
    policy = RetryPolicy(backoff_base_s=0.5, backoff_cap_s=4.0)
    assert [policy.delay(a, rand=lambda: 1.0) for a in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert policy.delay(3, rand=lambda: 0.0) == 0.0
    assert policy.delay(0, retry_after=2.5) == 2.5


# --- administration -----------------------------------------------------------------------


def test_a_runner_lists_its_unavailable_models_typed(connect, fake: FakeOutpost) -> None:
    up = {
        "id": "run_1",
        "name": "gpu-1",
        "models": ["smol-a", "smol-b"],
        "unavailable_models": ["smol-b"],
    }
    old = {
        "id": "run_2",
        "name": "gpu-2",
        "models": ["smol-a"],
    }  # a control plane that predates the field
    fake.admin["/api/runners"] = {"object": "list", "data": [up, old]}
    runners = connect(fake)(lambda c: c.runners.list())
    assert [r.unavailable_models for r in runners] == [["smol-b"], []]
    assert "unavailable_models" not in (
        runners[0].model_extra or {}
    )  # a declared field, not an extra


def test_the_runner_model_declares_every_field_of_the_api() -> None:
    from outpost.control_plane.schemas import RunnerOut
    from outpost.sdk.models import Runner

    assert set(RunnerOut.model_fields) <= set(Runner.model_fields)


def test_admin_resources_call_their_routes(connect, fake: FakeOutpost) -> None:
    runner = {"id": "run_1", "name": "gpu-1", "labels": {}, "capacity": 4, "connected": True}
    key = {"id": "key_1", "name": "ci", "prefix": "sk-abc", "scopes": ["inference"]}
    fake.admin.update(
        {
            "/api/runners": {"object": "list", "data": [runner]},
            "/api/runners/enroll": {
                "token": "et-secret",
                "runner_name": "gpu-2",
                "expires_at": "2030-01-01T00:00:00Z",
            },
            "/api/runners/run_1/revoke": {**runner, "revoked_at": "2030-01-01T00:00:00Z"},
            "/api/keys": {"object": "list", "data": [key]},
            "POST /api/keys": {**key, "key": "sk-abc-secret"},
            "/api/keys/key_1/revoke": {**key, "revoked_at": "2030-01-01T00:00:00Z"},
            "/api/fairness/runs": {
                "object": "list",
                "data": [{"id": "fr_1", "status": "done", "model": MODEL}],
            },
            "/api/fairness/runs/fr_1": {
                "id": "fr_1",
                "status": "done",
                "model": MODEL,
                "report": {},
            },
            "/api/audit": {"data": [{"seq": 1, "type": "inference"}], "next_cursor": None},
        }
    )
    drive = connect(fake)
    assert drive(lambda c: c.runners.list())[0].capacity == 4
    assert drive(lambda c: c.runners.enroll("gpu-2")).token == "et-secret"
    assert json.loads(fake.calls[-1].content) == {"name": "gpu-2"}
    assert drive(lambda c: c.runners.revoke("run_1")).revoked_at is not None
    assert fake.calls[-1].method == "POST"
    assert drive(lambda c: c.keys.list())[0].prefix == "sk-abc"
    assert (
        drive(lambda c: c.keys.create("ci", scopes=["inference", "admin"])).key == "sk-abc-secret"
    )
    assert json.loads(fake.calls[-1].content) == {
        "name": "ci",
        "scopes": ["inference", "admin"],
        "expires_in_s": None,
    }
    assert drive(lambda c: c.keys.revoke("key_1")).revoked_at is not None
    assert drive(lambda c: c.fairness.runs.list())[0].id == "fr_1"
    assert fake.calls[-1].url.params["limit"] == "50"
    assert drive(lambda c: c.fairness.runs.get("fr_1")).report == {}
    assert drive(lambda c: c.audit.list(limit=10)).data[0]["type"] == "inference"
    assert fake.calls[-1].url.params["limit"] == "10"


def test_usage_and_budgets(connect, fake: FakeOutpost) -> None:
    budget = {
        "id": "bud_1",
        "scope": "tenant",
        "api_key_id": None,
        "period": "month",
        "amount_usd": 50.0,
        "soft_threshold": 0.8,
        "spent_usd": 1.5,
        "state": "ok",
    }
    fake.admin.update(
        {
            "/api/usage": {
                "object": "usage",
                "tenant_id": "ten_1",
                "period": "day",
                "total": {
                    "requests": 3,
                    "errors": 0,
                    "prompt_tokens": 30,
                    "completion_tokens": 9,
                    "cost_usd": 0.25,
                    "engine_seconds": 1.5,
                },
                "by_model": [{"model": MODEL, "requests": 3}],
            },
            "/api/budgets": {"object": "list", "data": [budget]},
            "POST /api/budgets": budget,
            "DELETE /api/budgets/bud_1": {},
        }
    )
    drive = connect(fake)
    report = drive(lambda c: c.usage.get(period="day"))
    assert report.total.cost_usd == 0.25 and report.by_model[0]["model"] == MODEL
    assert dict(fake.calls[-1].url.params) == {"period": "day"}
    assert drive(lambda c: c.budgets.list())[0].amount_usd == 50.0
    assert drive(lambda c: c.budgets.set(50.0)).state == "ok"
    assert json.loads(fake.calls[-1].content)["amount_usd"] == 50.0
    drive(lambda c: c.budgets.delete("bud_1"))
    assert fake.calls[-1].method == "DELETE"


def test_missing_admin_endpoint_is_not_found(connect, fake: FakeOutpost) -> None:
    with pytest.raises(NotFoundError):
        connect(fake)(lambda c: c.usage.get())


def test_sync_client_is_generated_from_the_async_one() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "unasync_sdk.py"), "--check"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr


# --- end-to-end mode -----------------------------------------------------------------


def e2e(fake: FakeOutpost, connect, **kw: Any) -> Driver:
    return connect(fake, e2e=True, pins={fake.runner_id: fake.fingerprint}, **kw)


def test_e2e_round_trip_sends_only_ciphertext(connect, fake: FakeOutpost) -> None:
    canary = "CANARY-prompt-9f1e"
    messages = [{"role": "user", "content": canary}]
    drive = e2e(fake, connect)
    reply = drive(lambda c: c.chat.completions.create(model=MODEL, messages=messages, max_tokens=9))
    assert reply.choices[0].message.content == "Hello there"
    chunks = drive.stream(
        lambda c: c.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=9, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content for c in chunks) == "Hello there"
    assert (
        drive(lambda c: c.completions.create(model=MODEL, prompt=canary)).choices[0].text
        == " world"
    )
    assert drive(lambda c: c.embeddings.create(model=MODEL, input=canary)).data[0].embedding == [
        0.1,
        0.2,
    ]
    sealed = [r for r in fake.calls if r.url.path.startswith("/v1/e2e/") and r.method == "POST"]
    assert [r.url.path for r in sealed] == ["/v1/e2e/chat/completions"] * 2 + [
        "/v1/e2e/completions",
        "/v1/e2e/embeddings",
    ]
    for request in fake.calls:
        assert canary.encode() not in request.content
    first = fake.sealed_bodies[0]
    assert set(first) == {"model", "stream", "max_tokens", "request_id", "envelope"}
    assert (first["model"], first["max_tokens"], first["stream"]) == (MODEL, 9, False)
    assert fake.sealed_bodies[1]["stream"] is True
    # One key lookup, then the verified key is reused.
    assert fake.paths().count("/v1/e2e/runners") == 1


def _flip(events: list[str], index: int) -> list[str]:
    data = events[index][len("data: ") : -2]
    pos = len(data) // 2
    swapped = data[:pos] + ("A" if data[pos] != "A" else "B") + data[pos + 1 :]
    return [*events[:index], f"data: {swapped}\n\n", *events[index + 1 :]]


TAMPERS: dict[str, tuple[Callable[[list[str]], list[str]], type[Exception] | None]] = {
    "bit flipped": (lambda ev: _flip(ev, 1), DecryptionError),
    "reordered": (lambda ev: [ev[0], ev[2], ev[1], *ev[3:]], OutOfOrderChunkError),
    "chunk dropped": (lambda ev: [ev[0], *ev[2:]], OutOfOrderChunkError),
    "chunk repeated": (lambda ev: [ev[0], ev[1], ev[1], *ev[2:]], OutOfOrderChunkError),
    "truncated (final dropped)": (lambda ev: ev[:-1], TruncatedStreamError),
    "cut after head": (lambda ev: ev[:1], TruncatedStreamError),
    "empty": (lambda ev: [], TruncatedStreamError),
    "plaintext injected": (lambda ev: [ev[0], 'data: {"choices":[]}\n\n', *ev[1:]], None),
}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("name", list(TAMPERS))
def test_e2e_tampered_answer_is_rejected(
    connect, fake: FakeOutpost, name: str, stream: bool
) -> None:
    tamper, cause = TAMPERS[name]
    fake.tamper = tamper
    drive = e2e(fake, connect)
    call = chat(stream=stream)
    with pytest.raises(OutpostError) as info:
        drive.stream(call) if stream else drive(call)
    if cause is None:
        # Clear JSON can only come from the relay: reported as its error, never as an answer.
        assert isinstance(info.value, APIStatusError)
    else:
        assert isinstance(info.value, StreamIntegrityError)
        assert isinstance(info.value.__cause__, cause)


def test_e2e_answer_from_another_request_is_rejected(connect, fake: FakeOutpost) -> None:
    recorded: list[list[str]] = []

    def replay_first(events: list[str]) -> list[str]:
        recorded.append(events)
        return recorded[0]

    fake.tamper = replay_first
    drive = e2e(fake, connect)
    drive(chat())
    with pytest.raises(StreamIntegrityError) as info:
        drive(chat())
    assert isinstance(info.value.__cause__, DecryptionError)


def test_e2e_swapped_key_is_refused(connect, fake: FakeOutpost) -> None:
    impostor = RunnerKeys.generate()
    fake.served_key = signed_hpke_key(impostor.identity, impostor.hpke_public, fake.runner_id)
    with pytest.raises(RunnerKeyError, match="does not match the pinned fingerprint"):
        e2e(fake, connect)(chat())
    assert not fake.sealed_bodies, "nothing may be sealed to a key that failed its pin"


def test_e2e_key_spliced_into_a_genuine_document_is_refused(connect, fake: FakeOutpost) -> None:
    doc = signed_hpke_key(fake.keys.identity, fake.keys.hpke_public, fake.runner_id)
    doc["hpke_public_key"] = RunnerKeys.generate().hpke_public.to_b64()
    fake.served_key = doc
    with pytest.raises(RunnerKeyError, match="bad signature"):
        e2e(fake, connect)(chat())


def test_e2e_without_a_pinned_runner_is_refused(connect, fake: FakeOutpost) -> None:
    other = RunnerKeys.generate()
    with pytest.raises(NoPinnedRunnerError):
        connect(fake, e2e=True, pins={"run_someone_else": other.fingerprint})(chat())


def test_e2e_rotated_key_is_fetched_again_and_resealed(connect, fake: FakeOutpost) -> None:
    drive = e2e(fake, connect)
    drive(chat())
    fake.script.append(("/v1/e2e/chat", error(409, "stale key", "e2e_key_mismatch")))
    drive(chat())
    assert fake.paths().count("/v1/e2e/runners") == 2


def test_e2e_retry_reseals_with_a_fresh_request_id(connect, fake: FakeOutpost) -> None:
    fake.script.append(
        ("/v1/e2e/chat", error(503, "not connected", "runner_not_connected", "service_unavailable"))
    )
    e2e(fake, connect)(chat())
    bodies = [json.loads(r.content) for r in fake.calls if r.url.path == "/v1/e2e/chat/completions"]
    assert len(bodies) == 2
    assert bodies[0]["request_id"] != bodies[1]["request_id"]
    assert bodies[0]["envelope"] != bodies[1]["envelope"]


def test_e2e_replayed_envelope_is_refused_by_the_runner(connect, fake: FakeOutpost) -> None:
    e2e(fake, connect)(chat())
    replay = fake.calls[-1]
    client = httpx.Client(transport=fake.transport())
    resp = client.post(str(replay.url), content=replay.content, headers=dict(replay.headers))
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "e2e_replay"


def test_e2e_per_request_switch_and_explicit_runner(connect, fake: FakeOutpost) -> None:
    drive = connect(fake, pins={fake.runner_id: fake.fingerprint})
    drive(chat())
    assert fake.calls[-1].url.path == "/v1/chat/completions"
    drive(chat(e2e=True, runner=fake.runner_id))
    assert fake.calls[-1].url.path == "/v1/e2e/chat/completions"
    assert f"/api/runners/{fake.runner_id}/e2e-key" in fake.paths()
    verified = drive(lambda c: c.runners.e2e_key(fake.runner_id))
    assert verified.identity_fingerprint == fake.fingerprint
    with pytest.raises(ValueError, match="e2e=True"):
        drive(chat(runner=fake.runner_id))


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_e2e_engine_error_travels_sealed_and_maps_to_its_status(
    connect, fake: FakeOutpost, stream: bool
) -> None:
    fake.engine_error = (
        400,
        {
            "error": {
                "message": "context too long: CANARY",
                "type": "invalid_request_error",
                "code": "context_length_exceeded",
            }
        },
    )
    drive = e2e(fake, connect)
    with pytest.raises(BadRequestError) as info:
        drive.stream(chat(stream=True)) if stream else drive(chat())
    assert info.value.code == "context_length_exceeded" and "CANARY" in info.value.message


def test_e2e_clear_fields_must_match_the_sealed_body(connect, fake: FakeOutpost) -> None:
    """The relay cannot raise max_tokens behind the client's back: the runner compares."""
    drive = e2e(fake, connect)
    drive(chat(max_tokens=4))
    body = dict(fake.sealed_bodies[-1])
    fake.script.clear()
    client = httpx.Client(transport=fake.transport())
    for forged in ({**body, "max_tokens": 3}, {**body, "stream": True}):
        resp = client.post(
            f"{BASE}/v1/e2e/chat/completions",
            json=forged,
            headers={"Authorization": "Bearer sk-test", "X-Outpost-Runner": fake.runner_id},
        )
        assert resp.status_code == 400 and resp.json()["error"]["code"] in (
            "e2e_mismatch",
            "e2e_replay",
        )


def test_bad_pin_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="64 hex digits"):
        Client(BASE, pins={"run_1": "not-a-fingerprint"})
