"""One stability run: build the schedule, drive a backend, record everything, summarise.

The summary holds latency percentiles (TTFT, TPOT, ITL, E2E, queueing delay), achieved vs
intended rate, the client's schedule lag, failures by kind with what the server said, the engine
state it reported (waiting queue, KV usage, preemptions), the state scraper's errors, and the
verdict. The stability verdict is judged on completed requests only: a failed request is never
a departure. A run where more than FAILING_FRACTION of the requests that ended failed is
FAILING, whatever its queue did. A run whose client could not keep its schedule (lag p99 above
its budget, or fewer requests sent than scheduled) claims no other verdict: the engine was not
offered the rate being judged, nor does a run whose engine failed before its planned end.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from kvbench import _core, validate
from kvbench.arrivals import arrival_times, replay_schedule, trace_rate
from kvbench.backends.base import Backend, EventSink, QueueSample, RequestRecord, RequestSpec
from kvbench.backends.launch import launched_servers
from kvbench.benchmark.failures import failure_summary
from kvbench.benchmark.recorder import RunRecorder, versions
from kvbench.benchmark.slo import (
    DEFAULT_PERCENTILES,
    Slo,
    attainment,
    percentile_key,
    request_latencies,
)
from kvbench.benchmark.stability import (
    DEFAULT_CONFIDENCE,
    DEFAULT_TOLERANCE,
    Verdict,
    check_settings,
    stability_verdict,
)
from kvbench.errors import EngineError, KvbenchError
from kvbench.workload import Workload

# A client whose sends are late (p99 of actual − intended send time) by more than both this floor
# and one mean gap between arrivals (1/λ) did not offer the engine the process being judged.
# Lateness shorter than a mean gap keeps requests near their intended places in the arrival
# sequence, so the offered rate and its burstiness are what was asked for; the verdict is in any
# case computed from the actual send times. The floor keeps high-rate runs from being held to a
# sub-millisecond timer that no asyncio client (or engine) honours.
LAG_FLOOR = 0.05


def lag_budget(rate: float) -> float:
    """The p99 schedule lag a run at `rate` requests/s may have and still claim a verdict."""
    return max(LAG_FLOOR, 1.0 / rate)


# always computed beside the asked ones: the report's fixed columns (p50, p99) read them
REPORTED_PERCENTILES = (50.0, 99.0)


@dataclass(frozen=True)
class RunSpec:
    """What to run. Exactly one of duration (seconds of open-loop load) and num_prompts."""

    workload: str
    request_rate: float
    burstiness: float = 1.0
    duration: float | None = None
    num_prompts: int | None = None
    seed: int = 0
    confidence: float = DEFAULT_CONFIDENCE
    tolerance: float = DEFAULT_TOLERANCE
    #: send the trace's rows in file order at its own timestamps, scaled to `request_rate`
    replay: bool = False

    def __post_init__(self) -> None:
        if (self.duration is None) == (self.num_prompts is None):
            raise KvbenchError("give exactly one of --duration and --num-prompts")
        if not self.request_rate > 0:
            raise KvbenchError(f"--request-rate must be a positive number, got {self.request_rate}")
        if math.isinf(self.request_rate) and self.num_prompts is None:
            raise KvbenchError(
                "--request-rate inf sends every request at once: give --num-prompts, not --duration"
            )
        if self.duration is not None and not (self.duration > 0 and math.isfinite(self.duration)):
            raise KvbenchError(
                f"--duration must be a positive number of seconds, got {self.duration}"
            )
        if self.num_prompts is not None and self.num_prompts < 1:
            raise KvbenchError(f"--num-prompts must be at least 1, got {self.num_prompts}")
        if not (self.burstiness > 0 and math.isfinite(self.burstiness)):
            raise KvbenchError(f"--burstiness must be a positive number, got {self.burstiness}")
        validate.seed(self.seed, "--seed")
        validate.schedule_size(
            self.request_rate, duration=self.duration, num_prompts=self.num_prompts
        )
        check_settings(self.confidence, self.tolerance)


def replay_rate(workload: Workload) -> float:
    """The mean rate of the workload's recorded timestamps (`--replay` at speed 1); KvbenchError
    for a workload without them."""
    if workload.timestamps is None:
        raise KvbenchError(
            f"--replay needs a trace with timestamps; workload {workload.name} has none"
        )
    return trace_rate(workload.timestamps)


def build_schedule(
    workload: Workload,
    rate: float,
    *,
    burstiness: float = 1.0,
    seed: int = 0,
    duration: float | None = None,
    num_prompts: int | None = None,
    replay: bool = False,
) -> list[RequestSpec]:
    """The open-loop schedule: arrival times at `rate` and lengths drawn from the workload, for
    `num_prompts` requests or every arrival before `duration`. A longer duration with the same
    seed extends a shorter one (the same prefix), which is what lets a run be extended. With
    `replay`, the trace's own rows at its own timestamps, scaled to mean rate `rate`
    (`arrivals.replay_schedule`); burstiness and seed then play no part."""
    if replay:
        replay_rate(workload)  # says what is wrong with a trace that cannot be replayed
        assert workload.timestamps is not None
        times, picks = replay_schedule(
            workload.timestamps, rate, num_prompts=num_prompts, duration=duration
        )
        s, o = workload.rows()
        return _requests(workload, times, s[picks], o[picks], seed)
    if num_prompts is not None:
        n = num_prompts
        times = arrival_times(rate, n, burstiness=burstiness, seed=seed)
    else:
        assert duration is not None
        expected = rate * duration
        n = int(expected + 8 * math.sqrt(expected / min(burstiness, 1.0)) + 16)
        while True:
            times = arrival_times(rate, n, burstiness=burstiness, seed=seed)
            if times.size and times[-1] >= duration:
                break
            n *= 2
        n = int(np.searchsorted(times, duration, side="left"))
        times = times[:n]
    prompts, outputs = workload.draw(n, seed)
    return _requests(workload, times, prompts, outputs, seed)


def _requests(
    workload: Workload, times: np.ndarray, prompts: np.ndarray, outputs: np.ndarray, seed: int
) -> list[RequestSpec]:
    ids = workload.prefix_ids(len(times), seed)
    if ids is None:
        return [
            RequestSpec(i, float(t), int(s), int(o))
            for i, (t, s, o) in enumerate(zip(times, prompts, outputs, strict=True))
        ]
    assert workload.prefix is not None
    length = workload.prefix.length
    return [
        RequestSpec(i, float(t), int(s), int(o), prefix_id=int(p), prefix_len=length)
        for i, (t, s, o, p) in enumerate(zip(times, prompts, outputs, ids, strict=True))
    ]


def _percentiles(
    values: np.ndarray, percentiles: tuple[float, ...] = DEFAULT_PERCENTILES
) -> dict[str, float | int | None]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"n": 0, "mean": None, **{percentile_key(p): None for p in percentiles}}
    q = np.percentile(values, percentiles)
    return {
        "n": int(values.size),
        "mean": float(values.mean()),
        **{percentile_key(p): float(v) for p, v in zip(percentiles, q, strict=True)},
    }


def _col(records: list[RequestRecord], name: str) -> np.ndarray:
    values = [getattr(r, name) for r in records]
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _step_stats(
    samples: list[QueueSample], name: str, start: float, end: float
) -> dict[str, float | None]:
    pts = [(s.time, getattr(s, name)) for s in samples if getattr(s, name) is not None]
    if not pts or not end > start:
        return {"mean": None, "max": None}
    t = np.array([p[0] for p in pts], dtype=np.float64)
    v = np.array([p[1] for p in pts], dtype=np.float64)
    mean, mx = _core.step_mean_max(t, v, start, end, float(v[0]))
    return {"mean": None if math.isnan(mean) else mean, "max": None if math.isnan(mx) else mx}


def _preemptions(samples: list[QueueSample], end: float) -> int | None:
    """Preemptions the engine counted up to `end`: the rises of its cumulative counter between
    samples (a counter that falls was reset by an engine restart; its new count is all new)."""
    counts = [s.preemptions_total for s in samples if s.time <= end]
    counts = [c for c in counts if c is not None]
    if not counts:
        return None
    rises = np.diff(np.asarray(counts, dtype=np.int64))
    reset = rises < 0
    rises[reset] = np.asarray(counts[1:], dtype=np.int64)[reset]
    return int(rises.sum())


def summarize(
    header: dict[str, Any],
    records: list[RequestRecord],
    samples: list[QueueSample],
    *,
    status: str,
    scrape: dict[str, Any] | None = None,
    slo: Slo | None = None,
    percentiles: tuple[float, ...] | None = None,
) -> dict[str, Any]:
    """The run's summary from its header, records and samples alone (what `kvbench report DIR`
    rebuilds), with `scrape`, what the state scraper reported (end.json keeps it). For a run
    cut short, the verdict window ends at the last event observed. `slo` and `percentiles`
    default to the header's (what the run was started with).

    Latency percentiles, SLO attainment and throughput count completed requests only: a failed
    request's latency is not a service time, and one still in flight has none yet."""
    config = header["config"]
    if slo is None:
        slo = Slo.from_dict(header.get("slo"))
    asked = tuple(percentiles or header.get("percentiles") or DEFAULT_PERCENTILES)
    computed = tuple(sorted(set(asked) | set(REPORTED_PERCENTILES)))
    rate = float(config["request_rate"])
    planned_end = float(header["window_end"])
    records = sorted(records, key=lambda r: r.request_id)
    sent = _col(records, "sent")
    intended = _col(records, "intended_send")
    first = _col(records, "first_token")
    fin = _col(records, "finished")
    admitted = _col(records, "admitted")
    failed = np.array([r.error is not None for r in records], dtype=bool)
    end = planned_end
    if status != "completed" or math.isinf(rate):
        # all at once (--request-rate inf): the window is the run, to its last event
        observed = [
            x
            for x in (np.nanmax(sent, initial=0.0), np.nanmax(fin, initial=0.0))
            if math.isfinite(x)
        ]
        observed += [s.time for s in samples[-1:]]
        last = max(observed, default=0.0)
        # (just past the last event, so that the request ending the run ends inside it)
        end = float(np.nextafter(last, math.inf)) if math.isinf(rate) else min(planned_end, last)
    scheduled_in_window = int(header.get("scheduled_in_window", len(records)))
    # A --duration run's figures are its window's: a completion after the window is not counted
    # (the HTTP driver reports those requests unfinished; this holds for every backend). A
    # --num-prompts run waits for every request, and its figures count every completion.
    if config.get("duration") is not None:
        fin[fin > planned_end] = np.nan
    # requests due in the window that went out at all (one due just before the end and sent a
    # little late still counts: lateness is the lag's business)
    n_sent = int(np.count_nonzero(np.isfinite(sent) & (intended < end)))
    # The rate actually offered: what was sent over the span it was sent in (a client that fell
    # behind spread its sends past the window; the driver sends nothing after a --duration end).
    send_span = max(end, float(np.nanmax(sent, initial=0.0)))
    lag = (sent - intended)[np.isfinite(sent)]
    lag_p50, lag_p99 = np.percentile(lag, [50, 99]).tolist() if lag.size else (None, None)
    expected_sent = (
        scheduled_in_window if status == "completed" else int(np.count_nonzero(intended < end))
    )
    budget = lag_budget(rate)
    # a request due within one lag budget of a --duration window's end may be late past it, and
    # the driver sends nothing after the end: not sending it is lateness within the budget
    late_at_end = (
        int(np.count_nonzero((intended >= end - budget) & (intended < end)))
        if config.get("duration") is not None
        else 0
    )
    kept = lag_p99 is not None and lag_p99 <= budget and n_sent + late_at_end >= expected_sent
    n_out = np.array(
        [r.output_tokens if r.output_tokens is not None else r.output_len for r in records],
        dtype=np.float64,
    )
    completed = np.isfinite(fin) & ~failed
    latencies = request_latencies(sent, first, fin, n_out)
    itl = np.concatenate(
        [
            np.diff(r.token_times)
            for r, done in zip(records, completed, strict=True)
            if done and len(r.token_times) > 1
        ]
        or [np.empty(0)]
    )
    # Throughput over the span the completions were counted in: the window of a --duration run
    # (later completions are not counted), else until the last completion.
    last = float(np.nanmax(np.where(completed, fin, np.nan), initial=end))
    span = end if config.get("duration") is not None else last
    prompt_tokens = np.array([r.prompt_len for r in records], dtype=np.float64)
    out_done = float(n_out[completed].sum())
    n_done = int(completed.sum())
    throughput = {
        "span": span,
        "mean_output_tokens": out_done / n_done if n_done else None,
        "mean_prompt_tokens": float(prompt_tokens[completed].mean()) if n_done else None,
        "requests_per_s": n_done / span if span > 0 else None,
        "output_tokens_per_s": out_done / span if span > 0 else None,
        "total_tokens_per_s": (out_done + float(prompt_tokens[completed].sum())) / span
        if span > 0
        else None,
    }

    def done(values: np.ndarray) -> dict[str, float | int | None]:
        return _percentiles(np.where(completed, values, np.nan), computed)

    # A failed request leaves the system when its failure is known: the last time seen for it.
    leave = fin.copy()
    leave[failed] = np.fmax(np.fmax(fin, first), sent)[failed]
    ended = leave < end  # NaN (not finished) compares false
    in_window_failures = [
        (r.error, r.message)
        for r, e in zip(records, ended, strict=True)
        if r.error is not None and e
    ]
    failures = failure_summary(
        in_window_failures, int(np.count_nonzero(ended & ~failed & np.isfinite(fin)))
    )
    leave[leave > end] = np.nan
    preemptions = _preemptions(samples, end)
    if preemptions is None and any(r.preemptions is not None for r in records):
        preemptions = sum(r.preemptions or 0 for r in records if r.sent is not None)
    summary: dict[str, Any] = {
        # 2: the verdict may be FAILING; failures, preemptions and scrape were added
        # 3: latency over completed requests only, at the asked percentiles; slo, throughput
        "format": "kvbench-run-summary/3",
        "kind": header["kind"],
        "simulated": header["kind"] == "simulated",
        "emulated": header["kind"] == "emulated",
        "backend": header["backend"],
        "status": status,
        "request_rate": rate,
        "window": end,
        "requests": {
            "scheduled": len(records),
            "sent": int(np.count_nonzero(np.isfinite(sent))),
            "completed": int(np.count_nonzero(np.isfinite(fin) & ~failed)),
            "failed": int(failed.sum()),
            "unfinished": int(np.count_nonzero(~np.isfinite(fin) & ~failed)),
        },
        "achieved_rate": n_sent / send_span if send_span > 0 and math.isfinite(rate) else None,
        "schedule_lag": {"p50": lag_p50, "p99": lag_p99, "budget": budget},
        "client_kept_schedule": bool(kept),
        "percentiles": list(asked),
        "latency": {
            "ttft": done(latencies["ttft"]),
            "tpot": done(latencies["tpot"]),
            "itl": _percentiles(itl, computed),
            "e2e": done(latencies["e2e"]),
            "queueing_delay": done(admitted - sent),
        },
        "throughput": throughput,
        "slo": None if slo is None else attainment(latencies, completed, slo, span),
        "failures": failures,
        "waiting": _step_stats(samples, "waiting", 0.0, end),
        "kv_usage": _step_stats(samples, "kv_usage", 0.0, end),
        "preemptions": preemptions,
        "scrape": scrape,
        "verdict": None,
        "evidence": None,
        "notes": list(header.get("notes", [])),
    }
    # Failed requests are left out of the queue: they are not departures, and the verdict is
    # about the requests the engine served; `failures` judges the rest.
    judged = (sent < end) & ~failed
    if math.isinf(rate):
        # vllm bench serve's --request-rate inf: a queue that only drains has no arrival rate
        # to judge stability at; the latencies and throughput are the run's figures
        summary["evidence"] = {
            "reason": "no verdict: every request was sent at once (--request-rate inf)"
        }
    elif end > 0 and judged.any():
        result = stability_verdict(
            sent[judged],
            leave[judged],
            rate=rate,
            end=end,
            confidence=float(config.get("confidence", DEFAULT_CONFIDENCE)),
            tolerance=float(config.get("tolerance", DEFAULT_TOLERANCE)),
        )
        summary["evidence"] = result.to_dict()
        # A late client offered less than asked, so STABLE says nothing about the rate asked;
        # but UNSTABLE stands: the queue grew and departures fell short of the arrival rate the
        # client did achieve (the verdict's test is against that), which is no more than asked.
        claims = kept or result.verdict is Verdict.UNSTABLE
        summary["verdict"] = result.verdict.value if claims and status != "failed" else None
        if status == "failed":
            # The engine died or stopped answering: whatever its queue did until then, the rate
            # was not carried to the end, so no verdict is claimed (FAILING may still be, below).
            summary["evidence"]["reason"] = "no verdict: the run failed before its planned end"
        elif not claims:
            summary["evidence"]["reason"] = (
                "no verdict: the client could not keep its schedule "
                f"(lag p99 {lag_p99 if lag_p99 is not None else float('nan'):.3g} s, "
                f"{n_sent}/{expected_sent} sent)"
            )
    if failures["failing"]:
        # What the completions alone showed stays in the evidence; the verdict is the failures'.
        evidence = summary["evidence"] or {}
        evidence["queue_verdict"] = evidence.get("verdict")
        evidence["reason"] = failures["reason"]
        summary["evidence"] = evidence
        summary["verdict"] = Verdict.FAILING.value
    return summary


