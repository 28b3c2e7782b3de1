"""Terminal text for a run summary and a boundary search (hyperfine-style aligned lines)."""

from __future__ import annotations

from typing import Any

from kvbench.benchmark.failures import percent
from kvbench.benchmark.slo import percentile_key
from kvbench.output import economics
from kvbench.output.terminal import block, highlight, number

_LABEL = {"simulated": " (SIMULATED)", "emulated": " (EMULATED)", "real": ""}
_COLOR = {"STABLE": "green", "UNSTABLE": "red", "INCONCLUSIVE": "yellow", "FAILING": "red"}


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 1e3:,.1f}"


def _latency(stats: dict[str, Any], percentiles: list[float]) -> str:
    if not stats["n"]:
        return "n/a"
    keys = [percentile_key(p) for p in percentiles]
    return "  ".join(f"{k} {_ms(stats.get(k))}" for k in keys) + " ms"


def _seconds(x: float) -> str:
    return f"{x * 1e3:,.4g} ms" if x < 1 else f"{x:,.4g} s"


def throughput_text(t: dict[str, Any] | None) -> str:
    if not t or t.get("output_tokens_per_s") is None:
        return "n/a"
    return (
        f"{number(t['output_tokens_per_s'], 1)} output tok/s  "
        f"{number(t['total_tokens_per_s'], 1)} total tok/s"
    )


def slo_rows(slo: dict[str, Any] | None) -> list[tuple[str, ...]]:
    """A run's SLO attainment and goodput, and each target's metric at the SLO's percentile."""
    if not slo:
        return []
    at = slo["at_percentile"]
    key = percentile_key(slo["percentile"])
    measured = "  ".join(
        f"{m.upper()} {key} {'n/a' if at[m] is None else _seconds(at[m])} (≤ {_seconds(t)})"
        for m, t in slo["targets"].items()
    )
    share = "n/a" if slo["attainment"] is None else f"{slo['attainment']:.1%}"
    goodput = "n/a" if slo["goodput"] is None else f"{number(slo['goodput'])} req/s"
    verdict = highlight("MET", "green") if slo["met"] else highlight("MISSED", "red")
    return [
        ("SLO", verdict, measured),
        (
            "SLO attainment",
            f"{share}  ({slo['attained']:,} of {slo['completed']:,} completed)",
            f"goodput {goodput}",
        ),
    ]


def _interval(est: float | None, lo: float | None, hi: float | None, unit: str) -> str:
    if est is None:
        return "n/a"
    return f"{number(est)} {unit}  [{number(lo if lo is not None else float('nan'))}, {number(hi if hi is not None else float('nan'))}]"


def _failure_rows(failures: dict[str, Any] | None) -> list[tuple[str, ...]]:
    """One row per failure kind, then one per further message of that kind."""
    if not failures or not failures["count"]:
        return []
    share = f"{percent(failures['fraction'])} of {failures['ended']:,} ended"
    limit = f"FAILING above {percent(failures['limit'])}"
    rows: list[tuple[str, ...]] = [("failures", f"{failures['count']:,}  ({share})", limit)]
    for k in failures["kinds"]:
        messages = [f'"{m}"' for m in k["messages"]] or [""]
        if k.get("hint"):
            messages[0] = f"{k['hint']}; {messages[0]}".rstrip("; ")
        rows.append((f"  {k['kind']}", f"×{k['count']:,}", messages[0]))
        rows += [("", "", m) for m in messages[1:]]
    return rows


def _engine_state_rows(summary: dict[str, Any]) -> list[tuple[str, ...]]:
    """What the engine itself reported: its waiting queue, KV usage and preemptions, and what
    reading them ran into."""
    waiting, kv = summary.get("waiting") or {}, summary.get("kv_usage") or {}
    parts = []
    if waiting.get("max") is not None:
        parts.append(f"waiting mean {number(waiting['mean'], 1)} max {number(waiting['max'], 0)}")
    if kv.get("max") is not None:
        parts.append(f"KV usage mean {kv['mean']:.0%} max {kv['max']:.0%}")
    preemptions = summary.get("preemptions")
    if preemptions is not None:
        parts.append(f"preemptions {preemptions:,}")
    rows: list[tuple[str, ...]] = []
    if parts:
        rows.append(("engine state", "  ".join(parts), "as the engine reported it"))
    scrape = summary.get("scrape")
    if scrape and scrape["errors"]:
        kinds = ", ".join(f"{k} ×{n:,}" for k, n in sorted(scrape["errors"].items()))
        messages = [f'"{m}"' for m in scrape.get("messages") or []] or [""]
        rows.append(("scrape errors", f"{kinds}  ({scrape['scrapes']:,} good reads)", messages[0]))
        rows += [("", "", m) for m in messages[1:]]
    return rows


