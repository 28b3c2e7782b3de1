"""`kvbench sweep` on the local executor: the grid, each cell's figures against `kvbench theory`,
`kvbench boundary` and hand-computed values, incremental rows, --resume, failed cells, the
report. The Ray executor: tests/test_sweep_ray.py."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from kvbench.cli import cli
from kvbench.errors import KvbenchError
from kvbench.sweep.cell import evaluate_cell
from kvbench.sweep.grid import build_grid, cell_key, parse_engine, split_values
from kvbench.sweep.pool import run_local
from kvbench.sweep.store import SweepStore

SMALL = ["--workload", "uniform:1-32,1-32", "--kv-tokens", "1024,4096"]


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def rows(path: Path) -> dict[str, dict]:
    """cells.jsonl by key, without the one field that differs between runs (wall time)."""
    out = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        row.pop("cell_seconds")
        out[row["key"]] = row
    return out


def test_a_cell_agrees_with_theory_and_boundary_and_hand_computed_provisioning(tmp_path):
    result = run(
        "sweep",
        "--engine",
        "sim:vllm",
        "--workload",
        "fixed:32,32",
        "--kv-tokens",
        "2048",
        "--seed",
        "3",
        "--target-rate",
        "1000",
        "--gpu-price",
        "2.5",
        "--gpus-per-replica",
        "2",
        "--output",
        str(tmp_path / "out"),
        "--jobs",
        "1",
    )
    assert result.exit_code == 0, result.output
    assert "SIMULATED" in result.output
    (row,) = rows(tmp_path / "out" / "cells.jsonl").values()
    theory = json.loads(
        run(
            "theory",
            "--engine",
            "vllm",
            "--workload",
            "fixed:32,32",
            "--kv-tokens",
            "2048",
            "--json",
        ).output
    )
    assert row["mu_engine_aware"] == theory["mu_engine_aware"]
    assert row["binding"] == theory["binding"]
    assert row["mu_paper"] == theory["mu_paper"]
    # paper's g(32, 32) with ŝ = 512: [(1 + 32/512)·32 + 2·32·32 + 33·32] / 2 = 1569
    assert row["mu_paper"] == pytest.approx(2048 / (row["iteration_time"] * 1569), rel=1e-12)
    boundary = json.loads(
        run(
            "boundary",
            "--backend",
            "sim:vllm",
            "--workload",
            "fixed:32,32",
            "--kv-tokens",
            "2048",
            "--seed",
            "3",
            "--json",
        ).output
    )
    assert row["lambda_star"] == boundary["capacity_estimate"]
    assert [row["lambda_lower"], row["lambda_upper"]] == [boundary["lower"], boundary["upper"]]
    assert row["simulated"] is True and row["status"] == "ok"
    need = math.ceil(1000 / (0.9 * row["lambda_star"]))
    assert row["replicas_needed"] == need
    assert row["gpus_needed"] == 2 * need and row["usd_per_hour"] == 2 * need * 2.5
    # at 1000 req/s, a million requests take 1000 s of the fleet
    assert row["usd_per_million_requests"] == pytest.approx(2 * need * 2.5 * 1000 / 3600)
    assert row["replicas_needed_paper"] == math.ceil(1000 / (0.9 * row["mu_paper"]))


def test_replicas_cell_measures_the_total_over_replicas(tmp_path):
    grid = build_grid(
        {},
        {
            "engine": ["sim:vllm"],
            "workload": ["uniform:1-32,1-32"],
            "kv_tokens": ["1024"],
            "replicas": ["1", "3"],
        },
        "",
    )
    one, three = (evaluate_cell(c) for c in grid.cells())
    assert three["lambda_star_per_replica"] == pytest.approx(three["lambda_star"] / 3)
    # three replicas behind round-robin carry about three times one replica's rate
    assert three["lambda_star"] == pytest.approx(3 * one["lambda_star"], rel=0.15)
    assert three["mu_engine_aware"] == one["mu_engine_aware"]  # theories are per replica


def test_grid_from_toml_with_flags_over_it(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(
        'engine = ["sim:vllm", "sim:sglang:token_budget=4096,max_running=64"]\n'
        'workload = "uniform:1-32,1-32"\nkv_tokens = [1024, 2048]\nseed = [0, 1]\n'
        "precision = 0.1\n"
    )
    from kvbench.sweep.grid import load_grid_file

    grid = build_grid(load_grid_file(str(path)), {"seed": ["5"]}, str(path))
    cells = grid.cells()
    assert len(cells) == 2 * 2 * 1
    assert {c["seed"] for c in cells} == {5} and {c["precision"] for c in cells} == {0.1}
    sglang = [c for c in cells if c["rule"] == "sglang"]
    assert sglang[0]["settings"] == {"token_budget": 4096, "max_running": 64}
    assert len({c["key"] for c in cells}) == len(cells)
    # the key is a function of the parameters alone
    assert cells[0]["key"] == cell_key(dict(cells[0])) == grid.cells()[0]["key"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("engin = ['sim:vllm']\n", "grid.toml:1: unknown key 'engin'"),
        ("seed = 1\nprecision = 'x'\n", "grid.toml:2: precision must be a number"),
        ("kv_tokens = ['big']\n", "kv_tokens values must be an integer"),
        ("engine = 'vllm'\n", "a sweep runs the simulator"),
        ("engine = 'sim:vllm:budget=1'\n", "is not KEY=VALUE with KEY one of"),
        ("engine = 'sim:vllm:token_budget=-3'\n", "token_budget must be a positive integer"),
        ("burstiness = [1, 2]\n", "add --method open-loop"),
        ("seed = [1, 1]\n", "repeats a value"),
        ("seed = [\n", "grid.toml: "),
    ],
)
def test_bad_grid_is_one_line_exit_2(tmp_path, text, message):
    path = tmp_path / "grid.toml"
    path.write_text(text)
    result = run("sweep", "--grid", str(path), "--output", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert message in result.output and result.output.startswith("error: ")
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_split_values_keeps_an_engines_settings_together():
    assert split_values(("sim:vllm,sim:trtllm:token_budget=4096,max_running=8", "sim:ideal")) == [
        "sim:vllm",
        "sim:trtllm:token_budget=4096,max_running=8",
        "sim:ideal",
    ]
    assert parse_engine("sim:vllm:prefix_caching=false").settings == {"prefix_caching": False}
    with pytest.raises(KvbenchError, match="unknown rule"):
        parse_engine("sim:vlm")


def test_pool_gives_the_same_rows_as_one_process(tmp_path):
    args = ["sweep", "--engine", "sim:vllm,sim:trtllm", *SMALL, "--seed", "0,1", "--json"]
    one = run(*args, "--output", str(tmp_path / "one"), "--jobs", "1")
    two = run(*args, "--output", str(tmp_path / "two"), "--jobs", "2")
    assert one.exit_code == 0 and two.exit_code == 0, one.output + two.output
    assert json.loads(two.output)["cells"] == 8
    assert rows(tmp_path / "one" / "cells.jsonl") == rows(tmp_path / "two" / "cells.jsonl")
    table = pd.read_parquet(tmp_path / "two" / "cells.parquet")
    assert len(table) == 8 and set(table["status"]) == {"ok"} and table["simulated"].all()
    page = (tmp_path / "two" / "report.html").read_text()
    assert "SIMULATED" in page and "plot-capacity" in page and "plot-replicas" in page
    assert page.count("<tr class=") == 8


def test_a_failing_cell_gets_a_failed_row_and_exit_1_and_the_others_are_kept(tmp_path):
    # M = 40 cannot hold a request of 64 tokens: that cell fails, the others finish
    out = tmp_path / "out"
    result = run(
        "sweep",
        "--workload",
        "uniform:1-32,1-32",
        "--kv-tokens",
        "40,1024",
        "--output",
        str(out),
        "--jobs",
        "2",
        "--json",
    )
    assert result.exit_code == 1, result.output
    assert json.loads(result.output)["failed"] == 1
    by_m = {r["kv_tokens"]: r for r in rows(out / "cells.jsonl").values()}
    assert by_m[40]["status"] == "failed" and by_m[40]["lambda_star"] is None
    assert "does not fit in M = 40 KV tokens" in by_m[40]["error"]
    assert by_m[1024]["status"] == "ok" and by_m[1024]["lambda_star"] > 0
    assert "does not fit" in (out / "report.html").read_text()


def test_pool_retries_a_cell_whose_worker_died(tmp_path):
    marker = tmp_path / "died-once"
    cells = [
        {**c, "marker": str(marker)}
        for c in build_grid(
            {}, {"workload": ["uniform:1-32,1-32"], "kv_tokens": ["1024", "2048", "4096"]}, ""
        ).cells()
    ]
    got: list[dict] = []
    run_local(cells, got.append, jobs=2, fn=dies_once, max_retries=2)
    assert marker.read_text() == "killed once"
    assert len(got) == 3 and all(r["status"] == "ok" for r in got)
    expected = {c["key"]: evaluate_cell(c) for c in cells}
    for r in [*got, *expected.values()]:
        r.pop("cell_seconds")
    assert {r["key"]: r for r in got} == expected


def test_pool_gives_up_on_a_cell_whose_worker_always_dies(tmp_path):
    cells = build_grid({}, {"workload": ["uniform:1-32,1-32"], "kv_tokens": ["1024"]}, "").cells()
    got: list[dict] = []
    run_local(cells, got.append, jobs=2, fn=always_dies, max_retries=1)
    assert [r["status"] for r in got] == ["failed"]
    assert got[0]["error"] == "worker process lost on each of 2 attempts"


def dies_once(cell: dict) -> dict:
    """Kills its own worker the first time it sees the 2048-token cell (its marker file says
    it has), then evaluates normally."""
    marker = Path(cell["marker"])
    if cell["kv_tokens"] == 2048 and not marker.exists():
        marker.write_text("killed once")
        os.kill(os.getpid(), signal.SIGKILL)
    return evaluate_cell(cell)


def always_dies(cell: dict) -> dict:
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


def test_resume_after_a_stop_runs_only_the_missing_cells(tmp_path):
    out = tmp_path / "out"
    args = [
        sys.executable,
        "-m",
        "kvbench",
        "sweep",
        "--engine",
        "sim:vllm,sim:sglang",
        "--workload",
        "uniform:1-32,1-32",
        "--kv-tokens",
        "1024,2048,3072,4096",
        "--seed",
        "0,1",
        "--output",
        str(out),
        "--jobs",
        "1",
        "--json",
    ]
    # SIGINT at its default, however pytest was started (a background job inherits it ignored)
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    rows_file = out / "cells.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
        not rows_file.exists() or len(rows_file.read_text().splitlines()) < 3
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    kept = rows(rows_file)
    assert 3 <= len(kept) < 16
    assert b"--resume runs the rest" in err
    # a kill mid-write leaves half a line: resume drops it
    with rows_file.open("a") as f:
        f.write('{"key": "cut sho')
    result = subprocess.run([*args, "--resume"], capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["skipped"] == len(kept) and summary["ran"] == 16 - len(kept)
    final = rows(rows_file)
    assert len(final) == 16 and all(final[k] == kept[k] for k in kept)
    fresh = tmp_path / "fresh"
    full = subprocess.run(
        [*args[:-5], "--output", str(fresh), "--jobs", "2", "--json"],
        capture_output=True,
        timeout=120,
    )
    assert full.returncode == 0, full.stderr
    assert rows(fresh / "cells.jsonl") == final


def test_output_in_use_needs_resume_and_resume_needs_a_sweep(tmp_path):
    out = tmp_path / "out"
    assert run("sweep", *SMALL, "--output", str(out), "--jobs", "1").exit_code == 0
    again = run("sweep", *SMALL, "--output", str(out))
    assert again.exit_code == 2 and "pass --resume" in again.output
    nothing = run("sweep", *SMALL, "--output", str(tmp_path / "none"), "--resume")
    assert nothing.exit_code == 2 and "no sweep to continue" in nothing.output


def test_csv_table_without_pyarrow(tmp_path, monkeypatch):
    store = SweepStore(tmp_path, resume=False)
    store.append({"key": "a", "status": "ok", "settings": {"token_budget": 8}})
    store.close()
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` raises ImportError
    path = store.write_table(store.table(["a"]))
    assert path.name == "cells.csv"
    monkeypatch.undo()
    assert pd.read_csv(path).to_dict("records") == [
        {"key": "a", "status": "ok", "settings": '{"token_budget": 8}'}
    ]


def test_ray_without_the_extra_is_one_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    result = run("sweep", *SMALL, "--output", str(tmp_path / "out"), "--ray")
    assert result.exit_code == 2
    assert (
        result.output
        == "error: --ray needs Ray, which is not installed: pip install 'kvbench[ray]'\n"
    )


def test_jobs_with_a_ray_address_is_refused(tmp_path):
    result = run("sweep", *SMALL, "--output", str(tmp_path / "o"), "--ray", "h:6379", "--jobs", "2")
    assert result.exit_code == 2 and "runs on its own CPUs" in result.output


def test_open_loop_cells_take_burstiness_and_bracket_the_same_boundary(tmp_path):
    """The stability boundary is the engine's saturated rate whatever the arrivals' burstiness:
    open-loop brackets at shape 1 (Poisson) and 4 both hold the backlog method's λ* (±5%)."""
    flags = {"workload": ["uniform:1-32,1-32"], "kv_tokens": ["1024"]}
    (backlog,) = build_grid({}, flags, "").cells()
    star = evaluate_cell(backlog)["lambda_star"]
    grid = build_grid(
        {}, {**flags, "burstiness": ["1", "4"], "method": "open-loop", "precision": 0.1}, ""
    )
    for cell in grid.cells():
        row = evaluate_cell(cell)
        assert row["status"] == "ok" and row["method"] == "open-loop"
        assert row["lambda_lower"] <= 1.05 * star and row["lambda_upper"] >= 0.95 * star, row


