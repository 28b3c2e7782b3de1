"""kvbench compare end to end: on the simulated engines (orchestration, the report rebuilt from
the raw files, a failed engine, Ctrl-C) and on the default, emulated engines (started as child
processes, measured over HTTP, stopped afterwards, and agreeing with the simulator)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from kvbench.backends import engines, launch
from kvbench.benchmark.compare import run_compare
from kvbench.benchmark.compare_config import EMBEDDED, CompareConfig
from kvbench.cli import cli
from kvbench.engine_theory import LengthLaw, engine_aware_mu
from kvbench.export.compare_report import write_report
from kvbench.profile import build_profile
from kvbench.report.schema import load_results
from kvbench.workload import load_workload

# Small enough for CI: a coarse bracket on a bounded budget.
# The open-loop search's tests (the bounded-backlog default has its own, below).
FAST = [
    "--precision",
    "0.2",
    "--max-engine-seconds",
    "3000",
    "--seed",
    "3",
    "--method",
    "open-loop",
]


def _compare(tmp_path: Path, *args: str) -> tuple[int, str, Path | None]:
    result = CliRunner().invoke(
        cli, ["compare", "--output-dir", str(tmp_path), "--no-progress", *FAST, *args]
    )
    dirs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    return result.exit_code, result.stdout, dirs[-1] if dirs else None


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    # the simulated engines, at the paper's scale (a --url makes pd-1:1 and M = 131,000 the
    # defaults); vllm points at a closed port: it must fail alone, with its row marked
    code, output, directory = _compare(
        out,
        "--backends",
        "sim:trtllm,sim:sglang,vllm",
        "--url",
        "vllm=http://127.0.0.1:9",
        "--target-rate",
        "40",
        "--json",
    )
    # the report is written, and the failed engine makes the exit status 1
    assert code == 1, output
    return json.loads(output), directory


def test_embedded_compare_measures_both_engines_beside_theory(embedded):
    results, directory = embedded
    assert [e["label"] for e in results["engines"]] == ["sim:trtllm", "sim:sglang", "vllm"]
    assert results["config"]["workload"] == "pd-1:1"
    assert results["banner"] and "not from GPU measurements" in results["banner"]
    for e in results["engines"][:2]:
        assert e["status"] == "ok", e["error"]
        assert e["kind"] == "simulated" and e["profile"]["kv_tokens"] == 131_000
        lower, upper = e["boundary"]["lower"], e["boundary"]["upper"]
        assert lower is not None and upper is not None and lower < upper
        verdicts = {p["rate"]: p["verdict"] for p in e["probes"]}
        assert verdicts[lower] == "STABLE"
        # no probe at or above the bracket is stable, none below it unstable
        assert all(v != "STABLE" for r, v in verdicts.items() if r >= upper)
        assert all(v != "UNSTABLE" for r, v in verdicts.items() if r <= lower)
        t = e["theory"]
        assert t["mu"] == pytest.approx(
            e["profile"]["kv_tokens"] / (e["batch_time"]["value"] * t["mean_g"])
        )
        # the simulated engines' iteration-time model is known, so the engine-aware μ uses it
        # (not the client's b̄) and lands on the measured bracket
        assert t["iteration_model"] == "engine profile"
        assert lower * 0.95 <= t["mu_engine_aware"] <= upper * 1.05
        assert e["provisioning"]["replicas_theory"] >= 1
    for name in ("report.html", "summary.md", "results.json", "probes.csv", "samples.csv"):
        assert (directory / name).is_file(), name


def test_report_command_rebuilds_the_same_results(embedded):
    results, directory = embedded
    before = (directory / "results.json").read_text()
    (directory / "results.json").unlink()
    (directory / "report.html").unlink()
    result = CliRunner().invoke(cli, ["report", str(directory)])
    assert result.exit_code == 1, result.output  # vllm FAILED, as in the compare itself
    assert result.stderr.strip() == "error: vllm FAILED (see the report)"
    assert (directory / "results.json").read_text() == before
    assert (directory / "report.html").is_file()


def test_engine_that_fails_to_start_gets_a_failed_row(embedded):
    _, directory = embedded
    results = load_results(directory / "results.json")
    failed = results.engines[2]
    assert failed.status == "failed" and "127.0.0.1:9" in failed.error
    assert failed.kind == "real" and failed.probes == []
    assert "FAILED" in (directory / "summary.md").read_text()
    assert '<tr class="failed"' in (directory / "report.html").read_text()


class _StopAfter:
    """A progress observer that presses Ctrl-C after `n` probes."""

    def __init__(self, n: int):
        self.n = n

    def engine_started(self, *a): ...
    def phase(self, *a): ...
    def sample(self, *a): ...
    def engine_finished(self, *a): ...

    def probe_finished(self, label, rate, verdict, spent, budget):
        self.n -= 1
        if self.n == 0:
            raise KeyboardInterrupt


def test_ctrl_c_keeps_finished_probes_and_still_reports(tmp_path):
    config = CompareConfig(
        backends=["sim:trtllm", "sim:sglang"],
        precision=0.2,
        max_engine_seconds=3000,
        seed=3,
        output_root=tmp_path,
        method="open-loop",
    )
    directory = run_compare(config, _StopAfter(2))
    report, _ = write_report(directory)
    r = report.results
    assert r.interrupted
    first, second = r.engines
    assert first.status == "interrupted" and len(first.probes) == 2
    assert second.status == "interrupted" and second.error.startswith("not started")
    assert "Interrupted" in (directory / "report.html").read_text()


def test_results_numbers_equal_the_raw_run_files(embedded):
    results, directory = embedded
    for i, e in enumerate(results["engines"][:2]):
        raw = json.loads(next(directory.glob(f"engines/{i}-*/engine.json")).read_text())
        assert e["engine_seconds"] == pytest.approx(
            raw["calibration"]["engine_seconds"]
            + sum(p["engine_seconds"] for p in raw["search"]["probes"])
        )
        assert e["boundary"]["lower"] == raw["search"]["lower"]
        assert e["boundary"]["upper"] == raw["search"]["upper"]
        for probe in e["probes"]:
            lines = (directory / probe["run_dir"] / "requests.jsonl").read_text().splitlines()
            records = [json.loads(line) for line in lines]
            assert probe["requests_sent"] == sum(r["sent"] is not None for r in records)
            assert probe["requests_finished"] == sum(
                r["finished"] is not None and r["error"] is None for r in records
            )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a child that exited but was not reaped yet is gone for every purpose here
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[-1][0] != "Z"


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    """The default path: no --url, no --launch, no --workload (the embedded default), with the
    TensorRT-LLM rule both emulated and simulated, and an SGLang emulator that cannot start.
    Coarse, so fast: a 40% bracket."""
    out = tmp_path_factory.mktemp("emulated")
    real_recipe = engines.emulator_recipe

    def recipe(engine):
        if engine != "sglang":
            return real_recipe(engine)
        broken = real_recipe(engine)
        return launch.Recipe(
            **{
                **broken.__dict__,
                "command": [
                    "{python}",
                    "-c",
                    "import sys; print('no GPU here either'); sys.exit(3)",
                ],
            }
        )

    mp = pytest.MonkeyPatch()
    mp.setattr(engines, "emulator_recipe", recipe)
    try:
        result = CliRunner().invoke(
            cli,
            [
                "compare",
                "--output-dir",
                str(out),
                "--no-progress",
                "--json",
                "--backends",
                "trtllm,sim:trtllm,sglang",
                "--precision",
                "0.4",
                "--seed",
                "1",
                "--method",
                "open-loop",
            ],
        )
    finally:
        mp.undo()
    # sglang's emulator does not start: its row is FAILED, so the exit status is 1
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().endswith("FAILED (see the report)"), result.stderr
    return json.loads(result.stdout), next(out.iterdir())


def test_default_compare_measures_emulated_engines_over_http(emulated):
    results, directory = emulated
    config = results["config"]
    assert (config["workload"], config["kv_tokens"]) == (EMBEDDED.workload, EMBEDDED.kv_tokens)
    trt, sim, sglang = results["engines"]
    assert (trt["backend"], trt["kind"], trt["status"]) == ("emulate:trtllm", "emulated", "ok"), (
        trt.get("error")
    )
    assert trt["profile"]["kv_tokens"] == EMBEDDED.kv_tokens  # discovered from /metrics
    assert "EMULATED" in results["banner"]
    assert f"{EMBEDDED.time_scale:g} engine seconds per real second" in results["banner"]
    assert "emulated" in (directory / "summary.md").read_text()
    # every probe ran against the emulator, in the engine's seconds
    raw = json.loads((directory / "engines/0-trtllm/engine.json").read_text())
    assert raw["time_scale"] == EMBEDDED.time_scale
    for probe in raw["search"]["probes"]:
        header = json.loads((directory / probe["run_dir"] / "header.json").read_text())
        assert header["kind"] == "emulated" and header["time_scale"] == EMBEDDED.time_scale
    # the emulator processes kvbench started are gone
    servers = raw["servers"]
    assert len(servers) == 1 and (directory / servers[0]["log"]).is_file()
    assert not _alive(servers[0]["pid"])
    # an engine whose emulator does not start: a failed row naming its exit and log
    assert sglang["status"] == "failed" and "exited with code 3" in sglang["error"]
    assert sglang["probes"] == []


def test_emulated_boundary_agrees_with_the_same_configuration_simulated(emulated):
    results, directory = emulated
    trt, sim, _ = results["engines"]
    assert sim["kind"] == "simulated" and sim["profile"]["kv_tokens"] == EMBEDDED.kv_tokens
    (elo, ehi), (slo, shi) = [(e["boundary"]["lower"], e["boundary"]["upper"]) for e in (trt, sim)]
    assert None not in (elo, ehi, slo, shi), trt.get("error")
    # the brackets overlap; at this coarse precision (40%) their midpoints may not agree closely,
    # but the capacity the overloaded probes measured does
    assert elo < shi and slo < ehi

    def capacity(engine):
        return np.median(
            [p["departure_rate"] for p in engine["probes"] if p["verdict"] == "UNSTABLE"]
        )

    assert capacity(trt) == pytest.approx(capacity(sim), rel=0.06)
    # b̄ from the emulated engine's streamed tokens, converted to its seconds, is the simulator's
    assert trt["batch_time"]["value"] == pytest.approx(sim["batch_time"]["value"], rel=0.05)
    # the iteration-time model fitted to the iterations the engine reported (latency, context
    # tokens, generation requests) is the simulator's below its 192-token knee, and the
    # engine-aware μ from it is the one the simulator's known model gives
    assert trt["theory"]["iteration_model"].startswith("fitted to")
    raw = json.loads((directory / "engines/0-trtllm/engine.json").read_text())
    model = build_profile("trtllm").iteration_time
    assert raw["iteration_fit"]["c0"] == pytest.approx(model.c0, rel=0.1)
    # the fit has no KV term, so the attention cost of the KV a batch attends loads on c1:
    # +8% to +28% over repeated runs
    assert raw["iteration_fit"]["c1"] == pytest.approx(model.c1, rel=0.35)
    assert trt["theory"]["mu_engine_aware"] == pytest.approx(
        sim["theory"]["mu_engine_aware"], rel=0.03
    )


def test_the_search_starts_near_what_the_calibration_burst_completed():
    from kvbench.benchmark.compare_search import start_rate

    def data(aware, burst):
        return {
            "theory": {"mu_engine_aware": aware, "mu": 1.0},
            "calibration": {"throughput": burst},
        }

    # the theory when it is the higher (an overloaded probe measures the capacity anyway)...
    assert start_rate(data(180.0, 150.0)) == 180.0
    # ...the burst's throughput when the theory undershoots...
    assert start_rate(data(12.0, 60.0)) == 60.0
    # ...and never past twice the burst: a b̄ from bunched token times put the theory at 2,770
    assert start_rate(data(2770.0, 150.0)) == 300.0
    assert start_rate(data(95.0, None)) == 95.0


def test_default_compare_brackets_each_emulated_engine_with_one_backlog_probe(tmp_path):
    """The README's first command as it runs by default: each emulated engine measured with one
    bounded-backlog probe over HTTP (no open-loop probes), its bracket beside the same
    configuration simulated, and the engine-aware μ from what each engine exposes (TensorRT-LLM's
    iteration stats, SGLang's decode and prefill batch times) on the measured bracket."""
    result = CliRunner().invoke(
        cli,
        ["compare", "--backends", "trtllm,sglang", "--output-dir", str(tmp_path), "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    trt, sglang = results["engines"]
    for e in (trt, sglang):
        assert (e["kind"], e["status"]) == ("emulated", "ok"), e["error"]
        b = e["boundary"]
        assert b["method"] == "backlog" and b["converged"] and e["probes"] == []
        assert 0 < e["engine_seconds"] < 100
        # the same engine simulated (its preset's model known): the emulated bracket holds it
        known = engine_aware_mu(
            build_profile(e["backend"].removeprefix("emulate:"), kv_tokens=EMBEDDED.kv_tokens),
            LengthLaw.from_workload(load_workload(EMBEDDED.workload)),
        ).mu
        assert b["lower"] * 0.95 <= known <= b["upper"] * 1.05
        assert b["lower"] * 0.95 <= e["theory"]["mu_engine_aware"] <= b["upper"] * 1.05
    assert trt["theory"]["iteration_model"].startswith("fitted to")
    assert sglang["theory"]["iteration_model"] == "measured decode and prefill batch times"
    raw = json.loads(next(tmp_path.glob("*/engines/1-sglang/engine.json")).read_text())
    kept = raw["search"]["backlog"]["backlog_kept"]
    k = raw["search"]["backlog"]["backlog"]
    assert k >= 32 and k - 1 <= kept[0] <= kept[1] <= k + 1
    # off a terminal the progress lines show the interval narrowing; the summary names the probe
    assert "bounded-backlog probe: " in result.stderr and "% wide (10% asked)" in result.stderr
    shown = CliRunner().invoke(cli, ["report", str(next(tmp_path.iterdir()))])
    assert shown.exit_code == 0 and "1 bounded-backlog probe" in shown.output
    assert "queue stability:  not checked" in shown.output


def test_confirm_judges_open_loop_runs_either_side_of_the_backlog_bracket(tmp_path):
    """compare --confirm, on the emulated TensorRT-LLM over HTTP: after the bounded-backlog
    bracket, an open-loop run just below it is judged STABLE and one just above UNSTABLE, both
    recorded (rate, expected, verdict, cost), shown, and counted in the engine's engine-seconds."""
    result = CliRunner().invoke(
        cli,
        ["compare", "--backends", "trtllm", "--confirm", "--output-dir", str(tmp_path), "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    (e,) = json.loads(result.stdout)["engines"]
    b = e["boundary"]
    below, above = b["confirmed"]
    assert (below["expected"], below["verdict"]) == ("STABLE", "STABLE")
    assert (above["expected"], above["verdict"]) == ("UNSTABLE", "UNSTABLE")
    # --precision (10% in the embedded default) away from the bracket's ends
    assert below["rate"] == pytest.approx(b["lower"] / 1.1)
    assert above["rate"] == pytest.approx(b["upper"] * 1.1)
    assert e["engine_seconds"] > below["engine_seconds"] + above["engine_seconds"]
    assert "open-loop confirmation at" in result.stderr
    shown = CliRunner().invoke(cli, ["report", str(next(tmp_path.iterdir()))])
    assert "queue stability:  confirmed" in shown.output
    html = next(tmp_path.glob("*/report.html")).read_text()
    assert "Open-loop runs confirming" in html


def test_confirm_goes_with_the_backlog_probe():
    result = CliRunner().invoke(
        cli, ["compare", "--backends", "sim:vllm", "--method", "open-loop", "--confirm"]
    )
    assert result.exit_code == 2
    assert (
        result.output == "error: --confirm goes with the bounded-backlog probe (--method backlog)\n"
    )
