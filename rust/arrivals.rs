//! Arrival schedules: cumulative arrival times in seconds, as numpy float64 arrays.
//!
//! Every random schedule is driven by `rand_pcg::Pcg64` (PCG XSL RR 128/64) seeded with
//! `SeedableRng::seed_from_u64(seed)`, so a seed gives the same schedule on every platform and
//! every run. Random schedules start at 0 and place the first arrival one gap after it (the
//! convention of vLLM's benchmark), so n arrivals at rate λ span about n/λ seconds.

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use rand::SeedableRng;
use rand_distr::{Distribution, Exp, Gamma};
use rand_pcg::Pcg64;

/// Cumulative sums of `n` gaps drawn from `gaps`.
fn cumulative<D: Distribution<f64>>(gaps: D, n: usize, seed: u64) -> Vec<f64> {
    let mut rng = Pcg64::seed_from_u64(seed);
    let mut t = 0.0_f64;
    gaps.sample_iter(&mut rng)
        .take(n)
        .map(|gap| {
            t += gap;
            t
        })
        .collect()
}

fn check_rate(rate: f64) -> Result<(), String> {
    if rate.is_finite() && rate > 0.0 {
        Ok(())
    } else {
        Err(format!("rate must be a positive finite number, got {rate}"))
    }
}

/// Poisson process: exponential gaps with mean 1/rate.
pub fn poisson(rate: f64, n: usize, seed: u64) -> Result<Vec<f64>, String> {
    check_rate(rate)?;
    let gaps = Exp::new(rate).map_err(|e| e.to_string())?;
    Ok(cumulative(gaps, n, seed))
}

/// Gamma renewal process in vLLM's convention: gaps ~ Gamma(shape = burstiness,
/// scale = 1/(rate·burstiness)), so the mean gap is 1/rate and the gaps' coefficient of
/// variation is 1/√burstiness (burstiness < 1 is burstier than Poisson, 1 is Poisson in law).
pub fn gamma(rate: f64, burstiness: f64, n: usize, seed: u64) -> Result<Vec<f64>, String> {
    check_rate(rate)?;
    if !(burstiness.is_finite() && burstiness > 0.0) {
        return Err(format!(
            "burstiness must be a positive finite number, got {burstiness}"
        ));
    }
    let gaps = Gamma::new(burstiness, 1.0 / (rate * burstiness)).map_err(|e| e.to_string())?;
    Ok(cumulative(gaps, n, seed))
}

/// Deterministic arrivals at k/rate for k = 1..=n.
pub fn constant(rate: f64, n: usize) -> Result<Vec<f64>, String> {
    check_rate(rate)?;
    // k/rate rather than a running sum, so the last arrival carries no accumulated rounding.
    Ok((1..=n).map(|k| k as f64 / rate).collect())
}

/// A recorded schedule shifted so its first arrival is at 0 and divided by `time_scale`:
/// time_scale = 2 replays the trace twice as fast (double the rate), 0.5 at half speed.
pub fn replay(timestamps: &[f64], time_scale: f64) -> Result<Vec<f64>, String> {
    if !(time_scale.is_finite() && time_scale > 0.0) {
        return Err(format!(
            "time_scale must be a positive finite number, got {time_scale}"
        ));
    }
    let Some(&first) = timestamps.first() else {
        return Ok(Vec::new());
    };
    let mut previous = first;
    for (i, &t) in timestamps.iter().enumerate() {
        if !t.is_finite() {
            return Err(format!("timestamp {i} is not finite ({t})"));
        }
        if t < previous {
            return Err(format!(
                "timestamp {i} ({t}) is earlier than the one before it ({previous})"
            ));
        }
        previous = t;
    }
    Ok(timestamps
        .iter()
        .map(|&t| (t - first) / time_scale)
        .collect())
}

fn to_numpy<'py>(
    py: Python<'py>,
    result: Result<Vec<f64>, String>,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    // into_pyarray hands the Vec's buffer to numpy: no copy.
    result
        .map(|v| v.into_pyarray(py))
        .map_err(PyValueError::new_err)
}

#[pyfunction]
#[pyo3(name = "poisson_arrivals")]
fn py_poisson<'py>(
    py: Python<'py>,
    rate: f64,
    n: usize,
    seed: u64,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let result = py.allow_threads(|| poisson(rate, n, seed));
    to_numpy(py, result)
}

