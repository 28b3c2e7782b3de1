"""`vllm bench serve` spellings: the random dataset's lengths map to kvbench's uniform workload
exactly as vLLM draws them (vllm/benchmarks/datasets.py, RandomDataset), and a run spelled the
vLLM way is the same run as one spelled kvbench's way."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from kvbench.cli import cli
from kvbench.cli.vllm_flags import random_workload
from kvbench.errors import KvbenchError


@pytest.mark.parametrize(
    "lengths, spec",
    [
        # floor(1000·0.9), ceil(1000·1.1); floor(200·0.9), and ceil(200·1.1) in floating point
        # as vLLM computes it: 200 * 1.1 = 220.00000000000003, so 221
        ((1000, 200, 0.1), "uniform:900-1100,180-221"),
        # floor(3.5) = 3, ceil(10.5) = 11; floor(1.5) = 1, ceil(4.5) = 5
        ((7, 3, 0.5), "uniform:3-11,1-5"),
        # the lower ends never reach 0 tokens
        ((1, 1, 0.99), "uniform:1-2,1-2"),
        # vLLM's defaults: 1024 in, 128 out, ratio 0
        ((1024, 128, 0.0), "uniform:1024-1024,128-128"),
    ],
)
def test_random_dataset_maps_to_vllms_uniform_ranges(lengths, spec):
    assert random_workload(*lengths) == spec


@pytest.mark.parametrize(
    "lengths, flag", [((0, 5, 0.0), "--random-input-len"), ((5, 5, 1.0), "--random-range-ratio")]
)
def test_bad_random_lengths_are_refused(lengths, flag):
    with pytest.raises(KvbenchError, match=flag):
        random_workload(*lengths)


RUN = ["run", "--backend", "sim:vllm", "--request-rate", "3", "--num-prompts", "400", "--json"]


def _run(*args: str) -> dict:
    r = CliRunner().invoke(cli, [*RUN, *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_a_run_spelled_the_vllm_way_is_the_same_run():
    vllm = _run(
        "--dataset-name",
        "random",
        "--random-input-len",
        "400",
        "--random-output-len",
        "100",
        "--random-range-ratio",
        "0.5",
    )
    ours = _run("--workload", "uniform:200-600,50-150")
    assert vllm["workload"] == "uniform:200-600,50-150"
    for key in ("verdict", "evidence", "latency", "achieved_rate"):
        assert vllm[key] == ours[key], key
    # only --dataset-name: vLLM's default lengths
    assert _run("--dataset-name", "random")["workload"] == "uniform:1024-1024,128-128"


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--dataset-name", "sharegpt"],
            "error: --dataset-name sharegpt: kvbench generates only 'random'",
        ),
        (["--workload", "pd-1:1", "--random-input-len", "5"], "error: --workload and --dataset"),
    ],
)
def test_conflicting_or_unknown_datasets_are_one_line_errors(args, message):
    r = CliRunner().invoke(cli, [*RUN, *args])
    assert r.exit_code == 2 and r.stderr.startswith(message) and r.stderr.count("\n") == 1


def test_result_dir_and_save_result_write_the_run(tmp_path, monkeypatch):
    # --result-dir is --output-dir (and the older --output): the run directory
    r = CliRunner().invoke(cli, [*RUN, "--result-dir", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["directory"] == str(tmp_path / "a")
    assert (tmp_path / "a" / "summary.json").is_file()
    # --save-result alone: a new directory named after backend, rate and time
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, [*RUN, "--save-result"])
    assert r.exit_code == 0, r.output
    (saved,) = tmp_path.glob("run-sim-vllm-3qps-*")
    assert json.loads((saved / "summary.json").read_text())["requests"]["scheduled"] == 400


def test_boundary_output_dir_holds_the_search_and_its_probes(tmp_path):
    out = tmp_path / "search"
    args = ["boundary", "--backend", "sim:vllm", "--method", "open-loop", "--precision", "0.2"]
    r = CliRunner().invoke(cli, [*args, "--output-dir", str(out), "--json"])
    assert r.exit_code == 0, r.output
    printed = json.loads(r.stdout)
    assert json.loads((out / "boundary.json").read_text()) == printed
    assert {p.name for p in out.glob("probe-*")} >= {"probe-00", "probe-01"}
    again = CliRunner().invoke(cli, [*args, "--output-dir", str(out)])
    assert again.exit_code == 2 and "already holds a search" in again.stderr


def test_request_rate_inf_sends_every_request_at_once(tmp_path):
    out = tmp_path / "burst"
    args = ["run", "--backend", "sim:vllm", "--request-rate", "inf", "--num-prompts", "300"]
    r = CliRunner().invoke(cli, [*args, "--output-dir", str(out), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    header = json.loads((out / "header.json").read_text())  # strict JSON: no Infinity
    assert header["config"]["request_rate"] == "inf"
    requests = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert len(requests) == 300 and {q["intended_send"] for q in requests} == {0.0}
    # no stability verdict without an arrival rate; the window runs to the last completion
    assert summary["verdict"] is None and "sent at once" in summary["evidence"]["reason"]
    assert summary["requests"]["completed"] == 300
    assert summary["window"] == pytest.approx(max(q["finished"] for q in requests))
    # the engine saw them all at once: nearly all waiting at the start
    assert summary["waiting"]["max"] >= 250, summary["waiting"]
    rebuilt = CliRunner().invoke(cli, ["report", str(out), "--json"])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert json.loads(rebuilt.stdout)["latency"] == summary["latency"]
    refused = CliRunner().invoke(cli, [*args[:-2], "--duration", "10"])
    assert refused.exit_code == 2 and "give --num-prompts" in refused.stderr
