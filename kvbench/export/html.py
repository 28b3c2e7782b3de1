"""report.html: one self-contained page (plotly.js inlined, no network needed to view it).

Every string that came from a user (engine labels, names, URLs, errors, the command line) is
escaped: by Jinja's autoescaping in the page, and as HTML entities inside plot labels, which
plotly renders as pseudo-HTML.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import jinja2
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from kvbench.backends.settings import unprefixed
from kvbench.benchmark.failures import FAILING_FRACTION, percent
from kvbench.report.build import Report
from kvbench.report.schema import CompareResults, EngineResult
from kvbench.report.system import SYSTEM_COLUMNS, absent_notes, metadata_notes, system_rows
from kvbench.report.table import (
    DASH,
    economics_notes,
    engine_name,
    provisioning_rows,
    status_text,
    summary_columns,
    summary_row,
)

REPORT_FILE = "report.html"
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}
MAX_POINTS = 1500
_VERDICT_SYMBOL = {
    "STABLE": "circle",
    "UNSTABLE": "x",
    "INCONCLUSIVE": "diamond-open",
    "FAILING": "triangle-down-open",
}


def _label(text: str) -> str:
    """A user string as a plotly label: plotly reads <b>, <a href> etc., so escape them all."""
    return html.escape(text, quote=False)


def _marked_note(results: CompareResults) -> str:
    kinds = sorted({e.kind for e in results.engines if e.marked})
    if not kinds:
        return ""
    return f"<br><sup>{' and '.join(k.upper() for k in kinds)} engines, not GPU measurements</sup>"


def _div(fig: go.Figure, div_id: str) -> str:
    fig.update_layout(template="plotly_white", margin=dict(t=60, l=60, r=20, b=50))
    return pio.to_html(
        fig, include_plotlyjs=False, full_html=False, div_id=div_id, config=_PLOT_CONFIG
    )


def _boundary_plot(results: CompareResults) -> go.Figure:
    engines = [e for e in results.engines if e.theory or e.boundary]
    names = [_label(engine_name(e)) for e in engines]
    fig = go.Figure()
    # (name, lower, upper) of each engine with a whole bracket
    measured = [
        (_label(engine_name(e)), b.lower, b.upper)
        for e in engines
        if (b := e.boundary) is not None and b.lower is not None and b.upper is not None
    ]
    if measured:
        fig.add_trace(
            go.Scatter(
                name="measured λ* bracket",
                x=[name for name, _, _ in measured],
                y=[(lo + hi) / 2 for _, lo, hi in measured],
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=[(hi - lo) / 2 for _, lo, hi in measured],
                    arrayminus=[(hi - lo) / 2 for _, lo, hi in measured],
                    width=12,
                ),
                mode="markers",
                marker=dict(size=10, symbol="square"),
            )
        )
    with_theory = [(_label(engine_name(e)), e.theory) for e in engines if e.theory is not None]
    fig.add_trace(
        go.Scatter(
            name="μ theory (paper), band down to μ(1−δ)",
            x=[name for name, _ in with_theory],
            y=[t.mu for _, t in with_theory],
            error_y=dict(
                type="data",
                symmetric=False,
                array=[0.0] * len(with_theory),
                arrayminus=[t.mu - t.mu_lower for _, t in with_theory],
            ),
            mode="markers",
            marker=dict(size=12, symbol="diamond"),
        )
    )
    aware = [(name, t.mu_engine_aware) for name, t in with_theory if t.mu_engine_aware is not None]
    if aware:
        fig.add_trace(
            go.Scatter(
                name="μ engine-aware",
                x=[name for name, _ in aware],
                y=[mu for _, mu in aware],
                mode="markers",
                marker=dict(size=12, symbol="star"),
            )
        )
    fig.update_layout(
        title="Stability boundary: theory vs measured" + _marked_note(results),
        yaxis_title="requests/s",
        xaxis=dict(categoryorder="array", categoryarray=names),
    )
    return fig


def _thin(data, limit: int = MAX_POINTS):
    """Every k-th row, so a trace has at most `limit` points: the page stays a few MB and the
    shape of a queue over thousands of seconds is unchanged (samples.csv keeps every row)."""
    step = -(-len(data) // limit)
    return data.iloc[::step] if step > 1 else data


def _series_plot(report: Report, column: str, title: str, yaxis: str) -> go.Figure:
    fig = go.Figure()
    for s in report.boundary_series:
        data = _thin(s.samples.dropna(subset=[column]))
        fig.add_trace(
            go.Scatter(
                name=_label(
                    f"{s.engine}{'' if s.kind == 'real' else f' ({s.kind})'}"
                    f" λ={s.rate:.3f} {s.verdict}"
                ),
                x=data["time"],
                y=data[column],
                mode="lines",
                line=dict(dash="solid" if s.verdict == "UNSTABLE" else "dot"),
            )
        )
    fig.update_layout(
        title=title + _marked_note(report.results), xaxis_title="time (s)", yaxis_title=yaxis
    )
    return fig


def _latency_plot(results: CompareResults) -> go.Figure:
    fig = go.Figure()
    for e in results.engines:
        probes = sorted(e.probes, key=lambda p: p.rate)
        for key, dash in (("e2e_p50", "dot"), ("e2e_p99", "solid"), ("ttft_p99", "dash")):
            points = [(p.rate, getattr(p.latency, key), p.verdict) for p in probes]
            points = [pt for pt in points if pt[1] is not None]
            if not points:
                continue
            fig.add_trace(
                go.Scatter(
                    name=_label(f"{engine_name(e)} {key.replace('_', ' ')}"),
                    x=[pt[0] for pt in points],
                    y=[pt[1] for pt in points],
                    mode="lines+markers",
                    line=dict(dash=dash),
                    marker=dict(symbol=[_VERDICT_SYMBOL[pt[2]] for pt in points], size=9),
                )
            )
    fig.update_layout(
        title="Latency against load (● stable, × unstable, ◇ inconclusive, ▽ failing)"
        + _marked_note(results),
        xaxis_title="arrival rate λ (req/s)",
        yaxis_title="seconds (from send)",
        yaxis_type="log",
    )
    return fig


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return DASH
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _engine_detail(e: EngineResult) -> dict:
    probes = [
        {
            "index": p.index,
            "rate": f"{p.rate:.3f}",
            "duration": f"{p.duration:.1f}",
            "verdict": p.verdict,
            "departure": _fmt(p.departure_rate),
            "slope": _fmt(p.slope),
            "slope_ci": DASH if not p.slope_ci else f"{p.slope_ci[0]:.3g} … {p.slope_ci[1]:.3g}",
            "sent": p.requests_sent,
            "finished": p.requests_finished,
            "failed": p.requests_failed,
            "mean_in_system": _fmt(p.mean_in_system),
            "waiting_max": _fmt(p.waiting_max),
            "kv_usage_max": DASH if p.kv_usage_max is None else f"{p.kv_usage_max:.0%}",
            "preemptions": _fmt(p.preemptions),
            "ttft_p99": _fmt(p.latency.ttft_p99),
            "e2e_p50": _fmt(p.latency.e2e_p50),
            "e2e_p99": _fmt(p.latency.e2e_p99),
            "output_tps": _fmt(p.throughput.get("output_tokens_per_s")),
            "slo": DASH
            if p.slo is None or p.slo["attainment"] is None
            else f"{'met' if p.slo['met'] else 'missed'}, {p.slo['attainment']:.1%}, "
            f"{p.slo['goodput']:.3f} req/s",
            "client": "ok" if p.client_ok else "LAGGED",
        }
        for p in sorted(e.probes, key=lambda p: p.index)
    ]
    return {
        "name": engine_name(e),
        "marked": e.marked,
        "kind": e.kind,
        "backend": e.backend,
        "urls": e.urls,
        "status": status_text(e),
        "failed": e.status != "ok",
        "batch_time": e.batch_time,
        "batch_time_burst": e.batch_time_burst,
        "separate": e.separate_batch_times,
        "method": e.boundary.method if e.boundary else None,
        "confirmed": e.boundary.confirmed if e.boundary else None,
        "theory": e.theory,
        "profile": json.dumps(e.profile, indent=2) if e.profile else None,
        "sources": e.profile_sources,
        "settings": [
            {**s, "source": unprefixed(s["source"])} for s in e.settings if e.kind != "simulated"
        ],
        "settings_flags": e.settings_flags,
        "probes": probes,
        "failures": e.failures,
        "scrape_errors": e.scrape_errors,
    }


_TEMPLATE = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(
    """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>kvbench compare: {{ r.name }}</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1200px;
 padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
