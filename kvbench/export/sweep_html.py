"""A sweep's report.html: capacity curves and the table of cells, one self-contained page
(plotly.js inlined). Every figure is SIMULATED, and the page says so in its title, banner and
plot titles. User strings (engine labels, workloads, errors) are escaped by Jinja's
autoescaping, and as HTML entities inside plot labels, which plotly reads as pseudo-HTML."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative
from plotly.offline import get_plotlyjs

REPORT_FILE = "report.html"
_CONFIG = {"displaylogo": False, "responsive": True}
# One curve per configuration: everything but M (the x axis) and the seed (averaged over).
_CURVE = ["engine", "workload", "profile", "replicas"]
_COLUMNS = [
    ("engine", "engine"),
    ("workload", "workload"),
    ("M", "M (tokens)"),
    ("profile", "iteration-time preset"),
    ("replicas", "replicas"),
    ("burstiness", "burstiness"),
    ("seed", "seed"),
    ("mu_paper", "μ paper / replica"),
    ("mu_engine_aware", "μ engine-aware / replica"),
    ("binding", "binding"),
    ("lambda_star", "λ* (simulated)"),
    ("bracket", "bracket"),
    ("replicas_needed", "replicas for target"),
    ("usd_per_hour", "USD / hour"),
    ("usd_per_million_requests", "USD / 10⁶ requests"),
    ("status", "status"),
]


def _label(text: Any) -> str:
    return html.escape(str(text), quote=False)


def _div(fig: go.Figure, div_id: str) -> str:
    fig.update_layout(template="plotly_white", margin=dict(t=60, l=60, r=20, b=50))
    return pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=div_id, config=_CONFIG)


def _name(keys: tuple) -> str:
    engine, workload, profile, replicas = keys
    return f"{engine} · {workload} · {profile}" + (f" · ×{replicas}" if replicas != 1 else "")


def _curves(ok: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Per configuration, λ* and both μ per replica by M, averaged over seeds."""
    out = []
    for keys, group in ok.groupby(_CURVE, sort=False):
        by_m = (
            group.groupby("M")[["lambda_star_per_replica", "mu_engine_aware", "mu_paper"]]
            .mean()
            .sort_index()
        )
        out.append((_name(tuple(keys)), by_m))
    return out


def _capacity_plot(ok: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    palette = qualitative.Plotly
    for i, (name, by_m) in enumerate(_curves(ok)):
        color = palette[i % len(palette)]
        m = by_m.index.to_numpy()
        fig.add_scatter(
            x=m,
            y=by_m["lambda_star_per_replica"],
            mode="lines+markers",
            name=_label(f"{name}: λ* (simulated)"),
            line=dict(color=color),
        )
        for column, dash, what in (
            ("mu_engine_aware", "dash", "engine-aware μ"),
            ("mu_paper", "dot", "paper μ"),
        ):
            fig.add_scatter(
                x=m,
                y=by_m[column],
                mode="lines",
                name=_label(f"{name}: {what}"),
                line=dict(color=color, dash=dash),
            )
    fig.update_layout(
        title="λ* per replica against KV capacity M (SIMULATED), with both theories",
        xaxis_title="M (KV tokens)",
        yaxis_title="req/s per replica",
    )
    return fig


def _replicas_plot(ok: pd.DataFrame, target: float | None, rho: float) -> go.Figure:
    """G(λ) = ⌈λ / (ρ·λ*)⌉ with each configuration's measured λ* per replica (seed mean)."""
    fig = go.Figure()
    capacities = {
        f"{_name(tuple(keys[:4]))} · M={_count(keys[4])}": float(
            g["lambda_star_per_replica"].mean()
        )
        for keys, g in ok.groupby([*_CURVE, "M"], sort=False)
    }
    top = target or 10 * max(capacities.values())
    traffic = [top * k / 200 for k in range(1, 201)]
    for name, cap in capacities.items():
        fig.add_scatter(
            x=traffic,
            y=[max(1, math.ceil(x / (rho * cap) * (1 - 1e-12))) for x in traffic],
            mode="lines",
            line_shape="hv",
            name=_label(name),
        )
    fig.update_layout(
        title=f"Replicas needed against traffic at ρ = {rho:g} (from SIMULATED λ*)",
        xaxis_title="traffic λ (req/s)",
        yaxis_title="replicas",
    )
    return fig


def _number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not math.isnan(value)


def _count(value: Any) -> int | None:
    """A token count or replica count that pandas may have made a float (NaN beside it)."""
    return int(value) if _number(value) else None


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _rows(frame: pd.DataFrame) -> list[dict[str, str]]:
    rows = []
    for r in frame.to_dict("records"):
        lo, hi = r.get("lambda_lower"), r.get("lambda_upper")
        bracket = f"[{lo:.4g}, {hi:.4g}]" if _number(lo) and _number(hi) else None
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['error']}"
        # a failed row has no profile to read M from; the grid's value, where it gave one
        m = r.get("M") if _number(r.get("M")) else r.get("kv_tokens")
        values = {**r, "bracket": bracket, "status": status, "M": _count(m)}
        rows.append(
            {key: _cell(values.get(key)) for key, _ in _COLUMNS} | {"_ok": r["status"] == "ok"}
        )
    return rows


