"""Issue 19: nothing a runner reports can overflow routing, metrics or the database, or bill beyond
the request.

A real control plane (uvicorn, SQLite) and a rogue runner speaking the real protocol through a
real WebSocket (tests/security/rogue.py); the client side is httpx.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import httpx
import pytest

from harness.processes import ControlPlaneProcess, tenant_records, wait_until
from outpost.sdk.protocol import (
    CloseCode,
    DataFrame,
    EndFrame,
    RequestFrame,
    ResponseStartFrame,
    StatusFrame,
    Usage,
)
from tests.security.rogue import RogueRunner, closed_with, exchange, send

TENANT = "numbers"
LIMIT = 64  # OUTPOST_MAX_TOKENS_LIMIT of this control plane


class World:
    def __init__(self, cp: ControlPlaneProcess, url: str) -> None:
        self.cp, self.database_url = cp, url
        self.key = cp.api_key(TENANT)
        self.rogue = RogueRunner(cp, TENANT, "rogue-model")

    def chat(self, **fields: object) -> dict[str, object]:
        return {
            "model": self.rogue.model,
            "messages": [{"role": "user", "content": "hi"}],
            **fields,
        }

    def records(self) -> list[dict]:
        return tenant_records(self.database_url, TENANT)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("numbers")
    url = f"sqlite+aiosqlite:///{tmp / 'outpost.db'}"
    cp = ControlPlaneProcess(
        tmp / "cp",
        url,
        extra_env={
            "OUTPOST_MAX_TOKENS_LIMIT": str(LIMIT),
            "OUTPOST_LOG_FORMAT": "text",
            "OUTPOST_RUNNER_WAIT_S": "1",
            "OUTPOST_TUNNEL_MAX_CONNECTIONS_PER_RUNNER": "3",
        },
    ).start()
    try:
        yield World(cp, url)
    finally:
        cp.stop()


def _answer(usage: Usage | str | None = None, text: str = "ok") -> object:
    """A non-streaming chat answer, then an end frame with ``usage`` (a raw JSON usage object if
    a str)."""

    def reply(req: RequestFrame) -> list[object]:
        body = json.dumps(
            {
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
            }
        )
        if isinstance(usage, str):
            end: object = f'{{"type":"end.v1","stream_id":{req.stream_id},"usage":{usage}}}'
        else:
            end = EndFrame(stream_id=req.stream_id, usage=usage)
        return [
            ResponseStartFrame(stream_id=req.stream_id, status=200),
            DataFrame(stream_id=req.stream_id, data=body),
            end,
        ]

    return reply


def _chat_url(world: World) -> str:
    return f"{world.cp.url}/v1/chat/completions"


# --- 10**400 counters, NaN, Infinity
# ------------------------------------------------------------------


@pytest.mark.parametrize("field", ["running", "waiting", "completed"])
def test_huge_counter_closes_the_connection_and_routing_and_metrics_survive(
    world: World, field: str
) -> None:
    bad = world.rogue.connect(connection_index=1)
    ws = None
    try:
        send(bad, f'{{"type":"status.v1","{field}":1{"0" * 400}}}')
        code, reason = closed_with(bad)
        assert code == CloseCode.PROTOCOL_ERROR and field in reason, (code, reason)
        ws = world.rogue.connect()
        response, _ = exchange(
            ws, _chat_url(world), world.key, world.chat(max_tokens=4), _answer(Usage())
        )
        assert response.status_code == 200, response.text
        metrics = httpx.get(f"{world.cp.url}/metrics", timeout=10)
        assert metrics.status_code == 200, metrics.text[:300]
    finally:
        bad.close()
        if ws is not None:
            ws.close()


@pytest.mark.parametrize(
    "frame",
    [
        '{"type":"status.v1","kv_cache_usage":NaN}',
        '{"type":"status.v1","running":1e400}',
        '{"type":"status.v1","running":"5"}',
        '{"type":"status.v1","running":true}',
        '{"type":"status.v1","running":-1}',
        '{"type":"goaway.v1","drain_s":Infinity}',
    ],
    ids=["nan", "float-inf", "string", "bool", "negative", "infinity"],
)
def test_non_finite_or_coerced_number_is_a_protocol_error(world: World, frame: str) -> None:
    ws = world.rogue.connect()
    try:
        send(ws, frame)
        code, reason = closed_with(ws)
        assert code == CloseCode.PROTOCOL_ERROR and reason, (code, reason)
    finally:
        ws.close()


# What runner/cost.py and runner/hardware.py send (an H100 runner), and an old runner's empty maps.
_CPU = {
    "model": "Fake CPU",
    "arch": "x86_64",
    "os": "Linux",
    "physical_cores": 8,
    "logical_cores": 16,
    "ram_total_bytes": 64 * 2**30,
    "ram_available_bytes": 60 * 2**30,
    "features": ["avx2"],
}
_GPU = {
    "vendor": "nvidia",
    "index": 0,
    "name": "NVIDIA H100 80GB HBM3",
    "uuid": "GPU-1",
    "memory_total_bytes": 81559 * 2**20,
    "memory_free_bytes": 81000 * 2**20,
    "compute_capability": "9.0",
    "driver_version": "550.54.15",
    "power_draw_watts": 71.0,
    "power_limit_watts": 700.0,
    "utilization_percent": 0.0,
    "mig_enabled": False,
    "unified_memory": False,
}


@pytest.mark.parametrize(
    "fields",
    [
        {"cost": {}, "hardware": {}},
        {
            "cost": {
                "kind": "power",
                "usd_per_kwh": 0.2,
                "pue": 1.4,
                "watts": 700.0,
                "watts_source": "gpu-power-limit",
                "hardware_class": "nvidia-h100",
                "count": 1,
            },
            "hardware": {
                "cpu": _CPU,
                "gpus": [_GPU],
                "probes": [{"name": "nvidia", "present": True, "devices": 1, "reason": None}],
            },
        },
        {
            "cost": {
                "kind": "hourly",
                "usd_per_hour": 0.8,
                "source": "default",
                "hardware_class": "a-future-class",
                "count": 1,
            }
        },
    ],
    ids=["old-runner-empty", "h100-runner", "unknown-hardware-class"],
)
def test_hello_a_runner_actually_sends_is_welcomed(world: World, fields: dict) -> None:
    # connect() asserts the welcome, retrying only a refusal as a duplicate: the previous case's
    # connection with this index may not have been seen going yet.
    world.rogue.connect(connection_index=6, **fields).close()


@pytest.mark.parametrize(
    "fields",
    [
        {"cost": {"usd_per_hour": math.inf}},
        {"cost": {"usd_per_hour": 1e9}},
        {"cost": {"usd_per_hour": -5}},
        {"hardware": {"memory_bytes": math.nan}},
        {"models": [{"name": "rogue-model", "engine": "fake", "context_length": 10**400}]},
        {"capacity": "4"},
        {"cost": {"usd_per_hour": 1.0, "discount": 0.9}},
        {"cost": {"usd_per_hour": "5"}},
        {"cost": {"hardware_class": "nvidia-h100", "count": "8"}},
        {"cost": {"hardware_class": "nvidia-h100", "count": 10**6}},
        {"hardware": {"cpu": {**_CPU, "ram_total_bytes": 2**60}}},
        {"hardware": {"cpu": {**_CPU, "logical_cores": True}}},
        {"hardware": {"cpu": _CPU, "gpus": [{**_GPU, "power_limit_watts": math.inf}]}},
        {"hardware": {"cpu": _CPU, "secret_sauce": 1}},
    ],
    ids=[
        "cost-inf",
        "cost-huge",
        "cost-negative",
        "hardware-nan",
        "context-huge",
        "capacity-string",
        "cost-unknown-field",
        "cost-rate-string",
        "cost-count-string",
        "cost-count-huge",
        "hardware-ram-huge",
        "hardware-cores-bool",
        "hardware-watts-inf",
        "hardware-unknown-field",
    ],
)
def test_hello_with_unbounded_numbers_is_refused(world: World, fields: dict) -> None:
    # json.dumps writes Infinity/NaN literals, as a rogue's JSON encoder would.
    ws, reply = world.rogue.dial(connection_index=5, **fields)
    try:
        assert reply == ""
        code, _ = closed_with(ws)
        assert code == CloseCode.PROTOCOL_ERROR
    finally:
        ws.close()


# --- usage is always clamped
# ----------------------------------------------------------------------------


def test_without_max_tokens_the_engine_gets_the_limit_and_usage_is_clamped_to_it(
    world: World,
) -> None:
    ws = world.rogue.connect()
    try:
        response, request = exchange(
            ws,
            _chat_url(world),
            world.key,
            world.chat(),
            _answer(Usage(prompt_tokens=3, completion_tokens=10**7)),
        )
        assert response.status_code == 200, response.text
        assert json.loads(request.body)["max_tokens"] == LIMIT  # the engine is told the cap
        rid = response.headers["x-request-id"]
        wait_until(lambda: any(r["id"] == rid for r in world.records()), 15, "the request record")
        record = next(r for r in world.records() if r["id"] == rid)
        assert record["completion_tokens"] == LIMIT and record["prompt_tokens"] == 3
    finally:
        ws.close()


@pytest.mark.parametrize(
    "usage",
    [
        f'{{"completion_tokens":{2**60}}}',
        f'{{"prompt_tokens":{10**9}}}',
        '{"completion_tokens":1e3}',
        '{"completion_tokens":"7"}',
    ],
    ids=["2**60", "10**9", "float", "string"],
)
def test_usage_beyond_the_contract_ends_the_connection_and_the_request_is_still_recorded(
    world: World, usage: str
) -> None:
    ws = world.rogue.connect()
    try:
        response, _ = exchange(ws, _chat_url(world), world.key, world.chat(), _answer(usage))
        assert response.status_code == 502, response.text
        assert response.json()["error"]["code"] == "runner_lost"
        code, _ = closed_with(ws)
        assert code == CloseCode.PROTOCOL_ERROR
        rid = response.headers["x-request-id"]
        wait_until(lambda: any(r["id"] == rid for r in world.records()), 15, "the request record")
        record = next(r for r in world.records() if r["id"] == rid)
        assert record["status"] == "error" and record["completion_tokens"] == 0
    finally:
        ws.close()


# --- one sequence, capped
# -------------------------------------------------------------------------------


def test_n_predict_is_mapped_onto_the_cap(world: World) -> None:
    ws = world.rogue.connect()
    try:
        response, request = exchange(
            ws,
            _chat_url(world),
            world.key,
            world.chat(max_tokens=5, n_predict=50),
            _answer(Usage(completion_tokens=50)),
        )
        assert response.status_code == 200, response.text
        sent = json.loads(request.body)
        assert sent["n_predict"] == 5 and sent["max_tokens"] == 5
        rid = response.headers["x-request-id"]
        wait_until(lambda: any(r["id"] == rid for r in world.records()), 15, "the request record")
        assert next(r for r in world.records() if r["id"] == rid)["completion_tokens"] == 5
        response, request = exchange(
            ws,
            _chat_url(world),
            world.key,
            world.chat(n_predict=-1),
            _answer(Usage(completion_tokens=1)),
        )
        assert json.loads(request.body)["n_predict"] == LIMIT
    finally:
        ws.close()
    for fields, code in [
        ({"n_predict": LIMIT + 1}, "max_tokens_too_large"),
        ({"n_predict": "5"}, "invalid_request"),
        ({"n_predict": 0}, "invalid_request"),
        ({"max_tokens": 4, "min_tokens": 10}, "invalid_request"),
        ({"max_completion_tokens": LIMIT + 1}, "max_tokens_too_large"),
    ]:
        refused = httpx.post(
            _chat_url(world),
            json=world.chat(**fields),
            timeout=10,
            headers={"Authorization": f"Bearer {world.key}"},
        )
        assert refused.status_code == 400 and refused.json()["error"]["code"] == code, (
            fields,
            refused.text,
        )


@pytest.mark.parametrize(
    ("path", "fields", "param"),
    [
        ("completions", {"prompt": [f"p{i}" for i in range(8)]}, "prompt"),
        ("completions", {"prompt": [[1, 2], [3]]}, "prompt"),
        # n > 1 (and best_of = n) are served as one request per choice: tests/api/test_choices.py.
        (
            "chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "use_beam_search": True},
            "use_beam_search",
        ),
        ("completions", {"prompt": "x", "n_cmpl": 4}, "n_cmpl"),
    ],
    ids=["prompt-list", "token-id-lists", "beam-search", "n_cmpl"],
)
def test_several_sequences_in_one_request_are_refused(
    world: World, path: str, fields: dict, param: str
) -> None:
    response = httpx.post(
        f"{world.cp.url}/v1/{path}",
        json={"model": world.rogue.model, **fields},
        timeout=10,
        headers={"Authorization": f"Bearer {world.key}"},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "multiple_sequences_unsupported" and error["param"] == param


@pytest.mark.parametrize(
    "prompt", [[1, 2, 3], [[1, 2, 3]], ["one"]], ids=["ids", "one-id-list", "one-str"]
)
def test_one_prompt_as_token_ids_or_a_list_is_accepted(world: World, prompt: list) -> None:
    ws = world.rogue.connect()
    try:
        response, request = exchange(
            ws,
            f"{world.cp.url}/v1/completions",
            world.key,
            {"model": world.rogue.model, "prompt": prompt, "max_tokens": 3},
            _answer(Usage(prompt_tokens=3, completion_tokens=3)),
        )
        assert response.status_code == 200, response.text
        assert json.loads(request.body)["prompt"] == prompt
    finally:
        ws.close()


# --- response_start
# -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "content_type"),
    [
        (200, "text/html"),
        (101, "application/json"),
        (204, "application/json"),
        (304, "application/json"),
        (200, "application/octet-stream"),
    ],
    ids=["html", "101", "204-with-body", "304", "octet-stream"],
)
def test_bad_response_start_is_an_engine_error_and_recorded(
    world: World, status: int, content_type: str
) -> None:
    def reply(req: RequestFrame) -> list[object]:
        return [
            ResponseStartFrame(stream_id=req.stream_id, status=status, content_type=content_type),
            DataFrame(stream_id=req.stream_id, data="<html><body>log in again</body></html>"),
            EndFrame(stream_id=req.stream_id, usage=Usage(completion_tokens=1)),
        ]

    ws = world.rogue.connect()
    try:
        response, _ = exchange(ws, _chat_url(world), world.key, world.chat(max_tokens=2), reply)
        assert response.status_code == 502, (response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["error"]["code"] == "engine_error"
        rid = response.headers["x-request-id"]
        wait_until(lambda: any(r["id"] == rid for r in world.records()), 15, "the request record")
        record = next(r for r in world.records() if r["id"] == rid)
        assert (record["status"], record["error_type"], record["http_status"]) == (
            "error",
            "engine_error",
            502,
        )
    finally:
        ws.close()


def test_bad_response_start_on_a_streamed_request_is_an_engine_error(world: World) -> None:
    def reply(req: RequestFrame) -> list[object]:
        return [
            ResponseStartFrame(stream_id=req.stream_id, status=200, content_type="text/html"),
            DataFrame(stream_id=req.stream_id, data="<html>log in again</html>"),
            EndFrame(stream_id=req.stream_id),
        ]

    ws = world.rogue.connect()
    try:
        response, _ = exchange(
            ws, _chat_url(world), world.key, world.chat(max_tokens=2, stream=True), reply
        )
        assert response.status_code == 502 and "<html>" not in response.text, response.text
        assert response.json()["error"]["code"] == "engine_error"
    finally:
        ws.close()


@pytest.mark.parametrize(
    ("engine_status", "client_status"), [(400, 400), (404, 404), (422, 422), (500, 502), (503, 502)]
)
def test_engine_4xx_stays_4xx_and_5xx_is_502(
    world: World, engine_status: int, client_status: int
) -> None:
    def reply(req: RequestFrame) -> list[object]:
        body = json.dumps(
            {
                "error": {
                    "code": engine_status,
                    "message": "image input is not supported",
                    "type": "server_error" if engine_status >= 500 else "invalid_request_error",
                }
            }
        )
        return [
            ResponseStartFrame(stream_id=req.stream_id, status=engine_status),
            DataFrame(stream_id=req.stream_id, data=body),
            EndFrame(stream_id=req.stream_id),
        ]

    ws = world.rogue.connect()
    try:
        response, _ = exchange(ws, _chat_url(world), world.key, world.chat(max_tokens=2), reply)
        assert response.status_code == client_status, response.text
        error = response.json()["error"]
        if engine_status >= 500:
            assert error["code"] == "engine_error" and error["type"] == "server_error"
        else:
            assert error["type"] == "invalid_request_error"
    finally:
        ws.close()


# --- hygiene
# ------------------------------------------------------------------------------------------


def test_runner_strings_cannot_forge_log_lines(world: World) -> None:
    forged = "FORGED-" + "x" * 4
    evil = f"oops\r\n2026-12-07 10:00:00,000 INFO outpost.audit {forged} admin granted\x1b[2K\u2028"

    def reply(req: RequestFrame) -> list[object]:
        return [
            ResponseStartFrame(stream_id=req.stream_id, status=500),
            EndFrame(stream_id=req.stream_id, error=evil),
        ]

    ws = world.rogue.connect()
    try:
        exchange(ws, _chat_url(world), world.key, world.chat(max_tokens=2), reply)
    finally:
        ws.close()
    log = world.cp.log()
    wait_until(lambda: forged in world.cp.log(), 10, "the runner's error in the log")
    log = world.cp.log()
    lines = [ln for ln in log.splitlines() if forged in ln]
    assert lines and all(not ln.startswith("2026-12-07 10:00:00") for ln in lines), lines
    assert "\x1b" not in log and "\u2028" not in log
    assert "\\r\\n2026-12-07" in log and "\\x1b[2K" in log


def test_second_connection_with_the_same_index_is_duplicate_and_connections_are_bounded(
    world: World,
) -> None:
    first = world.rogue.connect(connection_index=0)
    held = [first]
    try:
        ws, _ = world.rogue.dial(connection_index=0)
        assert closed_with(ws)[0] == CloseCode.DUPLICATE
        held += [world.rogue.connect(connection_index=i) for i in (1, 2)]  # the setting allows 3
        ws, _ = world.rogue.dial(connection_index=3)
        code, reason = closed_with(ws)
        assert code == CloseCode.DUPLICATE and "3 connections" in reason
        send(first, StatusFrame(completed=1))  # the first connection is untouched
        held[0].close()
        wait_until(lambda: _connects(world, 0), 10, "index 0 free again once its connection closed")
    finally:
        for ws in held:
            ws.close()


def _connects(world: World, index: int) -> bool:
    ws, reply = world.rogue.dial(connection_index=index)
    ws.close()
    return '"welcome.v1"' in reply


# --- strict at the edge
# -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"max_tokens": "5"},
        {"max_tokens": True},
        {"stream": "yes"},
        {"stream": 1},
        {"temperature": "0.5"},
        {"max_tokens": 5.0},
        {"stream_options": {"include_usage": "true"}},
        {"seed": 2**70},
        {"temperature": float("nan")},
    ],
    ids=[
        "max_tokens-str",
        "max_tokens-bool",
        "stream-str",
        "stream-int",
        "temperature-str",
        "max_tokens-float",
        "include_usage-str",
        "seed-huge",
        "temperature-nan",
    ],
)
def test_no_type_coercion_on_v1(world: World, fields: dict) -> None:
    response = httpx.post(
        _chat_url(world),
        content=json.dumps(world.chat(**fields)),
        timeout=10,
        headers={"Authorization": f"Bearer {world.key}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("chat/completions", '{"model":"m","messages":[{"role":"user","content":"\\ud800"}]}'),
        (
            "chat/completions",
            '{"model":"m","messages":[{"role":"user","content":"x"}],"top_k":"\\udfff"}',
        ),
        (
            "chat/completions",
            '{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"\\ud800"}]}]}',
        ),
        (
            "chat/completions",
            '{"model":"m","messages":[{"role":"user","content":"x"}],"\\ud800":1}',
        ),
        ("completions", '{"model":"m","prompt":"\\ud800"}'),
        ("completions", '{"model":"\\ud800","prompt":"x"}'),
        ("embeddings", '{"model":"m","input":"\\ud800"}'),
        ("embeddings", '{"model":"m","input":["ok","\\udc00"]}'),
    ],
    ids=[
        "chat-content",
        "chat-vendor",
        "chat-part",
        "chat-key",
        "completion-prompt",
        "completion-model",
        "embedding-input",
        "embedding-list",
    ],
)
def test_lone_surrogates_are_400_not_500(world: World, path: str, body: str) -> None:
    response = httpx.post(
        f"{world.cp.url}/v1/{path}",
        content=body.encode(),
        timeout=10,
        headers={"Authorization": f"Bearer {world.key}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert (
        "Traceback" not in response.text
        and response.json()["error"]["type"] == "invalid_request_error"
    )


def test_invalid_utf8_body_is_400(world: World) -> None:
    body = b'{"model":"m","messages":[{"role":"user","content":"\xff\xfe"}]}'
    response = httpx.post(
        _chat_url(world),
        content=body,
        timeout=10,
        headers={"Authorization": f"Bearer {world.key}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text


def test_a_log_of_the_world(world: World) -> None:
    """No request of this module made the control plane fail on its own (its own 500s log a
    traceback)."""
    assert "Traceback" not in world.cp.log(), world.cp.log()[-3000:]


def test_a_model_whose_window_is_within_the_limit_gets_no_cap_but_usage_is_clamped_to_the_window(
    world: World,
) -> None:
    """vLLM refuses a cap that does not fit beside the prompt: a window smaller than the limit
    caps instead."""
    ws = world.rogue.connect(
        models=[{"name": world.rogue.model, "engine": "fake", "context_length": 32}]
    )
    try:
        response, request = exchange(
            ws,
            _chat_url(world),
            world.key,
            world.chat(),
            _answer(Usage(prompt_tokens=3, completion_tokens=10**6)),
        )
        assert response.status_code == 200, response.text
        assert "max_tokens" not in json.loads(request.body)
        rid = response.headers["x-request-id"]
        wait_until(lambda: any(r["id"] == rid for r in world.records()), 15, "the request record")
        assert next(r for r in world.records() if r["id"] == rid)["completion_tokens"] == 32
    finally:
        ws.close()
