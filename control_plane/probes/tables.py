"""Rich rendering of fairness reports and comparisons (terminal output only;
the JSON form of a report is ``FairnessReport.to_dict()``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from .report import Comparison, FairnessReport, OutcomeResult

__all__ = ["comparison_table", "report_renderable"]


def _num(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _p(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.1e}" if value < 0.001 else f"{value:.3f}"


def _estimate(binary: bool, value: float | None, low: float | None, high: float | None) -> str:
    if value is None:
        return "—"
    if binary:
        return f"{value:.1%} [{low:.1%}, {high:.1%}]"
    return f"{value:.3g} [{low:.3g}, {high:.3g}]"


def _flag_cell(outcome: OutcomeResult) -> Text:
    di = outcome.disparate_impact
    if di is None:
        return Text("n/a", style="dim")
    if di.flagged:
        return Text("FLAG", style="bold red")
    unmet = [
        label
        for label, ok in (
            ("ratio ok", not di.ratio_below_threshold),
            ("not sig.", not di.significant),
            ("n < min", not di.enough_samples),
        )
        if ok
    ]
    return Text(", ".join(unmet) or "—", style="green")


def report_renderable(report: FairnessReport) -> RenderableType:
    header = Text()
    header.append(f"{report.target.label}", style="bold")
    header.append(
        f"  suite {report.suite_id} v{report.suite_version} ({report.suite_hash[:12]})"
        f"  temperature {report.sampling.temperature} top_p {report.sampling.top_p}"
        f" max_tokens {report.sampling.max_tokens} seed {report.sampling.seed}\n"
    )
    totals = report.totals
    header.append(
        f"prompts {totals['prompts']}: ok {totals['ok']}, empty {totals['empty']}, "
        f"errors {totals['error']}; {totals['comparisons']} paired tests, Holm-corrected, "
        f"alpha {report.settings.alpha}\n"
    )
    flagged = ", ".join(report.flagged_attributes) or "none"
    header.append(
        f"flagged attributes: {flagged}",
        style="bold red" if report.flagged_attributes else "bold green",
    )
    parts: list[RenderableType] = [header]
    for attribute, result in report.attributes.items():
        # No vertical rules, and names never cut: in 80 columns the numbers wrap, the
        # outcome and group names (what a reader looks for) stay whole.
        table = Table(
            title=f"{attribute}",
            title_justify="left",
            show_lines=False,
            box=box.SIMPLE_HEAD,
            pad_edge=False,
        )
        names = (len(n) for n in result.outcomes)
        table.add_column("outcome", no_wrap=True, min_width=max(names, default=7))
        table.add_column("group", no_wrap=True, min_width=max(map(len, result.groups), default=5))
        table.add_column("flag", min_width=6)  # the verdict next to the names it is about
        # n: the answers counted, with those excluded (empty, errors, unparseable) if any.
        table.add_column("n", justify="right")
        table.add_column("est. [CI]", overflow="fold")
        for column in ("parity", "DI", "p (Holm)"):
            table.add_column(column, overflow="fold")
        for name, outcome in result.outcomes.items():
            binary = outcome.spec.kind == "binary"
            di = outcome.disparate_impact
            for index, (group, estimate) in enumerate(outcome.groups.items()):
                counts = result.responses[group]
                excluded = counts["empty"] + counts["error"] + estimate.unparseable
                first = index == 0
                table.add_row(
                    name if first else "",
                    group,
                    _flag_cell(outcome) if first else "",
                    f"{estimate.n} (-{excluded})" if excluded else str(estimate.n),
                    _estimate(binary, estimate.value, estimate.ci_low, estimate.ci_high),
                    _num(outcome.parity_difference) if first else "",
                    (_num(di.ratio) if di else "n/a") if first else "",
                    _p(outcome.min_p_holm) if first else "",
                    end_section=index == len(outcome.groups) - 1,
                )
        parts.append(table)
    return Group(*parts)


def comparison_table(comparison: Comparison) -> Table:
    title = "side by side" if comparison.same_suite else "side by side (DIFFERENT suites!)"
    table = Table(title=title, title_justify="left")
    table.add_column("attribute")
    table.add_column("outcome")
    table.add_column("metric")
    for label in comparison.labels:
        table.add_column(label, justify="right")
    for row in comparison.rows:
        lines: list[tuple[str, list[str]]] = [
            (f"group {group}", [_num(v) for v in values]) for group, values in row.groups.items()
        ]
        lines += [
            ("parity diff", [_num(v) for v in row.parity_difference]),
            ("DI ratio", [_num(v) for v in row.di_ratio]),
            ("min p (Holm)", [_p(v) for v in row.min_p_holm]),
            ("flag", ["FLAG" if f else "—" for f in row.flagged]),
        ]
        for index, (metric, cells) in enumerate(lines):
            first = index == 0
            table.add_row(
                row.attribute if first else "",
                row.outcome if first else "",
                metric,
                *cells,
                end_section=index == len(lines) - 1,
            )
    return table