tr.failed td{background:#fde2e2}
td:last-child{text-align:left}
.banner{background:#fff3cd;border:2px solid #d39e00;padding:.8em 1em;font-weight:bold;margin:1em 0}
.interrupted{background:#fde2e2;border:2px solid #c00;padding:.8em 1em;margin:1em 0}
.tag{font-size:11px;font-weight:bold;color:#8a5a00;background:#fff3cd;border-radius:3px;padding:1px 4px}
pre{background:#f6f8fa;padding:1em;overflow-x:auto;font-size:12px}
.plot{min-height:450px}
</style>
{% if shared_plotlyjs %}<script src="{{ shared_plotlyjs }}"></script>{% else %}<script>{{ plotlyjs | safe }}</script>{% endif %}
</head><body>
<h1>kvbench compare: {{ r.name }}</h1>
{% if r.banner %}<div class="banner" id="banner">{{ r.banner }}</div>{% endif %}
{% if r.interrupted %}<div class="interrupted">Interrupted: the figures cover what was measured
before the stop.</div>{% endif %}
{% for w in r.warnings %}<div class="interrupted warning">Warning: {{ w }}</div>{% endfor %}
<p>Workload <code>{{ r.config.get("workload", "") }}</code>, created {{ r.created }} with kvbench
{{ r.kvbench_version }}.</p>
<h2>System</h2>
<table id="system"><thead><tr>{% for key, title in system_columns %}<th>{{ title }}</th>
{% endfor %}</tr></thead><tbody>{% for row in system %}<tr>{% for key, title in system_columns %}
<td>{{ row[key] }}</td>{% endfor %}</tr>{% endfor %}</tbody></table>
{% if system_notes %}<ul id="system-notes">{% for n in system_notes %}<li>{{ n }}</li>
{% endfor %}</ul>{% endif %}
<h2>Summary</h2>
<table id="summary"><thead><tr>{% for key, title in columns %}<th>{{ title }}</th>{% endfor %}</tr></thead>
<tbody>{% for row, e in rows %}<tr class="{{ 'failed' if e.status != 'ok' else '' }}"
 data-engine="{{ e.label }}">{% for key, title in columns %}<td>{% if key == 'engine' and e.marked
 %}{{ row[key] }} <span class="tag">{{ e.kind | upper }}</span>{% else %}{{ row[key] }}{% endif
 %}</td>{% endfor %}</tr>{% endfor %}</tbody></table>
<p>gap = (μ theory − λ*) / λ*, with λ* the midpoint of the measured bracket (from the highest
arrival rate judged stable to the lowest rate the engine could not carry: a probe judged unstable,
or the upper end of its saturated departure interval). μ theory is the paper's M / (b̄·E[g]) times the replicas;
the band below it reaches μ(1−δ). Probes S/U/I/F: stable, unstable, inconclusive and failing
runs (FAILING: more than {{ failing_limit }} of a run's requests failed).</p>
{% if economics %}<h2>SLO rate, tokens and cost</h2>
<ul id="economics">{% for n in economics %}<li>{{ n }}</li>{% endfor %}</ul>{% endif %}
{% if provisioning %}<h2>Provisioning</h2>
<table id="provisioning"><thead><tr><th>engine</th><th>target</th><th>replicas (paper μ)</th>
<th>replicas (engine-aware μ)</th><th>replicas (measured λ*)</th></tr></thead><tbody>
{% for p in provisioning %}<tr><td>{{ p.engine }}</td><td>{{ p.target }}</td><td>{{ p.theory }}</td>
<td>{{ p.engine_aware }}</td><td>{{ p.measured }}</td></tr>{% endfor %}</tbody></table>
<p>Replicas G = ⌈λ / (ρ·μ)⌉ with μ per replica from the paper's model, the engine-aware model,
or the measured bracket's lower end (the highest arrival rate judged stable; with an SLO, the SLO
rate's lower end when that is smaller).</p>{% endif %}
<h2>Plots</h2>
{% for div in plots %}<div class="plot">{{ div | safe }}</div>{% endfor %}
<h2>Engines</h2>
{% for d in details %}<h3>{{ d.name }}{% if d.marked %} <span class="tag">{{ d.kind | upper }}</span>{% endif %}</h3>
<p>backend <code>{{ d.backend }}</code>{% if d.urls %}, at {% for u in d.urls %}<code>{{ u }}</code> {% endfor %}{% endif %};
status: <b>{{ d.status }}</b></p>
{% if d.batch_time %}<p>b̄ = {{ "%.5f" % d.batch_time.value }} s ({{ d.batch_time.method }}{% if d.batch_time.trim %},
trim {{ d.batch_time.trim }}{% endif %}, {{ d.batch_time.samples }} timings, {{ d.batch_time.source }}){% if d.batch_time_burst %};
the calibration burst gave {{ "%.5f" % d.batch_time_burst.value }} s ({{ d.batch_time_burst.samples }} timings),
used to start the search{% endif %}.</p>{% endif %}
{% if d.method == "backlog" %}<p>λ* bracket: the saturated service rate measured with one
bounded-backlog probe (requests kept sent but not started, so the engine ran saturated
throughout), estimated from the work it served.{% if d.confirmed %} Open-loop runs confirming
it (<code>--confirm</code>): {% for c in d.confirmed %}{{ "%.4g" % c.rate }} req/s judged
<b>{{ c.verdict }}</b> (expected {{ c.expected }}){{ "; " if not loop.last else "." }}{% endfor %}
{% else %} No open-loop probes were run, so queue stability itself was not checked
(<code>--confirm</code> judges runs just below and above the bracket; <code>--method
open-loop</code> brackets λ* between probes judged stable and unstable).{% endif %}</p>{% endif %}
{% if d.separate %}<p>Prefill and decode run as separate batches: decode batch
{{ "%.5f" % d.separate.decode }} ± {{ "%.5f" % d.separate.decode_stderr }} s, prefill batch
{{ "%.5f" % d.separate.prefill }} ± {{ "%.5f" % d.separate.prefill_stderr }} s
({{ d.separate.prefill_batches_per_decode | round(2) }} prefill batches per decode batch, {{ d.separate.requests }}
requests; {{ d.separate.source }}), which the engine-aware μ uses.</p>{% endif %}
{% if d.theory %}<p>E[g] = {{ "%.4g" % d.theory.mean_g }} token·iterations, δ = {{ "%.4f" % d.theory.delta }},
μ per replica = {{ "%.4f" % d.theory.mu_replica }} req/s{% if d.theory.binding %}; engine-aware bound
binding: {{ d.theory.binding }}, iteration time from the {{ d.theory.iteration_model or "measured b̄" }}{% endif %}.</p>{% endif %}
{% if d.probes %}<table class="probes"><thead><tr><th>probe</th><th>λ (req/s)</th><th>duration (s)</th>
<th>verdict</th><th>departures (req/s)</th><th>slope (req/s)</th><th>slope CI</th><th>sent</th>
<th>finished</th><th>failed</th><th>mean in system</th><th>engine waiting max</th>
<th>KV usage max</th><th>preemptions</th><th>TTFT p99 (s)</th><th>E2E p50 (s)</th>
<th>E2E p99 (s)</th><th>output tok/s</th><th>SLO, attainment, goodput</th><th>client</th></tr></thead><tbody>{% for p in d.probes %}<tr><td>{{ p.index }}</td>
<td>{{ p.rate }}</td><td>{{ p.duration }}</td><td>{{ p.verdict }}</td><td>{{ p.departure }}</td>
<td>{{ p.slope }}</td><td>{{ p.slope_ci }}</td><td>{{ p.sent }}</td><td>{{ p.finished }}</td>
<td>{{ p.failed }}</td><td>{{ p.mean_in_system }}</td><td>{{ p.waiting_max }}</td>
<td>{{ p.kv_usage_max }}</td><td>{{ p.preemptions }}</td><td>{{ p.ttft_p99 }}</td><td>{{ p.e2e_p50 }}</td>
<td>{{ p.e2e_p99 }}</td><td>{{ p.output_tps }}</td><td>{{ p.slo }}</td><td>{{ p.client }}</td></tr>{% endfor %}</tbody></table>{% endif %}
{% if d.failures %}<table class="failures"><thead><tr><th>failure</th><th>requests</th>
<th>what the server said (first distinct messages)</th></tr></thead><tbody>{% for f in d.failures %}
<tr><td>{{ f.kind }}</td><td>{{ f.count }}</td><td>{% if f.get("hint") %}<b>{{ f.hint }}</b><br>{% endif %}
{% for m in f.messages %}<code>{{ m }}</code>{% if not loop.last %}<br>{% endif %}{% endfor %}
</td></tr>
{% endfor %}</tbody></table>{% endif %}
{% if d.scrape_errors %}<p>state scraper errors:
{% for k, n in d.scrape_errors.items() %}{{ k }} ×{{ n }} {% endfor %}</p>{% endif %}
{% if d.settings %}<table class="settings"><thead><tr><th>setting</th><th>value</th><th>known as</th>
<th>from</th></tr></thead><tbody>{% for s in d.settings %}<tr><td>{{ s.setting }}</td>
<td>{{ "{:,}".format(s.value) }}</td><td>{{ s.kind }}</td><td>{{ s.source }}</td></tr>{% endfor %}
</tbody></table>{% endif %}
{% for f in d.settings_flags %}<p class="warning"><b>{{ f }}</b></p>{% endfor %}
{% if d.profile %}<details><summary>discovered profile</summary><pre>{{ d.profile }}</pre>
{% if d.sources %}<table><thead><tr><th>field</th><th>read from</th></tr></thead><tbody>
{% for k, v in d.sources.items() %}<tr><td>{{ k }}</td><td>{{ v }}</td></tr>{% endfor %}</tbody></table>{% endif %}
</details>{% endif %}
{% endfor %}
<h2>Configuration, versions and command</h2>
<pre id="command">{{ r.command }}</pre>
<pre>{{ config }}</pre>
<pre>{{ versions }}</pre>
</body></html>
"""
)


def figures(report: Report) -> list[tuple[str, go.Figure]]:
    """The report's plots, each with its id (the HTML's div id; the static figures' name)."""
    r = report.results
    plots = [("plot-boundary", _boundary_plot(r))]
    if report.boundary_series:
        plots.append(
            (
                "plot-queue",
                _series_plot(
                    report,
                    "in_flight",
                    "Requests in system at each bracket's ends (dotted: stable, solid: unstable)",
                    "requests",
                ),
            )
        )
        if report.samples["kv_usage"].notna().any():
            plots.append(
                (
                    "plot-kv",
                    _series_plot(
                        report, "kv_usage", "KV-cache usage at each bracket's ends", "fraction of M"
                    ),
                )
            )
    if any(e.probes for e in r.engines):
        plots.append(("plot-latency", _latency_plot(r)))
    return plots


# With a shared plotly.js, where it is written and how report.html finds it: once in the
# directory every report goes into (compare's --output-dir), for all the reports there.
SHARED_PLOTLYJS = "plotly.min.js"


def render(report: Report, shared_plotlyjs: str | None = None) -> str:
    """The self-contained page, or with `shared_plotlyjs` (a URL relative to the page) one
    that loads plotly.js from there instead of carrying its 4.6 MB itself."""
    r = report.results
    plots = [_div(fig, div_id) for div_id, fig in figures(report)]
    columns = summary_columns(r)
    return _TEMPLATE.render(
        r=r,
        plotlyjs="" if shared_plotlyjs else get_plotlyjs(),
        shared_plotlyjs=shared_plotlyjs,
        columns=columns,
        rows=[(summary_row(e), e) for e in r.engines],
        provisioning=provisioning_rows(r),
        economics=economics_notes(r),
        plots=plots,
        details=[_engine_detail(e) for e in r.engines],
        failing_limit=percent(FAILING_FRACTION),
        system_columns=SYSTEM_COLUMNS,
        system=system_rows(r),
        system_notes=absent_notes(r) + [f"metadata: {m}" for m in metadata_notes(r)],
        config=json.dumps(r.config, indent=2, sort_keys=True),
        versions=json.dumps(r.versions, indent=2, sort_keys=True),
    )


def write(report: Report, directory: Path, *, shared_plotlyjs: bool = False) -> Path:
    """report.html in `directory`; with `shared_plotlyjs`, plotly.js once in the directory above
    it (written if missing or stale), loaded from there."""
    path = directory / REPORT_FILE
    src = None
    if shared_plotlyjs:
        library, code = directory.parent / SHARED_PLOTLYJS, get_plotlyjs()
        if not library.is_file() or library.read_text(encoding="utf-8") != code:
            library.write_text(code, encoding="utf-8")
        src = f"../{SHARED_PLOTLYJS}"
    path.write_text(render(report, src), encoding="utf-8")
    return path
