"""docs/runner.md cannot drift: public names, engine flags and local-runner flags."""

from __future__ import annotations

import re
from pathlib import Path

from outpost.runner import engines, fleet, hardware, model_refs, multiplan, planning
from outpost.runner.engines.llama_cpp_python import LlamaCppPythonEngine
from outpost.runner.engines.vllm import VllmEngine

DOC = (Path(__file__).parents[2] / "docs" / "runner.md").read_text(encoding="utf-8")
PLUMBING = {"EngineAdapter", "EngineLoad", "LaunchSpec", "ServedModel"}  # base.py's own names


def test_public_names_are_documented() -> None:
    names = {
        *planning.__all__,
        *hardware.__all__,
        *set(engines.__all__) - PLUMBING,
        *model_refs.__all__,
        *multiplan.__all__,
        *fleet.__all__,
    }
    missing = sorted(n for n in names if n not in DOC)
    assert not missing, f"undocumented in docs/runner.md: {missing}"


def test_every_engine_flag_is_documented() -> None:
    vllm = VllmEngine(model="m", models=(), capacity=1, max_model_len=1, quantization="awq",
                      served_model_name="n", max_num_seqs=1).launch_spec(1)  # fmt: skip
    lcp = LlamaCppPythonEngine(model_path="m", models=(), threads=1).launch_spec(1)
    flags = {arg for arg in [*vllm.argv, *lcp.argv] if arg.startswith("--")} | set(vllm.env)
    missing = sorted(flag for flag in flags if flag not in DOC)
    assert not missing, missing


def test_local_runner_flags_section_names_every_flag_it_lists() -> None:
    from outpost.runner.settings import RunnerSettings

    assert "## Flags of runner local-runner" in DOC
    section = DOC.split("## Flags of runner local-runner", 1)[1]
    flags = {"--" + name.replace("_", "-") for name in RunnerSettings.model_fields}
    listed = set(re.findall(r"`(--[a-z0-9-]+)", section))
    assert listed and listed <= flags, f"documented flags that do not exist: {listed - flags}"
