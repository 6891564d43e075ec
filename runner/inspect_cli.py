"""``runner detect`` and ``runner plan``: what this machine has, and what the runner
would run on it and why. Plain functions; runner/cli.py registers them with typer.

Both return an exit status: 0 done, 1 the plan refused (nothing fits), 2 bad input.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence

from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from outpost.runner.gguf_meta import ModelNotFoundError, ModelSpec, resolve_model
from outpost.runner.hardware import HardwareReport, Probes, detect
from outpost.runner.model_refs import resolve_models
from outpost.runner.models import EmbeddedModelMissingError, embedded_model_path
from outpost.runner.multiplan import plan_models
from outpost.runner.planning import MemoryFit, Plan, plan

__all__ = ["detect_command", "plan_command", "render_hardware", "render_plan"]

GIB = 1024**3


def _gib(n: int | None) -> str:
    return "—" if n is None else f"{n / GIB:.1f} GiB"


def render_hardware(report: HardwareReport) -> RenderableType:
    cpu = report.cpu
    host = Table(title="Host", show_header=False, title_justify="left")
    host.add_row("CPU", escape(f"{cpu.model} ({cpu.arch})"))
    host.add_row("Cores", f"{cpu.physical_cores or '?'} physical, {cpu.logical_cores} logical")
    host.add_row("RAM", f"{_gib(cpu.ram_available_bytes)} free of {_gib(cpu.ram_total_bytes)}")
    host.add_row("ISA", " ".join(cpu.features) or "—")
    host.add_row("OS", cpu.os)
    parts: list[RenderableType] = [host]
    if report.gpus:
        gpus = Table(title="GPUs", title_justify="left")
        for column in ("#", "name", "memory free/total", "compute", "driver", "power", "util",
                       "MIG"):  # fmt: skip
            gpus.add_column(column)
        for g in report.gpus:
            power = (
                f"{g.power_draw_watts:.0f}/{g.power_limit_watts:.0f} W"
                # fmt: skip
                if g.power_draw_watts is not None and g.power_limit_watts
                else "—"
            )
            gpus.add_row(
                f"{g.vendor} {g.index}", escape(g.name),
                f"{_gib(g.memory_free_bytes)} / {_gib(g.memory_total_bytes)}",
                g.compute_capability or "—", g.driver_version or "—", power,
                "—" if g.utilization_percent is None else f"{g.utilization_percent:.0f}%",
                {True: "on", False: "off", None: "—"}[g.mig_enabled],
            )  # fmt: skip
        parts.append(gpus)
    probes = Table(title="Probes", title_justify="left")
    probes.add_column("probe")
    probes.add_column("present")
    probes.add_column("why not")
    for p in report.probes:
        mark = f"[green]yes ({p.devices})[/]" if p.present else "[dim]no[/]"
        probes.add_row(p.name, mark, escape(p.reason or ""))
    parts.append(probes)
    return Group(*parts)


def _fit_lines(fit: MemoryFit) -> str:
    verdict = "[green]fits[/]" if fit.fits else f"[red]short by {_gib(fit.shortfall_bytes)}[/]"
    reserve = f" + reserve {_gib(fit.reserve_bytes)}" if fit.reserve_bytes else ""
    return (
        f"weights {_gib(fit.weights_bytes)} + KV {fit.kv_bytes_per_token:,} B/token × "
        f"{fit.ctx:,} tokens × {fit.slots} slot(s) = {_gib(fit.kv_bytes)} + overhead "
        f"{_gib(fit.overhead_bytes)}{reserve}\n= {_gib(fit.required_bytes)} needed of "
        f"{_gib(fit.available_bytes)} ({escape(fit.where)}): {verdict}"
    )


def _model_line(model: ModelSpec) -> str:
    estimate = " [yellow](estimated from the table of known ids)[/]" if model.estimated else ""
    return (
        f"{escape(model.name)} — {model.format.upper()}, {model.quantization or '?'}, "
        f"{_gib(model.weights_bytes)}, {model.layers} layers, {model.kv_head_count}/"
        f"{model.head_count} KV/attention heads × {model.head_dim}, context "
        f"{model.context_length:,}{estimate}"
    )


def render_plan(result: Plan) -> RenderableType:
    parts: list[RenderableType] = []
    if result.model is not None:
        parts.append(f"[bold]Model[/]  {_model_line(result.model)}")
    if result.refusal:
        parts.append(Panel(escape(result.refusal), title="[red]refused[/]", border_style="red"))
    else:
        title = f"[bold green]{result.engine}[/] (capacity {result.capacity})"
        parts.append(
            Panel(escape(result.rule), title=title, title_align="left", border_style="green")
        )
    if result.settings is not None:
        settings = Table(title="Settings", show_header=False, title_justify="left")
        for key, value in result.settings.model_dump(exclude={"kind"}).items():
            settings.add_row(key, escape(str(value)))
        parts.append(settings)
    if result.fit is not None:
        parts.append(Panel(_fit_lines(result.fit), title="Memory fit", title_align="left"))
    if result.rejected:
        rejected = Table(title="Rejected alternatives", title_justify="left")
        rejected.add_column("engine")
        rejected.add_column("why")
        for r in result.rejected:
            rejected.add_row(escape(r.engine), escape(r.reason))
        parts.append(rejected)
    return Group(*parts)


def detect_command(
    as_json: bool, *, probes: Probes | None = None, console: Console | None = None
) -> int:
    console = console or Console()
    report = detect(probes)
    if as_json:
        console.out(report.to_json(), highlight=False)
    else:
        console.print(render_hardware(report))
    return 0


def plan_command(
    model: str | Sequence[str] | None,
    engine: str | None,
    as_json: bool,
    *,
    attach_url: str | None = None,
    probes: Probes | None = None,
    installed: Collection[str] | None = None,
    console: Console | None = None,
) -> int:
    """Plan ``model`` (default: the embedded SmolLM2 GGUF) on this machine and print why.

    Several models are planned together, in order, as ``local-runner`` would
    serve them; ``--json`` then prints a list with one plan per model.
    """
    errors = console or Console(stderr=True)
    console = console or Console()
    refs = [model] if isinstance(model, str) else list(model or [])
    try:
        if attach_url:
            results = [
                plan(
                    detect(probes),
                    resolve_models(refs)[0] if refs else None,
                    engine=engine,
                    installed=installed,
                    attach_url=attach_url,
                )
            ]
        else:
            specs = resolve_models(refs) if refs else [resolve_model(embedded_model_path())]
            results = plan_models(detect(probes), specs, engine=engine, installed=installed)
    except (ModelNotFoundError, EmbeddedModelMissingError, ValueError, OSError) as exc:
        errors.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        return 2
    if as_json:
        text = (
            results[0].to_json()
            if len(results) == 1
            else json.dumps([r.model_dump(mode="json") for r in results], indent=2)
        )
        console.out(text, highlight=False)
    else:
        for i, result in enumerate(results):
            if len(results) > 1:
                console.rule(
                    f"model {i + 1} of {len(results)}: "
                    f"{escape(result.model.name if result.model else '?')}"
                )
            console.print(render_plan(result))
    return 1 if any(r.refusal for r in results) else 0
