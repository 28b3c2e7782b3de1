"""`kvbench sweep --ray` on one local two-CPU Ray cluster, started once for the test session.

Without Ray these tests are skipped with the reason, so the README's test command passes on a
machine without the extra; under CI (`CI` set, or KVBENCH_REQUIRE_RAY=1 as .ci/run sets) a
missing Ray fails them instead."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kvbench.cli import cli
from kvbench.sweep.cell import evaluate_cell
from kvbench.sweep.grid import build_grid
from kvbench.sweep.pool import run_local
from kvbench.sweep.ray_cluster import run_ray


def ray_required() -> bool:
    return bool(os.environ.get("CI")) or os.environ.get("KVBENCH_REQUIRE_RAY") == "1"


def import_ray():
    try:
        import ray
    except ImportError:
        reason = "Ray not installed (pip install 'kvbench[ray]')"
        if ray_required():
            pytest.fail(f"{reason}, and CI or KVBENCH_REQUIRE_RAY=1 requires it")
        pytest.skip(f"{reason}; set KVBENCH_REQUIRE_RAY=1 to make this a failure")
    return ray


@pytest.fixture(scope="session")
def ray_cluster():
    ray = import_ray()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


def without_time(rows: list[dict]) -> dict[str, dict]:
    out = {}
    for r in rows:
        r = dict(r)
        r.pop("cell_seconds")
        out[r["key"]] = r
    return out


def small_cells(kv: list[str], **extra) -> list[dict]:
    cells = build_grid({}, {"workload": ["uniform:1-32,1-32"], "kv_tokens": kv}, "").cells()
    return [{**c, **extra} for c in cells]


def test_a_20_cell_sweep_gives_the_same_rows_on_ray_as_locally(ray_cluster, tmp_path):
    args = [
        "sweep",
        "--engine",
        "sim:vllm,sim:sglang",
        "--workload",
        "uniform:1-32,1-32",
        "--kv-tokens",
        "1024,1536,2048,3072,4096",
        "--seed",
        "0,1",
        "--target-rate",
        "600",
        "--gpu-price",
        "3",
        "--json",
    ]
    on_ray = CliRunner().invoke(cli, [*args, "--output", str(tmp_path / "ray"), "--ray"])
    local = CliRunner().invoke(cli, [*args, "--output", str(tmp_path / "local"), "--jobs", "1"])
    assert on_ray.exit_code == 0 and local.exit_code == 0, on_ray.output + local.output
    summary = json.loads(on_ray.output)
    assert summary["cells"] == 20 and summary["executor"] == "ray" and summary["failed"] == 0

    def read(name: str) -> dict[str, dict]:
        lines = (tmp_path / name / "cells.jsonl").read_text().splitlines()
        return without_time([json.loads(line) for line in lines])

    assert read("ray") == read("local")
    assert ray_cluster.is_initialized()  # a cluster kvbench did not start is left running


def test_a_worker_killed_mid_sweep_is_retried_and_the_sweep_completes(ray_cluster, tmp_path):
    marker = tmp_path / "killed"
    cells = small_cells(["1024", "2048", "3072", "4096"], marker=str(marker))

    def dies_once(cell: dict) -> dict:
        if cell["kv_tokens"] == 2048 and not Path(cell["marker"]).exists():
            Path(cell["marker"]).write_text("killed once")
            os.kill(os.getpid(), signal.SIGKILL)
        return evaluate_cell(cell)

    got: list[dict] = []
    run_ray(cells, got.append, fn=dies_once, max_retries=2)
    assert marker.read_text() == "killed once"
    assert len(got) == 4 and all(r["status"] == "ok" for r in got)
    assert without_time(got) == without_time([evaluate_cell(c) for c in cells])


def test_a_cell_that_keeps_failing_gets_a_failed_row(ray_cluster, tmp_path):
    cells = small_cells(["1024", "2048"])

    def worker_always_dies_on_2048(cell: dict) -> dict:
        if cell["kv_tokens"] == 2048:
            os.kill(os.getpid(), signal.SIGKILL)
        return evaluate_cell(cell)

    got: list[dict] = []
    run_ray(cells, got.append, fn=worker_always_dies_on_2048, max_retries=1)
    by_m = {r["kv_tokens"]: r for r in got}
    assert by_m[1024]["status"] == "ok" and by_m[1024]["lambda_star"] > 0
    assert by_m[2048]["status"] == "failed" and by_m[2048]["lambda_star"] is None
    assert by_m[2048]["error"].startswith("Ray task failed after 2 attempts:")


def test_an_always_failing_cell_on_ray_exits_1_with_the_rest_kept(ray_cluster, tmp_path):
    # M = 40 cannot hold a request of 64 tokens: the cell's own error, not retried
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli,
        [
            "sweep",
            "--workload",
            "uniform:1-32,1-32",
            "--kv-tokens",
            "40,1024",
            "--output",
            str(out),
            "--ray",
            "--json",
        ],
    )
    assert result.exit_code == 1, result.output
    rows = [json.loads(line) for line in (out / "cells.jsonl").read_text().splitlines()]
    by_m = {r["kv_tokens"]: r for r in rows}
    assert by_m[40]["status"] == "failed" and "does not fit in M = 40" in by_m[40]["error"]
    assert by_m[1024]["status"] == "ok"


def test_resume_on_ray_runs_only_the_missing_cells(ray_cluster, tmp_path):
    out = tmp_path / "out"
    args = [
        "sweep",
        "--workload",
        "uniform:1-32,1-32",
        "--kv-tokens",
        "1024,2048,3072,4096",
        "--output",
        str(out),
        "--json",
    ]
    first = CliRunner().invoke(cli, [*args, "--jobs", "1"])
    assert first.exit_code == 0, first.output
    rows_file = out / "cells.jsonl"
    lines = rows_file.read_text().splitlines()
    # the sweep as a stop after two cells leaves it
    rows_file.write_text("\n".join(lines[:2]) + "\n")
    resumed = CliRunner().invoke(cli, [*args, "--ray", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.output)
    assert (summary["skipped"], summary["ran"]) == (2, 2)
    after = rows_file.read_text().splitlines()
    assert after[:2] == lines[:2] and len(after) == 4
    assert without_time([json.loads(x) for x in after]) == without_time(
        [json.loads(x) for x in lines]
    )


def test_local_executor_rows_equal_ray_rows_for_the_same_cells(ray_cluster):
    cells = small_cells(["1024", "4096"])
    local: list[dict] = []
    remote: list[dict] = []
    run_local(cells, local.append, jobs=2)
    run_ray(cells, remote.append)
    assert without_time(local) == without_time(remote)


@pytest.fixture
def no_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("KVBENCH_REQUIRE_RAY", raising=False)
    return monkeypatch


def test_skipped_with_the_reason_without_ray(no_ray):
    with pytest.raises(pytest.skip.Exception, match="Ray not installed"):
        import_ray()


@pytest.mark.parametrize("var, value", [("CI", "true"), ("KVBENCH_REQUIRE_RAY", "1")])
def test_required_under_ci(no_ray, var, value):
    no_ray.setenv(var, value)
    with pytest.raises(pytest.fail.Exception, match="requires it"):
        import_ray()
