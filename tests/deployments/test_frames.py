"""The deployment frames' bounds (sdk/protocol.py): what a peer may send and what it may not."""

from __future__ import annotations

import json
from typing import Any

import pytest

from outpost.sdk.protocol import (
    CAPABILITIES,
    MAX_FRAME_BYTES,
    MAX_MODEL_BYTES,
    DeployFrame,
    FrameError,
    HfSource,
    PathSource,
    ReplicaFrame,
    UndeployFrame,
    UrlSource,
    encode_frame,
    parse_frame,
)

SHA = "ab" * 32


def deploy(**over: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "deploy.v1",
        "replica_id": "r-1",
        "deployment_id": "d-1",
        "generation": 1,
        "name": "smol-b",
        "aliases": [],
        "source": {"kind": "path", "path": "smol.gguf"},
        "engine": "auto",
        "engine_options": {},
    }
    frame.update(over)
    return frame


def parse(obj: dict[str, Any]) -> object:
    return parse_frame(json.dumps(obj))


def test_capability_is_announced_by_name() -> None:
    assert {"deployments", "served-names"} <= CAPABILITIES


def test_served_name_only_on_the_wire_when_set() -> None:
    # An older runner refuses unknown fields: without a served name the frame is as before.
    plain = parse(deploy())
    assert isinstance(plain, DeployFrame) and plain.served_name is None
    assert "served_name" not in encode_frame(plain)
    named = parse(deploy(served_name="dep_1"))
    assert isinstance(named, DeployFrame) and named.served_name == "dep_1"
    assert json.loads(encode_frame(named))["served_name"] == "dep_1"


@pytest.mark.parametrize(
    "source",
    [
        {"kind": "path", "path": "smol.gguf"},
        {"kind": "path", "path": "team/qwen/model-q4.gguf"},
        {"kind": "url", "url": "https://models.example/smol.gguf", "sha256": SHA},
        {"kind": "url", "url": "http://127.0.0.1:8000/a/b.gguf?x=1", "sha256": SHA.upper()},
        {"kind": "hf", "repo": "org/name", "revision": "main", "filename": "x.gguf"},
        {"kind": "hf", "repo": "org/name", "revision": None, "filename": None},
    ],
)
def test_sources_round_trip(source: dict[str, Any]) -> None:
    frame = parse(deploy(source=source))
    assert isinstance(frame, DeployFrame)
    assert isinstance(frame.source, PathSource | UrlSource | HfSource)
    assert parse_frame(encode_frame(frame)) == frame
    if isinstance(frame.source, UrlSource):
        assert frame.source.sha256 == SHA  # normalised to lower case


@pytest.mark.parametrize(
    "path",
    [
        "../etc/passwd",
        "a/../../b",
        "/etc/passwd",
        "a//b",
        "./a",
        "a/.",
        "a\\..\\b",
        "C:evil",
        "a\nb",
        "a\x00b",
        "",
        "x" * 1025,
    ],
)
def test_path_traversal_refused(path: str) -> None:
    with pytest.raises(FrameError, match="source"):
        parse(deploy(source={"kind": "path", "path": path}))
    with pytest.raises(FrameError, match="source"):
        parse(deploy(source={"kind": "hf", "repo": "o/n", "filename": path}))


@pytest.mark.parametrize(
    "source",
    [
        {"kind": "url", "url": "https://h/x.gguf"},  # checksum required
        {"kind": "url", "url": "https://h/x.gguf", "sha256": "ab" * 31},
        {"kind": "url", "url": "https://h/x.gguf", "sha256": "zz" * 32},
        {"kind": "url", "url": "file:///etc/passwd", "sha256": SHA},
        {"kind": "url", "url": "ftp://h/x", "sha256": SHA},
        {"kind": "url", "url": "https://user:pw@h/x.gguf", "sha256": SHA},  # no secrets in URLs
        {"kind": "url", "url": "https://h/x y", "sha256": SHA},
        {"kind": "url", "url": "https://h/" + "a" * 2048, "sha256": SHA},
        {"kind": "hf", "repo": "no-slash"},
        {"kind": "hf", "repo": "../x/y"},
        {"kind": "hf", "repo": "o/n", "revision": "../main"},
        {"kind": "hf", "repo": "o/n", "revision": "a b"},
        {"kind": "s3", "path": "x"},
        {"kind": "path", "path": "x", "extra": 1},
    ],
)
def test_bad_sources_refused(source: dict[str, Any]) -> None:
    with pytest.raises(FrameError):
        parse(deploy(source=source))


