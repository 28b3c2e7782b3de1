"""A small, realistic compare directory written the way `kvbench compare` writes one: two
engines with a few probes around their boundary (queues that stay bounded below it and grow
above it) and optionally a third engine that failed to start."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kvbench.backends.base import QueueSample, RequestRecord
from kvbench.benchmark import raw
from kvbench.benchmark.recorder import RunRecorder


def _run(directory: Path, rate: float, capacity: float, duration: float, rng) -> None:
    """Requests arrive at `rate`, are served at most `capacity` per second (FIFO, one server of
    batch work): below capacity the queue stays small, above it grows by (rate − capacity)/s."""
    n = int(rate * duration)
    recorder = RunRecorder(
        directory,
        {
            "backend": "fixture",
            "kind": "emulated",
            "window_end": duration,
            "scheduled_in_window": n,
            "config": {"request_rate": rate, "confidence": 0.95, "tolerance": 0.02},
        },
    )
    arrivals = np.sort(rng.uniform(0, duration, n))
    service = rng.exponential(1 / capacity, n)
    finish = np.empty(n)
    free = 0.0
    for i, a in enumerate(arrivals):
        free = max(free, a) + service[i]
        finish[i] = free
    for t in np.arange(0, duration, 0.5):
        in_flight = int(((arrivals <= t) & (finish > t)).sum())
        recorder.sample(
            QueueSample(
                time=float(t), in_flight=in_flight, kv_used_tokens=float(min(in_flight, 80) * 1500)
            )
        )
    for i, a in enumerate(arrivals):
        out = int(rng.integers(10, 1601))
        done = finish[i] <= duration
        recorder.request(
            RequestRecord(
                request_id=i,
                intended_send=float(a),
                prompt_len=int(rng.integers(10, 1601)),
                output_len=out,
                sent=float(a + 0.0004),
                first_token=float(min(finish[i], a + 0.05 + (finish[i] - a) * 0.1)),
                finished=float(finish[i]) if done else None,
                output_tokens=out if done else None,
            )
        )
    recorder.close()


def make_compare_dir(
    directory: Path,
    labels: tuple[str, ...] = ("trtllm", "sglang"),
    capacities: tuple[float, ...] = (3.0, 3.4),
    failed: str | None = None,
    target_rate: float | None = 20.0,
    seed: int = 7,
) -> Path:
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    asked = [
        {
            "label": lab,
            "backend": f"emulate:{lab}",
            "kind": "emulated",
            "replicas": 1,
            "slug": f"{i}-engine",
        }
        for i, lab in enumerate(labels + ((failed,) if failed else ()))
    ]
    raw.write_json_atomic(
        directory / raw.COMPARE_FILE,
        {
            "kind": raw.RAW_KIND,
            "version": raw.RAW_VERSION,
            "name": "fixture",
            "created": "2026-11-28T12:00:00Z",
            "command": "kvbench compare --backends " + ",".join(a["label"] for a in asked),
            "kvbench_version": "0.1.0",
            "versions": {"python": "3.11"},
            "config": {
                "workload": "pd-1:1",
                "precision": 0.1,
                "target_rate": target_rate,
                "target_utilization": 0.9,
                "seed": seed,
            },
            "banner": "EMULATED engines (kvbench emulate): not GPU measurements",
            "engines": asked,
        },
    )
    for a, capacity in zip(asked, capacities + (0.0,), strict=False):
        edir = directory / raw.ENGINES_DIR / a["slug"]
        edir.mkdir(parents=True)
        eng = dict(a)
        if a["label"] == failed:
            eng.update(status="failed", error="http://127.0.0.1:9/health: connection refused")
            raw.write_json_atomic(edir / raw.ENGINE_FILE, eng)
            continue
        rates = [capacity * f for f in (0.8, 1.2, 0.95, 1.05)]
        probes = []
        for k, rate in enumerate(rates):
            _run(edir / f"probe-{k:02d}", rate, capacity, 60.0, rng)
            probes.append(
                {
                    "index": k,
                    "rate": rate,
                    "engine_seconds": 60.0,
                    "verdict": "STABLE" if rate < capacity else "UNSTABLE",
                    "run_dir": f"{raw.ENGINES_DIR}/{a['slug']}/probe-{k:02d}",
                }
            )
        mu = capacity * 0.97
        eng.update(
            status="ok",
            profile={
                "policy": a["label"],
                "kv_tokens": 131000,
                "chunk_size": 512,
                "block_size": 32,
            },
            profile_sources={"kv_tokens": "emulator /metrics"},
            batch_time={
                "value": 0.0372,
                "method": "median",
                "trim": 0.0,
                "samples": 812,
                "source": "per-request TPOT (client)",
                "q25": 0.035,
                "q75": 0.039,
            },
            theory={
                "mean_g": 1.08e6,
                "delta": 0.0244,
                "mu_replica": mu,
                "mu": mu,
                "mu_lower": mu * (1 - 0.0244),
            },
            calibration={"run_dir": None, "engine_seconds": 12.0},
            search={
                "lower": rates[2],
                "upper": rates[3],
                "precision": 0.1,
                "converged": True,
                "engine_seconds": 240.0,
                "probes": probes,
            },
        )
        raw.write_json_atomic(edir / raw.ENGINE_FILE, eng)
    return directory
