"""``runner``: the on-prem agent's commands.

``local-runner`` options are derived from :class:`runner.settings.RunnerSettings`
(declared once; every option is also an ``OUTPOST_*`` environment variable).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from runner.settings import SECRET_FLAGS, RunnerSettings

app = typer.Typer(help="Outpost runner: serve local models through the control plane.",
                  no_args_is_help=True, add_completion=False)
console = Console(stderr=True)


@app.command("local-runner", context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             add_help_option=False)
def local_runner(ctx: typer.Context) -> None:
    """Detect hardware, start the right engine, and serve it through the tunnel (see --help)."""
    args = list(ctx.args)
    for flag in SECRET_FLAGS:
        if any(a == flag or a.startswith(flag + "=") for a in args):
            console.print(f"[red]{flag} is not accepted on the command line[/] (it would show in process "
                          f"lists); set OUTPOST_{flag[2:].upper().replace('-', '_')} instead.")
            raise typer.Exit(2)
    try:
        settings = RunnerSettings(_cli_parse_args=args, _cli_kebab_case=True,
                                  _cli_prog_name="runner local-runner", _cli_exit_on_error=True)
    except ValidationError as exc:
        for err in exc.errors():
            console.print(f"[red]--{'-'.join(str(p) for p in err['loc']).replace('_', '-')}:[/] {err['msg']}")
        raise typer.Exit(2) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from runner.launch import build_agent  # heavy imports only for this command

    try:
        agent = build_agent(settings, console)
    except (ValueError, RuntimeError) as exc:
        console.print(f"[red]cannot start:[/] {exc}")
        raise typer.Exit(2) from None
    sys.exit(asyncio.run(agent.run()))


@app.command()
def detect(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Show the CPUs, memory and GPUs this runner sees."""
    from runner.inspect_cli import detect_command

    detect_command(as_json)


@app.command()
def plan(
    model: Annotated[str | None, typer.Option(help="Model path (GGUF or HF dir) or id.")] = None,
    engine: Annotated[str | None, typer.Option(help="Force an engine.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Explain which engine and settings local-runner would use, and why."""
    from runner.inspect_cli import plan_command

    plan_command(model, engine, as_json)


if __name__ == "__main__":
    app()
