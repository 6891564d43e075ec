"""Which tool-call support an engine is started with, decided from the model (issue 23).

llama.cpp renders tools through the model's own Jinja chat template and parses
the calls back (llama-server's ``--jinja``, on by default in xllamacpp). A
template that never mentions ``tools`` drops them silently, so for a ChatML
model without one (SmolLM2, the embedded model) the runner ships a ChatML tool
template in the Hermes 2 Pro / Qwen 2.5 layout, which llama.cpp recognises.
Any other template without tools: the model is advertised without the
``tools`` capability and the control plane answers a 400.

vLLM needs ``--enable-auto-tool-choice`` and the parser of the model family's
call format; a family not in :data:`VLLM_TOOL_PARSERS` gets no tools.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "CHATML_TOOLS_TEMPLATE",
    "VLLM_TOOL_PARSERS",
    "TemplateTools",
    "prefill_tool_choice",
    "template_tools",
    "vllm_tool_parser",
]

#: What a GGUF's chat template does with tools: renders them itself ("native"), is plain
#: ChatML without them ("chatml": the shipped template is used), or neither ("none").
TemplateTools = Literal["native", "chatml", "none"]

CHATML_TOOLS_TEMPLATE = Path(__file__).parent / "engines" / "templates" / "chatml_tools.jinja"

#: (pattern on the model's architecture and name, lowercased, vLLM's --tool-call-parser),
#: first match wins. The parsers are vLLM's own names (docs: "Tool Calling").
VLLM_TOOL_PARSERS: tuple[tuple[str, str], ...] = (
    (r"llama-?3|llama-?4", "llama3_json"),
    (r"mistral|mixtral", "mistral"),
    (r"qwen3.*coder", "qwen3_coder"),
    (r"qwen2|qwen3|hermes", "hermes"),
    (r"granite", "granite"),
    (r"internlm", "internlm"),
    (r"jamba", "jamba"),
    (r"deepseek.?v3", "deepseek_v3"),
    (r"phi-?4-?mini", "phi4_mini_json"),
)


def template_tools(template: str | None) -> TemplateTools:
    """How a GGUF chat template handles tools (``tokenizer.chat_template``)."""
    if not template:
        return "none"
    if re.search(r"\btools\b", template):
        return "native"
    if "<|im_start|>" in template:
        return "chatml"
    return "none"


def vllm_tool_parser(architecture: str | None, name: str) -> str | None:
    """vLLM's tool parser for the model's family, or None: the model gets no tools."""
    text = f"{architecture or ''} {name}".lower()
    for pattern, parser in VLLM_TOOL_PARSERS:
        if re.search(pattern, text):
            return parser
    return None


def prefill_tool_choice(payload: dict[str, Any]) -> dict[str, Any]:
    """Make ``tool_choice`` "required" or a named function hold (the shipped ChatML template).

    llama.cpp (xllamacpp 2026.10) refuses a named ``tool_choice`` object, and its grammar for
    "required" lets prose come before the call, so a small model may write prose until its
    token cap. The assistant turn is opened with the call's start (``<tool_call>`` and, for a
    named function, its name) and sent as "required": llama.cpp continues it under its tool
    grammar and parses the call. A body that already ends with an assistant turn (the
    client's own prefill) is left alone.
    """
    tools, choice = payload.get("tools"), payload.get("tool_choice")
    messages = payload.get("messages")
    if not tools or not isinstance(messages, list) or not messages:
        return payload
    if isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        return payload
    opening = '<tool_call>\n{"name": "'
    rewritten = {**payload, "tool_choice": "required"}  # llama.cpp's grammar then holds the call
    if isinstance(choice, dict):
        # The named function is the only tool llama.cpp is given, so its grammar allows that
        # name alone. (Prefilling the name and '"arguments": ' as well held the call whole,
        # but llama.cpp's streamed parser then lost the arguments' opening brace.)
        name = str((choice.get("function") or {}).get("name", ""))
        named = [t for t in tools if isinstance(t, dict) and _tool_name(t) == name]
        if not named:
            return payload  # the control plane refuses a name not among the tools
        rewritten["tools"] = named
    elif choice != "required":
        return payload
    if isinstance(choice, dict) or payload.get("parallel_tool_calls") is False:
        # One call (OpenAI: a named choice is one call of it). llama.cpp's grammar allows
        # several whatever parallel_tool_calls says; the first call's end stops it.
        stop = payload.get("stop")
        stops = [stop] if isinstance(stop, str) else list(stop) if isinstance(stop, list) else []
        rewritten["stop"] = [*stops, "</tool_call>"]
    rewritten["messages"] = [*messages, {"role": "assistant", "content": opening}]
    return rewritten


def _tool_name(tool: dict[str, Any]) -> str | None:
    function = tool.get("function")
    return str(function.get("name")) if isinstance(function, dict) else None
