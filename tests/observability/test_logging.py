"""JSON logs with one request id across the control plane and the runner."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import httpx

from harness.processes import wait_until
from harness.stack import start_engine, start_stack
from tests.observability.conftest import ObservedStack
from tests.observability.test_metrics import MODEL


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _chat(stack: ObservedStack, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(
        f"{stack.cp.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {stack.api_key}", **headers},
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": 4,
        },
        timeout=120,
    )


def test_one_request_id_in_the_header_and_both_processes_logs(observed: ObservedStack) -> None:
    rid = f"trace-{secrets.token_hex(8)}"
    resp = _chat(observed, {"X-Request-Id": rid})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-request-id"] == rid
    # A client's id cannot name the request's record (ids of records are the server's).
    record_id = resp.headers["x-outpost-record-id"]
    assert record_id.startswith("req_") and record_id != rid

    def logged(process) -> list[dict]:
        return [line for line in _json_lines(process.log()) if line.get("request_id") == rid]

    wait_until(
        lambda: logged(observed.cp) and logged(observed.runner), 10, "log lines with the request id"
    )
    cp_lines, runner_lines = logged(observed.cp), logged(observed.runner)
    assert all(line["process"] == "control-plane" for line in cp_lines)
    assert any(record_id in line["msg"] for line in cp_lines)  # the id leads to the record
    assert any(line["logger"] == "uvicorn.access" for line in cp_lines)
    assert all(line["process"] == "runner" for line in runner_lines)
    assert any(
        line["logger"] == "outpost.runner.tunnel" and "ok" in line["msg"] for line in runner_lines
    )


def test_a_generated_request_id_also_names_the_record(observed: ObservedStack) -> None:
    for headers in ({}, {"X-Request-Id": "bad id with spaces"}, {"X-Request-Id": "x" * 200}):
        resp = _chat(observed, headers)
        assert resp.status_code == 200, resp.text
        rid = resp.headers["x-request-id"]
        assert rid.startswith("req_") and rid != headers.get("X-Request-Id")
        assert "x-outpost-record-id" not in resp.headers


def test_logs_are_json_and_hold_no_secret(observed: ObservedStack) -> None:
    # Every line on both processes' stderr is one JSON object (the runner's progress lines
    # included).
    for process in (observed.cp, observed.runner):
        lines = [line for line in process.log().splitlines() if line.strip()]
        assert lines
        bad = [line for line in lines if not line.startswith("{")]
        assert not bad, f"non-JSON lines in {process.log_path.name}: {bad[:5]}"
        assert all(isinstance(json.loads(line), dict) for line in lines)
        assert observed.api_key not in process.log()
        assert observed.metrics_token not in process.log()


def test_both_processes_take_a_log_level_and_refuse_a_bad_one(tmp_path: Path) -> None:
    """``--log-level warning`` silences the runner's line per request (the benchmarks run both
    processes so); a level ``logging`` does not know is a clear error, not a traceback."""
    for command in (["outpost.runner.cli", "local-runner"], ["outpost.control_plane.cli", "serve"]):
        done = subprocess.run(
            [sys.executable, "-m", *command, "--log-level", "loud"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert "--log-level" in done.stderr and "Traceback" not in done.stderr
    engine = start_engine("sim", log_dir=tmp_path)
    stack = start_stack(engine, tmp=tmp_path)  # both processes at OUTPOST_LOG_LEVEL=warning
    try:
        resp = httpx.post(
            f"{stack.cp.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {stack.key}"},
            json={"model": stack.model, "messages": [{"role": "user", "content": "hi"}]},
            timeout=60,
        )
        assert resp.status_code == 200, resp.text
        served = stack.runners[0].log()
        assert " ok in " not in served and "INFO" not in served, served[-2000:]
    finally:
        stack.stop()
        engine.stop()
