"""--replay: a trace's requests in file order at its own timestamps, scaled by one factor, in
`run` and `compare`; past its end the trace starts over one mean gap after its last request."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from kvbench.arrivals import replay_schedule, trace_rate
from kvbench.benchmark.recorder import read_run
from kvbench.cli import cli
from kvbench.errors import KvbenchError

# four requests at 0, 1, 3 and 6 s: mean rate 3 requests / 6 s = 0.5 req/s, one pass (with the
# mean gap of 2 s before the trace starts over) lasts 8 s
STAMPS = np.array([0.0, 1.0, 3.0, 6.0])
TRACE = """timestamp,prompt_len,output_len
100.0,11,5
101.0,12,6
103.0,13,7
106.0,14,8
"""


def test_trace_rate_is_requests_over_span():
    assert trace_rate(STAMPS) == pytest.approx(0.5)
    with pytest.raises(KvbenchError, match="span no time"):
        trace_rate(np.array([2.0, 2.0]))


def test_replay_at_twice_the_recorded_rate_halves_every_gap_and_loops():
    times, rows = replay_schedule(STAMPS, 1.0, num_prompts=7)
    # pass 1 at 0, .5, 1.5, 3; pass 2 starts 8 s / 2 = 4 s later
    np.testing.assert_allclose(times, [0.0, 0.5, 1.5, 3.0, 4.0, 4.5, 5.5])
    np.testing.assert_array_equal(rows, [0, 1, 2, 3, 0, 1, 2])


def test_replay_for_a_duration_keeps_the_arrivals_before_it_and_extends():
    short, short_rows = replay_schedule(STAMPS, 0.25, duration=20.0)
    np.testing.assert_allclose(short, [0.0, 2.0, 6.0, 12.0, 16.0, 18.0])  # 16 s a pass
    np.testing.assert_array_equal(short_rows, [0, 1, 2, 3, 0, 1])
    longer, _ = replay_schedule(STAMPS, 0.25, duration=40.0)
    np.testing.assert_allclose(longer[: short.size], short)
    np.testing.assert_allclose(longer[short.size :], [22.0, 28.0, 32.0, 34.0, 38.0])


def _run(tmp_path, *args):
    trace = tmp_path / "trace.csv"
    trace.write_text(TRACE)
    return CliRunner().invoke(
        cli, ["run", "--backend", "sim:vllm", "--workload", str(trace), *args]
    )


def test_run_replays_the_trace_at_its_timestamps_with_a_speed_factor(tmp_path):
    out = tmp_path / "run"
    r = _run(tmp_path, "--replay", "--replay-speed", "2", "--output", str(out), "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["request_rate"] == pytest.approx(1.0)  # 0.5 req/s recorded, twice as fast
    run = read_run(out)
    records = sorted(run.records, key=lambda rec: rec.request_id)
    # the whole trace once, in file order, gaps halved
    assert [rec.intended_send for rec in records] == pytest.approx([0.0, 0.5, 1.5, 3.0])
    assert [rec.prompt_len for rec in records] == [11, 12, 13, 14]
    assert [rec.output_len for rec in records] == [5, 6, 7, 8]
    assert run.header["config"]["replay"] is True


def test_run_replay_to_a_request_rate_scales_the_trace_to_it(tmp_path):
    out = tmp_path / "run"
    r = _run(
        tmp_path, "--replay", "--request-rate", "0.25", "--num-prompts", "6", "--output", str(out)
    )
    assert r.exit_code == 0, r.output
    records = sorted(read_run(out).records, key=lambda rec: rec.request_id)
    assert [rec.intended_send for rec in records] == pytest.approx([0, 2, 6, 12, 16, 18])
    assert [rec.prompt_len for rec in records] == [11, 12, 13, 14, 11, 12]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--replay", "--replay-speed", "2", "--request-rate", "1"], "not both"),
        (["--replay-speed", "2", "--request-rate", "1"], "--replay-speed needs --replay"),
        (["--replay", "--burstiness", "0.5"], "--replay uses the trace's"),
        ([], "--request-rate"),
    ],
)
def test_run_replay_options_that_conflict_are_usage_errors(tmp_path, args, message):
    r = _run(tmp_path, *args)
    assert r.exit_code == 2
    assert message in r.output


def test_replay_of_an_untimed_workload_says_what_it_needs():
    r = CliRunner().invoke(
        cli, ["run", "--backend", "sim:vllm", "--workload", "pd-1:1", "--replay"]
    )
    assert r.exit_code == 2
    assert "--replay needs a trace with timestamps; workload pd-1:1 has none" in r.output


def test_compare_replays_the_trace_in_every_probe_scaled_to_its_rate(tmp_path):
    rng = np.random.default_rng(3)
    stamps = np.cumsum(rng.exponential(1.0, 300))
    stamps[100:150] = stamps[100] + np.arange(50) * 0.01  # a burst Poisson would not have
    stamps[150:] += stamps[149] + 0.5 - stamps[150]
    trace = tmp_path / "trace.csv"
    lines = [f"{float(t)!r},{1 + i % 32},{1 + (7 * i) % 32}" for i, t in enumerate(stamps)]
    trace.write_text("timestamp,prompt_len,output_len\n" + "\n".join(lines) + "\n")
    out = tmp_path / "reports"
    r = CliRunner().invoke(
        cli,
        [
            "compare", "--backends", "sim:vllm", "--workload", str(trace), "--replay",
            "--kv-tokens", "2048", "--output-dir", str(out), "--no-progress",
            # a coarse bracket: what is checked is each probe's schedule, not the boundary
            "--precision", "0.5",
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    (results,) = out.glob("*/results.json")
    assert json.loads(results.read_text())["config"]["replay"] is True
    probes = sorted(results.parent.glob("engines/*/probe-*"))
    assert probes
    recorded = (stamps - stamps[0]) * trace_rate(stamps)  # the trace at 1 req/s
    for probe in probes:
        run = read_run(probe)
        rate = run.header["config"]["request_rate"]
        sent = sorted(run.records, key=lambda rec: rec.request_id)
        n = min(len(sent), stamps.size)
        np.testing.assert_allclose(
            [rec.intended_send for rec in sent[:n]], recorded[:n] / rate, rtol=1e-7, atol=1e-9
        )
        assert [rec.prompt_len for rec in sent[:n]] == [1 + i % 32 for i in range(n)]
