"""Issue 22 end to end: a real control plane and a real runner; the embedded model deployed again
under a second name through the SDK, served by a real llama.cpp engine, chatted with through the
official ``openai`` client, split 50/50 with a second deployment of that name on the same runner
(A/B on one machine) and compared, then deleted until the name is gone.

Nothing is scripted: the runner fetches the GGUF from its model directory (an operator's link to
the embedded model), plans, starts the engine under its supervisor and reports ``replica.v1``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from harness.processes import ControlPlaneProcess, RunnerProcess, wait_until
from outpost.runner.models import embedded_model_path
from outpost.sdk.client import Client

STATIC = "smollm2-135m-instruct"
LIGHT = {"parallel": 1, "ctx": 2048, "headroom": 0}  # one slot: light on a shared machine


def test_deploy_chat_delete_with_a_real_runner(tmp_path: Path) -> None:
    cp = ControlPlaneProcess(
        tmp_path / "cp",
        f"sqlite+aiosqlite:///{tmp_path / 'outpost.db'}",
        extra_env={"OUTPOST_DEPLOYMENT_RECONCILE_INTERVAL_S": "0.5"},
        shared_pool=False,
    ).start()
    models = tmp_path / "models"
    (models / "team").mkdir(parents=True)
    (models / "team" / "smol.gguf").symlink_to(embedded_model_path())
    runner = RunnerProcess(
        cp,
        tmp_path / "runner",
        "deploy-e2e",
        args=["--model-dir", str(models), "--parallel", "1", "--headroom", "0"],
    )
    try:
        admin = cp.cli("keys", "create", "admin", "--admin").splitlines()[-1]
        runner.start()
        runner_id = runner.wait_connected(admin)
        sdk = Client(cp.url, api_key=admin, timeout=30)
        chat = openai.OpenAI(base_url=f"{cp.url}/v1", api_key=admin, max_retries=0, timeout=120)

        made = sdk.deployments.create(
            name="smol-two",
            aliases=["smol-2"],
            source={"kind": "path", "path": "team/smol.gguf"},
            engine="llama.cpp",
            engine_options=LIGHT,
        )
        assert made.replicas == 1 and made.ready_replicas == 0

        def ready() -> bool:
            got = sdk.deployments.get(made.id)
            failed = [r for r in got.replica_status if r.state == "failed"]
            assert not failed, f"{failed}\n{runner.log()[-3000:]}"
            return got.ready_replicas == 1

        wait_until(ready, 600, f"the replica ready\n{runner.log()[-3000:]}", interval=1)
        got = sdk.deployments.get(made.id)
        assert got.replica_status[0].runner_id == runner_id
        listed = sdk._json("GET", "/api/deployments")
        assert [s["name"] for s in listed["static"]] == [STATIC]

        names = {m.id for m in chat.models.list()}
        assert {"smol-two", "smol-2", STATIC} <= names
        for model in ("smol-two", "smol-2"):
            answer = chat.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=4
            )
            assert answer.choices[0].message.content, answer
            assert answer.usage is not None and answer.usage.completion_tokens > 0
        _ab_on_one_runner(sdk, chat, runner, made.id, runner_id)
        # The runner's own model is untouched beside it.
        static = chat.chat.completions.create(
            model=STATIC, messages=[{"role": "user", "content": "Hi."}], max_tokens=2
        )
        assert static.choices[0].message.content is not None

        for d in sdk.deployments.list():
            sdk.deployments.delete(d.id)
        wait_until(
            lambda: "smol-two" not in {m.id for m in chat.models.list()}, 60, "the name gone"
        )
        with pytest.raises(openai.NotFoundError):
            chat.chat.completions.create(
                model="smol-two", messages=[{"role": "user", "content": "x"}], max_tokens=2
            )
        # The runner reports the replica stopped: the deployment is forgotten.
        wait_until(lambda: sdk.deployments.list() == [], 120, "the deployment forgotten")
        assert STATIC in {m.id for m in chat.models.list()}
    finally:
        runner.stop()
        cp.stop()


def _ab_on_one_runner(
    sdk: Client, chat: openai.OpenAI, runner: RunnerProcess, first: str, runner_id: str
) -> None:
    """A second deployment of the same public name lands on the same runner (each replica answers
    there to its deployment's id); 50/50 weights send both traffic, every answer and chunk says
    the public name, and the comparison counts each deployment's own requests."""
    second = sdk.deployments.create(
        name="smol-two",
        source={"kind": "path", "path": "team/smol.gguf"},
        engine="llama.cpp",
        engine_options=LIGHT,
        weight=1,
    )

    def ready() -> bool:
        got = sdk.deployments.get(second.id)
        failed = [r for r in got.replica_status if r.state == "failed"]
        assert not failed, f"{failed}\n{runner.log()[-3000:]}"
        return got.ready_replicas == 1

    wait_until(ready, 600, f"the second replica ready\n{runner.log()[-3000:]}", interval=1)
    assert sdk.deployments.get(second.id).replica_status[0].runner_id == runner_id
    hello = [{"role": "user", "content": "Say hello."}]
    for i in range(16):  # all 16 on one side by chance: 2**-15
        if i % 2:
            answer = chat.chat.completions.create(model="smol-two", messages=hello, max_tokens=2)
            assert answer.model == "smol-two", answer
            continue
        chunks = list(
            chat.chat.completions.create(
                model="smol-two",
                messages=hello,
                max_tokens=2,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert chunks and {c.model for c in chunks} == {"smol-two"}, chunks
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

    def compared() -> dict[str, dict[str, Any]]:
        return {row["id"]: row for row in sdk.deployments.compare("smol-two")}

    # The records say the public name (compare reads records of it) and which deployment served.
    # Two requests went to the first deployment before the second existed.
    wait_until(lambda: sum(r["requests"] for r in compared().values()) == 18, 30, "records")
    rows = compared()
    assert set(rows) == {first, second.id}
    assert rows[first]["requests"] > 2 and rows[second.id]["requests"] > 0, rows
    for row in rows.values():
        assert row["errors"] == 0 and row["runners"] == [runner_id], row
