"""A small probe against a real llama.cpp server (xllamacpp) serving the
embedded SmolLM2-135M model: the runner speaks real OpenAI-compatible HTTP.

Never skipped: xllamacpp and the embedded model are dependencies, so a
missing one is a failure (collection fails with the reason), not a skip.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import pytest
import xllamacpp  # noqa: F401 - imported so a missing engine fails collection

from outpost.control_plane.probes import (
    ExpansionOptions,
    ProbeRunner,
    ProbeTarget,
    SamplingSettings,
    build_report,
    builtin_suite,
)
from outpost.runner.models import embedded_model_path

MODEL = embedded_model_path()  # raises, naming the missing package, if the model is not installed

SERVER = """
import sys, threading, xllamacpp
params = xllamacpp.CommonParams()
params.model.path = sys.argv[1]
params.port = int(sys.argv[2])
params.hostnames = ["127.0.0.1"]
params.n_ctx = 2048
params.n_parallel = 2
server = xllamacpp.Server(params)
print("ready", flush=True)
threading.Event().wait()
"""


@pytest.fixture(scope="module")
def engine_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(MODEL), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the llama.cpp server did not start")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(timeout=30)


async def test_probe_against_real_llama_cpp(engine_url):
    runner = ProbeRunner(
        ProbeTarget(base_url=engine_url, model="smollm2-135m", engine="xllamacpp"),
        "no-key-needed",
        sampling=SamplingSettings(temperature=0.0, max_tokens=16, seed=7),
        concurrency=2,
        show_progress=False,
    )
    options = ExpansionOptions(max_prompts_per_group=2, attributes=["gender"])
    run = await runner.run(builtin_suite(), options)
    assert [r.status for r in run.responses] == ["ok"] * 4, [r.error for r in run.responses]
    assert all(r.completion_tokens and r.completion_tokens <= 16 for r in run.responses)
    assert all(set(r.outcomes) == {"refusal", "sentiment", "length_words"} for r in run.responses)
    report = build_report(run)
    gender = report.attributes["gender"]
    assert gender.outcomes["refusal"].groups["female"].n == 2
    assert gender.outcomes["refusal"].disparate_impact.enough_samples is False
    assert report.flagged_attributes == []
