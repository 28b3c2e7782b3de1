"""Unattended runs (stderr not a terminal: a job runner's log): plain lines, one per probe and
one a minute, each with the engine-second budget used and left."""

from __future__ import annotations

import re
import time

from click.testing import CliRunner

from kvbench.backends.base import QueueSample
from kvbench.cli import cli
from kvbench.output.compare_progress import PlainCompareProgress
from kvbench.output.progress import RunProgress, budget_text, elapsed


def test_budget_and_elapsed_read_as_a_person_reads_them():
    assert budget_text(1234.4, 43200) == "1,234 of 43,200 engine-s used, 41,966 left"
    assert budget_text(50_000, 43200).endswith(", 0 left")
    assert [elapsed(s) for s in (5, 59.4, 60, 3599, 3600, 3 * 3600 + 5 * 60)] == [
        "5 s",
        "59 s",
        "1 min",
        "59 min",
        "1 h 00 min",
        "3 h 05 min",
    ]


def test_compare_lines_off_a_terminal(capsys):
    with PlainCompareProgress(interval=0.05) as view:
        view.engine_started("h200-trt", "real", 0, 2)
        view.phase("h200-trt", "probe", 3.4, 600)
        view.sample("h200-trt", QueueSample(time=12.0, in_flight=87, waiting=12))
        time.sleep(0.3)  # a hung engine sends nothing; the minute line still comes
        view.probe_finished("h200-trt", 3.4, "UNSTABLE", 600.0, 43200.0)
        view.engine_finished("h200-trt", "ok", None)
        time.sleep(0.2)  # no minute line for an engine that is done
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "[0 s] h200-trt (1/2): starting"
    beats = [x for x in lines if "probe λ = 3.400 req/s, " in x]
    assert len(beats) >= 2, lines
    assert re.search(r"of ~600 s, 87 in system, 12 waiting$", beats[0]), beats[0]
    assert (
        "h200-trt (1/2): probe 1 λ = 3.400 req/s UNSTABLE; 600 of 43,200 engine-s used, "
        "42,600 left" in lines[-2]
    )
    assert lines[-1].endswith("h200-trt (1/2): done; 600 of 43,200 engine-s used, 42,600 left")


def test_run_minute_lines_off_a_terminal(capsys):
    with RunProgress("vllm λ=2", 600.0, interval=0.05) as progress:
        time.sleep(0.12)
        progress.sample(QueueSample(time=30.0, in_flight=4))
        time.sleep(0.12)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("  vllm λ=2: no event yet of 600 s, 0 requests done (")
    assert any(x.startswith("  vllm λ=2: t = 30 s of 600 s, 0 requests done (") for x in lines)


def test_boundary_prints_each_probe_with_its_budget_off_a_terminal():
    r = CliRunner().invoke(
        cli,
        [
            "boundary",
            "--backend",
            "sim:vllm",
            "--method",
            "open-loop",
            "--precision",
            "0.2",
            "--max-engine-seconds",
            "20000",
        ],
    )
    assert r.exit_code == 0, r.output
    probes = [x for x in r.stderr.splitlines() if x.startswith("  probe λ = ")]
    assert len(probes) >= 2
    assert all("of 20,000 engine-s used" in x for x in probes)
