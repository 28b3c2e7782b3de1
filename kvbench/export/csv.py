"""CSV files of a compare report: one row per probe, and one row per queue sample."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

from kvbench.report.build import Report
from kvbench.report.table import engine_name

PROBES_FILE = "probes.csv"
SAMPLES_FILE = "samples.csv"


def probes_frame(report: Report) -> pd.DataFrame:
    import pandas as pd

    rows = []
    for e in report.results.engines:
        for p in e.probes:
            rows.append(
                {
                    "engine": e.label,
                    "engine_shown": engine_name(e),
                    "kind": e.kind,
                    "probe": p.index,
                    "rate": p.rate,
                    "duration": p.duration,
                    "verdict": p.verdict,
                    "departure_rate": p.departure_rate,
                    "slope": p.slope,
                    "slope_ci_low": p.slope_ci[0] if p.slope_ci else None,
                    "slope_ci_high": p.slope_ci[1] if p.slope_ci else None,
                    "requests_sent": p.requests_sent,
                    "requests_finished": p.requests_finished,
                    "requests_failed": p.requests_failed,
                    "failure_fraction": p.failure_fraction,
                    "failures": "; ".join(f"{f['kind']} {f['count']}" for f in p.failures),
                    "preemptions": p.preemptions,
                    "waiting_mean": p.waiting_mean,
                    "waiting_max": p.waiting_max,
                    "kv_usage_mean": p.kv_usage_mean,
                    "kv_usage_max": p.kv_usage_max,
                    "mean_in_system": p.mean_in_system,
                    "max_in_system": p.max_in_system,
                    "client_ok": p.client_ok,
                    "ttft_p50": p.latency.ttft_p50,
                    "ttft_p99": p.latency.ttft_p99,
                    "e2e_p50": p.latency.e2e_p50,
                    "e2e_p99": p.latency.e2e_p99,
                    "tpot_p50": p.latency.tpot_p50,
                    "output_tokens_per_s": p.throughput.get("output_tokens_per_s"),
                    "total_tokens_per_s": p.throughput.get("total_tokens_per_s"),
                    "slo_met": None if p.slo is None else p.slo["met"],
                    "slo_attainment": None if p.slo is None else p.slo["attainment"],
                    "goodput": None if p.slo is None else p.slo["goodput"],
                    "run_dir": p.run_dir,
                }
            )
    frame = pd.DataFrame(rows)
    if "preemptions" in frame:  # a count, also where some probes have none (not 11.0)
        frame["preemptions"] = frame["preemptions"].astype("Int64")
    return frame


def write(report: Report, directory: Path) -> list[Path]:
    probes, samples = directory / PROBES_FILE, directory / SAMPLES_FILE
    probes_frame(report).to_csv(probes, index=False)
    report.samples.to_csv(samples, index=False)
    return [probes, samples]
