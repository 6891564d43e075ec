"""The runner's side of deployments, end to end: a real runner process with its real llama.cpp
engine takes deploy.v1 orders from a scripted control plane (tests/deployments/scripted_cp.py,
the real protocol over a real WebSocket), fetches the embedded model from its model directory,
a loopback URL and a loopback Hugging Face mirror, serves it under new names, and stops it again.

One runner for the module: every engine load costs seconds on a shared 2-core machine.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.processes import RunnerProcess
from outpost.runner.identity import RunnerIdentity
from outpost.runner.models import embedded_model_path
from outpost.sdk.identity import IdentityKey
from outpost.sdk.protocol import DeployFrame, StatusFrame, UndeployFrame
from tests.deployments.loopback import FileServer, Served
from tests.deployments.scripted_cp import ScriptedControlPlane

pytestmark = pytest.mark.timeout(900)

CHAT = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4}
LIGHT = {"parallel": 1, "ctx": 2048, "headroom": 0}  # one slot: light on a shared machine


@dataclass
class Bench:
    cp: ScriptedControlPlane
    runner: RunnerProcess
    files: FileServer
    models: Path
    gguf: Served
    slow: Served


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    tmp = tmp_path_factory.mktemp("deploy-runner")
    key = IdentityKey.generate()
    models = tmp / "models"
    (models / "team").mkdir(parents=True)
    # An operator's link into the model directory: the embedded GGUF under another path.
    (models / "team" / "smol.gguf").symlink_to(embedded_model_path())
    gguf = Served(embedded_model_path(), cut_after=8 * 1024 * 1024)  # the first GET is cut
    (tmp / "big.gguf").write_bytes(os.urandom(32 * 1024 * 1024))
    slow = Served(tmp / "big.gguf", delay_s=0.2)  # about 25 s for the whole file
    commit = "b0" * 20
    files = FileServer(
        files={"/m/smol.gguf": gguf, "/slow/big.gguf": slow},
        repos={"acme/smol-gguf": (commit, {"smol-q4.gguf": Served(embedded_model_path())})},
    )
    with files, ScriptedControlPlane(key.public_b64) as cp:
        state = tmp / "runner"
        RunnerIdentity(runner_id="rn-deploy", key=key, control_plane=cp.url).save(state)
        runner = RunnerProcess(
            None,  # type: ignore[arg-type]  # enrolled already: no control plane process to ask
            state,
            "deploy",
            args=[
                "--connections",
                "1",
                "--model-dir",
                str(models),
                "--parallel",
                "1",
                "--max-deployments",
                "4",
            ],  # fmt: skip
            extra_env={
                "HF_ENDPOINT": files.url,
                "HF_HUB_CACHE": str(tmp / "hub"),
                "HF_HUB_DISABLE_XET": "1",
            },
            url=cp.url,
        ).start(token="")
        try:
            cp.wait_connected()
            yield Bench(cp, runner, files, models, gguf, slow)
        finally:
            runner.stop()
            shutil.rmtree(tmp / "hub", ignore_errors=True)


def deploy(rid: str, name: str, source: dict, **over: object) -> DeployFrame:
    fields = {"engine_options": LIGHT, **over}
    return DeployFrame.model_validate(
        {"replica_id": rid, "deployment_id": "d-" + rid, "name": name, "source": source, **fields}
    )


def chat(bench: Bench, model: str) -> tuple[int, dict]:
    status, body = bench.cp.request(model, {"model": model, **CHAT})
    return status, json.loads(body) if body else {}


def test_hello_announces_the_capability(bench: Bench) -> None:
    hello = bench.cp.hellos[0]
    assert "deployments" in hello.capabilities
    # The runner's own model only: replicas are announced in replica.v1.
    assert [m.name for m in hello.models] == ["smollm2-135m-instruct"]


def test_deploy_from_the_model_dir_serves_a_second_name(bench: Bench) -> None:
    cp = bench.cp
    cp.send(deploy("r-path", "smol-b", {"kind": "path", "path": "team/smol.gguf"}))
    ready = cp.replica("r-path", "ready")
    assert ready.model.name == "smol-b"
    assert ready.model.context_length == 2048
    # A state may be reported twice (the resync of a connection that just opened), never skipped
    # back; a path needs no download.
    states = list(dict.fromkeys(f.state for f in cp.replica_frames("r-path")))
    assert states == ["pending", "loading", "ready"], states
    status, body = chat(bench, "smol-b")
    assert status == 200, body
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] >= 1
    # Admission counts the replica's slots: its engine is in the status frames.
    slots = cp.wait_for(
        lambda f: isinstance(f, StatusFrame) and any("smol-b" in e.models for e in f.engines),
        30,
        "status with the replica's engine",
    )
    engine = next(e for e in slots.engines if "smol-b" in e.models)
    assert engine.capacity == 1


def test_deploy_from_a_url_resumes_and_verifies(bench: Bench) -> None:
    cp, url = bench.cp, bench.files.url + "/m/smol.gguf"
    cp.send(deploy("r-url", "smol-c", {"kind": "url", "url": url, "sha256": bench.gguf.sha256}))
    ready = cp.replica("r-url", "ready", timeout=400)
    assert ready.model.name == "smol-c"
    frames = cp.replica_frames("r-url")
    downloading = [f for f in frames if f.state == "downloading"]
    size = bench.gguf.path.stat().st_size
    assert downloading and all(f.bytes_done <= size for f in downloading)
    assert any(f.bytes_total == size for f in downloading)
    # The first connection was cut at 8 MiB; the runner resumed from what it had.
    ranges = [r[2] for r in bench.files.requests if r[1] == "/m/smol.gguf" and r[0] == "GET"]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
    assert int(ranges[1][6:-1]) > 0
    assert chat(bench, "smol-c")[0] == 200
    kept = bench.models / ".downloads" / f"sha256-{bench.gguf.sha256}" / "smol.gguf"
    assert kept.stat().st_size == size


def test_deploy_from_a_hub_mirror(bench: Bench) -> None:
    cp = bench.cp
    source = {"kind": "hf", "repo": "acme/smol-gguf", "filename": "smol-q4.gguf"}
    cp.send(deploy("r-hf", "smol-hf", source, aliases=["smol-mirror"]))
    ready = cp.replica("r-hf", "ready", timeout=400)
    assert ready.model.aliases == ["smol-mirror"]
    assert any(f.state == "downloading" for f in cp.replica_frames("r-hf"))
    assert any("/acme/smol-gguf/resolve/" in r[1] for r in bench.files.requests)
    assert chat(bench, "smol-mirror")[0] == 200


@pytest.mark.parametrize(
    ("rid", "source", "options", "name", "reason"),
    [
        ("r-bad-sum", {"kind": "url", "url": "/m/smol.gguf", "sha256": "0" * 64}, LIGHT,
         "smol-x", "checksum mismatch"),
        ("r-missing", {"kind": "path", "path": "nope.gguf"}, LIGHT, "smol-y",
         "no file or folder 'nope.gguf'"),
        ("r-option", {"kind": "path", "path": "team/smol.gguf"}, {"mlock": True}, "smol-z",
         "unknown engine option 'mlock'"),
        ("r-bool", {"kind": "path", "path": "team/smol.gguf"}, {"parallel": True}, "smol-z",
         "must be an integer"),
        ("r-huge", {"kind": "path", "path": "team/smol.gguf"}, {"ctx": 2**27}, "smol-z",
         "does not fit"),
        ("r-clash", {"kind": "path", "path": "team/smol.gguf"}, LIGHT, "smollm2",
         "already served here by a model this runner was started with"),
        ("r-clash2", {"kind": "path", "path": "team/smol.gguf"}, LIGHT, "smol-b",
         "already served here by replica r-path"),
        ("r-http", {"kind": "url", "url": "http://10.255.255.1/x.gguf", "sha256": "0" * 64},
         LIGHT, "smol-z", "plain http to 10.255.255.1 is not allowed"),
    ],
)  # fmt: skip
def test_refused_deploys_fail_with_the_reason(
    bench: Bench, rid: str, source: dict, options: dict, name: str, reason: str
) -> None:
    if source.get("url", "").startswith("/"):
        source = {**source, "url": bench.files.url + source["url"]}
    bench.cp.send(deploy(rid, name, source, engine_options=options))
    failed = bench.cp.replica(rid, "failed", timeout=400)
    assert reason in failed.reason
    assert not any(f.state == "ready" for f in bench.cp.replica_frames(rid))
    # The runner is unharmed.
    assert chat(bench, "smollm2")[0] == 200


def test_rolling_update_on_one_runner(bench: Bench) -> None:
    """A new generation of a deployment may serve its name beside the old one; the name keeps
    answering while the old replica drains and after it stops."""
    cp = bench.cp
    url = bench.files.url + "/m/smol.gguf"
    source = {"kind": "url", "url": url, "sha256": bench.gguf.sha256}
    gets = sum(1 for r in bench.files.requests if r[1] == "/m/smol.gguf")
    order = deploy("r-g2", "smol-c", source, generation=2)
    cp.send(order.model_copy(update={"deployment_id": "d-r-url"}))
    assert cp.replica("r-g2", "ready").model.name == "smol-c"
    # The verified download was kept: the new generation fetched nothing.
    assert sum(1 for r in bench.files.requests if r[1] == "/m/smol.gguf") == gets
    # Four replicas are live: the runner's limit (--max-deployments 4) refuses a fifth.
    cp.send(deploy("r-over", "smol-o", {"kind": "path", "path": "team/smol.gguf"}))
    assert "its limit" in cp.replica("r-over", "failed", timeout=30).reason
    cp.send(UndeployFrame(replica_id="r-url", drain_s=5))
    cp.replica("r-url", "stopped", timeout=120)
    status, body = chat(bench, "smol-c")
    assert status == 200, body


def test_undeploy_during_a_download(bench: Bench) -> None:
    cp, slow = bench.cp, bench.slow
    source = {"kind": "url", "url": bench.files.url + "/slow/big.gguf", "sha256": slow.sha256}
    cp.send(deploy("r-slow", "smol-slow", source))
    cp.wait_for(
        lambda f: (
            getattr(f, "type", "") == "replica.v1"
            and f.replica_id == "r-slow"
            and f.state == "downloading"
            and f.bytes_done > 0
        ),
        120,
        "download progress",
    )
    cp.send(UndeployFrame(replica_id="r-slow", drain_s=0))
    cp.replica("r-slow", "stopped", timeout=60)
    size = slow.path.stat().st_size
    assert [f.state for f in cp.replica_frames("r-slow")][-1] == "stopped"
    assert not any(f.state in ("loading", "ready") for f in cp.replica_frames("r-slow"))
    # What came is kept as a part, for a later deploy of the same file to resume; nothing in
    # the folder passes for a verified file.
    folder = bench.models / ".downloads" / f"sha256-{slow.sha256}"
    assert [p.name for p in folder.iterdir()] == ["big.gguf.part"]
    assert 0 < (folder / "big.gguf.part").stat().st_size < size
    assert chat(bench, "smollm2")[0] == 200


def test_malformed_deploy_breaks_the_protocol_then_resync(bench: Bench) -> None:
    cp = bench.cp
    cp.replica("r-path", "ready")
    hellos = len(cp.hellos)
    evil = deploy("r-evil", "evil", {"kind": "path", "path": "x.gguf"}).model_dump(mode="json")
    evil["source"]["path"] = "../../identity.json"
    before = len(cp.frames)
    cp.send(json.dumps(evil))
    # The runner refuses the frame (4000) and dials again; the new connection hears every
    # replica's latest state again.
    cp.wait_connected(count=hellos + 1)
    assert 4000 in cp.closes
    cp.wait_for(
        lambda f: (
            getattr(f, "type", "") == "replica.v1"
            and f.replica_id == "r-path"
            and f.state == "ready"
        ),
        60,
        "resync of r-path",
        since=before,
    )
    assert not cp.replica_frames("r-evil")


def test_undeploy_drains_and_the_name_is_gone(bench: Bench) -> None:
    cp = bench.cp
    cp.replica("r-path", "ready")
    cp.send(UndeployFrame(replica_id="r-path", drain_s=5))
    cp.replica("r-path", "stopped", timeout=120)
    assert [f.state for f in cp.replica_frames("r-path")][-2:] == ["draining", "stopped"]
    status, body = chat(bench, "smol-b")
    assert status == 404 and body["error"]["code"] == "model_not_found"
    assert chat(bench, "smollm2")[0] == 200
    cp.send(UndeployFrame(replica_id="r-never"))
    assert cp.replica("r-never", "stopped", timeout=30).reason == "not on this runner"


def test_a_flood_of_orders_is_answered_and_bounded(bench: Bench) -> None:
    """A control plane gone wrong sends 200 orders at once: each is answered (failed: no such
    file, or over the runner's limit), none loads, and the runner keeps serving."""
    cp = bench.cp
    ids = [f"r-flood-{i}" for i in range(200)]
    for i, rid in enumerate(ids):
        cp.send(deploy(rid, f"flood-{i}", {"kind": "path", "path": f"flood/{i}.gguf"}))
    for rid in ids:
        reason = cp.replica(rid, "failed", timeout=120).reason
        assert "no file or folder" in reason or "its limit" in reason, reason
    assert not any(f.state in ("loading", "ready") for rid in ids for f in cp.replica_frames(rid))
    assert chat(bench, "smol-c")[0] == 200


def test_restarted_runner_brings_its_replicas_back(bench: Bench) -> None:
    """The control plane keeps a replica through a short absence of its runner (it does not
    place it again), so a restarted runner deploys again what it held, from what it kept."""
    cp, runner = bench.cp, bench.runner
    held = {"r-hf", "r-g2"}
    for rid in held:
        cp.replica(rid, "ready")
    hellos, since = len(cp.hellos), len(cp.frames)
    gets = len(bench.files.requests)
    runner.stop()
    saved = json.loads((runner.state_dir / "deployments.json").read_text())
    assert {o["replica_id"] for o in saved} == held  # stopped and failed ones are not kept
    runner.start(token="")
    cp.wait_connected(count=hellos + 1)
    for rid in held:
        cp.wait_for(
            lambda f, rid=rid: (
                getattr(f, "type", "") == "replica.v1"
                and f.replica_id == rid
                and f.state == "ready"
            ),
            400,
            f"{rid} ready again",
            since=since,
        )
    assert chat(bench, "smol-c")[0] == 200
    assert chat(bench, "smol-mirror")[0] == 200
    # The verified URL download was not fetched again (the hub client only asked for metadata).
    assert not [r for r in bench.files.requests[gets:] if r[1] == "/m/smol.gguf"]
