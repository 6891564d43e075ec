"""The fleet's routing and per-model status, without processes (the e2e test runs real engines)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from outpost.runner.engines.base import EngineLoad, ServedModel
from outpost.runner.engines.xllamacpp import XllamacppEngine
from outpost.runner.fleet import EngineFleet
from outpost.sdk.protocol import StatusFrame, encode_frame, parse_frame


def _engine(name: str, *aliases: str) -> XllamacppEngine:
    return XllamacppEngine(
        model_path=f"/models/{name}.gguf",
        capacity=2,
        models=(ServedModel(name=name, engine="xllamacpp", aliases=aliases),),
    )


async def test_requests_go_to_the_engine_of_their_model_and_a_down_one_is_reported(
    tmp_path: Path,
) -> None:
    async with httpx.AsyncClient() as http:
        fleet = EngineFleet(
            [_engine("smol-a", "chat"), _engine("smol-b")], log_dir=tmp_path, http=http
        )
        a, b = fleet.engines
        assert (
            fleet.route("smol-a") is a and fleet.route("chat") is a and fleet.route("smol-b") is b
        )
        assert fleet.route("other") is None
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "engine-smol-a.log",
            "engine-smol-b.log",
        ]

        a.supervisor.healthy.set()  # b is still loading (or restarting)
        assert fleet.healthy and fleet.unavailable_models() == ["smol-b"]
        b.supervisor.healthy.set()
        assert fleet.unavailable_models() == []
        a.supervisor.healthy.clear()
        b.supervisor.healthy.clear()
        assert not fleet.healthy and fleet.unavailable_models() == ["smol-a", "smol-b"]

        a.load, b.load = EngineLoad(2, 1, 0.25), EngineLoad(1, 0, None)
        assert fleet.load == EngineLoad(running=3, waiting=1, kv_cache_usage=0.25)


async def test_a_lone_engine_takes_every_model_name_and_keeps_engine_log(tmp_path: Path) -> None:
    async with httpx.AsyncClient() as http:
        fleet = EngineFleet([_engine("smol-a")], log_dir=tmp_path, http=http)
        assert fleet.route("anything") is fleet.engines[0]
        assert [p.name for p in tmp_path.iterdir()] == ["engine.log"]


def test_unavailable_models_is_left_off_the_wire_when_empty() -> None:
    # A control plane that predates the field refuses unknown fields: an empty list is not sent.
    assert "unavailable_models" not in json.loads(encode_frame(StatusFrame()))
    frame = StatusFrame(unavailable_models=["smol-b"])
    assert json.loads(encode_frame(frame))["unavailable_models"] == ["smol-b"]
    assert parse_frame(encode_frame(frame)) == frame