@dataclass
class RunResult:
    summary: dict[str, Any]
    records: list[RequestRecord]
    samples: list[QueueSample]
    directory: Path | None

    @property
    def verdict(self) -> str | None:
        return self.summary["verdict"]


def run_header(
    backend: Backend,
    spec: RunSpec,
    requests: list[RequestSpec],
    window_end: float,
    extra: dict[str, Any] | None,
) -> dict[str, Any]:
    discovered = backend.discover_profile()
    profile = dataclasses.asdict(discovered.profile)
    config = dataclasses.asdict(spec)
    all_at_once = math.isinf(spec.request_rate)
    if all_at_once:
        config["request_rate"] = "inf"  # as typed: JSON has no infinity
    return {
        "kind": backend.kind,
        "backend": backend.name,
        # engine seconds per real second (times are the engine's); a wrapper may not say
        "time_scale": getattr(backend, "time_scale", 1.0),
        "config": config,
        "seed": spec.seed,
        "window_end": window_end,
        "scheduled_in_window": len(requests)
        if all_at_once
        else sum(1 for r in requests if r.intended_send < window_end),
        "profile": profile,
        "profile_sources": discovered.sources,
        # what kvbench started, as started (credentials redacted): command line and environment
        "servers": [s.record() for s in launched_servers(backend)],
        "versions": versions(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        # what the backend noticed about the server (an ignored time-scale header, …)
        "notes": list(getattr(backend, "notes", [])),
        **(extra or {}),
    }


class _Tee:
    def __init__(self, *sinks: EventSink) -> None:
        self.sinks = sinks

    def request(self, record: RequestRecord) -> None:
        for s in self.sinks:
            s.request(record)

    def sample(self, sample: QueueSample) -> None:
        for s in self.sinks:
            s.sample(sample)


def execute_run(
    backend: Backend,
    workload: Workload,
    spec: RunSpec,
    *,
    output: Path | str | None = None,
    progress: EventSink | None = None,
    header_extra: dict[str, Any] | None = None,
    slo: Slo | None = None,
    percentiles: tuple[float, ...] | None = None,
) -> RunResult:
    """Run `spec` on `backend`, writing to `output` (if given) as it goes. On Ctrl-C or an engine
    error the run directory is closed with that status and a summary of what was measured, then
    the exception propagates. `slo` and `percentiles` are recorded in the header, so a rebuilt
    summary judges the run as it was judged."""
    requests = build_schedule(
        workload,
        spec.request_rate,
        burstiness=spec.burstiness,
        seed=spec.seed,
        duration=spec.duration,
        num_prompts=spec.num_prompts,
        replay=spec.replay,
    )
    if not requests:
        raise KvbenchError(
            f"no request arrives in {spec.duration:g} s at {spec.request_rate:g} req/s "
            f"(seed {spec.seed}): raise --request-rate or --duration"
        )
    window_end = spec.duration if spec.duration is not None else requests[-1].intended_send
    judged: dict[str, Any] = {"percentiles": list(percentiles or DEFAULT_PERCENTILES)}
    if slo is not None:
        judged["slo"] = slo.to_dict()
    header = run_header(backend, spec, requests, window_end, {**judged, **(header_extra or {})})
    if workload.prefix is not None and backend.kind != "real":
        header["notes"].append(
            f"{workload.prefix.count} shared prefixes of {workload.prefix.length} tokens: "
            "kvbench's simulator counts them as ordinary prompt tokens (no reuse across "
            "requests), so its KV demand is an upper bound on an engine with prefix caching"
        )
    recorder = RunRecorder(output, header)
    sink: EventSink = recorder if progress is None else _Tee(recorder, progress)
    status, error = "completed", None
    try:
        backend.execute(
            requests, sink, duration=spec.duration if spec.duration is not None else math.inf
        )
    except KeyboardInterrupt:
        status, error = "interrupted", "interrupted by the user"
        raise
    except KvbenchError as err:
        status, error = "failed", str(err)
        if isinstance(err, EngineError):
            raise
        # whatever the backend raised mid-run, the engine failed the run: exit 1, not 2
        raise EngineError(error) from None
    except Exception as err:  # a crash still leaves a readable, closed run
        status, error = "failed", f"{type(err).__name__}: {err}"
        raise
    finally:
        scrape = backend.scrape_report()
        recorder.close(status, error, scrape)
        summary = summarize(
            header, recorder.records, recorder.samples, status=status, scrape=scrape
        )
        summary["error"] = error
        recorder.write_summary(summary)
    return RunResult(summary, recorder.records, recorder.samples, recorder.directory)
