"""llama-cpp-python's OpenAI server: supported, never chosen unless requested.

Its server serves one request at a time behind a global lock and by default
*interrupts* the running request when another arrives, so it is started with
``--interrupt_requests False`` and advertises capacity 1: the control plane
then queues (fairly) instead of the engine cutting answers off.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from outpost.runner.engines.base import EngineLoad, LaunchSpec, ServedModel

__all__ = ["LlamaCppPythonEngine"]


@dataclass
class LlamaCppPythonEngine:
    model_path: str
    models: tuple[ServedModel, ...]
    ctx: int = 4096
    threads: int = 0
    gpu_layers: int = 0
    capacity: int = field(default=1, init=False)  # one request at a time, whatever is asked
    headroom: int = field(default=0, init=False)
    name: str = "llama-cpp-python"

    def launch_spec(self, port: int) -> LaunchSpec:
        argv = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", self.model_path,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--interrupt_requests", "False",
            "--n_ctx", str(self.ctx),
            "--n_gpu_layers", str(self.gpu_layers),
        ]  # fmt: skip
        if self.threads > 0:
            argv += ["--n_threads", str(self.threads)]
        if self.models:
            # Clients ask for the public name; the server otherwise answers to the file path.
            argv += ["--model_alias", self.models[0].name]
        return LaunchSpec(argv=argv)

    def base_url(self, port: int | None) -> str:
        return f"http://127.0.0.1:{port}"

    @property
    def health_path(self) -> str:
        return "/v1/models"  # the server has no /health

    @property
    def liveness_path(self) -> str:
        # /v1/models waits for the global model lock, held for a whole generation;
        # the OpenAPI document is served by the event loop, which stays free.
        return "/openapi.json"

    def parse_metrics(self, text: str) -> EngineLoad:
        return EngineLoad()  # the server has no /metrics either
