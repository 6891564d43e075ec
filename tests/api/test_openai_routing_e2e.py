"""The OpenAI surface end to end: a real control plane and real llama.cpp runners.

Runners (each the embedded SmolLM2 on one thread, one slot, 512 tokens of context):

* ``eu`` — region eu, $0.10/h, aliases ``team-chat`` and ``failover-model``, embedding mode;
* ``us`` — region us, $1.00/h, public name ``smollm2-us``, aliases ``team-chat`` and
  ``failover-model``;
* ``victim`` (the failover test only) — $0.01/h, alias ``failover-model``: the cheapest,
  so the ``cost`` policy sends it the request it is then killed under.
"""

from __future__ import annotations

import json
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from harness.processes import ControlPlaneProcess, RunnerProcess, wait_until

MODEL = "smollm2-135m-instruct"
LIGHT = ["--parallel", "1", "--headroom", "0", "--ctx", "512"]


class Cluster:
    def __init__(
        self,
        cp: ControlPlaneProcess,
        key: str,
        runners: dict[str, RunnerProcess],
        ids: dict[str, str],
        tmp: Path,
    ) -> None:
        self.cp, self.key, self.runners, self.ids, self.tmp = cp, key, runners, ids, tmp

    @property
    def base_url(self) -> str:
        return f"{self.cp.url}/v1"

    def client(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.base_url, api_key=key or self.key, max_retries=0, timeout=120
        )

    def post(self, path: str, body: dict, key: str | None = None, **headers: str) -> httpx.Response:
        return httpx.post(
            f"{self.base_url}{path}",
            json=body,
            timeout=120,
            headers={"Authorization": f"Bearer {key or self.key}", **headers},
        )

    def runner_name(self, runner_id: str) -> str:
        return {v: k for k, v in self.ids.items()}[runner_id]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("routing")
    cp = ControlPlaneProcess(
        tmp / "cp",
        f"sqlite+aiosqlite:///{tmp / 'outpost.db'}",
        extra_env={"OUTPOST_RUNNER_WAIT_S": "1"},
    ).start()
    specs = {
        "eu": [
            *LIGHT,
            "--labels",
            '{"region":"eu"}',
            "--usd-per-hour",
            "0.1",
            "--model-alias",
            "team-chat",
            "--model-alias",
            "failover-model",
            "--embedding",
        ],
        "us": [
            *LIGHT,
            "--labels",
            '{"region":"us"}',
            "--usd-per-hour",
            "1.0",
            "--served-model-name",
            "smollm2-us",
            "--model-alias",
            "team-chat",
            "--model-alias",
            "failover-model",
        ],
    }
    runners = {name: RunnerProcess(cp, tmp / name, name, args=args) for name, args in specs.items()}
    try:
        key = cp.api_key()
        for r in runners.values():
            r.start()
        ids = {name: r.wait_connected(key) for name, r in runners.items()}
        # Residency obeys the labels the owner sets, never the runner's --labels (issue 19).
        admin = cp.cli("keys", "create", "labels-admin", "--admin").splitlines()[-1]
        for name, runner_id in ids.items():
            labels = json.loads(specs[name][specs[name].index("--labels") + 1])
            set_labels = httpx.patch(
                f"{cp.url}/api/runners/{runner_id}",
                json={"labels": labels},
                timeout=10,
                headers={"Authorization": f"Bearer {admin}"},
            )
            assert set_labels.status_code == 200, set_labels.text
        yield Cluster(cp, key, runners, ids, tmp)
    finally:
        for r in runners.values():
            r.stop()
        cp.stop()


def chat_body(model: str, text: str = "Say hi.", **extra: object) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 4,
        "temperature": 0,
        **extra,
    }


# --- models and aliases ------------------------------------------------------------------


def test_models_list_names_aliases_and_capabilities(cluster: Cluster) -> None:
    models = {m["id"]: m for m in cluster.client().models.list().model_dump()["data"]}
    assert {MODEL, "smollm2-us", "team-chat", "failover-model", "smollm2"} <= set(models)
    assert models["team-chat"]["runners"] == 2 and models["team-chat"]["engines"] == ["xllamacpp"]
    assert "embeddings" in models[MODEL]["endpoints"]
    # No embeddings on this runner; tool calls through the ChatML tool template the runner ships.
    assert models["smollm2-us"]["endpoints"] == ["chat", "completions", "tools"]


def test_alias_resolves_on_either_runner(cluster: Cluster) -> None:
    seen = {}
    for policy in ("cost", "latency"):
        raw = cluster.client().chat.completions.with_raw_response.create(
            **chat_body("team-chat"), extra_headers={"X-Outpost-Routing": policy}
        )
        runner = cluster.runner_name(raw.headers["x-outpost-runner"])
        seen[runner] = raw.parse().model
        assert raw.headers["x-outpost-routing"].startswith(policy)
    # cost: the $0.10/h runner. Replies name the model the runner serves, as OpenAI names snapshots.
    assert seen.get("eu") == MODEL
    us_tenant = _tenant_key(cluster, "us-tenant", '{"region": ["us"]}')
    raw = cluster.client(us_tenant).chat.completions.with_raw_response.create(
        **chat_body("team-chat")
    )
    assert cluster.runner_name(raw.headers["x-outpost-runner"]) == "us"
    assert raw.parse().model == "smollm2-us"


