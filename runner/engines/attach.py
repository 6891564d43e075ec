"""An OpenAI-compatible engine the user already runs (TGI, TensorRT-LLM, SGLang,
Ollama, vLLM...): probed and proxied, never started or stopped by the runner."""

from __future__ import annotations

from dataclasses import dataclass, field

from outpost.runner.engines.base import EngineLoad, ServedModel
from outpost.runner.engines.vllm import VllmEngine
from outpost.runner.engines.xllamacpp import XllamacppEngine

__all__ = ["AttachedEngine"]


@dataclass
class AttachedEngine:
    url: str
    models: tuple[ServedModel, ...] = ()
    capacity: int = 4
    #: Of ``capacity``, slots the control plane grants only to a tenant with
    #: nothing in flight (fair headroom, docs/fairness.md); it admits the rest freely.
    headroom: int = 0
    #: Sent by the tunnel on every request to the engine; kept out of repr and logs.
    api_key: str | None = field(default=None, repr=False)
    name: str = "attach"

    def launch_spec(self, port: int) -> None:
        return None

    def base_url(self, port: int | None) -> str:
        # Users paste OpenAI-style base URLs ending in /v1; paths here start with /v1.
        root = self.url.rstrip("/")
        return root.removesuffix("/v1")

    @property
    def health_path(self) -> str:
        return "/v1/models"  # the one endpoint every OpenAI-compatible server has

    @property
    def liveness_path(self) -> str:
        return "/v1/models"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def parse_metrics(self, text: str) -> EngineLoad:
        """Attached vLLM and llama.cpp servers expose metrics we know; others read as idle."""
        if "vllm:" in text:
            return VllmEngine(model="", models=(), capacity=1).parse_metrics(text)
        if "llamacpp:" in text:
            return XllamacppEngine(model_path="", models=()).parse_metrics(text)
        return EngineLoad()