def run_summary_text(summary: dict[str, Any], directory: str | None = None) -> str:
    ev = summary["evidence"] or {}
    verdict = summary["verdict"]
    conf = ev.get("confidence")
    rows: list[tuple[str, ...]] = []
    status = summary["status"]
    if status != "completed":
        # a run that did not complete is headed by that, never by a (green) verdict: the
        # verdict covers only the part measured before the stop, or an engine that failed
        rows.append(("status", highlight(status.upper(), "red"), summary.get("error") or ""))
    if verdict == "FAILING":
        rows.append(("verdict", highlight(verdict, _COLOR[verdict]), ev.get("reason", "")))
    elif verdict is not None and status == "failed":
        rows.append(
            (
                "verdict",
                highlight("none", "red"),
                f"the engine failed; the part measured read {verdict}",
            )
        )
    elif verdict is not None and status != "completed":
        rows.append(("verdict", f"{verdict} ({conf:.0%})", "of the part measured before the stop"))
    elif verdict is not None:
        rows.append(
            (
                "verdict",
                highlight(f"{verdict} ({conf:.0%})", _COLOR.get(verdict, "red")),
                ev.get("reason", ""),
            )
        )
    else:
        rows.append(
            ("verdict", highlight("none", "yellow"), ev.get("reason", "no requests measured"))
        )
    if "slope" in ev:
        rows += [
            (
                "queue growth",
                _interval(ev.get("slope"), ev.get("slope_lo"), ev.get("slope_hi"), "req/s"),
                f"tolerance {ev['tolerance']:.0%} of λ, after {number(ev['warmup_end'], 0)} s warm-up",
            ),
            (
                "departures",
                _interval(
                    ev.get("departure_rate"),
                    ev.get("departure_lo"),
                    ev.get("departure_hi"),
                    "req/s",
                ),
                f"vs λ = {number(summary['request_rate'])} req/s",
            ),
            (
                "in system",
                f"mean {number(ev['mean_in_system'] or float('nan'), 1)}  max {number(ev['max_in_system'] or float('nan'), 0)}",
                f"{number(ev['final_in_system'] or 0, 0)} at the end",
            ),
        ]
    lag = summary["schedule_lag"]
    req = summary["requests"]
    achieved = summary["achieved_rate"]
    rows += [
        (
            "achieved rate",
            f"{number(achieved if achieved is not None else float('nan'))} req/s",
            f"intended {number(summary['request_rate'])} req/s",
        ),
        (
            "schedule lag",
            f"p50 {_ms(lag['p50'])}  p99 {_ms(lag['p99'])} ms",
            "client kept its schedule"
            if summary["client_kept_schedule"]
            else highlight("CLIENT FELL BEHIND", "red"),
        ),
        (
            "requests",
            f"{req['sent']:,} sent  {req['completed']:,} done  {req['failed']:,} failed  {req['unfinished']:,} unfinished",
        ),
        *_failure_rows(summary.get("failures")),
    ]
    unmeasured = {
        "itl": "no per-token times from the simulator" if summary["kind"] == "simulated" else "",
        "queueing_delay": "engines do not report admission times"
        if summary["kind"] != "simulated"
        else "",
    }
    for key, label in (
        ("ttft", "TTFT"),
        ("tpot", "TPOT"),
        ("itl", "ITL"),
        ("e2e", "E2E"),
        ("queueing_delay", "queueing delay"),
    ):
        stats = summary["latency"][key]
        shown = summary.get("percentiles") or [50, 90, 99]
        rows.append((label, _latency(stats, shown), "" if stats["n"] else unmeasured.get(key, "")))
    rows.append(("throughput", throughput_text(summary.get("throughput")), "completed requests"))
    rows += slo_rows(summary.get("slo"))
    rows += _engine_state_rows(summary)
    for note in summary.get("notes") or []:
        rows.append(("note", note))
    if directory:
        rows.append(("run directory", directory))
    title = (
        f"Run{_LABEL.get(summary['kind'], '')}: {summary['backend']} · λ = {number(summary['request_rate'])} req/s"
        f" · {number(summary['window'], 0)} s"
    )
    return block(title, rows)