def test_completions_endpoint_through_an_alias(cluster: Cluster) -> None:
    resp = cluster.client().completions.create(
        model="team-chat", prompt="The capital of France is", max_tokens=4, temperature=0
    )
    assert resp.choices[0].text and resp.usage and resp.usage.completion_tokens > 0


# --- routing policies and residency --------------------------------------------------------


def _tenant_key(cluster: Cluster, tenant: str, residency: str | None = None, *extra: str) -> str:
    if residency is not None or extra:
        cluster.cp.cli(
            "tenants", "set", tenant, *(["--residency", residency] if residency else []), *extra
        )
    return cluster.cp.api_key(tenant=tenant, name=f"{tenant}-key")


def test_residency_rules_exclude_runners(cluster: Cluster) -> None:
    key = _tenant_key(cluster, "eu-tenant", '{"region": ["eu"]}', "--routing-policy", "latency")
    for _ in range(3):
        resp = cluster.post("/chat/completions", chat_body("team-chat"), key)
        assert (
            resp.status_code == 200
            and cluster.runner_name(resp.headers["x-outpost-runner"]) == "eu"
        )
    ids = [m.id for m in cluster.client(key).models.list()]
    assert "team-chat" in ids and "smollm2-us" not in ids, (
        "models outside the tenant's residency are hidden"
    )
    refused = cluster.post("/chat/completions", chat_body("smollm2-us"), key)
    assert refused.status_code == 503
    err = refused.json()["error"]
    assert err["code"] == "no_eligible_runner" and "region" in err["message"]


def test_routing_header_overrides_key_and_tenant(cluster: Cluster) -> None:
    key = cluster.cp.cli(
        "keys", "create", "costly", "--tenant", "policy-tenant", "--routing-policy", "cost"
    ).splitlines()[-1]
    cluster.cp.cli("tenants", "set", "policy-tenant", "--routing-policy", "latency")
    resp = cluster.post("/chat/completions", chat_body("team-chat"), key)
    assert resp.headers["x-outpost-routing"].startswith("cost"), (
        "the key's policy overrides the tenant's"
    )
    assert cluster.runner_name(resp.headers["x-outpost-runner"]) == "eu"
    resp = cluster.post(
        "/chat/completions", chat_body("team-chat"), key, **{"X-Outpost-Routing": "latency"}
    )
    assert resp.headers["x-outpost-routing"].startswith("latency")
    bad = cluster.post(
        "/chat/completions", chat_body("team-chat"), key, **{"X-Outpost-Routing": "fastest"}
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_routing_policy"


def test_multi_turn_conversation_sticks_to_its_runner(cluster: Cluster) -> None:
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Name a color."},
    ]
    runners, affinity = [], []
    for turn in range(3):
        raw = cluster.client().chat.completions.with_raw_response.create(
            model="team-chat",
            messages=messages,
            max_tokens=4,
            temperature=0,
            extra_headers={"X-Outpost-Routing": "balanced"},
        )
        runners.append(raw.headers["x-outpost-runner"])
        affinity.append(raw.headers["x-outpost-routing"].split("affinity=")[1])
        messages += [
            {"role": "assistant", "content": raw.parse().choices[0].message.content or "blue"},
            {"role": "user", "content": f"Another one ({turn})?"},
        ]
    assert len(set(runners)) == 1
    assert affinity[1:] == ["hit", "hit"]


# --- embeddings ----------------------------------------------------------------------------


def test_embeddings_where_the_engine_supports_them(cluster: Cluster) -> None:
    client = cluster.client()
    resp = client.embeddings.create(
        model=MODEL, input=["hello world", "goodbye"]
    )  # base64 on the wire
    assert len(resp.data) == 2 and len(resp.data[0].embedding) > 100
    floats = client.embeddings.create(model=MODEL, input="hello", encoding_format="float")
    assert isinstance(floats.data[0].embedding[0], float)
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="smollm2-us", input="hello")
    assert info.value.response.json()["error"]["code"] == "embeddings_unsupported"


# --- limits -----------------------------------------------------------------------------------


def test_rate_limit_is_429_with_retry_after(cluster: Cluster) -> None:
    key = cluster.cp.cli("keys", "create", "limited", "--rate-limit-rpm", "2").splitlines()[-1]
    ok = [cluster.post("/chat/completions", chat_body("team-chat"), key) for _ in range(2)]
    assert [r.status_code for r in ok] == [200, 200]
    assert ok[0].headers["x-ratelimit-limit-requests"] == "2"
    assert ok[1].headers["x-ratelimit-remaining-requests"] == "0"
    refused = cluster.post("/chat/completions", chat_body("team-chat"), key)
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 30
    with pytest.raises(openai.RateLimitError):
        cluster.client(key).chat.completions.create(**chat_body("team-chat"))
    other = cluster.post("/chat/completions", chat_body("team-chat"))
    assert other.status_code == 200, "limits are per key"


