"""The whole HTTP path in real time against the simulator's own answer in virtual time: a vLLM
emulator (the simulator behind HTTP, 4× faster than real time) driven by the vLLM adapter gives
the same stability verdicts as the simulator run directly on the same schedule.

Profile: vLLM rule, M = 3,000 tokens, 50 ms iterations; requests of 300 prompt + 30 output
tokens. The simulator's capacity there is 6.0 req/s (measured with `simulate` at 8 and 12
req/s), so 3 req/s is well below it and 12 req/s well above.
"""

from __future__ import annotations

import numpy as np
import pytest
from emulator_helpers import ListSink, serving

from kvbench import _core
from kvbench.backends.base import RequestSpec
from kvbench.backends.engines import ENGINES
from kvbench.benchmark.stability import Verdict, stability_verdict
from kvbench.emulate.formats import make_format
from kvbench.emulate.server import build_app
from kvbench.profile import IterationTimeModel, build_profile

PROFILE = build_profile("vllm", kv_tokens=3000, iteration_time=IterationTimeModel.constant(0.05))
PROMPT, OUTPUT, VIRTUAL_SECONDS, SCALE = 300, 30, 40.0, 4.0


def schedule(rate: float) -> np.ndarray:
    # Evenly spaced arrivals: 40 virtual seconds of Poisson arrivals at 3 req/s leave the
    # verdict INCONCLUSIVE even in virtual time; the comparison needs a decisive reference.
    return np.arange(int(rate * VIRTUAL_SECONDS)) / rate


def simulated(rate: float):
    arrivals = schedule(rate)
    n = len(arrivals)
    out = _core.simulate(
        PROFILE,
        np.full(n, PROMPT, np.int64),
        np.full(n, OUTPUT, np.int64),
        arrivals,
        until=VIRTUAL_SECONDS,
        seed=0,
    )
    r = out["records"]
    return stability_verdict(r["arrival"], r["finished"], rate=rate, end=VIRTUAL_SECONDS)


def emulated(rate: float):
    # The schedule and every time the backend reports are in the engine's seconds: it reads the
    # emulator's time scale and sends 4× faster.
    requests = [RequestSpec(i, float(t), PROMPT, OUTPUT) for i, t in enumerate(schedule(rate))]
    fmt = make_format("vllm", PROFILE)
    with serving(build_app(fmt, time_scale=SCALE)) as url:
        backend = ENGINES["vllm"](url, scrape_period=0.1, time_scale=SCALE)
        sink = ListSink()
        backend.execute(requests, sink, duration=VIRTUAL_SECONDS)
    assert backend.kind == "emulated" and backend.time_scale == SCALE and not backend.failures
    done = [r for r in sink.records if r.finished is not None]
    assert {r.output_tokens for r in done} == {OUTPUT}
    by_id = {r.request_id: r for r in sink.records}
    assert all(by_id[q.request_id].intended_send == q.intended_send for q in requests)
    assert all(r.sent <= r.first_token <= r.finished <= VIRTUAL_SECONDS + 1 for r in done)
    enter = np.array([r.sent for r in sink.records])
    leave = np.array([np.nan if r.finished is None else r.finished for r in sink.records])
    return stability_verdict(enter, leave, rate=rate, end=VIRTUAL_SECONDS), sink


@pytest.mark.parametrize("rate, expected", [(3.0, Verdict.STABLE), (12.0, Verdict.UNSTABLE)])
def test_emulated_verdict_matches_simulated(rate, expected):
    virtual = simulated(rate)
    real, sink = emulated(rate)
    assert virtual.verdict == expected
    assert real.verdict == virtual.verdict, real.reason
    if expected is Verdict.UNSTABLE:
        # Both estimate the same capacity, in the engine's seconds.
        assert real.departure_rate == pytest.approx(virtual.departure_rate, rel=0.1)
        waiting = [s.waiting for s in sink.samples]
        assert waiting[-1] > 50  # the emulated server's own queue shows the overload
