"""`kvbench theory` and `kvbench provision` end to end through click."""

import json
import math

import pytest
from click.testing import CliRunner

from kvbench import __version__
from kvbench.cli import cli


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_bare_theory_prints_the_papers_rate():
    result = run("theory")
    assert result.exit_code == 0, result.output
    assert "3.263 req/s" in result.output and "3.262 req/s" in result.output
    assert "pd-1:1" in result.output


@pytest.mark.parametrize("workload, mu", [("pd-2:1", 3.956), ("pd-1:2", 2.902)])
def test_theory_uses_the_papers_batch_time_per_shorthand(workload, mu):
    record = json.loads(run("theory", "--workload", workload, "--json").output)
    assert round(record["mu"], 3) == mu


def test_theory_json_has_the_documented_keys():
    record = json.loads(run("theory", "--request-rate", "3.3", "--json").output)
    assert record["verdict"] == "UNSTABLE"
    assert record["mu_lower"] == pytest.approx(record["mu"] * (1 - record["delta"]))
    assert record["delta"] == pytest.approx(3200 / 131_000)
    assert record["mu_stderr"] == 0 and record["g"] == "closed-form"


def test_theory_flags_change_the_model():
    base = json.loads(run("theory", "--json").output)
    doubled = json.loads(
        run("theory", "--kv-tokens", "262000", "--batch-time", "0.0744", "--json").output
    )
    assert doubled["mu"] == pytest.approx(base["mu"])
    exact = json.loads(run("theory", "--exact", "--json").output)
    assert exact["g"] == "exact" and exact["mu"] == pytest.approx(base["mu_exact"])


def test_theory_on_a_trace_gives_a_standard_error():
    result = run("theory", "--workload", "azure-conv", "--json")
    record = json.loads(result.output)
    assert 0 < record["mu_stderr"] < 0.02 * record["mu"]
    assert "±" in run("theory", "--workload", "azure-conv").output


def test_theory_on_a_jsonl_file(tmp_path):
    path = tmp_path / "w.jsonl"
    path.write_text('{"prompt_len": 512, "output_len": 100}\n' * 3)
    record = json.loads(run("theory", "--workload", str(path), "--json").output)
    g = ((1 + 1) * 512 + 2 * 100 * 512 + 101 * 100) / 2
    assert record["mu"] == pytest.approx(131_000 / (0.0372 * g))
    assert record["mu_stderr"] == 0


def test_provision_rounds_up_replicas():
    record = json.loads(run("provision", "--request-rate", "50", "--json").output)
    assert record["replicas"] == math.ceil(50 / (0.9 * record["mu"])) == 18
    assert record["utilization"] <= 0.9
    text = run("provision", "--request-rate", "50", "--target-utilization", "1").output
    assert "16" in text.splitlines()[1]


def test_provision_requires_a_rate():
    result = run("provision")
    assert result.exit_code == 2 and "--request-rate" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["theory", "--workload", "nope"], "no such workload"),
        (["theory", "--kv-tokens", "0"], "KV capacity"),
        (["theory", "--batch-time", "-1"], "batch time"),
        (["theory", "--chunk-size", "0"], "chunk size"),
        (["theory", "--request-rate", "0"], "request rate"),
        (["provision", "--request-rate", "5", "--target-utilization", "1.5"], "utilisation"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = run(*args)
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and message in result.output
    assert result.output.count("\n") == 1


def test_bad_trace_names_file_and_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,12,x\n")
    result = run("theory", "--workload", str(path))
    assert result.exit_code == 2 and f"{path}:2:" in result.output


@pytest.mark.parametrize("command", ["theory", "provision"])
def test_help_gives_an_example(command):
    result = run(command, "--help")
    assert result.exit_code == 0 and f"kvbench {command} --" in result.output


def test_version():
    assert __version__ in run("--version").output