def test_body_too_large_is_413(cluster: Cluster) -> None:
    resp = cluster.post("/chat/completions", chat_body("team-chat", "x" * (2 * 1024 * 1024)))
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large"


# --- unchanged clients ---------------------------------------------------------------------------


def test_openai_client_streams_with_usage(cluster: Cluster) -> None:
    stream = cluster.client().chat.completions.create(
        model="team-chat",
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=8,
        # Vendor fields pass through; ignore_eos makes the token count exact.
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"top_k": 20, "ignore_eos": True},
    )
    chunks = list(stream)
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 2
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


def test_langchain_chat_openai(cluster: Cluster) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=cluster.base_url,
        api_key=cluster.key,
        model="team-chat",
        max_tokens=6,
        temperature=0,
        max_retries=0,
        stream_usage=True,
    )
    reply = llm.invoke("Say hello.")
    assert reply.content and reply.usage_metadata and reply.usage_metadata["output_tokens"] > 0
    pieces = [chunk.content for chunk in llm.stream("Count to three.")]
    assert len([p for p in pieces if p]) > 1


# --- failover (kills a runner: keep last)
# -------------------------------------------------------------


def _kill_tree(proc: RunnerProcess) -> None:
    if proc.proc is None or proc.proc.poll() is not None:
        return
    try:
        children = psutil.Process(proc.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    proc.stop(signal.SIGKILL)
    for child in children:  # the engine runs in its own session; SIGKILL leaves it orphaned
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def _in_flight(cluster: Cluster, runner_id: str) -> int:
    rows = httpx.get(
        f"{cluster.cp.url}/api/runners",
        headers={"Authorization": f"Bearer {cluster.key}"},
        timeout=5,
    ).json()["data"]
    return next((r["in_flight"] for r in rows if r["id"] == runner_id), 0)


def test_runner_killed_before_first_byte_fails_over(cluster: Cluster) -> None:
    # Two slots: both requests below reach the victim's engine (none waits in the control plane).
    victim = RunnerProcess(
        cluster.cp,
        cluster.tmp / "victim",
        "victim",
        args=[
            "--parallel",
            "2",
            "--ctx",
            "1024",
            "--served-model-name",
            "victim-model",
            # 1,000x cheaper than the cheapest other runner: the cost estimate multiplies the rate
            # by the expected engine time, and a new runner's (default) speed may be far below what
            # the others have shown by now; the price gap must outweigh any such difference.
            "--model-alias",
            "failover-model",
            "--usd-per-hour",
            "0.0001",
        ],
    )
    victim.start()
    try:
        victim_id = victim.wait_connected(cluster.key)
        cheap = {"X-Outpost-Routing": "cost"}  # the victim is the cheapest runner
        long_stream = httpx.stream(
            "POST",
            f"{cluster.base_url}/chat/completions",
            timeout=120,
            headers={"Authorization": f"Bearer {cluster.key}", **cheap},
            # A prompt no earlier test sent: prefix affinity must not pull it to another runner.
            json={
                "model": "failover-model",
                "messages": [
                    {"role": "user", "content": f"Tell a long story ({secrets.token_hex(4)})."}
                ],
                "max_tokens": 400,
                "ignore_eos": True,
                "stream": True,
            },
        )
        lines: list[str] = []
        result: dict[str, object] = {}
        with long_stream as resp:
            assert resp.headers["x-outpost-runner"] == victim_id
            it = resp.iter_lines()
            lines.append(
                next(line for line in it if line.startswith("data:"))
            )  # first byte: it cannot move

            # Unstreamed, the whole answer is its first byte: nothing reaches the client for
            # seconds.
            def unstreamed() -> None:
                result["resp"] = cluster.post(
                    "/chat/completions",
                    chat_body(
                        "failover-model",
                        f"Write a poem ({secrets.token_hex(4)}).",
                        max_tokens=150,
                        ignore_eos=True,
                    ),
                    **cheap,
                )

            t = threading.Thread(target=unstreamed)
            t.start()
            wait_until(
                lambda: _in_flight(cluster, victim_id) >= 2, 30, "the second request on the victim"
            )
            time.sleep(0.3)  # let the request frame reach the runner
            _kill_tree(victim)
            lines.extend(line for line in it if line.startswith("data:"))
            t.join(180)
        answered = result["resp"]
        assert isinstance(answered, httpx.Response)
        assert answered.status_code == 200, answered.text
        assert answered.headers["x-outpost-runner"] in {cluster.ids["eu"], cluster.ids["us"]}
        assert answered.json()["usage"]["completion_tokens"] == 150
        # The stream that had started cannot move: an error event, then [DONE].
        assert lines[-1] == "data: [DONE]"
        error = json.loads(lines[-2][5:])
        assert error["error"]["code"] == "runner_lost"
    finally:
        _kill_tree(victim)
    assert (
        cluster.post(
            "/chat/completions", chat_body("failover-model"), **{"X-Outpost-Routing": "cost"}
        ).status_code
        == 200
    ), "the remaining runners keep serving the alias"
