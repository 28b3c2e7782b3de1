//! Served work: how far streamed tokens have carried each request through its lifetime memory.
//!
//! A request with prompt s that has streamed k output tokens has been served
//! G(s, k) = g_pre(s) + (k − 1)·s + k(k − 1)/2 token·iterations of KV (G(s, 0) = 0), where
//! g_pre(s) = Σ_{j=1..⌈s/ŝ⌉} min(j·ŝ, s) is its chunked prefill (the last chunk samples the
//! first token). G(s, o) is the paper's lifetime memory g of a request with o output tokens (one
//! decode step fewer than g(s, o) counts, as the simulator runs it). Summed over requests, G moves
//! with the engine's binding resource, so its rate is far steadier than a completion count.

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// g_pre(s): with m = ⌈s/ŝ⌉ chunks, m − 1 full ones hold ŝ, 2ŝ, …, (m−1)ŝ and the last holds s.
#[inline]
pub fn prefill_work(s: i64, chunk: i64) -> f64 {
    let m = (s + chunk - 1) / chunk;
    (chunk as f64) * ((m * (m - 1)) as f64) / 2.0 + s as f64
}

/// G(s, k): the work served to a request with prompt `s` by the time it has streamed `k` tokens.
#[inline]
pub fn progress(s: i64, k: i64, chunk: i64) -> f64 {
    if k <= 0 {
        return 0.0;
    }
    let k = k as f64;
    prefill_work(s, chunk) + (k - 1.0) * s as f64 + k * (k - 1.0) / 2.0
}

/// Adds each event's served work, G(s, k_new) − G(s, k_before), to the bin of width `bin_width`
/// that holds its time. Events must be in time order per request, with non-decreasing counts.
pub fn served_work(
    prompt: &[i64],
    chunk: i64,
    request: &[i64],
    time: &[f64],
    tokens: &[i64],
    bin_width: f64,
    bins: usize,
) -> Result<Vec<f64>, String> {
    if chunk < 1 {
        return Err("chunk must be at least 1".into());
    }
    if !(bin_width > 0.0 && bin_width.is_finite()) {
        return Err("bin_width must be a positive number of seconds".into());
    }
    if request.len() != time.len() || request.len() != tokens.len() {
        return Err("request, time and tokens differ in length".into());
    }
    let mut seen = vec![0i64; prompt.len()];
    let mut work = vec![0.0; bins];
    for e in 0..request.len() {
        let i = request[e];
        if i < 0 || i as usize >= prompt.len() {
            return Err(format!("event {e}: request {i} is not one of the prompts"));
        }
        let i = i as usize;
        if prompt[i] < 1 {
            return Err(format!("request {i}: prompt length must be at least 1"));
        }
        let k = tokens[e];
        if k < seen[i] {
            return Err(format!(
                "event {e}: request {i} went back from {} to {k} tokens",
                seen[i]
            ));
        }
        let t = time[e];
        if t.is_nan() || t < 0.0 {
            return Err(format!("event {e}: time {t} is before the start"));
        }
        let b = (t / bin_width) as usize;
        if b < bins {
            work[b] += progress(prompt[i], k, chunk) - progress(prompt[i], seen[i], chunk);
        }
        seen[i] = k;
    }
    Ok(work)
}

/// See `kvbench/_core.pyi`.
#[pyfunction(name = "served_work")]
#[pyo3(signature = (prompt_len, chunk, request, time, tokens, *, bin_width, bins))]
#[allow(clippy::too_many_arguments)]
fn py_served_work<'py>(
    py: Python<'py>,
    prompt_len: PyReadonlyArray1<'py, i64>,
    chunk: i64,
    request: PyReadonlyArray1<'py, i64>,
    time: PyReadonlyArray1<'py, f64>,
    tokens: PyReadonlyArray1<'py, i64>,
    bin_width: f64,
    bins: usize,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    served_work(
        prompt_len.as_slice()?,
        chunk,
        request.as_slice()?,
        time.as_slice()?,
        tokens.as_slice()?,
        bin_width,
        bins,
    )
    .map(|w| w.into_pyarray(py))
    .map_err(PyValueError::new_err)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(py_served_work, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_matches_the_sum_it_stands_for() {
        for &(s, chunk) in &[(1, 512), (512, 512), (513, 512), (1000, 256), (7, 3)] {
            let mut pre = 0i64;
            let mut j = 1;
            while (j - 1) * chunk < s {
                pre += (j * chunk).min(s);
                j += 1;
            }
            let mut g = pre;
            assert_eq!(progress(s, 1, chunk), g as f64);
            for k in 2..50 {
                g += s + k - 1;
                assert_eq!(progress(s, k, chunk), g as f64, "s={s} chunk={chunk} k={k}");
            }
        }
    }

    #[test]
    fn events_past_the_last_bin_are_dropped_and_counts_may_jump() {
        // request 0 streams 1, then 3 tokens at once; request 1 one token after the last bin
        let w = served_work(&[4, 2], 4, &[0, 0, 1], &[0.1, 0.6, 2.5], &[1, 3, 1], 0.5, 2).unwrap();
        assert_eq!(w, vec![4.0, (4 + 1) as f64 + (4 + 2) as f64]);
        assert!(served_work(&[4], 4, &[0, 0], &[0.1, 0.2], &[2, 1], 0.5, 2).is_err());
    }
}
