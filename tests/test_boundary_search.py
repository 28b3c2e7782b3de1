"""The boundary search brackets the true λ* (a long saturated run's departure rate, with its 95%
interval; tests/data/saturated_capacity.json) for every engine rule on pd-1:1, pd-2:1, pd-1:2
and the Azure conversation trace, to the requested 5% width, reproducibly."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from kvbench.backends.base import Backend
from kvbench.backends.registry import resolve_backend
from kvbench.benchmark.search import find_boundary
from kvbench.errors import ClientLagError, KvbenchError
from kvbench.workload import load_workload

REFS = json.loads((Path(__file__).parent / "data" / "saturated_capacity.json").read_text())[
    "references"
]


def _search(policy, workload, seed=0, **kw):
    return find_boundary(
        lambda s: resolve_backend(f"sim:{policy}", seed=s),
        load_workload(workload),
        workload,
        seed=seed,
        **kw,
    )


@pytest.mark.parametrize("ref", REFS, ids=lambda r: f"{r['policy']}-{r['workload']}")
def test_search_brackets_the_saturated_rate(ref):
    result = _search(ref["policy"], ref["workload"])
    assert result.reached, result.stop_reason
    assert result.upper / result.lower - 1 <= 0.05 + 1e-9
    # the bracket meets the reference's interval (λ* is known only to it)
    assert result.lower <= ref["capacity_hi"] and result.upper >= ref["capacity_lo"], (
        result.lower,
        result.upper,
        ref,
    )
    assert result.engine_seconds == pytest.approx(sum(p.engine_seconds for p in result.probes))
    # the lower end is a STABLE probe's rate, or the rate that actually arrived in its window
    # when fewer came (its verdict was judged against those)
    (best,) = [p for p in result.probes if p.verdict == "STABLE" and p.carried_rate == result.lower]
    assert result.lower == min(best.rate, best.evidence["arrival_rate"])


def test_search_is_reproducible_and_records_every_probe():
    a = _search("sglang", "pd-2:1", seed=5).to_dict()
    b = _search("sglang", "pd-2:1", seed=5).to_dict()
    assert a == b
    assert all(
        {"rate", "duration", "verdict", "evidence", "engine_seconds"} <= p.keys()
        for p in a["probes"]
    )


def test_budget_stops_the_search_honestly():
    result = _search("vllm", "pd-1:1", max_engine_seconds=700)
    assert not result.reached
    assert result.engine_seconds <= 700
    assert "budget" in result.stop_reason


def test_bad_precision_is_a_one_line_error():
    with pytest.raises(KvbenchError, match="precision"):
        _search("ideal", "pd-1:1", precision=0)


class _LaggingClient(Backend):
    """The simulator behind a client that sends every request 0.5 s late (a starved CPU)."""

    def __init__(self, seed):
        self.inner = resolve_backend("sim:ideal", seed=seed)
        self.name, self.kind = self.inner.name, self.inner.kind

    def discover_profile(self):
        return self.inner.discover_profile()

    def execute(self, requests, sink, *, duration):
        class Late:
            def request(self, r):
                times = {k: getattr(r, k) for k in ("sent", "first_token", "finished")}
                sink.request(replace(r, **{k: t + 0.5 for k, t in times.items() if t is not None}))

            def sample(self, s):
                sink.sample(s)

        self.inner.execute(requests, Late(), duration=duration)


def test_a_client_that_cannot_keep_its_schedule_stops_the_search():
    # before: every probe came back without a verdict and the rate was raised ×1.25 without end
    with pytest.raises(ClientLagError, match="could not keep its send schedule") as err:
        find_boundary(_LaggingClient, load_workload("pd-1:1"), "pd-1:1", seed=0)
    assert err.value.exit_code == 1