def test_an_unreachable_ray_address_is_one_line_at_once(tmp_path):
    pytest.importorskip("ray")  # required under CI: tests/test_sweep_ray.py
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    result = run("sweep", *SMALL, "--output", str(tmp_path / "o"), "--ray", f"127.0.0.1:{port}")
    assert time.monotonic() - started < 10
    assert result.exit_code == 2 and "cannot reach the Ray cluster's head" in result.output
    assert not (tmp_path / "o").exists()


def test_the_terminal_shows_each_cells_bracket_beside_both_theories():
    from kvbench.output.sweep import MAX_SHOWN, cell_lines

    ok = {
        "engine": "sim:vllm", "workload": "pd-1:1", "M": 131000, "status": "ok", "replicas": 2,
        "lambda_lower": 4.5, "lambda_upper": 4.7, "mu_engine_aware": 2.3, "binding": "memory",
        "mu_paper": 3.263, "replicas_needed": 12, "usd_per_hour": 30.0,
    }  # fmt: skip
    failed = {"engine": "sim:sglang", "workload": "pd-1:1", "M": None, "status": "failed",
              "error": "worker died 3 times"}  # fmt: skip
    lines = cell_lines([ok, failed])
    assert lines[0].split() == [
        "engine", "workload", "M", "λ*", "(req/s)", "engine-aware", "μ", "paper", "μ",
        "replicas", "USD/h",
    ]  # fmt: skip
    # per-replica theories times the replicas, beside the measured total
    assert lines[1].split() == [
        "sim:vllm", "pd-1:1", "131,000", "4.500", "–", "4.700", "4.600", "(memory)", "6.526",
        "12", "30.00",
    ]  # fmt: skip
    assert lines[2].split()[:3] == ["sim:sglang", "pd-1:1", "preset"]
    assert lines[2].endswith("FAILED: worker died 3 times")
    # columns line up: every value starts where its header does
    assert lines[1].index("4.500") == lines[0].index("λ*") == lines[2].index("FAILED")
    assert cell_lines([ok] * (MAX_SHOWN + 1)) == []
