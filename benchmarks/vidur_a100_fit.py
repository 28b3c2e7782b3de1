"""Fits the `vidur-a100-llama3-8b` iteration-time preset to Microsoft Vidur's measured kernel
timings of Llama-3-8B on one A100 (tensor parallel 1), the tables in
benchmarks/results/vidur-a100-llama3-8b/ (see its README for where each row came from).

    python benchmarks/vidur_a100_fit.py          # prints the fit and its residuals

The model is the simulator's: an iteration of T batch tokens, KV tokens K attended and prefill
chunks c_i after k_i cached tokens lasts

    c0 + c1·min(T, knee) + c1_above·max(T − knee, 0) + c2·K + c3·Σ c_i·(k_i + c_i)

- the linear layers (projections, MLP, norms, rotary, residual adds: 32 layers, plus the
  embedding) give c0's main part, c1, c1_above and the knee: below the knee a GEMM's time is
  the weights' read and grows slowly; above it the GEMMs are compute-bound;
- decode attention, a read of every attended KV token, gives c2 (per KV token) and its
  per-iteration intercept (into c0), as does the decode path's KV write (a constant);
- prefill attention gives c3, fitted on the chunk sizes the engines use (480–704 tokens).

Nothing is fitted to any throughput or iteration time measured on an engine.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "results" / "vidur-a100-llama3-8b"
LAYERS = 32
# The batch sizes that matter: vLLM's 2,048-token budget, TensorRT-LLM's 8,192.
MAX_TOKENS = 8192
KNEES = tuple(range(32, 513, 8))
# Prefill attention is fitted where the engines' chunks are (ŝ = 512): the smallest chunks the
# profile holds (64) run a different, latency-bound kernel regime.
MIN_PREFILL_CHUNK = 480


@dataclass(frozen=True)
class VidurFit:
    c0: float
    c1: float
    c1_above: float
    knee: int
    c2: float
    c3: float
    linear_rel_rms: float
    linear_rel_rms_without_knee: float
    decode_rel_rms: float
    prefill_rel_rms: float


def _read(name: str) -> dict[str, np.ndarray]:
    with open(DATA / name, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


def _weighted_lstsq(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Least squares in relative error (each row weighted by 1/y); returns the coefficients and
    the RMS relative residual."""
    w = 1.0 / y
    coef, *_ = np.linalg.lstsq(x * w[:, None], y * w, rcond=None)
    rel = (x @ coef - y) / y
    return coef, float(np.sqrt(np.mean(rel**2)))


def linear_ops_ms() -> tuple[np.ndarray, np.ndarray]:
    """(batch tokens, ms per iteration of the linear layers of all 32 layers plus embedding)."""
    t = _read("linear_ops.csv")
    keep = t["num_tokens"] <= MAX_TOKENS
    return t["num_tokens"][keep], LAYERS * t["per_layer_ms"][keep] + t["embedding_ms"][keep]


def fit() -> VidurFit:
    tokens, lin = linear_ops_ms()
    ones = np.ones_like(tokens)
    _, no_knee_rms = _weighted_lstsq(np.column_stack([ones, tokens]), lin)
    best = None
    for knee in KNEES:
        x = np.column_stack([ones, np.minimum(tokens, knee), np.maximum(tokens - knee, 0.0)])
        coef, rms = _weighted_lstsq(x, lin)
        if best is None or rms < best[2]:
            best = (knee, coef, rms)
    assert best is not None
    knee, (a, b_lo, b_hi), lin_rms = best

    d = _read("attention_decode.csv")
    kv = d["batch_size"] * d["kv_per_request"]
    (alpha, beta), dec_rms = _weighted_lstsq(
        np.column_stack([np.ones_like(kv), kv]), d["attn_decode_ms"]
    )
    save = float(np.mean(d["kv_cache_save_ms"]))

    p = _read("attention_prefill.csv")
    big = p["chunk"] >= MIN_PREFILL_CHUNK
    pairs = p["chunk"][big] * (p["kv_cached"][big] + p["chunk"][big])
    (gamma,), pre_rms = _weighted_lstsq(pairs[:, None], p["attn_prefill_ms"][big])

    ms = 1e-3
    return VidurFit(
        c0=(a + LAYERS * (alpha + save)) * ms,
        c1=b_lo * ms,
        c1_above=b_hi * ms,
        knee=knee,
        c2=LAYERS * beta * ms,
        c3=LAYERS * gamma * ms,
        linear_rel_rms=lin_rms,
        linear_rel_rms_without_knee=no_knee_rms,
        decode_rel_rms=dec_rms,
        prefill_rel_rms=pre_rms,
    )


def main() -> None:
    f = fit()
    print(f"c0 = {f.c0:.6g} s, c1 = {f.c1:.6g} s/token below the knee of {f.knee} tokens,")
    print(f"c1_above = {f.c1_above:.6g} s/token, c2 = {f.c2:.6g} s/KV token, c3 = {f.c3:.6g} s")
    print(
        f"RMS relative residuals: linear layers {f.linear_rel_rms:.1%} "
        f"(without a knee {f.linear_rel_rms_without_knee:.1%}), decode attention "
        f"{f.decode_rel_rms:.1%}, prefill attention {f.prefill_rel_rms:.1%}"
    )


if __name__ == "__main__":
    main()
