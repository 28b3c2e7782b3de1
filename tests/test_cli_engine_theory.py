"""`kvbench theory --engine`: the paper's μ and the engine-aware μ side by side."""

import json

import pytest
from click.testing import CliRunner

from kvbench import theory as paper
from kvbench.calibration import IterationWindows, fit_iteration_time
from kvbench.cli import cli
from kvbench.engine_theory import LengthLaw, engine_aware_mu
from kvbench.profile import build_profile
from kvbench.workload import load_workload


def _run(*args: str):
    return CliRunner().invoke(cli, ["theory", *args])


def test_json_has_both_predictions_and_the_binding_constraint():
    res = _run("--engine", "trtllm", "--workload", "uniform:100-300,50-150", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    law = LengthLaw.uniform(100, 300, 50, 150)
    pred = engine_aware_mu(build_profile("trtllm"), law)
    assert out["mu_engine_aware"] == pytest.approx(pred.mu, rel=1e-12)
    assert out["binding"] == pred.binding == "reservation"
    # The paper's μ uses the iteration time at the engine-aware operating point as b̄.
    ref = paper.evaluate(
        load_workload("uniform:100-300,50-150"),
        kv_tokens=131_000,
        chunk_size=build_profile("trtllm").chunk_size,
        batch_time=pred.iteration_time,
    )
    assert out["mu_paper"] == pytest.approx(ref.mu, rel=1e-12)
    assert {b["name"] for b in out["engine_aware"]["bounds"]} == {
        "reservation",
        "token budget",
        "running cap",
    }


def test_batch_time_makes_both_models_use_one_constant_b():
    res = _run(
        "--engine",
        "ideal",
        "--workload",
        "fixed:512,101",
        "--batch-time",
        "0.05",
        "--exact",
        "--json",
    )
    out = json.loads(res.output)
    # ideal: one 512-token chunk, then 100 decode steps: g = 512 + Σ_{j=1..100}(512+j) = 56,762;
    # the head needs 512 tokens, gap 256. The paper counts 101 decode steps: g = 57,375.
    assert out["mu_engine_aware"] == pytest.approx((131_000 - 256) / 56_762 / 0.05, rel=1e-12)
    assert out["mu_paper"] == pytest.approx(131_000 / 57_375 / 0.05, rel=1e-12)
    assert out["batch_time"] == 0.05


def test_fitted_iteration_model_is_used_with_its_uncertainty(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    tokens = rng.uniform(50, 2000, 400)
    kv = rng.uniform(1e4, 1.3e5, 400)
    t = (0.02 + 3e-5 * tokens + 1e-7 * kv) * np.exp(rng.normal(0, 0.05, 400))
    fit = fit_iteration_time(IterationWindows.per_iteration(tokens, kv, t))
    path = tmp_path / "fit.json"
    path.write_text(json.dumps({"fit": fit.to_json()}))
    res = _run(
        "--engine",
        "vllm",
        "--workload",
        "uniform:10-800,10-800",
        "--iteration-model",
        str(path),
        "--json",
    )
    out = json.loads(res.output)
    pred = engine_aware_mu(
        build_profile("vllm"), LengthLaw.uniform(10, 800, 10, 800), iteration_fit=fit
    )
    assert out["mu_engine_aware"] == pytest.approx(pred.mu, rel=1e-12)
    assert out["mu_engine_aware_stderr"] > 0
    assert out["engine_aware"]["iteration_model"]["c1"] == pytest.approx(fit.c1)


def test_text_output_names_the_binding_constraint():
    res = _run("--engine", "vllm", "--workload", "uniform:2000-6000,10-50")
    assert res.exit_code == 0, res.output
    assert "μ, paper model" in res.output and "μ, engine-aware" in res.output
    assert "binding: token budget" in res.output


def test_engine_only_flags_need_an_engine():
    res = _run("--profile", "paper-a100-llama3-8b")
    assert res.exit_code == 2 and "need --engine" in res.output
    res = _run("--engine", "vllm", "--iteration-model", "/nonexistent.json")
    assert res.exit_code == 2 and "error: /nonexistent.json: no such file" in res.output
