"""The summary table's rows as plain, unescaped text, shared by every report format.

Each exporter escapes these strings for its own format; nothing here knows about HTML or
Markdown.
"""

from __future__ import annotations

from kvbench.benchmark.failures import describe
from kvbench.output import economics
from kvbench.report.schema import VERDICTS, CompareResults, EngineResult

DASH = "—"

SUMMARY_COLUMNS = [
    ("engine", "engine"),
    ("kind", "kind"),
    ("replicas", "G"),
    ("kv_tokens", "M (tokens)"),
    ("batch_time", "b̄ (s)"),
    ("mu", "μ theory (req/s)"),
    ("mu_engine_aware", "μ engine-aware (req/s)"),
    ("bracket", "λ* measured (req/s)"),
    ("slo_rate", "SLO rate (req/s)"),
    ("tokens", "output tok/s at λ* (per GPU)"),
    ("cost", "$ per M output tokens at λ* / SLO rate"),
    ("gap", "gap (paper μ)"),
    ("gap_engine_aware", "gap (engine-aware μ)"),
    ("engine_seconds", "engine-s"),
    ("verdicts", "probes S/U/I/F"),
    ("failures", "failed requests"),
    ("preemptions", "preemptions"),
    ("status", "status"),
]


def engine_name(engine: EngineResult) -> str:
    """The label as shown everywhere: simulated and emulated engines say so."""
    return f"{engine.label} ({engine.kind})" if engine.marked else engine.label


def fmt_rate(value: float | None) -> str:
    return DASH if value is None else f"{value:.3f}"


def fmt_gap(value: float | None) -> str:
    return DASH if value is None else f"{value:+.1f}%"


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return DASH
    return f"{value:.4g}"


def fmt_bracket(engine: EngineResult) -> str:
    b = engine.boundary
    if b is None or (b.lower is None and b.upper is None):
        return DASH
    lower = DASH if b.lower is None else f"{b.lower:.3f}"
    upper = DASH if b.upper is None else f"{b.upper:.3f}"
    return f"{lower} – {upper}" + ("" if b.converged else " (not converged)")


def status_text(engine: EngineResult) -> str:
    if engine.status == "ok":
        return "ok"
    return f"{engine.status.upper()}: {engine.error}" if engine.error else engine.status.upper()


def summary_row(engine: EngineResult) -> dict[str, str]:
    t = engine.theory
    kv = engine.profile.get("kv_tokens") if engine.profile else None
    counts = engine.verdict_counts
    return {
        "engine": engine_name(engine),
        "kind": engine.kind,
        "replicas": str(engine.replicas),
        "kv_tokens": DASH if kv is None else f"{int(kv):,}",
        "batch_time": DASH if engine.batch_time is None else f"{engine.batch_time.value:.4f}",
        "mu": DASH if t is None else fmt_rate(t.mu),
        "mu_engine_aware": DASH if t is None else fmt_rate(t.mu_engine_aware),
        "bracket": fmt_bracket(engine),
        "slo_rate": economics.slo_bracket(engine.slo_boundary).removesuffix(" req/s"),
        "tokens": _tokens(engine),
        "cost": _cost(engine),
        "gap": fmt_gap(engine.gap_percent),
        "gap_engine_aware": fmt_gap(engine.gap_engine_aware_percent),
        "engine_seconds": f"{engine.engine_seconds:.0f}",
        "verdicts": "/".join(str(counts.get(v, 0)) for v in VERDICTS),
        "failures": describe(engine.failures, limit=2) if engine.failures else DASH,
        "preemptions": DASH if engine.preemptions is None else f"{engine.preemptions:,}",
        "status": status_text(engine),
    }


def _tokens(engine: EngineResult) -> str:
    at = (engine.economics or {}).get("at_lambda")
    if not at or at.get("output_tokens_per_s") is None:
        return DASH
    return f"{at['output_tokens_per_s']:,.1f} ({at['output_tokens_per_s_per_gpu']:,.1f})"


def _cost(engine: EngineResult) -> str:
    econ = engine.economics or {}

    def usd(at: dict | None) -> str:
        x = (at or {}).get("usd_per_million_output_tokens")
        return DASH if x is None else f"${x:,.4g}"

    return f"{usd(econ.get('at_lambda'))} / {usd(econ.get('at_slo'))}"


def summary_columns(results: CompareResults) -> list[tuple[str, str]]:
    """The columns worth showing: engine-aware μ only when some engine has it; the SLO rate
    with an SLO; cost with a GPU price."""
    engines = results.engines
    has = {
        "mu_engine_aware": any(e.theory and e.theory.mu_engine_aware is not None for e in engines),
        "slo_rate": any(e.slo_boundary for e in engines),
        "cost": any((e.economics or {}).get("gpu_price") is not None for e in engines),
    }
    has["gap_engine_aware"] = has["mu_engine_aware"]
    return [c for c in SUMMARY_COLUMNS if has.get(c[0], True)]


def economics_notes(results: CompareResults) -> list[str]:
    """One line per engine: the SLO, tokens and cost with their assumptions."""
    lines = []
    for e in results.engines:
        parts = [
            f"{label}: {value}" + (f" ({note})" if note else "")
            for label, value, *rest in economics.rows(e.slo_boundary, e.economics)
            for note in [rest[0] if rest else ""]
        ]
        if parts:
            lines.append(f"{engine_name(e)} — " + "; ".join(parts))
    return lines


def provisioning_rows(results: CompareResults) -> list[dict[str, str]]:
    rows = []
    for e in results.engines:
        p = e.provisioning
        if p is None:
            continue
        rows.append(
            {
                "engine": engine_name(e),
                "target": f"{p.target_rate:g} req/s at ρ = {p.utilization:g}",
                "theory": str(p.replicas_theory),
                "engine_aware": DASH
                if p.replicas_engine_aware is None
                else str(p.replicas_engine_aware),
                "measured": DASH
                if p.replicas_measured is None
                else str(p.replicas_measured)
                + (" (SLO rate)" if p.basis == "SLO rate lower bound" else ""),
            }
        )
    return rows
