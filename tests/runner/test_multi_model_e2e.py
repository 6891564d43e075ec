"""Two models on one runner, end to end: a real control plane, a real runner, two real
llama.cpp engines.

There is no model hub here, so the two models are the embedded SmolLM2 GGUF served
under two ids: ``smol-a`` from the installed file and ``smol-b`` from a copy of it
(a copy, so that the test can take ``smol-b``'s file away and keep its engine down).
Which engine answered is read from each engine's own llama.cpp counters.

A hung engine is made with SIGSTOP: the process stays alive and its socket still
accepts connections, but nothing answers; only the health re-check can see it.
"""

from __future__ import annotations

import re
import shutil
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from harness.processes import ControlPlaneProcess, RunnerProcess, tenant_records, wait_until
from outpost.runner.models import embedded_model_path

LIGHT = ["--parallel", "1", "--headroom", "0", "--ctx", "512"]
# Hang detection within ~5 s; two failures in a row, so one slow answer on a busy machine is not a
# hang.
CHECKS = [
    "--health-check-interval-s",
    "0.5",
    "--health-check-timeout-s",
    "2",
    "--health-check-failures",
    "2",
]


class TwoModels:
    def __init__(
        self, cp: ControlPlaneProcess, runner: RunnerProcess, key: str, original: Path, copy: Path
    ) -> None:
        self.cp, self.runner, self.key, self.copy = cp, runner, key, copy
        self.paths = {"smol-a": str(original), "smol-b": str(copy)}
        ports = dict(
            re.findall(r"ready for (smol-[ab]) at http://127\.0\.0\.1:(\d+)", runner.log())
        )
        self.ports = {name: int(port) for name, port in ports.items()}

    def chat(self, model: str) -> httpx.Response:
        return httpx.post(
            f"{self.cp.url}/v1/chat/completions",
            timeout=120,
            headers={"Authorization": f"Bearer {self.key}"},
            json={
                "model": model,
                "max_tokens": 3,
                "temperature": 0,
                "messages": [{"role": "user", "content": "Say hi."}],
            },
        )

    def predicted(self, model: str) -> float:
        """Tokens the engine serving ``model`` has generated, from its own /metrics."""
        text = httpx.get(f"http://127.0.0.1:{self.ports[model]}/metrics", timeout=5).text
        match = re.search(r"^llamacpp:tokens_predicted_total\s+(\S+)$", text, re.MULTILINE)
        assert match, text
        return float(match.group(1))

    def listed(self) -> list[str]:
        return self.cp.models(self.key)

    def runners(self) -> list[dict]:
        return httpx.get(
            f"{self.cp.url}/api/runners", headers={"Authorization": f"Bearer {self.key}"}, timeout=5
        ).json()["data"]

    def engine_pid(self, model: str) -> int:
        """The engine process of ``model``, found by its model file (a restart changes its port)."""
        runner = psutil.Process(self.runner.proc.pid)  # type: ignore[union-attr]
        for child in runner.children(recursive=True):
            cmd = child.cmdline()
            if "--model" in cmd and cmd[cmd.index("--model") + 1] == self.paths[model]:
                return child.pid
        raise AssertionError(f"no engine process for {model}")


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoModels]:
    tmp = tmp_path_factory.mktemp("two-models")
    original = embedded_model_path()
    copy = tmp / original.name
    shutil.copyfile(original, copy)
    cp = ControlPlaneProcess(
        tmp / "cp",
        f"sqlite+aiosqlite:///{tmp / 'outpost.db'}",
        extra_env={"OUTPOST_RUNNER_WAIT_S": "1"},
    ).start()
    runner = RunnerProcess(
        cp,
        tmp / "runner",
        "two",
        args=[*LIGHT, *CHECKS, "--model", f"smol-a={original}", "--model", f"smol-b={copy}"],
    )
    try:
        key = cp.api_key()
        runner.start()
        runner.wait_connected(key)
        yield TwoModels(cp, runner, key, original, copy)
    finally:
        runner.stop()
        cp.stop()