def queue_stability_row(verdicts: list[str] | None) -> tuple[str, str, str]:
    """What a bounded-backlog bracket says of queue stability: nothing, unless --confirm judged
    open-loop runs just below and above it (`verdicts`, in that order)."""
    if verdicts is None:
        return ("queue stability", "not checked", "--confirm runs open-loop probes")
    below, above = verdicts
    held = (below, above) == ("STABLE", "UNSTABLE")
    return (
        "queue stability",
        highlight("confirmed" if held else "not confirmed", "green" if held else "yellow"),
        f"open loop just below the bracket {below}, just above {above}",
    )


def boundary_text(result: dict[str, Any]) -> str:
    lo, hi = result["lower"], result["upper"]
    if lo is not None and hi is not None:
        head = highlight(
            f"{number(lo)} – {number(hi)} req/s", "green" if result["reached"] else "yellow"
        )
        note = f"width {result['width']:.1%} (asked {result['precision']:.0%}), {result['confidence']:.0%} confidence"
    else:
        head = highlight("not bracketed", "red")
        note = result["stop_reason"]
    x = result.get("extras") or {}
    backlog = x.get("method") == "backlog"
    rows: list[tuple[str, ...]] = [
        ("λ* bracket", head, note),
        *(
            [("measured as", x["label"], f"K = {x['backlog']} requests kept sent, not started")]
            if backlog
            else []
        ),
        (
            "engine time",
            f"{result['engine_seconds']:,.0f} engine-seconds",
            (
                "1 bounded-backlog probe"
                + (f" + {len(result['probes'])} open-loop" if result["probes"] else "")
                if backlog
                else f"{len(result['probes'])} probes"
            )
            + f"; {result['stop_reason']}",
        ),
        (
            "theory μ",
            f"{number(result['theory_mu'])} req/s",
            "engine-aware model, the search's start"
            if "start_rate" not in result.get("extras", {})
            else f"engine-aware model; the search started at {number(result['extras']['start_rate'])}",
        ),
    ]
    bt = result.get("extras", {}).get("batch_time")
    if bt is not None:
        rows.append(
            (
                "b̄ measured",
                f"{bt['value'] * 1000:.2f} ms",
                f"{bt['method']} of {bt['samples']} timings in a saturating burst (client)",
            )
        )
    if backlog and result["capacity_estimate"] is not None:
        rows.append(
            (
                "served-work rate",
                f"{number(result['capacity_estimate'])} req/s",
                f"after {number(x['warmup'], 0)} s warm-up, {x['batches']} batches of"
                f" {number(x['batch_seconds'], 1)} s;"
                f" departures {number(x['departure_rate'])} req/s",
            )
        )
        rows.append(queue_stability_row(x.get("confirmed")))
    elif result["capacity_estimate"] is not None:
        c_lo, c_hi = result["capacity_interval"]
        rows.append(
            (
                "saturated rate",
                f"{number(result['capacity_estimate'])} req/s  [{number(c_lo)}, {number(c_hi)}]",
                "departure rate of an overloaded run",
            )
        )
    rows += economics.rows(result.get("slo"), result.get("economics"))
    for i, p in enumerate(result["probes"], start=1):
        verdict = highlight(p["verdict"], _COLOR.get(p["verdict"]))
        ev = p["evidence"]
        dep = ev.get("departure_rate")
        detail = f"{p['duration']:,.0f} s" + (
            f" (extended ×{2 ** p['extensions']})" if p["extensions"] else ""
        )
        detail += f", growth {number(ev.get('slope') or float('nan'))}, departures {number(dep if dep is not None else float('nan'))} req/s"
        if p["verdict"] == "FAILING":
            limit = (p.get("failures") or {}).get("load_shedding")
            detail += f"; {ev.get('reason')}" + (
                " (load shedding: the engine's limit)" if limit else ""
            )
        slo = p.get("slo")
        if slo and slo["attainment"] is not None:
            detail += (
                f"; SLO {'met' if slo['met'] else 'missed'}, attainment {slo['attainment']:.1%}, "
                f"goodput {number(slo['goodput'])} req/s"
            )
        rows.append((f"probe {i}", f"λ = {number(p['rate'])} req/s  {verdict}", detail))
    return block(
        f"Stability boundary{_LABEL.get(result['kind'], '')}: {result['backend']} · {result['workload']}",
        rows,
    )
