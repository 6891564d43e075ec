"""The SDK against the real stack: a control plane process, a runner, llama.cpp."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import pytest

from outpost.sdk.client import AsyncClient, Client
from outpost.sdk.errors import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from outpost.sdk.models import ChatCompletion, UsageReport
from tests.conftest import Stack, build_stack

MODEL = "smollm2-135m-instruct"
HI = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A stack of this module's own: its tests count records and keys exactly, so the
    shared session stack (used by hundreds of other tests) would make them order-dependent."""
    yield from build_stack(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Iterator[Client]:
    key = stack.cp.cli("keys", "create", "sdk-admin", "--admin").splitlines()[-1]
    with Client(stack.cp.url, api_key=key, timeout=120) as c:
        yield c


@pytest.fixture
def client(stack: Stack) -> Iterator[Client]:
    with Client(stack.base_url, api_key=stack.api_key, timeout=120) as c:  # ".../v1" is accepted
        yield c


def test_models_chat_stream_and_completions(client: Client) -> None:
    assert MODEL in [m.id for m in client.models.list()]
    reply = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=8, temperature=0)
    assert isinstance(reply, ChatCompletion) and reply.choices[0].message.content
    assert reply.model == MODEL and reply.usage.completion_tokens > 0
    count = [{"role": "user", "content": "Count from one to ten."}]
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=count,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 3
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    text = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4)
    assert text.choices[0].text


def test_async_client_streams_too(stack: Stack) -> None:
    async def go() -> list[str]:
        async with AsyncClient(stack.cp.url, api_key=stack.api_key, timeout=120) as c:
            stream = await c.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Count from one to ten."}],
                max_tokens=16,
                temperature=0,
                stream=True,
            )
            return [
                ch.choices[0].delta.content
                async for ch in stream
                if ch.choices and ch.choices[0].delta.content
            ]

    assert len(asyncio.run(go())) > 3


def test_errors_arrive_as_typed_exceptions(stack: Stack, client: Client) -> None:
    with (
        Client(stack.cp.url, api_key="sk-000000000000-wrong") as bad,
        pytest.raises(AuthenticationError) as info,
    ):
        bad.models.list()
    assert info.value.code == "invalid_api_key"
    with pytest.raises(NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=HI)
    assert info.value.code == "model_not_found" and info.value.param == "model"
    with pytest.raises(BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=HI, max_tokens=10**7)
    assert info.value.code == "max_tokens_too_large"
    with pytest.raises(PermissionDeniedError):
        client.runners.enroll("not-allowed")
    with pytest.raises(
        APIStatusError
    ) as info:  # the stack's runner was not started with --embedding
        client.embeddings.create(model=MODEL, input="hello")
    assert 400 <= info.value.status_code < 500


def test_admin_runners_and_keys(stack: Stack, admin: Client) -> None:
    runners = {r.id: r for r in admin.runners.list()}
    assert runners[stack.runner_id].connected and MODEL in runners[stack.runner_id].models
    token = admin.runners.enroll(f"sdk-{secrets.token_hex(3)}")
    assert token.token and token.expires_at
    created = admin.keys.create("sdk-made", scopes=["inference"])
    assert created.key and created.scopes == ["inference"]
    with Client(stack.cp.url, api_key=created.key) as c:
        assert MODEL in [m.id for m in c.models.list()]
        assert created.id in [k.id for k in admin.keys.list()]
        assert admin.keys.revoke(created.id).revoked_at is not None
        with pytest.raises(AuthenticationError):
            c.models.list()


def test_usage_audit_and_fairness(admin: Client) -> None:
    report = admin.usage.get(period="day")
    assert isinstance(report, UsageReport) and report.api_key_id is None  # an admin sees the tenant
    assert (
        report.total.requests > 0
        and report.total.completion_tokens > 0
        and report.total.cost_usd > 0
    )
    assert MODEL in [row["model"] for row in report.by_model]
    export = admin.audit.export()
    result = admin.audit.verify(export, admin.audit.public_keys())
    assert result.ok, result.reason
    assert isinstance(admin.fairness.runs.list(), list)
