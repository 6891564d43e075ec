"""``runner plan`` for several models on this machine, as if some engines were installed.

    python scripts/gpu/plan_cases.py --assume vllm --assume xllamacpp --json OUT.json MODEL...

The GPU machines have neither vLLM nor xllamacpp installed (docs/gpu.md), so the real
``runner plan`` there refuses Hugging Face models ("vllm: not installed"). This calls the
same pure ``plan()`` with the *real* hardware report of this machine and the set of
installed engines plus ``--assume``: it shows what ``runner local-runner`` would choose once
the engine is installed. Nothing is started.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rich.console import Console

from outpost.runner.gguf_meta import resolve_model
from outpost.runner.hardware import detect
from outpost.runner.inspect_cli import render_plan
from outpost.runner.planning import installed_engines, plan


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+")
    parser.add_argument("--assume", action="append", default=[])
    parser.add_argument("--engine", default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    console = Console(width=130)
    hardware = detect()
    real = installed_engines()
    installed = real | frozenset(args.assume)
    out = []
    for ref in args.models:
        spec = resolve_model(ref)
        result = plan(hardware, spec, engine=args.engine, installed=installed)
        console.rule(
            f"plan --model {ref}  (installed here: {sorted(real) or 'none'}; "
            f"assumed installed: {sorted(args.assume) or 'none'})"
        )
        console.print(render_plan(result))
        out.append(
            {
                "model": ref,
                "installed_here": sorted(real),
                "assumed": sorted(args.assume),
                "plan": json.loads(result.to_json()),
            }
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
