"""The saturated-run measurement, the calibration command, and the accuracy study on a reduced
grid: the engine-aware μ stays within 5% of the simulated boundary (SIMULATED)."""

import json

import pytest
from click.testing import CliRunner

from kvbench.benchmark.accuracy import evaluate_case
from kvbench.benchmark.saturation import saturated_run
from kvbench.cli import cli
from kvbench.profile import IterationTimeModel, build_profile
from kvbench.workload import load_workload


def test_saturated_run_by_hand():
    # TensorRT-LLM reservation with token-exact pages: fixed:100,101 reserves 201 tokens, so
    # M = 2,010 runs exactly 10 requests; each lives 1 prefill + 100 decode iterations of 10 ms,
    # and batches of 10 start and finish together: λ* = 10 / (101 · 0.01 s).
    prof = build_profile(
        "trtllm",
        kv_tokens=2_010,
        block_size=1,
        chunk_size=512,
        iteration_time=IterationTimeModel.constant(0.01),
    )
    run = saturated_run(prof, load_workload("fixed:100,101"), num_prompts=1_000)
    assert run.rate == pytest.approx(10 / (101 * 0.01), rel=1e-9)
    assert run.median_iteration_time == pytest.approx(0.01)
    assert run.preemption_waste == pytest.approx(0.0, abs=1e-9)
    assert run.simulated


def test_preemption_waste_is_measured():
    # vLLM at saturation on pd-1:1 recomputes chunks of preempted requests; the ideal rule swaps
    # at no cost and TensorRT-LLM never preempts.
    wl = load_workload("pd-1:1")
    vllm = saturated_run(build_profile("vllm"), wl, num_prompts=2_000)
    assert vllm.preemptions_per_request > 1 and vllm.preemption_waste > 500
    assert saturated_run(build_profile("trtllm"), wl, num_prompts=2_000).preemption_waste == 0.0


# The reduced grid: every rule, each constraint binding somewhere (memory, reservation, running
# cap at 524k tokens, token budget on long prompts, SGLang's prefill-heavy regime).
GRID = [
    ("ideal", "pd-1:1", 131_000),
    ("vllm", "pd-1:1", 131_000),
    ("sglang", "pd-1:1", 131_000),
    ("trtllm", "pd-1:1", 131_000),
    ("vllm", "pd-1:2", 524_000),
    ("vllm", "uniform:2000-6000,10-50", 131_000),
    ("trtllm", "uniform:2000-6000,10-50", 524_000),
    ("sglang", "uniform:2000-6000,10-50", 524_000),
]


@pytest.mark.parametrize("engine,workload,kv", GRID)
def test_engine_aware_gap_stays_under_five_percent(engine, workload, kv):
    case = evaluate_case(engine, workload, kv, num_prompts=6_000, calibration_prompts=2_000, seed=3)
    assert abs(case.gap_engine_aware) <= 0.05, case.to_json()
    expected = {
        ("trtllm", "pd-1:1"): "reservation",
        ("vllm", "pd-1:2"): "running cap",
        ("vllm", "uniform:2000-6000,10-50"): "token budget",
        ("trtllm", "uniform:2000-6000,10-50"): "token budget",
    }.get((engine, workload), "memory")
    assert case.calibrated.binding == expected


def test_calibrate_recovers_the_simulators_model(tmp_path):
    out = tmp_path / "fit.json"
    res = CliRunner().invoke(
        cli,
        [
            "calibrate",
            "--backend",
            "sim:trtllm",
            # A linear preset, which the linear fit can recover exactly (the default preset's
            # knee it can only approximate).
            "--profile",
            "paper-a100-llama3-8b",
            "--num-prompts",
            "600",
            "--output",
            str(out),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    saved = json.loads(out.read_text())
    assert saved == json.loads(res.output)
    true = build_profile("trtllm", "paper-a100-llama3-8b").iteration_time
    fit = saved["fit"]
    assert fit["c0"] == pytest.approx(true.c0, rel=0.02)
    assert fit["c1"] == pytest.approx(true.c1, rel=0.02)
    # The simulator reports KV allocated in pages of 32, not the KV attended: a small bias.
    assert fit["c2"] == pytest.approx(true.c2, rel=0.05)
    assert saved["simulated"] and saved["preemption_waste"] == 0.0
    theory = CliRunner().invoke(
        cli, ["theory", "--engine", "trtllm", "--iteration-model", str(out), "--json"]
    )
    assert json.loads(theory.output)["iteration_time_source"].startswith("fitted model")


def test_calibrate_errors():
    runner = CliRunner()
    res = runner.invoke(cli, ["calibrate"])
    assert res.exit_code == 2 and "exactly one of" in res.output
    res = runner.invoke(cli, ["calibrate", "--backend", "vllm"])
    assert res.exit_code == 2 and "error: cannot calibrate backend 'vllm'" in res.output


def test_calibrate_from_trtllm_iteration_records(tmp_path):
    records = []
    for i in range(60):
        ctx, gen, blocks = 100 + 6 * i, i, 50 + 3 * (i % 17)  # KV cycles apart from the batch
        ms = 1000 * (0.01 + 2e-5 * (ctx + gen) + 1e-7 * 32 * blocks)
        records.append(
            {
                "iter": i,
                "iterLatencyMS": ms,
                "inflightBatchingStats": {"numCtxTokens": ctx, "numGenRequests": gen},
                "kvCacheStats": {"usedNumBlocks": blocks, "tokensPerBlock": 32},
            }
        )
    path = tmp_path / "iters.json"
    path.write_text(json.dumps(records))
    res = CliRunner().invoke(cli, ["calibrate", "--windows", str(path), "--json"])
    assert res.exit_code == 0, res.output
    fit = json.loads(res.output)["fit"]
    assert [fit["c0"], fit["c1"], fit["c2"]] == pytest.approx([0.01, 2e-5, 1e-7], rel=1e-6)
    text = CliRunner().invoke(cli, ["calibrate", "--windows", str(path)]).output
    assert "c1:" in text and "µs/token" in text and "SIMULATED" not in text
