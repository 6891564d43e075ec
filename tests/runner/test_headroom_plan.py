"""Fair headroom in the plan: extra engine slots beyond the advertised capacity, budgeted in the
fit."""

from __future__ import annotations

import json
from pathlib import Path

from outpost.runner.engines import build_engine
from outpost.runner.gguf_meta import read_gguf, read_hf_dir
from outpost.runner.hardware import detect
from outpost.runner.models import embedded_model_path
from outpost.runner.planning import (
    DEFAULT_HEADROOM,
    RAM_RESERVE,
    Overrides,
    VllmSettings,
    XllamacppSettings,
    plan,
)
from outpost.sdk.protocol import StatusFrame, encode_frame, parse_frame
from tests.runner.fakes import cpu, nvidia_gpu, probes
from tests.runner.models_fixtures import LLAMA_31_8B_CONFIG, LLAMA_31_8B_SHARDS, hf_dir


def test_llama_cpp_gets_whole_extra_slots_with_their_kv_cache_in_the_fit() -> None:
    hw = detect(probes(cpu(cores=2, ram_gib=24)))
    model = read_gguf(embedded_model_path())
    plain = plan(hw, model, installed={"xllamacpp"})
    spare = plan(hw, model, installed={"xllamacpp"}, overrides=Overrides(headroom=DEFAULT_HEADROOM))
    assert isinstance(plain.settings, XllamacppSettings) and isinstance(
        spare.settings, XllamacppSettings
    )
    assert (spare.capacity, spare.headroom) == (plain.capacity, 1)
    assert spare.settings.slots == plain.settings.slots + 1
    assert spare.settings.ctx_per_slot == plain.settings.ctx_per_slot  # no slot gets less context
    assert plain.fit is not None and spare.fit is not None
    assert spare.fit.kv_bytes == plain.fit.kv_bytes // plain.settings.slots * spare.settings.slots
    assert "fair-headroom slot" in spare.rule
    engine = build_engine(spare)
    assert (engine.capacity, engine.headroom) == (spare.settings.slots, 1)
    assert engine.launch_spec(1).argv[engine.launch_spec(1).argv.index("--parallel") + 1] == str(
        engine.capacity
    )


def test_no_headroom_when_the_extra_slot_would_not_fit() -> None:
    model = read_gguf(embedded_model_path())
    tight = detect(probes(cpu(cores=2, ram_gib=24)))
    full = plan(tight, model, installed={"xllamacpp"}, overrides=Overrides(parallel=1))
    assert full.fit is not None
    # RAM for exactly the one slot: the headroom slot is dropped, and the rule says why.
    one_slot = (
        full.fit.required_bytes - full.fit.reserve_bytes
    )  # weights + one slot's KV + overhead
    ram = int((one_slot + full.fit.kv_bytes // 2) / (1 - RAM_RESERVE))  # room for half a slot more
    squeezed = tight.cpu.model_copy(update={"ram_available_bytes": ram})
    hw = tight.model_copy(update={"cpu": squeezed})
    result = plan(hw, model, installed={"xllamacpp"}, overrides=Overrides(parallel=1, headroom=1))
    assert result.refusal is None and result.headroom == 0 and result.capacity == 1
    assert isinstance(result.settings, XllamacppSettings) and result.settings.slots == 1
    assert "no fair-headroom slot" in result.rule


def test_vllm_gets_a_higher_max_num_seqs(tmp_path: Path) -> None:
    model = read_hf_dir(
        hf_dir(tmp_path, "Llama-3.1-8B-Instruct", LLAMA_31_8B_CONFIG, LLAMA_31_8B_SHARDS)
    )
    hw = detect(probes(cpu(cores=32, ram_gib=256), [nvidia_gpu(0)]))
    plain = plan(hw, model, installed={"vllm"})
    spare = plan(hw, model, installed={"vllm"}, overrides=Overrides(headroom=2))
    assert isinstance(plain.settings, VllmSettings) and isinstance(spare.settings, VllmSettings)
    assert spare.settings.max_num_seqs == plain.settings.max_num_seqs + 2
    assert (spare.capacity, spare.headroom) == (plain.capacity, 2) and spare.fit == plain.fit
    engine = build_engine(spare)
    assert (engine.capacity - engine.headroom, engine.headroom) == (plain.capacity, 2)


def test_one_request_engines_and_attached_engines() -> None:
    hw = detect(probes(cpu(cores=2, ram_gib=24)))
    lcp = plan(
        hw,
        read_gguf(embedded_model_path()),
        engine="llama-cpp-python",
        installed={"llama-cpp-python"},
        overrides=Overrides(headroom=1),
    )
    assert (lcp.capacity, lcp.headroom) == (1, 0)
    # An attached engine's slots are what they are: the headroom is carved out, one slot left.
    attached = plan(
        hw, None, attach_url="http://127.0.0.1:9/v1", overrides=Overrides(parallel=8, headroom=1)
    )
    assert (attached.capacity, attached.headroom) == (7, 1)
    assert build_engine(attached, ()).capacity == 8
    lone = plan(
        hw, None, attach_url="http://127.0.0.1:9/v1", overrides=Overrides(parallel=1, headroom=1)
    )
    assert (lone.capacity, lone.headroom) == (1, 0)


def test_headroom_is_left_off_the_wire_when_zero() -> None:
    # A control plane that predates the field refuses unknown fields: 0 is not sent.
    assert "headroom" not in json.loads(encode_frame(StatusFrame()))
    frame = StatusFrame(headroom=1)
    assert json.loads(encode_frame(frame))["headroom"] == 1
    assert parse_frame(encode_frame(frame)) == frame
