"""llama.cpp's native server through the ``xllamacpp`` wheel (default for GGUF)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client.parser import text_string_to_metric_families

from outpost.runner.engines.base import EngineLoad, LaunchSpec, ServedModel
from outpost.runner.tool_support import CHATML_TOOLS_TEMPLATE, prefill_tool_choice

__all__ = ["XllamacppEngine"]


@dataclass
class XllamacppEngine:
    model_path: str
    models: tuple[ServedModel, ...]
    #: Parallel slots; llama.cpp splits ``ctx`` evenly between them.
    capacity: int = 4
    #: Of ``capacity``, slots the control plane grants only to a tenant with
    #: nothing in flight (fair headroom, docs/fairness.md); it admits the rest freely.
    headroom: int = 0
    ctx: int = 4096
    threads: int = 0
    gpu_layers: int = 0
    embedding: bool = False
    #: llama.cpp's reranking mode (/v1/rerank): rank pooling, so not with ``embedding``.
    rerank: bool = False
    #: Tool calls through the model's template ("model"), the shipped ChatML one, or none
    #: (runner/tool_support.py); the runner advertises "tools" only when set.
    tools: Literal["model", "chatml-tools"] | None = None
    name: str = "xllamacpp"

    def launch_spec(self, port: int) -> LaunchSpec:
        argv = [
            sys.executable, "-m", "outpost.runner.engines.xllamacpp_main",
            "--model", self.model_path,
            "--port", str(port),
            "--ctx", str(self.ctx),
            "--parallel", str(self.capacity),
            "--threads", str(self.threads),
            "--gpu-layers", str(self.gpu_layers),
        ]  # fmt: skip
        if self.embedding:
            argv.append("--embedding")
        if self.rerank:
            argv.append("--rerank")
        if self.tools == "chatml-tools":
            argv += ["--chat-template-file", str(CHATML_TOOLS_TEMPLATE)]
        return LaunchSpec(argv=argv)

    def rewrite_request(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """What the relay sends the engine: tool_choice made to hold with the shipped template."""
        if self.tools == "chatml-tools" and path == "/v1/chat/completions":
            return prefill_tool_choice(payload)
        return payload

    def base_url(self, port: int | None) -> str:
        return f"http://127.0.0.1:{port}"

    @property
    def health_path(self) -> str:
        return "/health"

    @property
    def liveness_path(self) -> str:
        return "/health"  # answered by the HTTP threads, not queued behind the slots

    def parse_metrics(self, text: str) -> EngineLoad:
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                values[sample.name] = sample.value
        kv = values.get("llamacpp:kv_cache_usage_ratio")
        return EngineLoad(
            running=int(values.get("llamacpp:requests_processing", 0)),
            waiting=int(values.get("llamacpp:requests_deferred", 0)),
            kv_cache_usage=min(max(kv, 0.0), 1.0) if kv is not None else None,
        )
