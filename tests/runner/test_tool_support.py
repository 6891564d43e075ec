"""Which tool-call support the planner gives an engine, and the runner's tool_choice rewrite.

The planner runs on injected hardware (tests/runner/fakes.py): no GPU is used.
The launch specs are the engines' real argv; the end-to-end behaviour with the
embedded model is in tests/api/test_tool_clients.py.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from outpost.runner.engines import build_engine, served_models
from outpost.runner.engines.vllm import VllmEngine
from outpost.runner.engines.xllamacpp import XllamacppEngine
from outpost.runner.gguf_meta import read_gguf, read_hf_dir
from outpost.runner.hardware import detect
from outpost.runner.models import embedded_model_path
from outpost.runner.planning import VllmSettings, XllamacppSettings, plan
from outpost.runner.tool_support import (
    CHATML_TOOLS_TEMPLATE,
    prefill_tool_choice,
    template_tools,
    vllm_tool_parser,
)
from tests.runner.fakes import cpu, nvidia_gpu, probes
from tests.runner.models_fixtures import (
    LLAMA_31_8B_CONFIG,
    LLAMA_31_8B_SHARDS,
    gguf_spec,
    hf_dir,
)

ALL = {"xllamacpp", "llama-cpp-python", "vllm"}
CPU = detect(probes(cpu(cores=2, ram_gib=24)))
H100 = detect(probes(cpu(cores=32, ram_gib=256), [nvidia_gpu(0)]))


def test_the_embedded_chatml_model_gets_the_shipped_tool_template() -> None:
    model = read_gguf(embedded_model_path())
    assert model.chat_template_tools == "chatml"
    result = plan(CPU, model, installed={"xllamacpp"})
    settings = result.settings
    assert isinstance(settings, XllamacppSettings) and settings.tools == "chatml-tools"
    assert "ChatML tool template" in result.rule
    engine = build_engine(result)
    assert isinstance(engine, XllamacppEngine)
    argv = engine.launch_spec(8080).argv
    assert argv[argv.index("--chat-template-file") + 1] == str(CHATML_TOOLS_TEMPLATE)
    assert CHATML_TOOLS_TEMPLATE.is_file()
    assert "tools" in served_models(result)[0].endpoints


@pytest.mark.parametrize(
    ("tools", "expected", "advertised"),
    [("native", "model", True), ("chatml", "chatml-tools", True), ("none", None, False)],
)
def test_a_gguf_template_decides_llama_cpp_tools(
    tools: str, expected: str | None, advertised: bool
) -> None:
    model = gguf_spec("m", 500 * 2**20).model_copy(update={"chat_template_tools": tools})
    result = plan(CPU, model, installed={"xllamacpp"})
    assert isinstance(result.settings, XllamacppSettings)
    assert result.settings.tools == expected
    engine = build_engine(result)
    assert ("--chat-template-file" in engine.launch_spec(1).argv) == (expected == "chatml-tools")  # type: ignore[union-attr]
    assert ("tools" in served_models(result)[0].endpoints) is advertised


def test_template_tools_reads_the_template() -> None:
    assert template_tools("{% for tool in tools %}{{ tool }}{% endfor %}") == "native"
    assert template_tools("<|im_start|>{{ m.content }}<|im_end|>") == "chatml"
    assert template_tools("[INST] {{ m.content }} [/INST]") == "none"
    assert template_tools(None) == "none"


def test_vllm_gets_the_family_parser_and_shows_it(tmp_path: Path) -> None:
    model = read_hf_dir(
        hf_dir(tmp_path, "Llama-3.1-8B-Instruct", LLAMA_31_8B_CONFIG, LLAMA_31_8B_SHARDS)
    )
    result = plan(H100, model, installed=ALL)
    settings = result.settings
    assert isinstance(settings, VllmSettings) and settings.tool_call_parser == "llama3_json"
    assert "--tool-call-parser llama3_json" in result.rule
    assert json.loads(result.to_json())["settings"]["tool_call_parser"] == "llama3_json"
    engine = build_engine(result)
    assert isinstance(engine, VllmEngine)
    argv = engine.launch_spec(8000).argv
    at = argv.index("--enable-auto-tool-choice")
    assert argv[at + 1 : at + 3] == ["--tool-call-parser", "llama3_json"]
    assert "tools" in served_models(result)[0].endpoints


def test_vllm_without_a_known_family_gets_no_tools(tmp_path: Path) -> None:
    config = {**LLAMA_31_8B_CONFIG, "architectures": ["GPT2LMHeadModel"]}
    model = read_hf_dir(hf_dir(tmp_path, "some-model", config, LLAMA_31_8B_SHARDS))
    result = plan(H100, model, installed=ALL)
    assert isinstance(result.settings, VllmSettings) and result.settings.tool_call_parser is None
    assert "--enable-auto-tool-choice" not in build_engine(result).launch_spec(1).argv  # type: ignore[union-attr]
    assert "tools" not in served_models(result)[0].endpoints


@pytest.mark.parametrize(
    ("architecture", "name", "parser"),
    [
        ("Qwen2ForCausalLM", "Qwen2.5-7B-Instruct", "hermes"),
        ("MistralForCausalLM", "Mistral-7B-Instruct-v0.3", "mistral"),
        ("Qwen3MoeForCausalLM", "Qwen3-Coder-30B-A3B-Instruct", "qwen3_coder"),
        ("GraniteForCausalLM", "granite-3.1-8b-instruct", "granite"),
        ("LlamaForCausalLM", "Llama-2-7b-chat", None),
    ],
)
def test_vllm_parser_by_family(architecture: str, name: str, parser: str | None) -> None:
    assert vllm_tool_parser(architecture, name) == parser


TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
ASK = [{"role": "user", "content": "x"}]


def test_required_opens_the_call_and_keeps_the_grammar() -> None:
    out = prefill_tool_choice({"messages": ASK, "tools": TOOLS, "tool_choice": "required"})
    assert out["tool_choice"] == "required"
    assert out["messages"][-1] == {"role": "assistant", "content": '<tool_call>\n{"name": "'}
    assert "stop" not in out  # parallel calls stay allowed


def test_a_named_choice_gives_the_engine_that_tool_alone_once() -> None:
    weird = {"type": "function", "function": {"name": 'we"ird', "parameters": {}}}
    choice = {"type": "function", "function": {"name": 'we"ird'}}
    out = prefill_tool_choice(
        {"messages": ASK, "tools": [*TOOLS, weird], "tool_choice": choice, "stop": "END"}
    )
    assert out["tool_choice"] == "required"
    assert out["tools"] == [weird]  # llama.cpp's grammar then allows that name alone
    assert out["messages"][-1]["content"] == '<tool_call>\n{"name": "'
    assert out["stop"] == ["END", "</tool_call>"]


def test_a_named_choice_not_among_the_tools_is_left_alone() -> None:
    body = {"messages": ASK, "tools": TOOLS, "tool_choice": {"function": {"name": "g"}}}
    assert prefill_tool_choice(body) is body


@pytest.mark.parametrize(
    "body",
    [
        {"messages": ASK, "tools": TOOLS, "tool_choice": "auto"},
        {"messages": ASK, "tools": TOOLS},
        {"messages": ASK, "tool_choice": "required"},
        {
            "messages": [*ASK, {"role": "assistant", "content": "prefill"}],
            "tools": TOOLS,
            "tool_choice": "required",
        },  # fmt: skip
    ],
    ids=["auto", "no-choice", "no-tools", "client-prefill"],
)
def test_other_bodies_are_left_alone(body: dict) -> None:
    assert prefill_tool_choice(body) is body


def test_only_the_shipped_template_rewrites() -> None:
    engine = XllamacppEngine(model_path="/m.gguf", models=(), tools="chatml-tools")
    body = {"messages": ASK, "tools": TOOLS, "tool_choice": "required"}
    assert engine.rewrite_request("/v1/chat/completions", body) is not body
    assert engine.rewrite_request("/v1/completions", body) is body
    native = dataclasses.replace(engine, tools="model")
    assert native.rewrite_request("/v1/chat/completions", body) is body
