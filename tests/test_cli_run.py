"""`kvbench run`, `kvbench boundary` and `kvbench report`: JSON shapes, partial runs, and one-line
errors for malformed options."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from kvbench.backends.base import Backend
from kvbench.backends.registry import resolve_backend
from kvbench.benchmark.recorder import read_run
from kvbench.benchmark.runner import RunSpec, execute_run
from kvbench.cli import cli
from kvbench.workload import load_workload


def _invoke(*args):
    return CliRunner().invoke(cli, list(args))


def test_run_json_has_a_verdict_and_writes_a_rebuildable_directory(tmp_path):
    out = tmp_path / "run"
    r = _invoke(
        "run",
        "--backend",
        "sim:sglang",
        "--request-rate",
        "1.5",
        "--duration",
        "900",
        "--output",
        str(out),
        "--json",
    )
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["verdict"] == "STABLE" and summary["simulated"] is True
    assert summary["latency"]["ttft"]["p50"] > 0
    rebuilt = _invoke("report", str(out), "--json")
    assert rebuilt.exit_code == 0, rebuilt.output
    again = json.loads(rebuilt.output)
    assert again["verdict"] == summary["verdict"]
    assert again["evidence"]["slope"] == pytest.approx(summary["evidence"]["slope"])
    assert (out / "summary.json").exists()


def test_run_text_labels_simulated_results():
    r = _invoke("run", "--backend", "sim:ideal", "--request-rate", "1", "--num-prompts", "300")
    assert r.exit_code == 0, r.output
    assert "SIMULATED" in r.output.splitlines()[0]
    assert "verdict" in r.output


def test_boundary_json_keys():
    r = _invoke(
        "boundary", "--backend", "sim:ideal", "--workload", "pd-2:1", "--precision", "0.1", "--json"
    )
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert {"lower", "upper", "engine_seconds", "probes"} <= d.keys()
    assert d["lower"] < d["upper"] <= d["lower"] * 1.1 + 1e-9


def test_boundary_defaults_to_the_bounded_backlog_on_the_simulator_and_says_so():
    r = _invoke("boundary", "--backend", "sim:trtllm", "--workload", "pd-2:1", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    x = d["extras"]
    assert x["method"] == "backlog" and d["simulated"] is True
    assert x["label"] == "saturated service rate measured with a bounded backlog"
    assert x["backlog"] == 8 and x["backlog_kept"] == [8, 8]
    assert d["reached"] and d["lower"] < d["capacity_estimate"] < d["upper"]
    assert d["engine_seconds"] == x["looks"][-1]["time"] and x["confirmed"] is None
    text = _invoke("boundary", "--backend", "sim:trtllm", "--workload", "pd-2:1")
    assert "bounded backlog" in text.output and "not checked" in text.output


def test_boundary_confirm_runs_open_loop_probes_either_side():
    r = _invoke(
        "boundary", "--backend", "sim:trtllm", "--workload", "pd-2:1", "--confirm", "--json"
    )
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    below, above = d["probes"]
    assert below["rate"] < d["lower"] and above["rate"] > d["upper"]
    assert d["extras"]["confirmed"] == [below["verdict"], above["verdict"]]
    assert d["engine_seconds"] == pytest.approx(
        d["extras"]["looks"][-1]["time"] + below["engine_seconds"] + above["engine_seconds"]
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["run", "--backend", "sim:nope", "--request-rate", "1", "--duration", "10"],
            "unknown backend",
        ),
        (
            ["run", "--backend", "sim:vllm", "--request-rate", "1"],
            "exactly one of --duration and --num-prompts",
        ),
        (
            ["run", "--backend", "sim:vllm", "--request-rate", "-2", "--duration", "10"],
            "--request-rate",
        ),
        (
            [
                "run",
                "--backend",
                "sim:vllm",
                "--request-rate",
                "1",
                "--duration",
                "10",
                "--kv-tokens",
                "0",
            ],
            "--kv-tokens",
        ),
        (
            [
                "run",
                "--backend",
                "sim:vllm",
                "--request-rate",
                "1",
                "--duration",
                "10",
                "--workload",
                "uniform:5",
            ],
            "uniform",
        ),
        (["run", "--backend", "vllm", "--request-rate", "1", "--duration", "10"], "--url"),
        (
            [
                "run",
                "--backend",
                "vllm",
                "--url",
                "http://x",
                "--kv-tokens",
                "5",
                "--request-rate",
                "1",
                "--duration",
                "1",
            ],
            "sim:*",
        ),
        (
            ["run", "--backend", "vllm", "--request-rate", "1", "--duration", "10"],
            "--launch MODEL_PATH",
        ),
        (
            [
                "run",
                "--backend",
                "vllm",
                "--url",
                "http://x",
                "--launch",
                "/m",
                "--request-rate",
                "1",
                "--duration",
                "1",
            ],
            "exactly one of --url (attach) or --launch MODEL_PATH (launch)",
        ),
        (
            [
                "run",
                "--backend",
                "sim:vllm",
                "--launch",
                "/m",
                "--request-rate",
                "1",
                "--duration",
                "1",
            ],
            "no --url, --launch or --model",
        ),
        (["boundary", "--backend", "sim:vllm", "--precision", "0"], "--precision"),
        (["boundary", "--backend", "sim:vllm", "--backlog", "0"], "--backlog"),
        (
            ["boundary", "--backend", "sim:vllm", "--method", "open-loop", "--confirm"],
            "--method backlog",
        ),
        (["boundary", "--backend", "sim:vllm", "--confidence", "1.5"], "--confidence"),
        (
            [
                "run",
                "--backend",
                "sim:vllm",
                "--request-rate",
                "1",
                "--duration",
                "10",
                "--confidence",
                "0",
            ],
            "--confidence",
        ),
        (
            ["boundary", "--backend", "sim:vllm", "--max-engine-seconds", "-1"],
            "--max-engine-seconds",
        ),
        (["report", "/nonexistent/run"], "missing"),
    ],
)
def test_malformed_options_get_one_line_errors(args, message):
    r = _invoke(*args)
    assert r.exit_code == 2
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.output


def test_an_engine_that_dies_at_start_is_one_line_and_exit_1():
    # --launch starts vllm from its recipe; with no vLLM installed here it exits at once: the
    # engine failed, not the user's input (exit 2)
    r = _invoke(
        "run", "--backend", "vllm", "--launch", "/nonexistent-model", "--request-rate", "1",
        "--duration", "1",
    )  # fmt: skip
    assert r.exit_code == 1
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: vllm exited with code"), r.output


class _FailAfter(Backend):
    """A backend whose engine dies after reporting n requests."""

    def __init__(self, inner, n, error=None):
        self.inner, self.n = inner, n
        self.error = error if error is not None else RuntimeError("engine crashed")
        self.name, self.kind, self.replays_prefix = inner.name, inner.kind, False

    def discover_profile(self):
        return self.inner.discover_profile()

    def close(self):
        self.inner.close()

    def execute(self, requests, sink, *, duration):
        n, error = self.n, self.error

        class Sink:
            count = 0

            def request(self, record):
                if Sink.count == n:
                    raise error
                Sink.count += 1
                sink.request(record)

            def sample(self, s):
                sink.sample(s)

        self.inner.execute(requests, Sink(), duration=duration)


@pytest.mark.parametrize(
    "error, status",
    [(RuntimeError("engine crashed"), "failed"), (KeyboardInterrupt(), "interrupted")],
)
def test_a_crash_after_n_records_leaves_a_readable_partial_run(tmp_path, error, status):
    backend = _FailAfter(resolve_backend("sim:vllm"), 200, error)
    with pytest.raises(type(error)):
        execute_run(
            backend, load_workload("pd-1:1"), RunSpec("pd-1:1", 2.0, duration=600), output=tmp_path
        )
    data = read_run(tmp_path)
    assert data.status == status and data.end["error"]
    assert len(data.records) == 200
    r = _invoke("report", str(tmp_path), "--json")
    # a run the engine failed is an error of the measurement (exit 1); a stopped one is not
    assert r.exit_code == (1 if status == "failed" else 0), r.output
    summary = json.loads(r.stdout)
    assert summary["status"] == status and summary["requests"]["scheduled"] == 200


def test_a_killed_run_process_leaves_a_readable_partial_run(tmp_path):
    # A run long enough to be killed mid-way: the recorder flushes each line as it goes.
    out = tmp_path / "run"
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kvbench",
            "run",
            "--backend",
            "sim:ideal",
            "--request-rate",
            "20",
            "--duration",
            "20000",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        f = out / "requests.jsonl"
        if f.exists() and f.stat().st_size > 20_000:
            break
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    data = read_run(out)
    assert data.truncated and data.status == "killed" and len(data.records) > 50
    r = _invoke("report", str(out), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["status"] == "killed"


def _steady_run(rate: float, lag: float):
    """600 s at `rate`, every send `lag` late; the engine itself keeps up (1.2 s per request)."""
    from kvbench.backends.base import RequestRecord

    n = int(600 * rate)
    header = {
        "kind": "real",
        "backend": "vllm",
        "window_end": 600.0,
        "scheduled_in_window": n,
        "config": {"request_rate": rate, "confidence": 0.95, "tolerance": 0.05},
    }
    records = [
        RequestRecord(
            i,
            i / rate,
            100,
            10,
            sent=i / rate + lag,
            first_token=i / rate + lag + 0.1,
            finished=i / rate + lag + 1.0,
            output_tokens=10,
        )
        for i in range(n)
    ]
    return header, records


def test_a_client_that_fell_behind_claims_no_verdict():
    from kvbench.benchmark.runner import summarize

    # p99 lag 200 ms at 10 req/s: above both the 50 ms floor and the 100 ms mean gap
    s = summarize(*_steady_run(10.0, 0.2), [], status="completed")
    assert s["client_kept_schedule"] is False and s["verdict"] is None
    assert "could not keep its schedule" in s["evidence"]["reason"]
    assert s["schedule_lag"]["p99"] == pytest.approx(0.2)
    assert s["schedule_lag"]["budget"] == pytest.approx(0.1)
    s = summarize(*_steady_run(10.0, 0.0), [], status="completed")
    assert s["client_kept_schedule"] is True and s["verdict"] == "STABLE"


def test_a_late_client_still_claims_unstable_when_the_engine_fell_behind_it():
    from kvbench.benchmark.runner import summarize

    # every send 200 ms late at 10 req/s (no verdict for a stable engine, above), but the engine
    # serves one request per 200 ms: the queue grew under less load than was asked for
    header, records = _steady_run(10.0, 0.2)
    for i, r in enumerate(records):
        r.finished = 1.0 + 0.2 * i
        r.first_token = r.finished - 0.05
    s = summarize(header, records, [], status="completed")
    assert s["client_kept_schedule"] is False and s["verdict"] == "UNSTABLE"
    assert s["evidence"]["departure_rate"] == pytest.approx(5.0, rel=0.05)


def test_requests_due_in_the_last_lag_budget_may_miss_the_window_end():
    from kvbench.benchmark.runner import summarize

    # 100 req/s, every send 35 ms late (budget 50 ms): the 3 due in the window's last 35 ms
    # would go out after its end, where the driver sends nothing
    header, records = _steady_run(100.0, 0.035)
    header["config"]["duration"] = 600.0
    for r in records:
        if r.sent > 600.0:
            r.sent = r.first_token = r.finished = None
    assert sum(r.sent is None for r in records) == 3
    s = summarize(header, records, [], status="completed")
    assert s["client_kept_schedule"] is True and s["verdict"] == "STABLE"


def test_lag_shorter_than_a_mean_gap_keeps_the_verdict():
    from kvbench.benchmark.runner import lag_budget, summarize

    assert (
        lag_budget(1.0) == 1.0
        and lag_budget(12.0) == pytest.approx(1 / 12)
        and lag_budget(1000.0) == 0.05
    )
    # the same 200 ms lag at 1 req/s shifts each send by a fifth of a gap: the offered process is intact
    s = summarize(*_steady_run(1.0, 0.2), [], status="completed")
    assert s["client_kept_schedule"] is True and s["verdict"] == "STABLE"


def test_an_engine_that_fails_mid_run_exits_1_with_its_run_kept(tmp_path, monkeypatch):
    """The engine, not the input, failed: exit 1 (2 is for bad input), one line, and the run
    directory closed as failed."""
    from kvbench.backends import registry
    from kvbench.errors import KvbenchError

    def failing(*args, **kwargs):
        return _FailAfter(resolve_backend("sim:vllm"), 50, KvbenchError("engine died"))

    monkeypatch.setattr(registry, "resolve_backend", failing)
    out = tmp_path / "run"
    r = _invoke("run", "--backend", "sim:vllm", "--request-rate", "2", "--duration", "600")
    assert r.exit_code == 1 and r.stderr == "error: engine died\n", r.output
    r = _invoke(
        "run", "--backend", "sim:vllm", "--request-rate", "2", "--duration", "600", "--output", out
    )
    assert r.exit_code == 1
    assert read_run(out).status == "failed" and len(read_run(out).records) == 50


def test_exit_status_follows_the_engine_not_the_verdict():
    from kvbench.cli.boundary import boundary_exit_status
    from kvbench.cli.run import run_exit_status

    assert run_exit_status({"status": "completed", "verdict": "UNSTABLE"}) == 0
    assert run_exit_status({"status": "completed", "verdict": None}) == 0
    assert run_exit_status({"status": "completed", "verdict": "FAILING"}) == 1
    assert run_exit_status({"status": "failed", "verdict": "STABLE"}) == 1

    def record(lower, upper, *verdicts):
        return {"lower": lower, "upper": upper, "probes": [{"verdict": v} for v in verdicts]}

    assert boundary_exit_status(record(1.0, 1.1, "UNSTABLE", "STABLE")) == 0
    # failures at the top of the range are the engine's limit once a bracket is found
    assert boundary_exit_status(record(1.0, 1.1, "FAILING", "UNSTABLE", "STABLE")) == 0
    assert boundary_exit_status(record(None, None, "FAILING")) == 1
    assert boundary_exit_status(record(None, None)) == 0


def test_report_heads_a_run_that_did_not_complete_with_its_status(tmp_path):
    """A run whose engine died is never headed by a (green) STABLE: the status comes first,
    the verdict is withheld, and the exit status is 1."""
    out = tmp_path / "run"
    r = _invoke(
        "run", "--backend", "sim:ideal", "--request-rate", "2", "--duration", "300",
        "--batch-time", "0.01", "--kv-tokens", "100000", "--output", str(out), "--json",
    )  # fmt: skip
    assert r.exit_code == 0 and json.loads(r.stdout)["verdict"] == "STABLE", r.output
    for status, code in (("failed", 1), ("interrupted", 0)):
        (out / "end.json").write_text(json.dumps({"status": status, "error": "engine exited (-9)"}))
        r = _invoke("report", str(out))
        assert r.exit_code == code, r.output
        rows = [line.split(":", 1)[0].strip() for line in r.stdout.splitlines()[1:]]
        assert rows[:2] == ["status", "verdict"], r.stdout
        assert status.upper() in r.stdout.splitlines()[1]
        verdict = r.stdout.splitlines()[2]
        if status == "failed":
            assert "STABLE" not in verdict and verdict.split()[1] == "none", verdict
        else:  # the verdict of the part measured, said to be so, never in green
            assert "of the part measured before the stop" in verdict
            colored = CliRunner().invoke(cli, ["report", str(out)], color=True).stdout
            assert "\x1b[32m" not in colored and "INTERRUPTED" in colored  # no green at all
