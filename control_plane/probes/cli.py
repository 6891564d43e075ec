"""``control-plane fairness``: probe a model from this machine, list the built-in suites.

``run`` works against any OpenAI-compatible server; against Outpost it also
learns which runners answered and can ``--save`` the run to the control
plane (the report is rebuilt there). The API key comes from an environment
variable named by ``--api-key-env``, never from a flag's value.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from pydantic import ValidationError
from rich import box
from rich.console import Console
from rich.table import Table

from .probe import ProbeRunner
from .report import build_report
from .runs import ProbeRun, ProbeTarget, SamplingSettings
from .suites import (
    BUILTIN_SUITES_DIR,
    ExpansionOptions,
    Suite,
    builtin_suite,
    load_suite,
    suite_hash,
)
from .tally import RunnerTally

__all__ = ["fairness_app"]

fairness_app = typer.Typer(
    help="Bias probes: counterfactual prompt suites against a served model.", no_args_is_help=True
)
out = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/] {message}")
    return typer.Exit(code)


def _load(suite: str) -> Suite:
    path = Path(suite)
    try:
        return load_suite(path) if path.is_file() else builtin_suite(suite)
    except LookupError:
        raise _fail(
            f"{suite!r} is neither a suite file nor a built-in suite "
            "(see `control-plane fairness suites`)"
        ) from None
    except (ValidationError, ValueError, OSError) as exc:
        raise _fail(f"invalid suite {suite}: {exc}") from None


def _root(base_url: str) -> str:
    root = base_url.rstrip("/")
    return root.removesuffix("/v1")


@fairness_app.command("suites")
def suites(
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per line (the full sha256).")
    ] = False,
) -> None:
    """List the built-in suites with their hashes and sizes."""
    rows: list[dict[str, Any]] = []
    for path in sorted(BUILTIN_SUITES_DIR.glob("*.json")):
        suite = load_suite(path)
        sets = suite.samples_per_group()
        rows.append(
            {
                "name": path.stem,
                "id": suite.id,
                "version": suite.version,
                "sets_per_group": sets,
                "prompts": sum(n * len(suite.attributes[a].groups) for a, n in sets.items()),
                "sha256": suite_hash(suite),
            }
        )
    if as_json:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
        return
    # The full hash alone is 64 columns: the table shows its first 12 characters (as reports
    # do), so every column stays readable in 80 columns and when piped; --json has it whole.
    table = Table(title="Built-in probe suites", box=box.SIMPLE_HEAD)
    for column in ("name", "id", "version"):
        table.add_column(column, no_wrap=True)
    table.add_column("attributes (sets per group)", overflow="fold")
    table.add_column("prompts", justify="right")
    table.add_column("sha256", no_wrap=True)
    for row in rows:
        sets = row["sets_per_group"]
        table.add_row(
            row["name"],
            row["id"],
            row["version"],
            ", ".join(f"{a} ({n})" for a, n in sets.items()),
            str(row["prompts"]),
            f"{row['sha256'][:12]}…",
        )
    out.print(table)


@fairness_app.command("run")
def run(
    model: Annotated[str, typer.Option(help="Model to probe, as the server names it.")],
    base_url: Annotated[
        str,
        typer.Option(
            help="The server's URL, e.g. http://localhost:8080 (Outpost) or .../v1 (any "
            "OpenAI-compatible API)."
        ),
    ],
    api_key_env: Annotated[
        str, typer.Option(help="Name of the environment variable that holds the API key.")
    ] = "OUTPOST_API_KEY",
    suite: Annotated[
        str, typer.Option(help="A suite JSON file, or a built-in suite's name.")
    ] = "default-v1",
    max_per_group: Annotated[
        int | None,
        typer.Option(
            min=1, help="Counterfactual sets per attribute (a seeded sample); keep >= 30 for flags."
        ),
    ] = None,
    attribute: Annotated[
        list[str] | None, typer.Option(help="Probe only this attribute (repeatable).")
    ] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="max_tokens of every request.")] = 256,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0)] = 0.0,
    seed: Annotated[int, typer.Option(help="Sampling seed sent with every request.")] = 0,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Requests in flight.")] = 4,
    engine: Annotated[
        str | None, typer.Option(help="Engine label for the report (e.g. vllm).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Write the whole run (with answers) to this JSON file.")
    ] = None,
    save: Annotated[
        bool,
        typer.Option(
            help="Record the run in Outpost (needs an admin key); answer texts are not sent."
        ),
    ] = False,
) -> None:
    """Send a probe suite to one model from here, with a progress bar; print the report."""
    api_key = os.environ.get(api_key_env)
    if not api_key:
        raise _fail(f"set the API key in the environment variable {api_key_env}")
    probe_suite = _load(suite)
    unknown = sorted(set(attribute or ()) - set(probe_suite.attributes))
    if unknown:
        raise _fail(f"unknown attributes {unknown}; the suite has {sorted(probe_suite.attributes)}")
    root = _root(base_url)
    tally = RunnerTally()
    runner = ProbeRunner(
        ProbeTarget(base_url=f"{root}/v1", model=model, engine=engine),
        api_key,
        sampling=SamplingSettings(temperature=temperature, max_tokens=max_tokens, seed=seed),
        concurrency=concurrency,
        transport=tally,
        console=err,
    )
    options = ExpansionOptions(max_prompts_per_group=max_per_group, attributes=attribute or None)
    probe_run = asyncio.run(runner.run(probe_suite, options))
    probe_run = probe_run.model_copy(
        update={"target": probe_run.target.model_copy(update={"runner": tally.label()})}
    )
    if output is not None:
        output.write_text(probe_run.model_dump_json(indent=2), encoding="utf-8")
    if not probe_run.count("ok") and not probe_run.count("empty"):
        first = next((r.error for r in probe_run.responses if r.error), "no prompts were selected")
        raise _fail(f"every prompt failed; first error: {first}", code=1)
    out.print(build_report(probe_run).to_renderable())
    if save:
        run_id = _save(root, api_key, probe_run, tally)
        err.print(f"saved as fairness run [bold]{run_id}[/]: {root}/api/fairness/runs/{run_id}")


def _save(root: str, api_key: str, probe_run: ProbeRun, tally: RunnerTally) -> str:
    # Outcomes are what the report needs; the answers stay on this machine.
    responses = [r.model_copy(update={"text": None}) for r in probe_run.responses]
    body = {
        "run": json.loads(probe_run.model_copy(update={"responses": responses}).model_dump_json()),
        "runners": [r.model_dump() for r in tally.runners()],
    }
    try:
        response = httpx.post(
            f"{root}/api/fairness/runs/import",
            json=body,
            timeout=60,
            headers={"Authorization": f"Bearer {api_key}"},
        )
    except httpx.HTTPError as exc:
        raise _fail(f"could not save the run: {exc!r}", code=1) from None
    if response.status_code != 201:
        raise _fail(
            f"could not save the run: HTTP {response.status_code}: {response.text[:300]}", code=1
        )
    run_id: str = response.json()["id"]
    return run_id