@pytest.mark.parametrize(
    "over",
    [
        {"replica_id": ""},
        {"replica_id": "x" * 65},
        {"replica_id": "../x"},
        {"name": ""},
        {"name": "n" * 201},
        {"aliases": ["a"] * 33},
        {"served_name": ""},
        {"served_name": "s" * 201},
        {"served_name": 7},
        {"generation": -1},
        {"generation": 2**31 + 1},
        {"generation": "1"},
        {"generation": 1.0},
        {"engine": "docker"},
        {"engine_options": {f"k{i}": i for i in range(17)}},  # oversized
        {"engine_options": {"ctx": {"nested": 1}}},
        {"engine_options": {"ctx": [1]}},
        {"engine_options": {"Ctx": 1}},
        {"engine_options": {"ctx": 2**40}},
        {"engine_options": {"x": "v" * 257}},
        {"engine_options": {"x": 1e300}},
        {"unknown": True},
    ],
)
def test_bad_deploy_fields_refused(over: dict[str, Any]) -> None:
    with pytest.raises(FrameError):
        parse(deploy(**over))


def test_engine_option_scalars_keep_their_type() -> None:
    frame = parse(deploy(engine_options={"ctx": 4096, "flash": True, "rope": 0.5, "kv": "q8_0"}))
    assert isinstance(frame, DeployFrame)
    assert frame.engine_options == {"ctx": 4096, "flash": True, "rope": 0.5, "kv": "q8_0"}
    assert type(frame.engine_options["flash"]) is bool
    assert type(frame.engine_options["ctx"]) is int


def test_non_finite_option_refused() -> None:
    with pytest.raises(FrameError):
        parse_frame(
            json.dumps(deploy()).replace('"engine_options": {}', '"engine_options": {"x": NaN}')
        )


def test_undeploy_bounds() -> None:
    assert parse({"type": "undeploy.v1", "replica_id": "r"}) == UndeployFrame(replica_id="r")
    assert parse({"type": "undeploy.v1", "replica_id": "r", "drain_s": 0}) is not None
    for drain in (-1, 3601, "5", True):
        with pytest.raises(FrameError):
            parse({"type": "undeploy.v1", "replica_id": "r", "drain_s": drain})


def replica(**over: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "replica.v1", "replica_id": "r-1", "state": "downloading"}
    frame.update(over)
    return frame


def test_replica_progress_and_ready() -> None:
    frame = parse(replica(bytes_done=10, bytes_total=100, rate_bps=5.5))
    assert isinstance(frame, ReplicaFrame) and frame.bytes_total == 100
    ready = parse(
        replica(state="ready", model={"name": "smol-b", "engine": "xllamacpp", "context_length": 8})
    )
    assert isinstance(ready, ReplicaFrame) and ready.model is not None
    assert parse_frame(encode_frame(ready)) == ready


@pytest.mark.parametrize(
    "over",
    [
        {"state": "exploded"},
        {"bytes_done": -1},
        {"bytes_done": MAX_MODEL_BYTES + 1},
        {"bytes_done": 11, "bytes_total": 10},
        {"bytes_done": "1"},
        {"rate_bps": -1.0},
        {"rate_bps": 1e13},
        {"rate_bps": "1"},
        {"reason": "x" * 513},
        {"state": "ready"},  # ready says what it serves
        {"model": {"name": "m", "engine": "e"}},  # and only ready does
        {"state": "ready", "model": {"name": "m", "engine": "e", "context_length": 0}},
    ],
)
def test_bad_replica_frames_refused(over: dict[str, Any]) -> None:
    with pytest.raises(FrameError):
        parse(replica(**over))


def test_largest_deploy_frame_fits_one_message() -> None:
    # Every field at its bound still fits a websocket message (MAX_FRAME_BYTES).
    frame = DeployFrame(
        replica_id="r" * 64,
        deployment_id="d" * 64,
        name="n" * 200,
        aliases=["a" * 200] * 32,
        served_name="s" * 200,
        source=HfSource(repo="o/" + "n" * 90, revision="r" * 128, filename="f" * 512),
        engine_options={f"k{i:02d}" + "x" * 60: "\u2028" * 256 for i in range(16)},
    )
    assert len(encode_frame(frame)) < MAX_FRAME_BYTES
    url = DeployFrame(
        replica_id="r",
        deployment_id="d",
        name="n",
        source=UrlSource(url="https://h/" + "%" * 2000, sha256=SHA),
    )
    assert len(encode_frame(url)) < MAX_FRAME_BYTES
