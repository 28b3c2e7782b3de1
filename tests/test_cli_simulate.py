"""`kvbench simulate`: JSON and text output, Parquet files, and one-line errors."""

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from kvbench.cli import cli


def _run(*args: str):
    return CliRunner().invoke(cli, ["simulate", *args], catch_exceptions=False)


def test_json_reports_a_stable_run_with_throughput_at_the_offered_rate():
    res = _run(
        "--engine",
        "ideal",
        "--request-rate",
        "2",
        "--duration",
        "4000",
        "--batch-time",
        "0.0372",
        "--json",
    )
    assert res.exit_code == 0
    out = json.loads(res.output)
    assert out["simulated"] is True and out["engine"] == "ideal"
    assert out["verdict"] == "STABLE"
    lo, hi = out["throughput_ci"]
    assert lo <= 2.0 <= hi and out["throughput"] == pytest.approx(2.0, rel=0.05)
    assert out["config"]["iteration_time"]["c0"] == 0.0372
    # Every decode step takes b̄, so TPOT is exactly the batch time.
    assert out["latency"]["tpot"]["p50"] == pytest.approx(0.0372)


def test_overload_is_unstable_and_throughput_estimates_capacity():
    res = _run("--engine", "trtllm", "--request-rate", "5", "--duration", "6000", "--json")
    out = json.loads(res.output)
    assert out["verdict"] == "UNSTABLE"
    assert out["throughput"] < 0.8 * 5
    assert out["queue"]["final_in_system"] > 1000


def test_a_large_max_tokens_cap_costs_trtllm_capacity():
    args = [
        "--engine",
        "trtllm",
        "--request-rate",
        "4",
        "--duration",
        "4000",
        "--batch-time",
        "0.0372",
        "--json",
    ]
    own = json.loads(_run(*args).output)
    capped = json.loads(_run(*args, "--max-tokens", "4096").output)
    assert capped["config"]["max_tokens_cap"] == 4096
    assert capped["throughput"] < 0.7 * own["throughput"]


def test_text_output_is_labelled_simulated_and_files_are_written(tmp_path):
    res = _run(
        "--engine",
        "vllm",
        "--request-rate",
        "6",
        "--num-prompts",
        "3000",
        "--replicas",
        "3",
        "--dispatch",
        "jsq",
        "--output",
        str(tmp_path),
    )
    assert res.exit_code == 0
    assert res.output.startswith("SIMULATED vllm")
    assert "throughput:" in res.output and "TTFT:" in res.output
    records = pd.read_parquet(tmp_path / "records.parquet")
    series = pd.read_parquet(tmp_path / "timeseries.parquet")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(records) == 3000 and set(records["replica"]) == {0, 1, 2}
    assert summary["completed"] == 3000 and summary["simulated"] is True
    assert series["kv_used"].max() <= summary["kv"]["capacity_tokens"]


def test_bad_input_gets_one_line_and_exit_2():
    res = CliRunner().invoke(
        cli,
        [
            "simulate",
            "--engine",
            "vllm",
            "--request-rate",
            "1",
            "--num-prompts",
            "10",
            "--workload",
            "fixed:200000,10",
        ],
    )
    assert res.exit_code == 2
    assert res.output.startswith("error: simulator: request 0: needs 200010 KV tokens")
    assert len(res.output.strip().splitlines()) == 1
    both = CliRunner().invoke(cli, ["simulate", "--engine", "vllm", "--request-rate", "1"])
    assert both.exit_code == 2 and "exactly one of --num-prompts and --duration" in both.output


def test_help_shows_examples():
    res = _run("--help")
    assert "kvbench simulate --engine vllm --request-rate 3 --num-prompts 20000" in res.output
