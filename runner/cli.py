"""``runner``: the on-prem agent's commands.

``local-runner`` options are derived from :class:`runner.settings.RunnerSettings`
(declared once; every option is also an ``OUTPOST_*`` environment variable).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any, cast

import typer
from pydantic import ValidationError
from rich.console import Console

from outpost.runner.settings import SECRET_FLAGS, RunnerSettings
from outpost.sdk.heap import freeze_startup_heap
from outpost.sdk.logfmt import configure_logging
from outpost.sdk.otel import setup_tracing, shutdown_tracing

if TYPE_CHECKING:
    from outpost.runner.agent import Agent

app = typer.Typer(
    help="Outpost runner: serve local models through the control plane.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


@app.command(
    "local-runner",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def local_runner(ctx: typer.Context) -> None:
    """Detect hardware, start the right engine, and serve it through the tunnel (see --help)."""
    args = list(ctx.args)
    for flag in SECRET_FLAGS:
        if any(a == flag or a.startswith(flag + "=") for a in args):
            console.print(
                f"[red]{flag} is not accepted on the command line[/] (it would show in process "
                f"lists); set OUTPOST_{flag[2:].upper().replace('-', '_')} instead."
            )
            raise typer.Exit(2)
    try:
        settings = RunnerSettings(
            _cli_parse_args=args,
            _cli_kebab_case=True,
            _cli_prog_name="runner local-runner",
            _cli_exit_on_error=True,
        )
    except ValidationError as exc:
        for err in exc.errors():
            flag = "--" + "-".join(str(p) for p in err["loc"]).replace("_", "-")
            console.print(
                f"[red]{flag}:[/] {err['msg'].removeprefix('Value error, ')}", highlight=False
            )
        raise typer.Exit(2) from None
    configure_logging(settings.log_format, settings.log_level, process="runner")
    setup_tracing("outpost-runner")  # only when OTEL_* variables ask for it (sdk/otel.py)
    from outpost.runner.launch import build_agent  # heavy imports only for this command
    from outpost.runner.observability import ConsoleToLog

    # JSON logs: the progress lines for people become log records too, one object per line.
    out = (
        console
        if settings.log_format == "text"
        else Console(
            # A TextIOBase is a text file to rich; typeshed does not count it as an IO[str].
            file=cast(IO[str], ConsoleToLog(logging.getLogger("outpost.runner"))),
            no_color=True,
            width=240,
        )
    )

    try:
        agent = build_agent(settings, out)
    except (ValueError, RuntimeError, LookupError, OSError) as exc:
        console.print(f"[red]cannot start:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    code = _run_loop(_run(agent, settings))
    shutdown_tracing()  # export the last spans: os._exit below skips every exit hook
    # Everything is stopped and closed by now. Skipping interpreter teardown
    # (finalizing numpy, pydantic, rich…) saves ~0.5 s on a busy 2-core box,
    # which matters for a fast restart under a process manager.
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def _run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run the agent on uvloop when it is installed (``uvicorn[standard]`` brings it), else
    asyncio's loop.

    Relaying a token is mostly event-loop and socket work (a read from the
    engine, a WebSocket write); the pure-Python selector loop spent about a
    quarter of the runner's CPU on it (bench/README.md, Overhead). The control
    plane runs on uvloop already, through uvicorn.
    """
    freeze_startup_heap()  # imports done: what lives as long as the process leaves the collector
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


async def _run(agent: Agent, settings: RunnerSettings) -> int:
    """The agent's lifecycle, with the opt-in metrics listener around it."""
    if settings.metrics_port is None:
        return await agent.run()
    from outpost.runner.observability import MetricsServer, RunnerMetrics

    metrics = RunnerMetrics(agent)
    agent.observer = metrics.observe_stream
    server = MetricsServer(metrics, settings.metrics_host, settings.metrics_port)
    try:
        await server.start()
    except OSError as exc:  # the port is taken, or the address is not this machine's
        console.print(
            f"[red]cannot start:[/] --metrics-port {settings.metrics_port}: {exc}", highlight=False
        )
        return 2
    try:
        return await agent.run()
    finally:
        await server.stop()


@app.command()
def detect(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show the CPUs, memory and GPUs this runner sees."""
    from outpost.runner.inspect_cli import detect_command

    raise typer.Exit(detect_command(as_json))


@app.command()
def plan(
    model: Annotated[
        list[str] | None,
        typer.Option(
            help="Model path (GGUF or HF dir) or id, or NAME=PATH_OR_ID; repeat to plan several "
            "together."
        ),
    ] = None,
    engine: Annotated[str | None, typer.Option(help="Force an engine.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Explain which engine and settings local-runner would use, and why."""
    from outpost.runner.inspect_cli import plan_command

    raise typer.Exit(plan_command(model or None, engine, as_json))


@app.command()
def keys(
    state_dir: Annotated[
        Path | None, typer.Option(help="State directory (default: as local-runner).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show the identity fingerprint that end-to-end clients pin, and the e2e key."""
    import json

    from outpost.runner.e2e import describe_keys
    from outpost.runner.identity import EnrollmentError
    from outpost.runner.settings import default_runner_state_dir

    try:
        info = describe_keys(state_dir or default_runner_state_dir())
    except EnrollmentError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps(info, indent=2))
        return
    print(f"runner:      {info['runner_id']} ({info['control_plane']})")
    print(f"fingerprint: {info['identity_fingerprint']}")
    print(f"e2e key:     {info['hpke_kem'] or 'none yet (made on the next start)'}")


if __name__ == "__main__":
    app()
