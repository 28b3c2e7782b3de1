"""The iteration-time presets against the data they were fitted to."""

from __future__ import annotations

import numpy as np
import pytest
from benchmark_module import load

from kvbench.profile import DEFAULT_HARDWARE, HARDWARE, VIDUR_A100, build_profile


def _fit_module():
    return load("vidur_a100_fit")


def test_the_vidur_preset_is_the_fit_of_the_committed_tables():
    fit = _fit_module().fit()
    model = VIDUR_A100.iteration_time
    assert model.knee == fit.knee == 192
    for name in ("c0", "c1", "c1_above", "c2", "c3"):
        assert getattr(model, name) == pytest.approx(getattr(fit, name), rel=1e-5), name
    # The data ask for the knee: one slope fits the linear layers worse.
    assert fit.linear_rel_rms < 0.05 < fit.linear_rel_rms_without_knee


def test_the_vidur_preset_reproduces_the_measured_kernel_times():
    mod = _fit_module()
    model = VIDUR_A100.iteration_time
    tokens, linear_ms = mod.linear_ops_ms()
    decode = mod._read("attention_decode.csv")
    # A decode step of B requests holding L tokens each: linear layers at B tokens plus the
    # attention over B·L KV tokens (32 layers), against the model with kv = B·L.
    measured = (
        np.interp(decode["batch_size"], tokens, linear_ms)
        + 32 * (decode["attn_decode_ms"] + decode["kv_cache_save_ms"])
    ) * 1e-3
    predicted = np.array(
        [
            model.mean_time(b, b * kv)
            for b, kv in zip(decode["batch_size"], decode["kv_per_request"], strict=True)
        ]
    )
    rel = predicted / measured - 1.0
    assert np.sqrt(np.mean(rel**2)) < 0.08
    assert np.max(np.abs(rel)) < 0.2
    # The measured decode step at 100 requests of 3,392 tokens: 12.6 ms of linear layers and
    # 32 × 0.855 ms of attention = 40.0 ms. One knee cannot follow the GEMMs' wave steps, so the
    # fit overestimates decode-sized batches by about 5% (docs/accuracy.md).
    assert model.mean_time(100, 339_200) == pytest.approx(0.0400, rel=0.06)
    # A prefill chunk of 512 after 1,024 cached tokens: linear layers at 512 tokens and 32 ×
    # 0.124 ms of attention.
    chunk = model.mean_time(512, 0, 512 * 1536) - model.c0
    assert chunk + model.c0 == pytest.approx(
        (np.interp(512, tokens, linear_ms) + 32 * 0.124) * 1e-3, rel=0.15
    )


def test_presets_are_named_after_their_source_and_the_default_is_measured():
    assert DEFAULT_HARDWARE is VIDUR_A100
    assert set(HARDWARE) == {
        "vidur-a100-llama3-8b",
        "paper-a100-llama3-8b",
        "h200-llama3-8b-transformers",
    }
    assert build_profile("vllm").name == "vllm@vidur-a100-llama3-8b"
    assert build_profile("vllm").prefix_caching
