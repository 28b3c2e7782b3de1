"""Latency targets beside stability (--slo / vLLM's --goodput), tokens per second and cost:
parsing, attainment and goodput on hand-built requests, the SLO rate bracketed from a simulated
search's own probes, and a simulated compare whose every output shows them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from kvbench.backends.base import RequestRecord
from kvbench.benchmark.runner import summarize
from kvbench.benchmark.slo import Slo, parse_goodput, parse_percentiles, parse_slo, slo_bracket
from kvbench.benchmark.stability import carried_rate
from kvbench.cli import cli
from kvbench.cost import Pricing, at_rate, tensor_parallel
from kvbench.errors import KvbenchError

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "kvbench" / "report" / "results.schema.json"
SIM = ["--backend", "sim:vllm", "--workload", "uniform:1-32,1-32", "--kv-tokens", "2048"]


# --- parsing ---------------------------------------------------------------------------------


def test_both_spellings_give_the_same_slo():
    ours = parse_slo("ttft:2s,tpot:100ms,e2e:30s")
    vllm = parse_goodput(["ttft:2000", "tpot:100", "e2el:30000"])
    assert ours == vllm == Slo({"ttft": 2.0, "tpot": 0.1, "e2e": 30.0}, 99.0)
    assert parse_goodput(["ttft:2000 tpot:100"]).targets == {"ttft": 2.0, "tpot": 0.1}
    assert parse_slo("TTFT:250ms@p99.9") == Slo({"ttft": 0.25}, 99.9)
    assert parse_slo("e2el:1.5s@90").percentile == 90.0
    assert parse_percentiles("99,50,90") == (50.0, 90.0, 99.0)
    assert parse_percentiles("p99.9") == (99.9,)


@pytest.mark.parametrize(
    "text",
    ["ttft:2", "ttft:2min", "itl:5ms", "ttft:2s,ttft:3s", "ttft:-1s", "ttft:2s@p0", "", "@p99"],
)
def test_bad_slo_is_refused(text):
    with pytest.raises(KvbenchError, match="--slo"):
        parse_slo(text)


@pytest.mark.parametrize(
    "args",
    [
        ["--slo", "ttft:2"],
        ["--slo", "latency:2s"],
        ["--slo", "ttft:2s@p101"],
        ["--goodput", "ttft=2000"],
        ["--goodput", "itl:10"],
        ["--goodput", "ttft:abc"],
        ["--slo", "ttft:2s", "--goodput", "tpot:100"],
        ["--percentiles", "0,50"],
        ["--metric-percentiles", "fifty"],
    ],
)
def test_bad_targets_on_the_command_line_are_one_line_and_exit_2(args):
    result = CliRunner().invoke(cli, ["run", *SIM, "--request-rate", "1", "--duration", "5", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr


def test_bad_price_is_refused():
    result = CliRunner().invoke(cli, ["boundary", *SIM, "--gpu-price", "-2"])
    assert result.exit_code == 2 and result.stderr.startswith("error: --gpu-price")
    result = CliRunner().invoke(
        cli, ["compare", "--backends", "sim:vllm", "--gpus-per-replica", "0"]
    )
    assert result.exit_code == 2 and result.stderr.startswith("error: --gpus-per-replica")


def test_vllm_goodput_words_after_the_flag_are_taken_as_in_vllm():
    """`--goodput ttft:2000 tpot:100` (argparse nargs="+") and --metric-percentiles."""
    result = CliRunner().invoke(
        cli,
        [
            "run",
            *SIM,
            "--request-rate",
            "20",
            "--duration",
            "30",
            "--goodput",
            "ttft:2000",
            "tpot:100",
            "--metric-percentiles",
            "50,95",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["slo"]["targets"] == {"ttft": 2.0, "tpot": 0.1}
    assert summary["percentiles"] == [50.0, 95.0]
    assert set(summary["latency"]["ttft"]) >= {"p50", "p95", "p99"}


# --- attainment, goodput, percentiles and tokens on hand-built requests -----------------------


def _records() -> list[RequestRecord]:
    def rec(i, sent, first, fin, out, prompt, error=None):
        return RequestRecord(
            i, sent, prompt, out, sent, first, fin, out if fin is not None else None, error=error
        )

    return [
        # ttft 0.5, tpot 2.0/20 = 0.1, e2e 2.5
        rec(0, 0.0, 0.5, 2.5, 21, 10),
        # ttft 2.0, tpot 0.1, e2e 3.0
        rec(1, 1.0, 3.0, 4.0, 11, 20),
        # ttft 0.1, tpot 6.0/30 = 0.2, e2e 6.1
        rec(2, 2.0, 2.1, 8.1, 31, 30),
        # one token: ttft 0.2, no TPOT (within any TPOT target), e2e 0.2
        rec(3, 3.0, 3.2, 3.2, 1, 40),
        # failed and unfinished requests count in no latency, attainment or throughput
        rec(4, 4.0, 4.1, 4.5, 5, 50, error="http_500"),
        rec(5, 9.0, 9.5, None, 7, 60),
    ]


def _header(slo: Slo | None, percentiles=(50.0,)) -> dict:
    return {
        "kind": "simulated",
        "backend": "hand",
        "config": {"request_rate": 0.6, "duration": 10.0, "confidence": 0.95, "tolerance": 0.05},
        "window_end": 10.0,
        "scheduled_in_window": 6,
        "percentiles": list(percentiles),
        **({"slo": slo.to_dict()} if slo else {}),
    }


def test_attainment_goodput_and_tokens_on_hand_built_requests():
    slo = parse_slo("ttft:1s,tpot:150ms@p50")
    s = summarize(_header(slo), _records(), [], status="completed")
    # completed: 0, 1, 2, 3; within every target: 0 (0.5, 0.1) and 3 (0.2, none); 1 misses TTFT,
    # 2 misses TPOT
    assert s["slo"]["completed"] == 4 and s["slo"]["attained"] == 2
    assert s["slo"]["attainment"] == 0.5
    assert s["slo"]["goodput"] == pytest.approx(2 / 10)
    # TTFT over completed [0.5, 2, 0.1, 0.2]: p50 = 0.35 (the unfinished request's 0.5 is out)
    assert s["latency"]["ttft"]["p50"] == pytest.approx(0.35)
    assert s["latency"]["ttft"]["n"] == 4
    assert s["slo"]["at_percentile"]["ttft"] == pytest.approx(0.35)
    assert s["slo"]["at_percentile"]["tpot"] == pytest.approx(0.1)  # [0.1, 0.1, 0.2]
    assert s["slo"]["met"] is True
    # tokens over the 10 s window: output 21+11+31+1 = 64, prompts 10+20+30+40 = 100
    t = s["throughput"]
    assert t["requests_per_s"] == pytest.approx(0.4)
    assert t["output_tokens_per_s"] == pytest.approx(6.4)
    assert t["total_tokens_per_s"] == pytest.approx(16.4)
    assert t["mean_output_tokens"] == pytest.approx(16.0)
    # at p99 the TTFT percentile is 0.5 + 0.97·1.5 = 1.955 s > 1 s: the run misses the SLO,
    # whatever share of requests attained it
    strict = summarize(_header(None), _records(), [], status="completed", slo=parse_slo("ttft:1s"))
    assert strict["slo"]["at_percentile"]["ttft"] == pytest.approx(1.955)
    assert strict["slo"]["met"] is False
    assert strict["slo"]["attained"] == 3  # 0, 2, 3
    # e2e over completed [2.5, 3, 6.1, 0.2] at the asked p50 (and p99, always computed)
    assert s["latency"]["e2e"]["p50"] == pytest.approx(2.75)
    assert s["percentiles"] == [50.0]


def test_slo_bracket_from_probes():
    def probe(index, rate, verdict, met):
        over = verdict == "UNSTABLE"
        return dict(index=index, rate=rate, verdict=verdict, over_limit=over, slo={"met": met})

    probes = [
        probe(0, 10.0, "UNSTABLE", False),
        probe(1, 8.0, "STABLE", False),
        probe(2, 6.0, "STABLE", True),
        probe(3, 7.0, "INCONCLUSIVE", True),  # not STABLE: meets nothing, misses nothing
        dict(probe(4, 5.0, "STABLE", None), slo=None),  # judged without an SLO
    ]
    b = slo_bracket(probes, stability_upper=9.0)
    assert (b.lower, b.upper, b.lower_probe) == (6.0, 8.0, 2)
    # every stable probe met it: the SLO bracket is λ*'s
    met = [dict(p, slo={"met": p["verdict"] != "UNSTABLE"}) for p in probes]
    assert (slo_bracket(met, 9.0).lower, slo_bracket(met, 9.0).upper) == (8.0, 9.0)
    # none met it: only an upper end, the slowest probe that missed
    missed = [dict(p, slo={"met": False}) for p in probes if p["index"] != 4]
    b = slo_bracket(missed, 9.0)
    assert b.lower is None and b.upper == 6.0 and "below" in b.note


# --- the SLO bracket from a simulated search ---------------------------------------------------


def _boundary(*args: str) -> dict:
    result = CliRunner().invoke(cli, ["boundary", *SIM, "--precision", "0.1", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_slo_rate_from_the_search_probes():
    generous = _boundary("--slo", "ttft:2s,tpot:100ms,e2e:30s")
    assert generous["extras"].get("method") != "backlog"  # an SLO makes the search open-loop
    slo = generous["slo"]
    assert (slo["lower"], slo["upper"]) == (generous["lower"], generous["upper"])
    assert slo["lower"] is not None
    # the same probes against a TTFT target that every probe near λ* misses (p99 TTFT of the
    # STABLE probe at λ*'s lower end is ~0.14 s): no lower end, and the upper end at or below λ*
    tight = _boundary("--slo", "ttft:25ms")
    assert [p["rate"] for p in tight["probes"]] == [p["rate"] for p in generous["probes"]]
    assert tight["slo"]["lower"] is None
    assert tight["slo"]["upper"] <= tight["lower"]
    for p in tight["probes"]:
        assert p["slo"]["met"] is False
        assert p["slo"]["at_percentile"]["ttft"] > 0.025
    # a backlog search has no latencies to judge
    result = CliRunner().invoke(cli, ["boundary", *SIM, "--method", "backlog", "--slo", "ttft:1s"])
    assert result.exit_code == 2 and "open-loop" in result.stderr


# --- tokens and cost arithmetic ----------------------------------------------------------------


def test_cost_arithmetic():
    at = at_rate(
        10.0, {"mean_output_tokens": 100.0, "mean_prompt_tokens": 50.0}, gpus=2, gpu_price=3.0
    )
    assert at["output_tokens_per_s"] == 1000.0 and at["total_tokens_per_s"] == 1500.0
    assert at["output_tokens_per_s_per_gpu"] == 500.0 and at["total_tokens_per_s_per_gpu"] == 750.0
    assert at["usd_per_hour"] == 6.0
    # $6/h over 36,000 requests an hour; over 3.6 M output tokens an hour
    assert at["usd_per_million_requests"] == pytest.approx(6.0 / 36_000 * 1e6)
    assert at["usd_per_million_output_tokens"] == pytest.approx(6.0 / 3.6e6 * 1e6)
    free = at_rate(10.0, {"mean_output_tokens": 100.0}, gpus=1, gpu_price=None)
    assert free["usd_per_hour"] is None and free["usd_per_million_requests"] is None
    assert tensor_parallel(["serve", "m", "--tensor-parallel-size", "4"]) == 4
    assert tensor_parallel(["--tp=2"]) == 2 and tensor_parallel(["-tp", "8"]) == 8
    assert tensor_parallel(["--tp_size", "2", "--tp-size", "4"]) == 4
    assert tensor_parallel(["--port", "8000"]) is None
    assert Pricing().gpus(["--tp", "2"]) == (2, "the launch's tensor parallelism")
    assert Pricing(gpus_per_replica=8).gpus(["--tp", "2"]) == (8, "--gpus-per-replica")
    assert Pricing().gpus([]) == (1, "default")


# --- end to end: a simulated compare -----------------------------------------------------------


def test_compare_shows_slo_rate_tokens_and_cost(tmp_path):
    result = CliRunner().invoke(
        cli,
        [
            "compare",
            "--backends",
            "sim:trtllm",
            "--slo",
            "ttft:2s,tpot:100ms,e2e:30s",
            "--gpu-price",
            "2.5",
            "--gpus-per-replica",
            "2",
            "--replicas",
            "2",
            "--target-rate",
            "1000",
            "--output-dir",
            str(tmp_path),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    (directory,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    results = json.loads((directory / "results.json").read_text())
    jsonschema.validate(results, json.loads(SCHEMA_FILE.read_text()))
    assert results["schema_version"] == 3
    (e,) = results["engines"]
    b, slo, econ = e["boundary"], e["slo_boundary"], e["economics"]
    # generous targets: every STABLE probe meets them, so the SLO rate's bracket is λ*'s
    assert (slo["lower"], slo["upper"]) == (b["lower"], b["upper"])
    assert e["provisioning"]["basis"] == "SLO rate lower bound"
    assert e["provisioning"]["replicas_measured"] == math.ceil(1000 / (0.9 * b["lower"] / 2))
    (probe,) = [
        p for p in e["probes"] if p["verdict"] == "STABLE" and carried_rate(p) == b["lower"]
    ]
    assert probe["slo"]["met"] is True and probe["slo"]["attainment"] >= 0.99
    assert econ["gpus"] == 4 and econ["gpus_per_replica_source"] == "--gpus-per-replica"
    at = econ["at_lambda"]
    out = b["lower"] * probe["throughput"]["mean_output_tokens"]
    assert at["output_tokens_per_s"] == pytest.approx(out)
    assert at["output_tokens_per_s_per_gpu"] == pytest.approx(out / 4)
    assert at["usd_per_hour"] == pytest.approx(10.0)
    assert at["usd_per_million_requests"] == pytest.approx(10.0 / (3600 * b["lower"]) * 1e6)
    assert at["usd_per_million_output_tokens"] == pytest.approx(10.0 / (3600 * out) * 1e6)
    assert econ["at_slo"] == at
    # the embedded default's outputs average 16.5 tokens (U{1..32}); measured within 10%
    assert probe["throughput"]["mean_output_tokens"] == pytest.approx(16.5, rel=0.1)
    summary = (directory / "summary.md").read_text()
    assert "SLO rate (req/s)" in summary and "$2.5 per GPU-hour as given" in summary
    assert "2 GPUs per replica (--gpus-per-replica) × 2 replicas = 4 GPUs" in summary
    html = (directory / "report.html").read_text()
    assert 'id="economics"' in html and "SLO, attainment, goodput" in html
    shown = result.stdout
    for text in ("SLO rate:", "tokens at λ*:", "cost at λ*:", "assumptions:", "$10/hour"):
        assert text in shown, text
    assert f"{b['lower']:.3f} – {b['upper']:.3f} req/s" in shown
    # rebuilding from the raw files gives the same figures
    again = CliRunner().invoke(cli, ["report", str(directory), "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["engines"] == results["engines"]


def test_a_merged_report_keeps_each_machines_price_and_flags_different_slos(tmp_path):
    """Two machines, two GPU prices: each engine is priced at its own; a different SLO is
    flagged."""
    directories = []
    for name, price, slo in (("h200", "3.5", "ttft:2s"), ("mi300", "2", "ttft:1s")):
        out = tmp_path / name
        result = CliRunner().invoke(
            cli,
            [
                "compare",
                "--backends",
                f"{name}=sim:trtllm",
                "--slo",
                slo,
                "--gpu-price",
                price,
                "--output-dir",
                str(out),
                "--no-progress",
            ],
        )
        assert result.exit_code == 0, result.output
        (directory,) = [p for p in out.iterdir() if p.is_dir()]
        directories.append(directory)
    merged = tmp_path / "merged"
    result = CliRunner().invoke(
        cli, ["report", "merge", *map(str, directories), "--output", str(merged), "--json"]
    )
    assert result.exit_code == 0, result.output
    engines = {e["label"]: e for e in json.loads(result.stdout)["engines"]}
    assert engines["h200"]["economics"]["gpu_price"] == 3.5
    assert engines["mi300"]["economics"]["gpu_price"] == 2.0
    assert engines["h200"]["slo_boundary"]["targets"] == {"ttft": 2.0}
    assert engines["mi300"]["slo_boundary"]["targets"] == {"ttft": 1.0}
    assert "the merged runs differ in SLOs" in result.stderr


def test_slo_rate_between_probes_provisions_and_prices_a_launched_engine(tmp_path):
    """The report's own path on a compare directory: a p90 E2E target met at 0.8·c and missed at
    0.95·c (the fixture's FIFO server: queueing grows toward capacity c) brackets the SLO rate
    strictly between those probes, below λ*'s; provisioning takes it (the smaller); and a
    launch with --tensor-parallel-size 4 prices 4 GPUs a replica."""
    from kvbench.benchmark import raw
    from kvbench.report.build import build_report
    from tests.compare_fixture import make_compare_dir

    directory = make_compare_dir(tmp_path / "cmp", labels=("trtllm",), capacities=(3.0,))
    header = raw.read_json(directory / raw.COMPARE_FILE)
    header["config"].update(
        slo=parse_slo("e2e:3s@p90").to_dict(), pricing={"gpu_price": 2.0, "gpus_per_replica": None}
    )
    raw.write_json_atomic(directory / raw.COMPARE_FILE, header)
    path = directory / raw.ENGINES_DIR / "0-engine" / raw.ENGINE_FILE
    engine = raw.read_json(path)
    engine["servers"] = [{"argv": ["trtllm-serve", "m", "--tensor-parallel-size", "4"]}]
    raw.write_json_atomic(path, engine)

    (e,) = build_report(directory).results.engines
    by_rate = {round(p.rate, 6): p for p in e.probes}
    low, near = by_rate[round(2.4, 6)], by_rate[round(2.85, 6)]
    assert low.slo["met"] is True and near.slo["met"] is False
    assert low.slo["at_percentile"]["e2e"] <= 3.0 < near.slo["at_percentile"]["e2e"]
    assert e.boundary.lower == pytest.approx(2.85) and e.boundary.upper == pytest.approx(3.15)
    assert e.slo_boundary["lower"] == pytest.approx(2.4)
    assert e.slo_boundary["upper"] == pytest.approx(2.85)
    assert e.provisioning.basis == "SLO rate lower bound"
    assert e.provisioning.replicas_measured == math.ceil(20.0 / (0.9 * 2.4))  # 10, not 8 at λ*
    econ = e.economics
    assert (econ["gpus_per_replica"], econ["gpus"]) == (4, 4)
    assert econ["gpus_per_replica_source"] == "the launch's tensor parallelism"
    assert econ["at_lambda"]["usd_per_hour"] == 8.0
    assert econ["at_lambda"]["usd_per_million_requests"] == pytest.approx(8.0 / (3600 * 2.85) * 1e6)
    assert econ["at_slo"]["usd_per_million_requests"] == pytest.approx(8.0 / (3600 * 2.4) * 1e6)
    out = 2.4 * low.throughput["mean_output_tokens"]
    assert econ["at_slo"]["output_tokens_per_s_per_gpu"] == pytest.approx(out / 4)
    assert econ["at_slo"]["usd_per_million_output_tokens"] == pytest.approx(
        8.0 / (3600 * out) * 1e6
    )


def test_cost_at_a_bounded_backlog_bracket(tmp_path):
    """compare's default search runs no probe at the bracket's lower end: tokens/s and cost there
    come from the bounded-backlog probe's tokens per request (a simulated probe: the workload's
    mean lengths, E[o] = 16.5 on U{1..32})."""
    result = CliRunner().invoke(
        cli,
        [
            "compare",
            "--backends",
            "sim:trtllm",
            "--gpu-price",
            "2.0",
            "--no-progress",
            "--json",
            "--output-dir",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    (e,) = json.loads(result.stdout)["engines"]
    assert e["boundary"]["method"] == "backlog" and e["probes"] == []
    at = e["economics"]["at_lambda"]
    assert at["rate"] == e["boundary"]["lower"]
    assert at["output_tokens_per_s"] == pytest.approx(e["boundary"]["lower"] * 16.5, rel=0.01)
    assert at["usd_per_million_requests"] == pytest.approx(2.0 / (3600 * at["rate"]) * 1e6)
