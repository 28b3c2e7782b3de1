"""The iteration-time fit: recovers known coefficients, its standard errors are honest, and it
reads TensorRT-LLM iteration records and CSV windows."""

import json
from pathlib import Path

import numpy as np
import pytest

from kvbench.calibration import (
    IterationWindows,
    fit_iteration_time,
    load_fit,
    load_windows,
)
from kvbench.errors import KvbenchError

TRUE = np.array([0.012, 4.0e-6, 1.5e-7])


def _synthetic(n: int, seed: int, sigma: float = 0.05) -> IterationWindows:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 2048, n).astype(float)
    kv = rng.integers(0, 131_000, n).astype(float)
    mean = TRUE[0] + TRUE[1] * tokens + TRUE[2] * kv
    t = mean * np.exp(rng.normal(-(sigma**2) / 2, sigma, n))
    return IterationWindows.per_iteration(tokens, kv, t)


def test_fit_recovers_coefficients_and_noise():
    fit = fit_iteration_time(_synthetic(20_000, seed=1))
    est = np.array([fit.c0, fit.c1, fit.c2])
    se = np.array(fit.stderr)
    assert np.all(np.abs(est - TRUE) < 4 * se)
    assert np.all(se / TRUE < 0.02)  # 20,000 iterations pin each term to 2%
    assert fit.noise_sigma == pytest.approx(0.05, rel=0.05)
    assert fit.fixed == ()
    assert fit.r_squared > 0.9


def test_standard_errors_cover_the_truth_at_the_stated_rate():
    # 200 independent fits: |estimate − truth| < 1.96·se about 95% of the time for each term.
    hits = np.zeros(3)
    trials = 200
    for seed in range(trials):
        fit = fit_iteration_time(_synthetic(300, seed=100 + seed, sigma=0.2))
        est = np.array([fit.c0, fit.c1, fit.c2])
        hits += np.abs(est - TRUE) < 1.96 * np.array(fit.stderr)
    coverage = hits / trials
    assert np.all(coverage > 0.89) and np.all(coverage < 0.99), coverage


def test_windows_of_many_iterations_give_the_same_model():
    # Aggregate per-iteration data into windows of 50 iterations, as counters scraped each second.
    one = _synthetic(50_000, seed=3)
    k = 50
    agg = IterationWindows(
        iterations=one.iterations.reshape(-1, k).sum(1),
        batch_tokens=one.batch_tokens.reshape(-1, k).sum(1),
        kv_tokens=one.kv_tokens.reshape(-1, k).sum(1),
        elapsed=one.elapsed.reshape(-1, k).sum(1),
    )
    fit = fit_iteration_time(agg)
    est = np.array([fit.c0, fit.c1, fit.c2])
    assert np.all(np.abs(est - TRUE) < 4 * np.array(fit.stderr))
    assert fit.n_iterations == 50_000
    assert fit.noise_sigma == 0.0  # no single-iteration windows to measure it from


def test_a_term_the_data_cannot_separate_is_held_at_zero():
    rng = np.random.default_rng(5)
    kv = rng.integers(0, 10_000, 500).astype(float)
    t = 0.02 + 1e-6 * kv
    fit = fit_iteration_time(IterationWindows.per_iteration(np.full(500, 64.0), kv, t))
    assert fit.fixed == ("c1",)
    assert fit.c1 == 0.0 and fit.stderr[1] == 0.0
    # A constant batch of 64 tokens is absorbed into c0, exactly.
    assert fit.c0 == pytest.approx(0.02, rel=1e-9)
    assert fit.c2 == pytest.approx(1e-6, rel=1e-9)


def test_prediction_stderr_matches_the_covariance():
    fit = fit_iteration_time(_synthetic(2_000, seed=7))
    se = fit.mean_time_stderr(0.0, 0.0)
    assert se == pytest.approx(fit.stderr[0])


