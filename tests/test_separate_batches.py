"""Decode and prefill batch times of an engine that runs them as separate batches, from client
data: on a hand-built SGLang-like history with known times, and over HTTP against the SGLang
emulator, where the engine-aware μ they give must land where the simulator's known model puts
it (it was −80% with one b̄ for both kinds of batch)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from kvbench.backends.base import RequestRecord
from kvbench.benchmark.compare_config import EMBEDDED
from kvbench.benchmark.separate_batches import separate_batch_times
from kvbench.cli import cli
from kvbench.engine_theory import LengthLaw, engine_aware_mu
from kvbench.profile import build_profile
from kvbench.workload import load_workload


def _history(b_dec: float, b_pre: float, seed: int, jitter: float) -> list[RequestRecord]:
    """An engine that, while requests wait, runs a prefill batch admitting 1–4 of them whenever
    a coin says it can (as memory frees), else a decode step of every running request; each
    stream's chunk is read up to `jitter` seconds late."""
    rng = np.random.default_rng(seed)
    t, next_id, running = 0.0, 0, {}
    times: dict[int, list[float]] = {}
    outputs: dict[int, int] = {}
    while next_id < 600 or running:
        if next_id < 600 and (not running or rng.random() < 0.6):
            t += b_pre
            for _ in range(int(rng.integers(1, 5))):
                outputs[next_id] = int(rng.integers(2, 33))
                times[next_id] = [t]
                running[next_id] = 1
                next_id += 1
        else:
            t += b_dec
            for r in list(running):
                times[r].append(t)
                running[r] += 1
                if running[r] == outputs[r]:
                    del running[r]
    return [
        RequestRecord(
            request_id=r,
            intended_send=0.0,
            prompt_len=16,
            output_len=outputs[r],
            sent=0.0,
            first_token=tt[0],
            finished=tt[-1],
            output_tokens=outputs[r],
            token_times=sorted(x + float(rng.uniform(0, jitter)) for x in tt),
        )
        for r, tt in times.items()
    ]


@pytest.mark.parametrize("seed", [0, 1])
def test_both_batch_times_from_a_hand_built_history(seed):
    got = separate_batch_times(_history(0.013, 0.009, seed, jitter=0.001))
    assert got is not None and got.requests >= 300
    assert got.decode == pytest.approx(0.013, rel=0.03)
    assert got.prefill == pytest.approx(0.009, rel=0.05)


def test_too_few_requests_or_no_prefill_between_decodes_give_none():
    assert separate_batch_times(_history(0.013, 0.009, 0, 0.0)[:10]) is None
    # one request alone: no prefill batch ends inside its decode, the times cannot separate
    lone = RequestRecord(0, 0.0, 16, 50, 0.0, 0.01, 0.5, 50, list(np.linspace(0.01, 0.5, 50)))
    assert separate_batch_times([lone] * 60) is None


def test_engine_aware_mu_of_the_sglang_emulator_over_http(tmp_path):
    result = CliRunner().invoke(
        cli,
        [
            "compare",
            "--backends",
            "sglang",
            "--precision",
            "0.4",
            "--no-progress",
            "--json",
            "--output-dir",
            str(tmp_path),
        ],
        catch_exceptions=False,
    )
    (engine,) = json.loads(result.stdout)["engines"]
    assert result.exit_code == 0, engine["error"]
    assert engine["kind"] == "emulated"
    assert engine["theory"]["iteration_model"] == "measured decode and prefill batch times"
    measured = engine["separate_batch_times"]
    assert measured["requests"] >= 100
    # the same configuration with the iteration-time model known (the simulator's)
    known = engine_aware_mu(
        build_profile("sglang", kv_tokens=EMBEDDED.kv_tokens),
        LengthLaw.from_workload(load_workload(EMBEDDED.workload)),
    ).mu
    assert engine["theory"]["mu_engine_aware"] == pytest.approx(known, rel=0.10)
    lo, hi = engine["boundary"]["lower"], engine["boundary"]["upper"]
    assert lo * 0.9 <= engine["theory"]["mu_engine_aware"] <= hi * 1.1
