"""A real engine under kvbench: vLLM's CPU build serving a tiny random-weight Llama with a 1,024-
token KV cache and 4 running slots (../shared/docs/cpu-engine.md), launched from kvbench's own
recipe. Run by .ci/run with KVBENCH_VLLM_PYTHON set to the vLLM environment's interpreter.

Capacity of this server on 2 cores for 64-token prompts and 64-token outputs is about 4 req/s
(measured); 1 req/s is well below it and 12 req/s well above.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kvbench.backends.base import RequestSpec
from kvbench.backends.engines import open_engine

ROOT = Path(__file__).resolve().parents[2]
ENGINE_ARGS = [
    "--served-model-name", "tiny", "--dtype", "float32", "--max-model-len", "512",
    "--max-num-seqs", "4", "--block-size", "32", "--num-gpu-blocks-override", "32",
    "--enforce-eager",
]


class ListSink:
    def __init__(self):
        self.records, self.samples = [], []

    def request(self, record):
        self.records.append(record)

    def sample(self, sample):
        self.samples.append(sample)


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    python = os.environ["KVBENCH_VLLM_PYTHON"]
    model = tmp_path_factory.mktemp("tiny-llama")
    subprocess.run([python, str(ROOT / "scripts" / "build_tiny_llama.py"), str(model)],
                   check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    b = open_engine(
        "vllm", model=str(model), engine_python=python, engine_args=ENGINE_ARGS,
        engine_env={"VLLM_CPU_KVCACHE_SPACE": "1"}, log_dir=tmp_path_factory.mktemp("vllm-log"),
        scrape_period=0.25, seed=7,
    )
    yield b
    pid = b.server.pid
    b.close()
    assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0


def poisson(rate: float, duration: float, prompt: int, output: int, seed: int) -> list[RequestSpec]:
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(1 / rate, int(rate * duration * 2) + 20))
    return [RequestSpec(i, float(t), prompt, output) for i, t in enumerate(times) if t < duration]


def test_profile_reads_m_exactly(backend):
    found = backend.discover_profile()
    assert backend.kind == "real"
    assert found.profile.kv_tokens == 1024
    assert found.sources["kv_tokens"] == "vllm:cache_config_info kv_cache_size_tokens"
    assert (found.profile.max_running, found.profile.block_size) == (4, 32)
    assert found.sources["max_running"] == "launch command (max_num_seqs)"
    assert "--no-enable-prefix-caching" in backend.server.argv  # the recipe's modelling default


def test_well_below_capacity_keeps_up(backend):
    sink = ListSink()
    specs = poisson(1.0, 30.0, 64, 64, seed=1)
    backend.execute(specs, sink, duration=36.0)
    assert not backend.failures
    done = [r for r in sink.records if r.finished is not None]
    assert len(done) == len(specs)
    assert {r.output_tokens for r in done} == {64}
    assert max(s.waiting for s in sink.samples) <= 4


def test_well_above_capacity_queues_at_the_server(backend):
    sink = ListSink()
    specs = poisson(12.0, 20.0, 64, 64, seed=2)
    backend.execute(specs, sink, duration=20.0)
    assert not backend.failures
    done = [r for r in sink.records if r.finished is not None]
    assert {r.output_tokens for r in done} == {64}  # exactly the requested length, per usage
    assert len(done) < 0.6 * len(specs)  # departures fall well short of arrivals
    waiting = np.array([s.waiting for s in sink.samples])
    times = np.array([s.time for s in sink.samples])
    assert len(waiting) > 40  # the server-side queue was sampled throughout
    # ... and it grew: the last quarter's waiting queue far above the first quarter's
    q = len(waiting) // 4
    assert waiting[-q:].mean() > waiting[:q].mean() + 50
    assert times[-1] > 15.0
    assert max(s.running for s in sink.samples) == 4