def test_both_ids_are_listed_and_each_has_its_own_engine(two: TwoModels) -> None:
    assert {"smol-a", "smol-b"} <= set(two.listed())
    assert set(two.ports) == {"smol-a", "smol-b"} and two.ports["smol-a"] != two.ports["smol-b"]
    logs = two.runner.state_dir / "logs"
    assert (logs / "engine-smol-a.log").exists() and (logs / "engine-smol-b.log").exists()


def test_a_request_reaches_the_engine_of_the_model_it_names(two: TwoModels) -> None:
    for asked, other in (("smol-a", "smol-b"), ("smol-b", "smol-a")):
        before = {m: two.predicted(m) for m in ("smol-a", "smol-b")}
        resp = two.chat(asked)
        assert resp.status_code == 200, resp.text
        assert resp.json()["model"] == asked
        generated = resp.json()["usage"]["completion_tokens"]
        assert two.predicted(asked) == before[asked] + generated > before[asked]
        assert two.predicted(other) == before[other]


def test_each_engine_has_its_own_queue_with_its_own_slot(two: TwoModels) -> None:
    """``--parallel 1`` per engine: the runner's capacity is 2, but a second smol-a request waits
    for smol-a's slot (docs/protocol.md "Engine slots") while a smol-b request runs at once."""
    admin = two.cp.cli("keys", "create", "fairness", "--admin").splitlines()[-1]
    [runner_id] = [r["id"] for r in two.runners()]

    def queues() -> dict:
        resp = httpx.get(
            f"{two.cp.url}/api/fairness/service",
            headers={"Authorization": f"Bearer {admin}"},
            timeout=10,
        )
        assert resp.status_code == 200, resp.text
        return resp.json()["runners"]

    a_streaming, seen = threading.Event(), {}

    def hold() -> None:  # holds smol-a's one slot with a long stream
        body = {
            "model": "smol-a",
            "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": 400,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
        }
        with httpx.stream(
            "POST",
            f"{two.cp.url}/v1/chat/completions",
            json=body,
            timeout=300,
            headers={"Authorization": f"Bearer {two.key}"},
        ) as r:
            seen["status"] = r.status_code
            chunks = r.iter_text()
            next(chunks)
            a_streaming.set()
            seen["tail"] = "".join(chunks)

    database_url = two.cp.env["OUTPOST_DATABASE_URL"]
    before = {r["id"] for r in tenant_records(database_url, "default")}
    with ThreadPoolExecutor(2) as pool:
        holder = pool.submit(hold)
        assert a_streaming.wait(120), seen
        second = pool.submit(two.chat, "smol-a")
        # The runner-wide capacity (2) would admit it at once; smol-a's engine has one slot.
        wait_until(
            lambda: queues().get(f"{runner_id}#smol-a", {}).get("queued") == 1,
            60,
            "the second smol-a request queued for smol-a's engine",
        )
        other = two.chat("smol-b")
        assert other.status_code == 200, other.text
        holder.result(timeout=300)
        assert second.result(timeout=300).status_code == 200
    assert seen["status"] == 200
    wait_until(
        lambda: len({r["id"] for r in tenant_records(database_url, "default")} - before) == 3,
        30,
        "the three request records",
    )
    new = [r for r in tenant_records(database_url, "default") if r["id"] not in before]
    # smol-b's engine had a free slot: it never queued behind smol-a's, which waited its turn.
    [b_wait] = [r["queue_ms"] for r in new if r["model"] == "smol-b"]
    assert b_wait < max(r["queue_ms"] for r in new if r["model"] == "smol-a")
    engine_queues = {f"{runner_id}#smol-a", f"{runner_id}#smol-b"}
    wait_until(
        lambda: (
            {
                k: (q["capacity"], q["in_flight"], q["queued"])
                for k, q in queues().items()
                if k in engine_queues
            }
            == dict.fromkeys(engine_queues, (1, 0, 0))
        ),
        30,
        "both engine queues idle, one slot each",
    )