_TEMPLATE = jinja2.Environment(autoescape=True).from_string(
    """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>kvbench sweep (SIMULATED)</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th:first-child,td:first-child{text-align:left}
tr.failed td{background:#fde2e2}
.banner{background:#fff3cd;border:2px solid #d39e00;padding:.8em 1em;font-weight:bold;margin:1em 0}
pre{background:#f6f8fa;padding:1em;overflow-x:auto;font-size:12px}
.plot{min-height:450px}
</style>
<script>{{ plotlyjs | safe }}</script>
</head><body>
<h1>kvbench sweep</h1>
<div class="banner" id="banner">SIMULATED: every λ* here is kvbench's simulator of the engine's
scheduler rule and the iteration-time preset, not a GPU measurement.</div>
<p>{{ ok }} of {{ total }} cells finished{% if failed %}, <b>{{ failed }} failed</b>{% endif %}.
λ* is the saturated service rate the default search measured (bracket: its interval); μ is per
replica, the engine-aware bound named under "binding", the paper's M / (b̄·E[g]) at the same
iteration time.{% if target %} Replicas for λ = {{ target }} req/s at ρ = {{ rho }}: ⌈λ / (ρ·λ*
per replica)⌉{% if price %}, at {{ price }} USD per GPU-hour{% endif %}.{% endif %}</p>
<h2>Capacity curves</h2>
{% for div in plots %}<div class="plot">{{ div | safe }}</div>{% endfor %}
<h2>Cells</h2>
<table id="cells"><thead><tr>{% for key, title in columns %}<th>{{ title }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in rows %}<tr class="{{ '' if row._ok else 'failed' }}">{% for key, title in columns
%}<td>{{ row[key] }}</td>{% endfor %}</tr>{% endfor %}</tbody></table>
<h2>Grid</h2>
<pre id="grid">{{ grid }}</pre>
</body></html>
"""
)


def render(frame: pd.DataFrame, grid: dict[str, Any]) -> str:
    ok = frame[frame["status"] == "ok"] if len(frame) else frame
    ok = ok[ok["lambda_star_per_replica"].notna()] if len(ok) else ok
    plots = []
    if len(ok):
        plots = [
            _div(_capacity_plot(ok), "plot-capacity"),
            _div(
                _replicas_plot(ok, grid["target_rate"], grid["target_utilization"]), "plot-replicas"
            ),
        ]
    failed = int((frame["status"] != "ok").sum()) if len(frame) else 0
    return _TEMPLATE.render(
        plotlyjs=get_plotlyjs(),
        plots=plots,
        columns=_COLUMNS,
        rows=_rows(frame),
        total=len(frame),
        ok=len(frame) - failed,
        failed=failed,
        target=grid["target_rate"],
        rho=grid["target_utilization"],
        price=grid["gpu_price"],
        grid=json.dumps(grid, indent=2),
    )


def write(frame: pd.DataFrame, grid: dict[str, Any], directory: Path) -> Path:
    path = directory / REPORT_FILE
    path.write_text(render(frame, grid), encoding="utf-8")
    return path
