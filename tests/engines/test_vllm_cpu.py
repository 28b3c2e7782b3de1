"""A real engine under kvbench: vLLM's CPU build serving a tiny random-weight Llama with a 1,024-
token KV cache and 4 running slots (../shared/docs/cpu-engine.md), launched from kvbench's own
recipe. Run by .ci/run with KVBENCH_VLLM_PYTHON set to the vLLM environment's interpreter.

The runs go through the CLI (`kvbench run --backend vllm --url ...`), whose run directory and
JSON summary the assertions read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kvbench.backends.engines import open_engine
from kvbench.benchmark.recorder import read_run

ROOT = Path(__file__).resolve().parents[2]
PROMPT, OUTPUT = 64, 32
ENGINE_ARGS = [
    "--served-model-name",
    "tiny",
    "--dtype",
    "float32",
    "--max-model-len",
    "512",
    "--max-num-seqs",
    "4",
    "--block-size",
    "32",
    "--num-gpu-blocks-override",
    "32",
    "--enforce-eager",
]


# The engine (all its processes and threads) on the first CPU, kvbench's client on the others.
# Sharing both cores, the CPU engine's spinning workers and its API server delayed the client's
# sends and reads by up to 2 s (p99 0.5-1.8 s at 12 req/s, even with the engine at nice 19);
# separated, the client's p99 send lag was 1.6 ms. A GPU engine needs no such help: its work is
# on the GPU.
ENGINE_CPUS = {0}
CLIENT_CPUS = set(range(1, os.cpu_count() or 1)) or {0}


def pin_session(leader: int, cpus: set[int]) -> None:
    """Every thread of every process in `leader`'s session (the launched engine) onto `cpus`."""
    if CLIENT_CPUS & cpus:
        return  # one CPU: nothing to separate
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            session = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[3])
            if session == leader:
                for task in (proc / "task").iterdir():
                    os.sched_setaffinity(int(task.name), cpus)
        except (OSError, ValueError, IndexError):
            continue  # a process or thread that ended meanwhile


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    python = os.environ["KVBENCH_VLLM_PYTHON"]
    model = tmp_path_factory.mktemp("tiny-llama")
    subprocess.run(
        [python, str(ROOT / "scripts" / "build_tiny_llama.py"), str(model)],
        check=True,
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    b = open_engine(
        "vllm",
        model=str(model),
        engine_python=python,
        engine_args=ENGINE_ARGS,
        # Lower priority too, for whatever the pinning below does not separate.
        engine_env={"VLLM_CPU_KVCACHE_SPACE": "1"},
        engine_nice=19,
        log_dir=tmp_path_factory.mktemp("vllm-log"),
        scrape_period=0.25,
        seed=7,
    )
    pin_session(b.server.pid, ENGINE_CPUS)
    yield b
    pid = b.server.pid
    b.close()
    assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0


def test_profile_reads_m_exactly(backend):
    found = backend.discover_profile()
    assert backend.kind == "real"
    assert found.profile.kv_tokens == 1024
    assert found.sources["kv_tokens"] == "vllm:cache_config_info kv_cache_size_tokens"
    assert (found.profile.max_running, found.profile.block_size) == (4, 32)
    assert found.sources["max_running"] == "launch command (max_num_seqs)"
    assert "--no-enable-prefix-caching" in backend.server.argv  # the recipe's modelling default


def kvbench_run(
    url: str, tmp_path, rate: float, duration: float, burstiness: float
) -> tuple[dict, object]:
    out = tmp_path / f"run-{rate:g}"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kvbench",
            "run",
            "--backend",
            "vllm",
            "--url",
            url,
            "--workload",
            f"fixed:{PROMPT},{OUTPUT}",
            "--request-rate",
            f"{rate:.4f}",
            "--burstiness",
            str(burstiness),
            "--duration",
            str(duration),
            "--output",
            str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=duration * 3 + 120,
        preexec_fn=lambda: os.sched_setaffinity(0, CLIENT_CPUS),
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), read_run(out)


@pytest.fixture(scope="module")
def overload(backend, tmp_path_factory):
    """12 req/s for 25 s: far above this server's capacity (about 5 req/s on two cores)."""
    return kvbench_run(backend.url, tmp_path_factory.mktemp("over"), 12.0, 25.0, 1.0)


def test_kvbench_run_well_above_capacity_is_unstable(overload):
    summary, run = overload
    assert summary["kind"] == "real" and not summary["emulated"]
    assert run.header["profile"]["kv_tokens"] == 1024  # M read from the server, exactly
    assert (
        run.header["profile_sources"]["kv_tokens"] == "vllm:cache_config_info kv_cache_size_tokens"
    )
    assert summary["verdict"] == "UNSTABLE", summary["evidence"]["reason"]
    assert summary["requests"]["failed"] == 0
    done = [r for r in run.records if r.finished is not None]
    assert {r.output_tokens for r in done} == {OUTPUT}  # exactly the requested length, per usage
    # The server-side waiting queue was sampled throughout and grew.
    waiting = np.array([s.waiting for s in run.samples], dtype=float)
    assert len(waiting) > 40 and run.samples[-1].time > 20.0
    q = len(waiting) // 4
    assert waiting[-q:].mean() > waiting[:q].mean() + 15
    assert max(s.running for s in run.samples) == 4


def test_kvbench_run_well_below_capacity_is_stable(backend, overload, tmp_path):
    # A third of the capacity the overloaded run measured (its departure rate), so the check
    # holds on a slow or shared machine too; long enough for 45 departures; evenly spaced
    # arrivals (burstiness 10^6) keep the reference decisive.
    rate = overload[0]["evidence"]["departure_rate"] / 3
    summary, run = kvbench_run(backend.url, tmp_path, rate, max(30.0, 45.0 / rate), 1e6)
    assert summary["verdict"] == "STABLE", summary["evidence"]["reason"]
    assert summary["requests"]["failed"] == 0 and summary["requests"]["unfinished"] <= 2
    done = [r for r in run.records if r.finished is not None]
    assert {r.output_tokens for r in done} == {OUTPUT}
    assert max(s.waiting for s in run.samples) is not None