def test_trtllm_iteration_records(tmp_path):
    rng = np.random.default_rng(11)
    records = []
    for i in range(400):
        ctx, gen, used = (
            int(rng.integers(0, 2048)),
            int(rng.integers(1, 64)),
            int(rng.integers(0, 4000)),
        )
        ms = 1000 * (TRUE[0] + TRUE[1] * (ctx + gen) + TRUE[2] * used * 32)
        records.append(
            {
                "iter": i,
                "iterLatencyMS": ms,
                "timestamp": "11-28-2026 14:00:00.000000",
                "inflightBatchingStats": {
                    "numCtxTokens": ctx,
                    "numGenRequests": gen,
                    "numScheduledRequests": gen + 1,
                },
                "kvCacheStats": {"usedNumBlocks": used, "tokensPerBlock": 32, "maxNumBlocks": 8219},
            }
        )
    records.append(
        {"iter": 400, "iterLatencyMS": 0.0, "inflightBatchingStats": {}, "kvCacheStats": {}}
    )
    path = tmp_path / "iters.json"
    path.write_text(json.dumps(records))
    fit = fit_iteration_time(load_windows(path))
    assert fit.n_windows == 400  # the idle record is skipped
    assert [fit.c0, fit.c1, fit.c2] == pytest.approx(list(TRUE), rel=1e-6)
    # The same records as JSON lines, one scrape (a list) per line.
    lines = tmp_path / "iters.jsonl"
    lines.write_text("\n".join(json.dumps(records[i : i + 100]) for i in range(0, 401, 100)))
    assert load_windows(lines).elapsed.size == 400


def test_csv_windows_and_errors(tmp_path):
    good = tmp_path / "w.csv"
    rows = ["iterations,batch_tokens,kv_tokens,elapsed"]
    rng = np.random.default_rng(2)
    for _ in range(40):
        n = int(rng.integers(1, 30))
        tok, kv = n * rng.uniform(10, 2000), n * rng.uniform(0, 1e5)
        rows.append(f"{n},{tok},{kv},{TRUE[0] * n + TRUE[1] * tok + TRUE[2] * kv}")
    good.write_text("\n".join(rows) + "\n")
    fit = fit_iteration_time(load_windows(good))
    assert [fit.c0, fit.c1, fit.c2] == pytest.approx(list(TRUE), rel=1e-6)

    bad = tmp_path / "bad.csv"
    bad.write_text("iterations,batch_tokens,kv_tokens,elapsed\n1,10,20,0.1\n1,ten,20,0.1\n")
    with pytest.raises(KvbenchError, match=r"bad\.csv:3: batch_tokens is not a number"):
        load_windows(bad)
    missing = tmp_path / "missing.csv"
    missing.write_text("batch_tokens,elapsed\n1,2\n")
    with pytest.raises(KvbenchError, match=r"missing\.csv:1: missing column 'kv_tokens'"):
        load_windows(missing)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"iterLatencyMS": 1,\n')
    with pytest.raises(KvbenchError, match=r"broken\.json:\d+: invalid JSON"):
        load_windows(broken)
    with pytest.raises(KvbenchError, match="too few"):
        fit_iteration_time(IterationWindows.per_iteration([1.0, 2.0], [3.0, 4.0], [0.1, 0.2]))


def test_saved_fit_round_trips(tmp_path):
    fit = fit_iteration_time(_synthetic(1_000, seed=9))
    path = tmp_path / "model.json"
    path.write_text(json.dumps({"fit": fit.to_json()}))
    back = load_fit(path)
    assert back.model() == fit.model()
    assert back.stderr == pytest.approx(fit.stderr)
    path.write_text('{"c0": 1}')
    with pytest.raises(KvbenchError, match="not an iteration-time model"):
        load_fit(path)


def test_a_negative_slope_is_held_at_zero():
    # Times that do not depend on the batch, plus noise that happens to tilt the slope negative:
    # the fit keeps c0 only rather than predict cheaper iterations for bigger batches.
    tokens = np.arange(1.0, 201.0)
    t = 0.0168 - 1e-7 * (tokens - tokens.mean())
    fit = fit_iteration_time(IterationWindows.per_iteration(tokens, np.zeros(200), t))
    assert fit.fixed == ("c1", "c2") and fit.c1 == 0.0
    assert fit.c0 == pytest.approx(0.0168, rel=1e-9)


def test_committed_h200_fits_follow_from_their_windows():
    """docs/benchmarks.md quotes these fits: they must be what the committed GPU windows give."""
    results = Path(__file__).resolve().parents[1] / "benchmarks/results/h200-llama3-8b-transformers"
    for mode in ("eager", "cuda-graph"):
        refit = fit_iteration_time(load_windows(results / f"iterations-{mode}.csv"))
        saved = load_fit(results / f"fit-{mode}.json")
        assert refit.n_windows == 26
        np.testing.assert_allclose(
            [refit.c0, refit.c1, refit.c2], [saved.c0, saved.c1, saved.c2], rtol=1e-9
        )
    eager = load_fit(results / "fit-eager.json")
    assert eager.c0 == pytest.approx(10.16e-3, rel=1e-3)
    assert eager.c2 == pytest.approx(403.8e-9, rel=1e-3)
