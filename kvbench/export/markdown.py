"""summary.md: the compare summary table in Markdown, ready to paste into an issue or a slide."""

from __future__ import annotations

import re

from kvbench.backends.settings import unprefixed
from kvbench.benchmark.failures import FAILING_FRACTION, percent
from kvbench.report.schema import CompareResults
from kvbench.report.system import SYSTEM_COLUMNS, absent_notes, metadata_notes, system_rows
from kvbench.report.table import (
    economics_notes,
    provisioning_rows,
    summary_columns,
    summary_row,
)

_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def escape(text: str) -> str:
    """Show `text` literally in GitHub-flavoured Markdown, inside a table cell too."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _SPECIAL.sub(r"\\\1", text).replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(escape(cell) for cell in row) + " |" for row in rows]
    return lines


def _system(results: CompareResults) -> list[str]:
    lines = ["## System", ""]
    lines += _table(
        [escape(title) for _, title in SYSTEM_COLUMNS],
        [[row[key] for key, _ in SYSTEM_COLUMNS] for row in system_rows(results)],
    )
    notes = absent_notes(results) + [f"metadata: {m}" for m in metadata_notes(results)]
    if notes:
        lines += [""] + [f"- {escape(n)}" for n in notes]
    return lines + ["", "## Summary", ""]


def _settings(results: CompareResults) -> list[str]:
    """The scheduler settings of the engines kvbench drove over HTTP (a simulated engine's are
    its configuration), each as read, given, inferred or assumed, and what contradicts them."""
    engines = [e for e in results.engines if e.kind != "simulated" and e.settings]
    if not engines:
        return []
    lines = ["", "Engine settings the engine-aware μ used:", ""]
    lines += _table(
        ["engine", "setting", "value", "known as", "from"],
        [
            [e.label, s["setting"], f"{s['value']:,}", s["kind"], unprefixed(s["source"])]
            for e in engines
            for s in e.settings
        ],
    )
    lines += [f"\n> **{escape(e.label)}: {escape(f)}**" for e in engines for f in e.settings_flags]
    return lines


def render(results: CompareResults) -> str:
    lines = [f"# kvbench compare: {escape(results.name)}", ""]
    if results.banner:
        lines += [f"> **{escape(results.banner)}**", ""]
    if results.interrupted:
        lines += ["> **Interrupted: the figures cover what was measured before the stop.**", ""]
    lines += [f"> **Warning: {escape(w)}**\n" for w in results.warnings]
    lines += _system(results)
    columns = summary_columns(results)
    lines += _table(
        [escape(title) for _, title in columns],
        [[summary_row(e)[key] for key, _ in columns] for e in results.engines],
    )
    provisioning = provisioning_rows(results)
    if provisioning:
        lines += ["", "Replicas needed:", ""]
        lines += _table(
            [
                "engine",
                "target",
                "replicas (paper μ)",
                "replicas (engine-aware μ)",
                "replicas (measured λ*)",
            ],
            [
                [r["engine"], r["target"], r["theory"], r["engine_aware"], r["measured"]]
                for r in provisioning
            ],
        )
    lines += _settings(results)
    notes = economics_notes(results)
    if notes:
        lines += ["", "SLO rate, tokens and cost:", ""] + [f"- {escape(n)}" for n in notes]
    workload = results.config.get("workload", "")
    lines += [
        "",
        f"Workload {escape(str(workload))}; gap = (μ theory − λ*) / λ*, λ* the measured "
        "bracket's midpoint; probes S/U/I/F = stable/unstable/inconclusive/failing runs (FAILING: "
        f"more than {percent(FAILING_FRACTION)} of a run's requests failed).",
        "",
        f"Command: `{results.command.replace('`', '')}` — kvbench {escape(results.kvbench_version)}, "
        f"{escape(results.created)}",
        "",
    ]
    return "\n".join(lines)