def test_one_engine_down_leaves_the_other_serving_and_only_its_model_unavailable(
    two: TwoModels,
) -> None:
    # Take smol-b's file away and kill its engine: every restart now fails while loading.
    two.copy.rename(two.copy.with_suffix(".away"))
    psutil.Process(two.engine_pid("smol-b")).send_signal(signal.SIGKILL)
    wait_until(lambda: "smol-b" not in two.listed(), 30, "smol-b to leave /v1/models")
    assert "smol-a" in two.listed()
    resp = two.chat("smol-a")
    assert resp.status_code == 200, resp.text
    down = two.chat("smol-b")
    assert down.status_code == 503, down.text
    # The runner stays connected throughout; its supervisor keeps retrying with backoff.
    runners = httpx.get(
        f"{two.cp.url}/api/runners", headers={"Authorization": f"Bearer {two.key}"}, timeout=5
    ).json()["data"]
    assert [r["connected"] for r in runners] == [True]
    # Each engine's own slots: admission is per engine, so operators see them per engine.
    assert sorted((e["models"], e["capacity"]) for e in runners[0]["engines"]) == [
        (["smol-a"], 1),
        (["smol-b"], 1),
    ]
    failed = "engine xllamacpp (smol-b) restart failed: engine exited with code 1 while loading"
    wait_until(lambda: failed in two.runner.log(), 30, "a failed restart of smol-b's engine")
    assert "engine xllamacpp (smol-b) exited with code -9; restart 1" in two.runner.log()
    assert "(smol-a) exited" not in two.runner.log()

    # Give the file back: the supervisor brings the engine up and the model returns.
    two.copy.with_suffix(".away").rename(two.copy)
    wait_until(lambda: "smol-b" in two.listed(), 90, "smol-b back in /v1/models")
    resp = two.chat("smol-b")
    assert resp.status_code == 200, resp.text


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_hung_engine_is_killed_restarted_and_serves_again(two: TwoModels) -> None:
    hung = two.engine_pid("smol-a")
    psutil.Process(hung).send_signal(signal.SIGSTOP)  # alive, never answers
    try:
        wait_until(
            lambda: (
                "engine xllamacpp (smol-a) is alive but failed 2 health checks in a row"
                in two.runner.log()
            ),
            30,
            "the runner to find smol-a's engine hung",
        )
        wait_until(lambda: _gone(hung), 10, "the hung engine to be killed")
    finally:
        if not _gone(hung):
            psutil.Process(hung).send_signal(signal.SIGKILL)
    # The supervisor logs the restart just after it has reaped the process: wait for the line, not
    # assume it.
    wait_until(
        lambda: (
            "engine xllamacpp (smol-a) hung (failed 2 health checks), killed; restart 1 in"
            in two.runner.log()
        ),
        10,
        "the supervisor to log the hung engine's restart",
    )
    wait_until(
        lambda: "engine xllamacpp (smol-a) is back (restart 1" in two.runner.log(),
        90,
        "smol-a's new engine",
    )
    assert two.engine_pid("smol-a") != hung
    wait_until(lambda: "smol-a" in two.listed(), 10, "smol-a in /v1/models")
    resp = two.chat("smol-a")
    assert resp.status_code == 200, resp.text
    assert two.chat("smol-b").status_code == 200  # the other engine served throughout


def test_while_a_hung_engine_is_down_the_control_plane_says_so(two: TwoModels) -> None:
    # Without its file the restart fails while loading, which keeps the model down long enough to
    # look at.
    two.copy.rename(two.copy.with_suffix(".away"))
    hung = two.engine_pid("smol-b")
    psutil.Process(hung).send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: "smol-b" not in two.listed(), 30, "smol-b to leave /v1/models")
        wait_until(lambda: _gone(hung), 10, "the hung engine to be killed")
        [runner] = two.runners()
        assert runner["connected"] and runner["unavailable_models"] == ["smol-b"]
        assert sorted(runner["models"]) == ["smol-a", "smol-b"]
        down = two.chat("smol-b")
        assert down.status_code == 503, down.text
        assert down.json()["error"]["message"] == (
            "The engine serving 'smol-b' is unavailable (restarting or loading) on runner(s) "
            "'two'; retry shortly."
        )
        assert two.chat("smol-a").status_code == 200
    finally:
        two.copy.with_suffix(".away").rename(two.copy)
        if not _gone(hung):
            psutil.Process(hung).send_signal(signal.SIGKILL)
    wait_until(lambda: "smol-b" in two.listed(), 90, "smol-b back in /v1/models")
    assert two.runners()[0]["unavailable_models"] == []
    resp = two.chat("smol-b")
    assert resp.status_code == 200, resp.text
