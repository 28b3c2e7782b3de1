"""The run directory: incremental writes, and reading back complete, torn and killed runs."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from kvbench.backends.base import QueueSample, RequestRecord
from kvbench.benchmark.recorder import (
    REQUESTS_FILE,
    SUMMARY_FILE,
    RunRecorder,
    read_run,
    write_summary,
)
from kvbench.errors import KvbenchError

# what the runner writes, down to the fields a summary is computed from (read_run checks them)
HEADER = {
    "kind": "simulated",
    "backend": "sim:ideal",
    "config": {"request_rate": 2.0},
    "window_end": 5.0,
}


def _record(i):
    return RequestRecord(
        i,
        i * 0.5,
        100 + i,
        20,
        sent=i * 0.5,
        first_token=i * 0.5 + 0.1,
        finished=i * 0.5 + 1.0,
        output_tokens=20,
        token_times=[0.1, 0.2],
    )


def test_round_trip(tmp_path):
    rec = RunRecorder(tmp_path / "r", {**HEADER, "seed": 7})
    for i in range(3):
        rec.request(_record(i))
    rec.sample(
        QueueSample(time=1.0, in_flight=2, waiting=0, running=2, kv_used_tokens=float("nan"))
    )
    rec.close()
    data = read_run(tmp_path / "r")
    assert data.header["seed"] == 7 and data.header["format"] == "kvbench-run/1"
    assert data.records == [_record(i) for i in range(3)]
    assert data.samples[0].kv_used_tokens is None  # NaN is written as null
    assert data.status == "completed" and not data.truncated


def test_each_line_is_on_disk_before_the_run_ends(tmp_path):
    rec = RunRecorder(tmp_path, {**HEADER, "seed": 1})
    rec.request(_record(0))
    lines = (tmp_path / REQUESTS_FILE).read_text().splitlines()
    assert [json.loads(x)["request_id"] for x in lines] == [0]
    data = read_run(tmp_path)
    assert data.truncated and len(data.records) == 1


def test_torn_last_line_is_dropped(tmp_path):
    rec = RunRecorder(tmp_path, {**HEADER, "seed": 1})
    rec.request(_record(0))
    with open(tmp_path / REQUESTS_FILE, "a") as f:
        f.write('{"request_id": 1, "inten')
    data = read_run(tmp_path)
    assert len(data.records) == 1 and data.torn_lines == 1


def test_refuses_to_overwrite_a_run(tmp_path):
    RunRecorder(tmp_path, {}).close()
    with pytest.raises(KvbenchError, match="already holds a run"):
        RunRecorder(tmp_path, {})


def test_garbage_is_a_one_line_error_naming_the_line(tmp_path):
    (tmp_path / "header.json").write_text(json.dumps({**HEADER, "format": "kvbench-run/1"}))
    (tmp_path / REQUESTS_FILE).write_text(
        '{"request_id": 0, "intended_send": 0, "prompt_len": 1, "output_len": 1}\nnot json\n'
    )
    with pytest.raises(KvbenchError, match=r"requests.jsonl:2:"):
        read_run(tmp_path)
    with pytest.raises(KvbenchError, match="missing"):
        read_run(tmp_path / "missing")


def test_a_killed_writer_leaves_a_readable_run(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from kvbench.backends.base import RequestRecord
        from kvbench.benchmark.recorder import RunRecorder
        rec = RunRecorder({str(tmp_path)!r}, {{**{HEADER!r}, "seed": 3}})
        for i in range(10_000):
            rec.request(RequestRecord(i, float(i), 10, 10, sent=float(i), finished=i + 1.0))
            if i == 50:
                print("ready", flush=True)
            time.sleep(0.001 if i > 50 else 0)
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    data = read_run(tmp_path)
    assert data.truncated and data.status == "killed"
    assert len(data.records) >= 51
    assert [r.request_id for r in data.records] == list(range(len(data.records)))


def test_a_summary_with_unknown_figures_is_strict_json(tmp_path):
    # a summary's NaN sits deep in nested dicts (a verdict's evidence); JSON has no NaN, and a
    # strict reader (jq, JavaScript) rejects the file that holds one
    write_summary(tmp_path, {"verdict": "STABLE", "evidence": {"slope": float("nan")}, "x": [1.5]})

    def refuse(constant):
        raise AssertionError(f"{constant} in summary.json")

    data = json.loads((tmp_path / SUMMARY_FILE).read_text(), parse_constant=refuse)
    assert data == {"verdict": "STABLE", "evidence": {"slope": None}, "x": [1.5]}