#[pyfunction]
#[pyo3(name = "gamma_arrivals")]
fn py_gamma<'py>(
    py: Python<'py>,
    rate: f64,
    burstiness: f64,
    n: usize,
    seed: u64,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let result = py.allow_threads(|| gamma(rate, burstiness, n, seed));
    to_numpy(py, result)
}

#[pyfunction]
#[pyo3(name = "constant_arrivals")]
fn py_constant<'py>(py: Python<'py>, rate: f64, n: usize) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let result = py.allow_threads(|| constant(rate, n));
    to_numpy(py, result)
}

#[pyfunction]
#[pyo3(name = "replay_arrivals")]
fn py_replay<'py>(
    py: Python<'py>,
    timestamps: PyReadonlyArray1<'py, f64>,
    time_scale: f64,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let result = match timestamps.as_slice() {
        Ok(slice) => replay(slice, time_scale),
        // A strided view (e.g. a column slice): copy it into a contiguous buffer once.
        Err(_) => replay(&timestamps.as_array().to_vec(), time_scale),
    };
    to_numpy(py, result)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(py_poisson, m)?)?;
    m.add_function(wrap_pyfunction!(py_gamma, m)?)?;
    m.add_function(wrap_pyfunction!(py_constant, m)?)?;
    m.add_function(wrap_pyfunction!(py_replay, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaps(times: &[f64]) -> Vec<f64> {
        let mut prev = 0.0;
        times
            .iter()
            .map(|&t| {
                let g = t - prev;
                prev = t;
                g
            })
            .collect()
    }

    fn mean_and_cv(x: &[f64]) -> (f64, f64) {
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var.sqrt() / mean)
    }

    #[test]
    fn poisson_has_the_requested_rate_and_unit_cv() {
        let t = poisson(4.0, 200_000, 7).unwrap();
        assert_eq!(t.len(), 200_000);
        assert!(t.windows(2).all(|w| w[1] >= w[0]));
        let (mean, cv) = mean_and_cv(&gaps(&t));
        assert!((mean * 4.0 - 1.0).abs() < 0.01, "mean gap {mean}");
        assert!((cv - 1.0).abs() < 0.01, "cv {cv}");
    }

    #[test]
    fn same_seed_same_schedule_other_seed_other_schedule() {
        assert_eq!(
            poisson(2.0, 1000, 42).unwrap(),
            poisson(2.0, 1000, 42).unwrap()
        );
        assert_ne!(
            poisson(2.0, 1000, 42).unwrap(),
            poisson(2.0, 1000, 43).unwrap()
        );
        assert_eq!(
            gamma(2.0, 0.5, 1000, 42).unwrap(),
            gamma(2.0, 0.5, 1000, 42).unwrap()
        );
    }

    #[test]
    fn gamma_keeps_the_mean_gap_and_sets_cv_from_burstiness() {
        for &k in &[0.25, 1.0, 4.0] {
            let t = gamma(10.0, k, 200_000, 1).unwrap();
            let (mean, cv) = mean_and_cv(&gaps(&t));
            assert!(
                (mean * 10.0 - 1.0).abs() < 0.01,
                "burstiness {k}: mean gap {mean}"
            );
            let expected_cv = 1.0 / f64::sqrt(k);
            assert!(
                (cv / expected_cv - 1.0).abs() < 0.02,
                "burstiness {k}: cv {cv}"
            );
        }
    }

    #[test]
    fn constant_is_evenly_spaced_from_one_gap() {
        assert_eq!(constant(4.0, 4).unwrap(), vec![0.25, 0.5, 0.75, 1.0]);
        assert!(constant(0.0, 4).is_err());
    }

    #[test]
    fn replay_shifts_to_zero_and_scales_time() {
        assert_eq!(
            replay(&[10.0, 11.0, 13.0], 2.0).unwrap(),
            vec![0.0, 0.5, 1.5]
        );
        assert_eq!(replay(&[], 1.0).unwrap(), Vec::<f64>::new());
        assert!(replay(&[1.0, 0.5], 1.0).is_err());
        assert!(replay(&[1.0, f64::NAN], 1.0).is_err());
        assert!(replay(&[1.0], 0.0).is_err());
    }

    #[test]
    fn bad_parameters_are_rejected() {
        assert!(poisson(-1.0, 10, 0).is_err());
        assert!(poisson(f64::INFINITY, 10, 0).is_err());
        assert!(gamma(1.0, 0.0, 10, 0).is_err());
        assert!(gamma(1.0, f64::NAN, 10, 0).is_err());
        assert_eq!(poisson(1.0, 0, 0).unwrap(), Vec::<f64>::new());
    }
}
