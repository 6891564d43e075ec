"""The supervisor with the real engines and the embedded model: start, serve, crash, restart."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import pytest

from outpost.runner.engines.base import EngineAdapter, ServedModel
from outpost.runner.engines.llama_cpp_python import LlamaCppPythonEngine
from outpost.runner.engines.xllamacpp import XllamacppEngine
from outpost.runner.models import embedded_model_path
from outpost.runner.supervisor import EngineFailed, Supervisor

MODEL = (ServedModel(name="smollm2-135m-instruct", engine="test"),)


def _xllamacpp() -> EngineAdapter:
    return XllamacppEngine(
        model_path=str(embedded_model_path()), models=MODEL, capacity=1, ctx=512, threads=1
    )


def _llama_cpp_python() -> EngineAdapter:
    return LlamaCppPythonEngine(
        model_path=str(embedded_model_path()), models=MODEL, ctx=512, threads=1
    )


async def _chat(http: httpx.AsyncClient, sup: Supervisor) -> str:
    resp = await http.post(
        sup.base_url + "/v1/chat/completions",
        timeout=60,
        json={
            "model": "smollm2-135m-instruct",
            "max_tokens": 4,
            "messages": [{"role": "user", "content": "Hi"}],
        },
    )
    assert resp.status_code == 200, resp.text
    return resp.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    "make", [_xllamacpp, _llama_cpp_python], ids=["xllamacpp", "llama-cpp-python"]
)
async def test_real_engine_serves_and_is_restarted_after_kill_9(make, tmp_path: Path) -> None:
    async with httpx.AsyncClient() as http:
        sup = Supervisor(make(), log_dir=tmp_path, http=http, health_timeout_s=120)
        await sup.start()
        watcher = asyncio.create_task(sup.watch())
        try:
            assert await _chat(http, sup) is not None
            first_pid = sup.proc.pid
            os.killpg(first_pid, signal.SIGKILL)
            # The watcher notices the death and brings the engine back.
            # At least one restart: on a loaded machine the new engine may also miss its health
            # checks while it warms up and be restarted again; what matters is that it comes back.
            for _ in range(600):
                await asyncio.sleep(0.2)
                if sup.restarts >= 1 and sup.healthy.is_set():
                    break
            log_tail = (tmp_path / "engine.log").read_text(errors="replace")[-2000:]
            assert sup.restarts >= 1 and sup.healthy.is_set(), (sup.restarts, log_tail)
            assert sup.proc.pid != first_pid
            assert await _chat(http, sup) is not None
        finally:
            watcher.cancel()
            await sup.stop()
        assert (tmp_path / "engine.log").stat().st_size > 0


async def test_engine_that_cannot_load_fails_with_a_clear_error(tmp_path: Path) -> None:
    bad = XllamacppEngine(
        model_path=str(tmp_path / "missing.gguf"), models=MODEL, capacity=1, ctx=512
    )
    async with httpx.AsyncClient() as http:
        sup = Supervisor(bad, log_dir=tmp_path, http=http, health_timeout_s=60)
        with pytest.raises(EngineFailed, match="exited with code"):
            await sup.start()
        await sup.stop()
