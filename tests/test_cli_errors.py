"""Bad input, as users type it: every case is one `error: …` line on stderr, nothing on stdout,
exit status 2, no traceback and no Rust abort; huge values are refused before anything is
allocated, and `compare` refuses a bad flag before it measures or writes anything."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kvbench.cli import cli

RUN = ["run", "--backend", "sim:vllm", "--request-rate", "1", "--duration", "10"]


def _one_line_error(args: list[str], cwd: Path | None = None):
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, (r.exit_code, r.output, r.exc_info)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


@pytest.mark.parametrize(
    "args, message",
    [
        # refused before the schedule (80 GB in the simulator for the first) is allocated
        (
            ["run", "--backend", "sim:vllm", "--request-rate", "1e9", "--duration", "10"],
            "at most 2,000,000",
        ),
        (
            ["run", "--backend", "sim:vllm", "--request-rate", "1e308", "--duration", "10"],
            "at most 2,000,000",
        ),
        (
            ["run", "--backend", "sim:vllm", "--request-rate", "1e-308", "--duration", "10"],
            "no request arrives in 10 s",
        ),
        (
            ["run", "--backend", "sim:vllm", "--request-rate", "1", "--duration", "1e-300"],
            "no request arrives in 1e-300 s",
        ),
        (
            ["run", "--backend", "sim:vllm", "--request-rate", "1", "--num-prompts", "1e23"],
            "'--num-prompts': '1e23' is not a valid integer",
        ),
        (
            ["run", "--backend", "sim:vllm", "--request-rate", "1", "--num-prompts", str(10**23)],
            "at most 2,000,000",
        ),
        ([*RUN, "--kv-tokens", "1e20"], "'--kv-tokens': '1e20' is not a valid integer"),
        ([*RUN, "--kv-tokens", str(10**20)], "--kv-tokens must be at most 1,000,000,000"),
        ([*RUN, "--seed", "-1"], "--seed must be an integer in [0, 2^64)"),
        ([*RUN, "--burstiness", "nan"], "--burstiness"),
        ([*RUN, "--batch-time", "nan"], "--batch-time"),
        ([*RUN, "--workload", "/dev/zero"], "/dev/zero: not a regular file"),
        (
            ["run", "--backend", "vllm", "--url", "http://[::1", "--request-rate", "1"]
            + ["--duration", "1"],
            "not a valid URL",
        ),
        (
            ["run", "--backend", "vllm", "--url", " http://127.0.0.1:8000"]
            + ["--request-rate", "1", "--duration", "1"],
            "remove the spaces around the URL",
        ),
        (
            ["run", "--backend", "vllm", "--url", "http://127.0.0.1:99999"]
            + ["--request-rate", "1", "--duration", "1"],
            "not a valid URL",
        ),
        ([*RUN, "--output", "/dev/null/run"], "/dev/null/run: cannot write run"),
        (["emulate", "--engine", "vllm", "--kv-tokens", "0"], "--kv-tokens must be a positive"),
        (["emulate", "--engine", "vllm", "--port", "70000"], "--port must be a TCP port"),
        (["emulate", "--engine", "vllm", "--seed", "-1"], "--seed must be an integer"),
        (["emulate", "--engine", "vllm", "--time-scale", "nan"], "--time-scale"),
        (["boundary", "--backend", "sim:vllm", "--precision", "nan"], "--precision"),
        (["theory", "--workload", "/dev/zero"], "/dev/zero: not a regular file"),
        # click's own usage errors: one line too, with where to look
        (["run", "--bogus"], "No such option '--bogus'. (see 'kvbench run --help')"),
        (["nosuchcommand"], "No such command 'nosuchcommand'"),
        (["run", "--request-rate", "1"], "Missing option '--backend'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    assert message in _one_line_error(args)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--precision", "nan"], "--precision must be in [0.001, 1], got nan"),
        # 0 used to be replaced by the default without a word
        (["--precision", "0"], "--precision must be in [0.001, 1], got 0.0"),
        (["--confidence", "nan"], "--confidence must be in [0.5, 1), got nan"),
        (["--trim", "0.7"], "--trim must be in [0, 0.5), got 0.7"),
        (["--time-scale", "nan"], "--time-scale must be a positive finite number"),
        (["--max-engine-seconds", "nan"], "--max-engine-seconds"),
        (["--target-rate", "-1"], "--target-rate"),
        (["--target-utilization", "2"], "--target-utilization must be in (0, 1]"),
        (["--backends", "trtllm,foo"], "'foo'"),
        (["--backends", "sim:nope"], "'sim:nope'"),
        (["--url", "sglang=http://[::1"], "not a valid URL"),
        (["--url", "vllm=http://127.0.0.1:8000"], "--url names vllm, not in --backends"),
        (["--kv-tokens", str(10**20)], "--kv-tokens must be at most"),
        (["--workload", "/dev/zero"], "/dev/zero: not a regular file"),
    ],
)
def test_compare_checks_every_flag_before_measuring(tmp_path, args, message):
    out = tmp_path / "reports"
    line = _one_line_error(["compare", "--output-dir", str(out), "--no-progress", *args])
    assert message in line
    assert not out.exists()  # nothing measured, nothing written


def test_compare_output_dir_that_cannot_be_created(tmp_path):
    line = _one_line_error(
        ["compare", "--backends", "sim:trtllm", "--output-dir", "/dev/null/reports"]
    )
    assert line.startswith("error: /dev/null/reports/") and "cannot create" in line


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "ok"
    r = CliRunner().invoke(cli, [*RUN[:-1], "30", "--output", str(out), "--json"])
    assert r.exit_code == 0, r.output
    return out


def _damaged(good_run: Path, tmp_path: Path, name: str, damage) -> Path:
    d = tmp_path / "run"
    shutil.copytree(good_run, d)
    path = d / name
    path.write_bytes(damage(path.read_bytes()))
    return d


def _edit_first_line(field: str, value):
    def damage(content: bytes) -> bytes:
        first, rest = content.split(b"\n", 1)
        obj = json.loads(first)
        obj[field] = value
        return json.dumps(obj).encode() + b"\n" + rest

    return damage


def _edit_header(content: bytes) -> bytes:
    header = json.loads(content)
    header["config"]["request_rate"] = "fast"
    return json.dumps(header).encode()


@pytest.mark.parametrize(
    "name, damage, message",
    [
        ("header.json", lambda b: b"\x00\xff\xfe" + bytes(range(256)), "header.json:1: not UTF-8"),
        ("header.json", _edit_header, "config.request_rate must be a positive finite number"),
        ("end.json", lambda b: b'{"status": ', "end.json:1: invalid JSON"),
        ("end.json", lambda b: b"[1, 2]", "end.json:1: expected a JSON object"),
        ("end.json", lambda b: b'{"status": "done"}', "end.json: not an end record"),
        ("requests.jsonl", _edit_first_line("sent", "abc"), "sent 'abc' is not a number"),
        ("requests.jsonl", _edit_first_line("token_times", ["x"]), "token_times"),
        ("requests.jsonl", _edit_first_line("output_tokens", 1.5), "output_tokens 1.5"),
        ("samples.jsonl", _edit_first_line("time", None), "samples.jsonl:1: time None"),
    ],
)
def test_report_on_corrupt_run_files(good_run, tmp_path, name, damage, message):
    d = _damaged(good_run, tmp_path, name, damage)
    assert message in _one_line_error(["report", str(d)])


def test_binary_iteration_model_and_windows_files(tmp_path):
    binary = tmp_path / "fit.json"
    binary.write_bytes(b"\xff" * 1024)
    assert "fit.json:1: not UTF-8 text" in _one_line_error(
        ["theory", "--engine", "vllm", "--iteration-model", str(binary)]
    )
    windows = tmp_path / "windows.csv"
    windows.write_bytes(b"elapsed,batch_tokens,kv_tokens\n" + bytes(range(128, 256)))
    assert "windows.csv:2: not UTF-8 text" in _one_line_error(
        ["calibrate", "--windows", str(windows)]
    )
    assert "not a regular file" in _one_line_error(["calibrate", "--windows", "/dev/zero"])


def test_a_huge_rate_is_refused_before_the_simulator_allocates(tmp_path):
    """As a user runs it: a new process, from a scratch directory. Before, the simulator tried
    to allocate 80 GB and aborted with a 105-line Rust backtrace."""
    r = subprocess.run(
        [sys.executable, "-m", "kvbench", "run", "--backend", "sim:vllm"]
        + ["--request-rate", "1e9", "--duration", "10"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: --request-rate 1e+09")
