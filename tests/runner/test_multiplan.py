"""Several models on one runner: ids from --model values, and planning them together."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from outpost.runner.gguf_meta import ModelSpec, lookup_known
from outpost.runner.hardware import detect
from outpost.runner.inspect_cli import plan_command
from outpost.runner.model_refs import ModelRef, ModelRefError, parse_model_ref, resolve_models
from outpost.runner.models import embedded_model_path
from outpost.runner.multiplan import memory_used, plan_models, remaining_after
from outpost.runner.planning import GIB, VllmSettings, XllamacppSettings, plan
from tests.runner.fakes import cpu, nvidia_gpu, probes, rtx4090
from tests.runner.models_fixtures import gguf_spec

ALL = {"xllamacpp", "llama-cpp-python", "vllm"}


# --- ids ------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("/models/llama.gguf", ModelRef(None, "/models/llama.gguf")),
    ("meta-llama/Llama-3.1-8B-Instruct", ModelRef(None, "meta-llama/Llama-3.1-8B-Instruct")),
    ("chat=/models/llama.gguf", ModelRef("chat", "/models/llama.gguf")),
    (
        "org/chat-v2=meta-llama/Llama-3.1-8B-Instruct",
        ModelRef("org/chat-v2", "meta-llama/Llama-3.1-8B-Instruct"),
    ),
    ("/data/run=3/model.gguf", ModelRef(None, "/data/run=3/model.gguf")),  # "=" inside a path
    ("./a=b.gguf", ModelRef(None, "./a=b.gguf")),
])  # fmt: skip
def test_model_values_parse_as_name_and_reference(value: str, expected: ModelRef) -> None:
    assert parse_model_ref(value) == expected


def test_an_existing_file_with_an_equals_sign_is_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "q=4.gguf").write_bytes(b"")
    assert parse_model_ref("q=4.gguf") == ModelRef(None, "q=4.gguf")


@pytest.mark.parametrize(("value", "message"), [
    ("my model=/m.gguf", "'my model' (in 'my model=/m.gguf') is not a usable model id"),
    ("chat=", "nothing after '='"),
    ("", "empty --model value"),
])  # fmt: skip
def test_bad_model_values_are_refused_clearly(value: str, message: str) -> None:
    with pytest.raises(ModelRefError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_model_ref(value)


def _fake_resolve(ref: str) -> ModelSpec:
    return gguf_spec(Path(ref).stem.lower(), 4 * GIB)


def test_ids_come_from_the_model_unless_named() -> None:
    specs = resolve_models(["/m/llama.gguf", "fast=/m/llama.gguf"], resolve=_fake_resolve)
    assert [s.name for s in specs] == ["llama", "fast"]
    assert specs[0].location == specs[1].location  # the same file twice is fine under two ids


@pytest.mark.parametrize("values", [
    ["/m/llama.gguf", "/m/llama.gguf"],
    ["Chat=/m/a.gguf", "chat=/m/b.gguf"],  # case-insensitive: both would confuse clients
    ["llama=/m/a.gguf", "/m/llama.gguf"],  # a name clashing with a derived id
])  # fmt: skip
def test_duplicate_ids_are_refused_naming_both_values(values: list[str]) -> None:
    with pytest.raises(
        ModelRefError, match=r"is used twice \(--model .* and --model .*\); give each its own id"
    ):
        resolve_models(values, resolve=_fake_resolve)


def test_settings_refuse_a_bad_model_id_before_reading_anything() -> None:
    from pydantic import ValidationError

    from outpost.runner.settings import RunnerSettings

    with pytest.raises(ValidationError, match="not a usable model id"):
        RunnerSettings(model=["bad id=/nowhere.gguf"])


# --- planning together ----------------------------------------------------------------


def test_models_are_planned_in_order_in_the_memory_the_earlier_ones_left() -> None:
    hw = detect(probes(cpu(cores=2, ram_gib=24)))  # 23 GiB free
    models = [gguf_spec(n, 8 * GIB) for n in ("a", "b", "c")]
    a, b, c = plan_models(hw, models, installed={"xllamacpp"})
    assert a.engine == b.engine == "xllamacpp" and a.refusal is None and b.refusal is None
    assert a.fit is not None and b.fit is not None
    assert a.fit.available_bytes == 23 * GIB
    # b is sized in what a left: a's weights, KV and overhead are gone (not a's OS reserve).
    assert b.fit.available_bytes == 23 * GIB - memory_used(a)
    assert memory_used(a) == a.fit.weights_bytes + a.fit.kv_bytes + a.fit.overhead_bytes
    assert b.fit.where == "free RAM left by a"
    # c would fit alone, but not beside a and b: the refusal says so and by how much.
    assert c.engine is None and c.refusal is not None
    assert c.refusal.startswith(
        "not enough memory left for c beside the models before it "
        f"(a {memory_used(a) / GIB:.1f} GiB (xllamacpp), b "
    )
    assert "alone it would fit (xllamacpp)" in c.refusal and "short by" in c.refusal
    assert plan(hw, models[2], installed={"xllamacpp"}).refusal is None


def test_a_model_too_large_even_alone_keeps_its_own_refusal() -> None:
    hw = detect(probes(cpu(cores=2, ram_gib=24)))
    small, huge = gguf_spec("small", 1 * GIB), gguf_spec("huge", 200 * GIB)
    first, second = plan_models(hw, [small, huge], installed={"xllamacpp"})
    assert first.refusal is None
    assert second.refusal is not None and second.refusal.startswith("huge does not fit")


def test_a_gpu_full_of_the_first_model_sends_the_second_to_cpu() -> None:
    hw = detect(probes(cpu(cores=8, ram_gib=32), [rtx4090()]))
    first, second = plan_models(hw, [gguf_spec("a", 8 * GIB), gguf_spec("b", 8 * GIB)],
                                installed={"xllamacpp"})  # fmt: skip
    assert isinstance(first.settings, XllamacppSettings) and first.settings.gpu_layers == 33
    assert isinstance(second.settings, XllamacppSettings) and second.settings.gpu_layers == 0
    assert any(r.engine == "xllamacpp (full GPU offload)" for r in second.rejected)
    left = remaining_after(hw, first)
    assert left.gpus[0].memory_free_bytes == hw.gpus[0].memory_free_bytes - memory_used(first)
    assert left.cpu.ram_available_bytes == hw.cpu.ram_available_bytes  # offloaded: RAM untouched


def test_vllm_takes_its_utilization_share_of_each_gpu_it_uses() -> None:
    hw = detect(probes(cpu(cores=32, ram_gib=256), [nvidia_gpu(0), nvidia_gpu(1)]))
    model = lookup_known("meta-llama/Llama-3.1-8B-Instruct")
    assert model is not None
    first, second = plan_models(
        hw, [model, model.model_copy(update={"name": "second"})], installed=ALL
    )
    assert isinstance(first.settings, VllmSettings) and first.settings.gpu_indices == [0]
    left = remaining_after(hw, first)
    taken = int(first.settings.gpu_memory_utilization * hw.gpus[0].memory_total_bytes)
    assert left.gpus[0].memory_free_bytes == hw.gpus[0].memory_free_bytes - taken
    # The second copy lands on the GPU the first left free.
    assert isinstance(second.settings, VllmSettings) and second.settings.gpu_indices == [1]


def test_runner_plan_with_two_models_prints_one_plan_each() -> None:
    path = str(embedded_model_path())
    out = io.StringIO()
    code = plan_command([f"smol-a={path}", f"smol-b={path}"], None, True, probes=probes(),
                        installed={"xllamacpp"}, console=Console(file=out, width=200))  # fmt: skip
    assert code == 0
    plans = json.loads(out.getvalue())
    assert [p["model"]["name"] for p in plans] == ["smol-a", "smol-b"]
    assert plans[1]["fit"]["available_bytes"] < plans[0]["fit"]["available_bytes"]


def test_runner_plan_refuses_duplicate_ids_as_bad_input() -> None:
    path = str(embedded_model_path())
    out = io.StringIO()
    assert (
        plan_command(
            [path, path], None, False, probes=probes(), console=Console(file=out, width=200)
        )
        == 2
    )
    assert "is used twice" in out.getvalue()
