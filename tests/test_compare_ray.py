"""`kvbench compare --ray`: each engine measured as a Ray task on a node with the GPUs it asks
for, its raw folder brought back, the report built from the same files as a local compare.
On the session's local cluster (conftest.ray_cluster), with a custom resource standing in for
GPUs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from ray_helpers import GPU_RESOURCE, GPUS

from kvbench.cli import cli

MEASURED = ("lower", "upper", "converged", "engine_seconds", "stop_reason")


def _compare(tmp_path: Path, *args: str):
    return CliRunner().invoke(
        cli,
        ["compare", "--no-progress", "--json", "--output-dir", str(tmp_path), *args],
        catch_exceptions=False,
    )


def _engines(directory: Path) -> dict[str, dict]:
    return {
        e["label"]: e
        for e in (json.loads(p.read_text()) for p in directory.glob("engines/*/engine.json"))
    }


def _figures(engine: dict) -> dict:
    return {
        "search": {k: engine["search"][k] for k in MEASURED},
        "probes": [(p["rate"], p["verdict"]) for p in engine["search"]["probes"]],
        "theory": engine["theory"],
        "batch_time": engine["batch_time"],
        "settings": engine["settings"],
    }


def test_simulated_engines_on_ray_give_the_local_compares_figures(ray_cluster, tmp_path):
    backends = ["--backends", "sim:trtllm,sim:sglang", "--seed", "3"]
    local = _compare(tmp_path / "local", *backends)
    assert local.exit_code == 0, local.output
    on_ray = _compare(tmp_path / "ray", *backends, "--ray", "--gpus-per-engine", "0")
    assert on_ray.exit_code == 0, on_ray.output
    (here,) = (tmp_path / "local").iterdir()
    (there,) = (tmp_path / "ray").iterdir()
    a, b = _engines(here), _engines(there)
    assert set(a) == set(b) == {"sim:trtllm", "sim:sglang"}
    for label in a:
        assert _figures(a[label]) == _figures(b[label])
    # the report is built from the brought-back files like any other
    results = json.loads(on_ray.stdout)
    assert [e["status"] for e in results["engines"]] == ["ok", "ok"]
    assert (there / "report.html").is_file() and (there / "summary.md").is_file()
    for e in b.values():  # every probe's run directory came back with its engine
        assert all((there / p["run_dir"] / "summary.json").is_file() for p in e["search"]["probes"])


def test_emulated_engines_start_on_the_nodes_that_hold_their_gpus(ray_cluster, tmp_path):
    """The emulator is launched inside its engine's Ray task (on a node holding the custom GPU
    resource), measured over HTTP there, and stopped there, beside a simulated engine's task."""
    r = _compare(
        tmp_path,
        "--backends",
        "trtllm,sim:sglang",
        "--precision",
        "0.4",
        "--ray",
        "--gpus-per-engine",
        "1",
        "--gpu-resource",
        GPU_RESOURCE,
    )
    results = json.loads(r.stdout)
    assert r.exit_code == 0, [e.get("error") for e in results["engines"]]
    assert [(e["label"], e["kind"], e["status"]) for e in results["engines"]] == [
        ("trtllm", "emulated", "ok"),
        ("sim:sglang", "simulated", "ok"),
    ]
    assert "EMULATED" in results["banner"] and "SIMULATED" in results["banner"]
    for e in results["engines"]:
        assert e["boundary"]["lower"] is not None and e["boundary"]["upper"] is not None
    (directory,) = tmp_path.iterdir()
    (server,) = _engines(directory)["trtllm"]["servers"]
    assert (directory / server["log"]).is_file()  # the emulator's log came back too


def test_an_engine_that_fails_on_its_node_is_a_failed_row_and_exit_1(ray_cluster, tmp_path):
    r = _compare(
        tmp_path,
        "--backends",
        "vllm,sim:trtllm",
        "--url",
        "vllm=http://127.0.0.1:9",
        "--precision",
        "0.4",
        "--ray",
        "--gpus-per-engine",
        "0",
    )
    assert r.exit_code == 1
    engines = {e["label"]: e for e in json.loads(r.stdout)["engines"]}
    assert engines["vllm"]["status"] == "failed" and "127.0.0.1:9" in engines["vllm"]["error"]
    assert engines["sim:trtllm"]["status"] == "ok"  # the other engine's measurement is kept


def test_more_gpus_than_any_node_has_is_refused_before_anything_runs(ray_cluster, tmp_path):
    r = _compare(
        tmp_path,
        "--backends",
        "sim:trtllm",
        "--ray",
        "--gpus-per-engine",
        str(GPUS + 1),
        "--gpu-resource",
        GPU_RESOURCE,
    )
    assert r.exit_code == 2
    assert f"no node of the Ray cluster has {GPUS + 1:g} {GPU_RESOURCE}" in r.output
    assert not list(tmp_path.iterdir())


def test_ray_options_without_ray_are_refused(tmp_path):
    r = _compare(tmp_path, "--backends", "sim:trtllm", "--gpus-per-engine", "1")
    assert r.exit_code == 2 and "--gpus-per-engine and --gpu-resource go with --ray" in r.output


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_a_bad_gpu_count_is_one_line(tmp_path, value):
    r = _compare(tmp_path, "--backends", "sim:trtllm", "--ray", "--gpus-per-engine", value)
    assert r.exit_code == 2 and "--gpus-per-engine" in r.output
