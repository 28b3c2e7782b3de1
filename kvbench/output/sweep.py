"""A sweep's cells as a few aligned lines: the figure that matters per cell (λ*) beside both
theories and, when asked for, the replicas and cost of the target rate."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kvbench.output.terminal import columns, number

# more cells than this are for the table file and the report, not the terminal
MAX_SHOWN = 40


def cell_lines(rows: Sequence[Mapping[Any, Any]]) -> list[str]:
    if not rows or len(rows) > MAX_SHOWN:
        return []
    priced = any(r.get("usd_per_hour") is not None for r in rows)
    sized = any(r.get("replicas_needed") is not None for r in rows)
    header = ["engine", "workload", "M", "λ* (req/s)", "engine-aware μ", "paper μ"]
    header += ["replicas"] * sized + ["USD/h"] * priced
    lines = [header]
    for r in rows:
        if r["status"] != "ok":
            lines.append([r["engine"], r["workload"], _m(r), f"FAILED: {r['error']}"])
            continue
        k = r["replicas"]
        star = (
            "—"
            if r["lambda_lower"] is None
            else f"{number(r['lambda_lower'])} – {number(r['lambda_upper'])}"
        )
        line = [r["engine"], r["workload"], _m(r), star]
        line += [number(r["mu_engine_aware"] * k) + f" ({r['binding']})", number(r["mu_paper"] * k)]
        line += [str(r.get("replicas_needed") or "—")] * sized
        line += [_usd(r.get("usd_per_hour"))] * priced
        lines.append(line)
    return columns(lines)


def _m(row: Mapping[Any, Any]) -> str:
    return f"{row['M']:,}" if row.get("M") else "preset"


def _usd(value: float | None) -> str:
    return "—" if value is None else f"{value:,.2f}"
