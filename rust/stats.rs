//! Queue statistics of one run: time-weighted means of step functions, MSER-5 warm-up
//! truncation, the slope of requests-in-system with a batch-means confidence interval, and event
//! rates (departures, arrivals) with their intervals.
//!
//! Why batch means: requests-in-system is strongly autocorrelated (a request stays for tens of
//! seconds), so an ordinary regression on raw samples would give intervals far too narrow. The
//! steady window is cut into k equal batches whose time-weighted means are close to independent
//! when batches are longer than the correlation time; the slope is the OLS slope of those means
//! on the batch mid-times, with a Student-t interval on k − 2 degrees of freedom. Regression on
//! batch means (rather than averaging per-batch slopes) is used because a stable queue is a
//! stationary process whose batch means have no trend: their regression slope shrinks like
//! T^-1.5, so a stable run is recognised in a short window, while per-batch slopes telescope to
//! (N_end − N_start)/T and shrink only like 1/T with a much wider interval. k is chosen like
//! Fishman's LBatch: the largest of a few candidates whose detrended batch means show no
//! significant lag-1 autocorrelation; whatever correlation remains inflates the standard error by
//! sqrt((1 + r1)/(1 − r1)) (the AR(1) effective-sample-size correction), which also covers the
//! random-walk residuals of an overloaded queue.

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// Streaming time-weighted mean and maximum of a right-continuous step function over a window
/// [start, end): push (time, value) pairs in time order; each value holds until the next push.
#[derive(Debug, Clone)]
pub struct StepIntegrator {
    start: f64,
    end: f64,
    t: f64,
    v: f64,
    area: f64,
    max: f64,
}

impl StepIntegrator {
    pub fn new(start: f64, end: f64, initial: f64) -> Self {
        StepIntegrator {
            start,
            end,
            t: f64::NEG_INFINITY,
            v: initial,
            area: 0.0,
            max: f64::NEG_INFINITY,
        }
    }

    fn close_segment(&mut self, until: f64) {
        let a = self.t.max(self.start);
        let b = until.min(self.end);
        if b > a {
            self.area += self.v * (b - a);
            self.max = self.max.max(self.v);
        }
    }

    /// The function takes `value` from `time` on. Times must not decrease.
    pub fn push(&mut self, time: f64, value: f64) {
        self.close_segment(time);
        self.t = time;
        self.v = value;
    }

    /// (time-weighted mean, maximum) over the window; NaN for an empty window.
    pub fn finish(mut self) -> (f64, f64) {
        self.close_segment(f64::INFINITY);
        let len = self.end - self.start;
        if len <= 0.0 {
            return (f64::NAN, f64::NAN);
        }
        (self.area / len, self.max)
    }
}

/// Time-weighted mean of a step function over each interval [edges[i], edges[i+1]), in one pass.
pub fn interval_means(times: &[f64], values: &[f64], edges: &[f64], initial: f64) -> Vec<f64> {
    let m = edges.len().saturating_sub(1);
    let mut out = vec![0.0; m];
    let mut j = 0; // next event
    let mut v = initial;
    for i in 0..m {
        let (a, b) = (edges[i], edges[i + 1]);
        // apply events at or before a
        while j < times.len() && times[j] <= a {
            v = values[j];
            j += 1;
        }
        let mut area = 0.0;
        let mut t = a;
        while j < times.len() && times[j] < b {
            area += v * (times[j] - t);
            t = times[j];
            v = values[j];
            j += 1;
        }
        area += v * (b - t);
        out[i] = if b > a { area / (b - a) } else { f64::NAN };
    }
    out
}

/// Requests in system as a step function: +1 at each enter time, −1 at each finite leave time
/// (NaN: never left). Returns the distinct event times and the count just after each.
pub fn in_system_steps(enter: &[f64], leave: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut events: Vec<(f64, i64)> = Vec::with_capacity(enter.len() + leave.len());
    events.extend(enter.iter().filter(|t| t.is_finite()).map(|&t| (t, 1)));
    events.extend(leave.iter().filter(|t| t.is_finite()).map(|&t| (t, -1)));
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut times = Vec::new();
    let mut counts = Vec::new();
    let mut n: i64 = 0;
    for (t, d) in events {
        n += d;
        if times.last() == Some(&t) {
            *counts.last_mut().unwrap() = n as f64;
        } else {
            times.push(t);
            counts.push(n as f64);
        }
    }
    (times, counts)
}

/// MSER-5 (White, 1997; Franklin & White, 2008): average the observations in batches of 5 and
/// drop the d leading batches that minimise the squared standard error of the remaining mean,
/// Σ_{i≥d}(z_i − z̄_d)² / (m − d)², searching d over the first half only. Returns the number of
/// leading observations to drop (a multiple of 5).
pub fn mser5(obs: &[f64]) -> usize {
    let m = obs.len() / 5;
    if m < 2 {
        return 0;
    }
    let z: Vec<f64> = (0..m)
        .map(|i| obs[5 * i..5 * i + 5].iter().sum::<f64>() / 5.0)
        .collect();
    // suffix sums of z and z² give each candidate's statistic in O(1)
    let mut s1 = vec![0.0; m + 1];
    let mut s2 = vec![0.0; m + 1];
    for i in (0..m).rev() {
        s1[i] = s1[i + 1] + z[i];
        s2[i] = s2[i + 1] + z[i] * z[i];
    }
    let mut best = (f64::INFINITY, 0);
    for d in 0..=(m / 2) {
        let n = (m - d) as f64;
        let ss = (s2[d] - s1[d] * s1[d] / n).max(0.0);
        let stat = ss / (n * n);
        if stat < best.0 {
            best = (stat, d);
        }
    }
    5 * best.1
}

fn ln_gamma(x: f64) -> f64 {
    // Lanczos approximation, g = 7, n = 9 (accurate to ~1e-15 for x > 0.5)
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Continued fraction of the incomplete beta function (modified Lentz).
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let nonzero = |v: f64| if v.abs() < TINY { TINY } else { v };
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 / nonzero(1.0 - qab * x / qap);
    let mut h = d;
    // One Lentz step with coefficient `aa`: updates d and c, returns the factor applied to h.
    let mut step = |aa: f64| {
        d = 1.0 / nonzero(1.0 + aa * d);
        c = nonzero(1.0 + aa / c);
        d * c
    };
    for m in 1..500 {
        let m = m as f64;
        let m2 = 2.0 * m;
        h *= step(m * (b - m) * x / ((qam + m2) * (a + m2)));
        let del = step(-(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)));
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// Regularised incomplete beta function I_x(a, b).
fn beta_inc(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_cf(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_cf(b, a, 1.0 - x) / b
    }
}

/// CDF of Student's t distribution with `dof` degrees of freedom.
pub fn student_t_cdf(t: f64, dof: f64) -> f64 {
    let tail = 0.5 * beta_inc(dof / 2.0, 0.5, dof / (dof + t * t));
    if t >= 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

/// Quantile of Student's t distribution (bisection on the CDF; p in (0, 1)).
///
/// Written here rather than taken from `statrs`: statrs 0.18's `StudentsT::inverse_cdf` returns
/// 1.8266 for p = 0.975 at 10^7 degrees of freedom (the true value is 1.95996), and this
/// function is exposed to Python for any dof. The tests pin it to scipy's `t.ppf` (1e-9 relative,
/// dof 1–200) and to the normal quantile at 10^7 dof.
pub fn student_t_quantile(p: f64, dof: f64) -> f64 {
    if p == 0.5 {
        return 0.0;
    }
    if p < 0.5 {
        return -student_t_quantile(1.0 - p, dof);
    }
    let (mut lo, mut hi) = (0.0, 1.0);
    while student_t_cdf(hi, dof) < p {
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if student_t_cdf(mid, dof) < p {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo < 1e-12 * hi.max(1.0) {
            break;
        }
    }
    0.5 * (lo + hi)
}

fn lag1_autocorrelation(x: &[f64]) -> f64 {
    let n = x.len();
    if n < 3 {
        return 0.0;
    }
    let mean = x.iter().sum::<f64>() / n as f64;
    let var: f64 = x.iter().map(|v| (v - mean) * (v - mean)).sum();
    if var <= 0.0 {
        return 0.0;
    }
    let cov: f64 = x.windows(2).map(|w| (w[0] - mean) * (w[1] - mean)).sum();
    cov / var
}

/// A point estimate with its confidence interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub estimate: f64,
    pub lo: f64,
    pub hi: f64,
    pub std_error: f64,
    pub dof: f64,
    pub batches: usize,
    /// lag-1 autocorrelation of the (detrended) batch values used for the interval
    pub lag1: f64,
    /// "batch-means regression", "batch slopes" (random-walk fallback) or "batch counts"
    pub method: &'static str,
}

impl Interval {
    fn nan() -> Self {
        Interval {
            estimate: f64::NAN,
            lo: f64::NAN,
            hi: f64::NAN,
            std_error: f64::NAN,
            dof: 0.0,
            batches: 0,
            lag1: f64::NAN,
            method: "",
        }
    }
}

/// The batch counts tried, largest first (LBatch-style).
const BATCH_CANDIDATES: [usize; 3] = [32, 16, 10];

fn ar1_inflation(r1: f64) -> f64 {
    let r = r1.clamp(0.0, 0.95);
    ((1.0 + r) / (1.0 - r)).sqrt()
}

/// Whether lag-1 autocorrelation r1 of k values is significant at the 5% level (|r1| > 2/√k).
fn correlated(r1: f64, k: usize) -> bool {
    r1 > 2.0 / (k as f64).sqrt()
}

fn ols_slope(x: &[f64], y: &[f64]) -> (f64, f64, Vec<f64>) {
    let n = x.len() as f64;
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let sxx: f64 = x.iter().map(|v| (v - mx) * (v - mx)).sum();
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let slope = sxy / sxx;
    let resid: Vec<f64> = x
        .iter()
        .zip(y)
        .map(|(a, b)| b - my - slope * (a - mx))
        .collect();
    (slope, sxx, resid)
}

/// Continuous-time OLS slope of a step function over each interval [edges[i], edges[i+1]):
/// ∫(t − c)N(t)dt / ∫(t − c)²dt with c the interval's mid-point, computed exactly per segment.
pub fn interval_slopes(times: &[f64], values: &[f64], edges: &[f64], initial: f64) -> Vec<f64> {
    let m = edges.len().saturating_sub(1);
    let mut out = vec![0.0; m];
    let mut j = 0;
    let mut v = initial;
    for i in 0..m {
        let (a, b) = (edges[i], edges[i + 1]);
        let c = 0.5 * (a + b);
        let moment = |from: f64, to: f64, v: f64| v * ((to - c).powi(2) - (from - c).powi(2)) / 2.0;
        while j < times.len() && times[j] <= a {
            v = values[j];
            j += 1;
        }
        let mut acc = 0.0;
        let mut t = a;
        while j < times.len() && times[j] < b {
            acc += moment(t, times[j], v);
            t = times[j];
            v = values[j];
            j += 1;
        }
        acc += moment(t, b, v);
        out[i] = if b > a {
            acc / ((b - a).powi(3) / 12.0)
        } else {
            f64::NAN
        };
    }
    out
}

/// Batches used when the process behaves like a random walk (see `batch_means_slope`).
const RANDOM_WALK_BATCHES: usize = 10;

fn equal_edges(start: f64, end: f64, k: usize) -> Vec<f64> {
    (0..=k)
        .map(|i| start + (end - start) * i as f64 / k as f64)
        .collect()
}

/// Residual variance of the detrended means of k equal batches.
fn detrended_batch_variance(times: &[f64], values: &[f64], start: f64, end: f64, k: usize) -> f64 {
    let edges = equal_edges(start, end, k);
    let means = interval_means(times, values, &edges, 0.0);
    let mids: Vec<f64> = edges.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
    let (_, _, resid) = ols_slope(&mids, &means);
    resid.iter().map(|r| r * r).sum::<f64>() / (k - 2) as f64
}

/// Variance-time check: batch means of a stationary process lose variance as batches lengthen
/// (4× longer batches: about ¼ the variance once batches outlast the correlation time), while
/// the detrended batch means of a random walk keep theirs. A ratio above ¾ means the batches are
/// not long enough to be treated as independent, or the queue wanders like a random walk
/// (threshold ¾: medians measured ≈ 0.9 for a random walk with drift, ≈ 0.45–0.55 for an
/// M/M/∞ queue whose batches are only a few correlation times long).
fn random_walk_like(times: &[f64], values: &[f64], start: f64, end: f64) -> bool {
    let fine = detrended_batch_variance(times, values, start, end, 32);
    let coarse = detrended_batch_variance(times, values, start, end, 8);
    fine > 0.0 && coarse / fine > 0.75
}

/// Slope of a step function over [start, end) with a Student-t interval at `confidence`.
///
/// For a stationary queue (see `random_walk_like`): OLS on k batch means (k chosen LBatch-style
/// from 32, 16, 10, AR(1) inflation of the standard error), efficient for the bounded
/// fluctuations of a stable queue. Otherwise the process behaves like a random walk around its
/// trend (an overloaded or critical queue), for which the regression interval is far too narrow;
/// then the slope is the mean of 10 non-overlapping within-batch OLS slopes — independent for a
/// random walk, since they rest on disjoint increments — with a t-interval on 9 degrees of
/// freedom.
pub fn batch_means_slope(
    times: &[f64],
    values: &[f64],
    start: f64,
    end: f64,
    confidence: f64,
) -> Interval {
    if !(end > start) {
        return Interval::nan();
    }
    if !random_walk_like(times, values, start, end) {
        for (i, &k) in BATCH_CANDIDATES.iter().enumerate() {
            let edges = equal_edges(start, end, k);
            let means = interval_means(times, values, &edges, 0.0);
            let mids: Vec<f64> = edges.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
            let (slope, sxx, resid) = ols_slope(&mids, &means);
            let r1 = lag1_autocorrelation(&resid);
            if correlated(r1, k) && i + 1 < BATCH_CANDIDATES.len() {
                continue;
            }
            let dof = (k - 2) as f64;
            let s2 = resid.iter().map(|r| r * r).sum::<f64>() / dof;
            let se = (s2 / sxx).sqrt() * ar1_inflation(r1);
            let t = student_t_quantile(0.5 + confidence / 2.0, dof);
            return Interval {
                estimate: slope,
                lo: slope - t * se,
                hi: slope + t * se,
                std_error: se,
                dof,
                batches: k,
                lag1: r1,
                method: "batch-means regression",
            };
        }
    }
    let k = RANDOM_WALK_BATCHES;
    let slopes = interval_slopes(times, values, &equal_edges(start, end, k), 0.0);
    let mean = slopes.iter().sum::<f64>() / k as f64;
    let dof = (k - 1) as f64;
    let var = slopes.iter().map(|s| (s - mean) * (s - mean)).sum::<f64>() / dof;
    let r1 = lag1_autocorrelation(&slopes);
    let se = (var / k as f64).sqrt() * ar1_inflation(r1);
    let t = student_t_quantile(0.5 + confidence / 2.0, dof);
    Interval {
        estimate: mean,
        lo: mean - t * se,
        hi: mean + t * se,
        std_error: se,
        dof,
        batches: k,
        lag1: r1,
        method: "batch slopes",
    }
}

/// Rate of events (e.g. departures) in [start, end): count / length, with a Student-t interval
/// from the per-batch counts (batch count chosen as for the slope).
pub fn event_rate(event_times: &[f64], start: f64, end: f64, confidence: f64) -> Interval {
    if !(end > start) {
        return Interval::nan();
    }
    let mut sorted: Vec<f64> = event_times
        .iter()
        .copied()
        .filter(|t| t.is_finite() && *t >= start && *t < end)
        .collect();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let total = sorted.len() as f64 / (end - start);
    let mut result = Interval::nan();
    for &k in BATCH_CANDIDATES.iter() {
        let len = (end - start) / k as f64;
        let mut counts = vec![0.0; k];
        for t in &sorted {
            let i = (((t - start) / len) as usize).min(k - 1);
            counts[i] += 1.0;
        }
        let rates: Vec<f64> = counts.iter().map(|c| c / len).collect();
        let mean = rates.iter().sum::<f64>() / k as f64;
        let dof = (k - 1) as f64;
        let var = rates.iter().map(|r| (r - mean) * (r - mean)).sum::<f64>() / dof;
        let r1 = lag1_autocorrelation(&rates);
        let se = (var / k as f64).sqrt() * ar1_inflation(r1);
        let t = student_t_quantile(0.5 + confidence / 2.0, dof);
        result = Interval {
            estimate: total,
            lo: total - t * se,
            hi: total + t * se,
            std_error: se,
            dof,
            batches: k,
            lag1: r1,
            method: "batch counts",
        };
        if !correlated(r1, k) {
            break;
        }
    }
    result
}

/// Everything the stability verdict needs from one run.
#[pyclass(frozen, get_all, module = "kvbench._core")]
#[derive(Debug, Clone)]
pub struct QueueAnalysis {
    /// end of the warm-up MSER-5 removed; the steady window is [warmup_end, end)
    pub warmup_end: f64,
    pub end: f64,
    /// time-weighted mean / maximum of requests in system over the steady window
    pub mean_in_system: f64,
    pub max_in_system: f64,
    /// requests in system at the end of the run
    pub final_in_system: f64,
    /// slope of requests in system over the steady window (requests/s) and its interval
    pub slope: f64,
    pub slope_lo: f64,
    pub slope_hi: f64,
    pub slope_batches: usize,
    pub slope_lag1: f64,
    pub slope_method: String,
    /// start of the window the rates use: MSER-5 on per-interval departure counts, which in an
    /// overloaded run ends at the KV-cache fill rather than half-way like the trend in N(t)
    pub rate_window_start: f64,
    /// departure (completion) rate over [rate_window_start, end) and its interval
    pub departure_rate: f64,
    pub departure_lo: f64,
    pub departure_hi: f64,
    /// arrival (send) rate over the same window and its interval
    pub arrival_rate: f64,
    pub arrival_lo: f64,
    pub arrival_hi: f64,
    pub confidence: f64,
}

#[pymethods]
impl QueueAnalysis {
    fn __repr__(&self) -> String {
        format!("{self:?}")
    }
}

/// Number of equal observation intervals MSER-5 looks at.
const MSER_OBSERVATIONS: usize = 200;

pub fn analyze_queue(enter: &[f64], leave: &[f64], end: f64, confidence: f64) -> QueueAnalysis {
    let (times, counts) = in_system_steps(enter, leave);
    let n = MSER_OBSERVATIONS;
    let edges: Vec<f64> = (0..=n).map(|i| end * i as f64 / n as f64).collect();
    let obs = interval_means(&times, &counts, &edges, 0.0);
    let warmup_end = edges[mser5(&obs)];
    let mut acc = StepIntegrator::new(warmup_end, end, 0.0);
    let mut final_n = 0.0;
    for (t, c) in times.iter().zip(&counts) {
        if *t <= end {
            final_n = *c;
        }
        acc.push(*t, *c);
    }
    let (mean, max) = acc.finish();
    let slope = batch_means_slope(&times, &counts, warmup_end, end, confidence);
    let mut dep_counts = vec![0.0; n];
    for t in leave
        .iter()
        .filter(|t| t.is_finite() && **t >= 0.0 && **t < end)
    {
        dep_counts[((t / end * n as f64) as usize).min(n - 1)] += 1.0;
    }
    let rate_start = edges[mser5(&dep_counts)];
    let dep = event_rate(leave, rate_start, end, confidence);
    let arr = event_rate(enter, rate_start, end, confidence);
    QueueAnalysis {
        warmup_end,
        end,
        mean_in_system: mean,
        max_in_system: max,
        final_in_system: final_n,
        slope: slope.estimate,
        slope_lo: slope.lo,
        slope_hi: slope.hi,
        slope_batches: slope.batches,
        slope_lag1: slope.lag1,
        slope_method: slope.method.to_string(),
        rate_window_start: rate_start,
        departure_rate: dep.estimate,
        departure_lo: dep.lo,
        departure_hi: dep.hi,
        arrival_rate: arr.estimate,
        arrival_lo: arr.lo,
        arrival_hi: arr.hi,
        confidence,
    }
}

fn check_confidence(confidence: f64) -> PyResult<()> {
    if confidence > 0.0 && confidence < 1.0 {
        Ok(())
    } else {
        Err(PyValueError::new_err(format!(
            "confidence must be in (0, 1), got {confidence}"
        )))
    }
}

fn check_sorted(name: &str, t: &[f64]) -> PyResult<()> {
    if t.windows(2).all(|w| w[0] <= w[1]) {
        Ok(())
    } else {
        Err(PyValueError::new_err(format!(
            "{name} must be sorted in time"
        )))
    }
}

#[pyfunction]
#[pyo3(signature = (times, values, start, end, initial = 0.0))]
fn step_mean_max(
    times: PyReadonlyArray1<'_, f64>,
    values: PyReadonlyArray1<'_, f64>,
    start: f64,
    end: f64,
    initial: f64,
) -> PyResult<(f64, f64)> {
    let (t, v) = (times.as_slice()?, values.as_slice()?);
    if t.len() != v.len() {
        return Err(PyValueError::new_err("times and values differ in length"));
    }
    check_sorted("times", t)?;
    let mut acc = StepIntegrator::new(start, end, initial);
    for (a, b) in t.iter().zip(v) {
        acc.push(*a, *b);
    }
    Ok(acc.finish())
}

#[pyfunction(name = "interval_means")]
#[pyo3(signature = (times, values, edges, initial = 0.0))]
fn py_interval_means<'py>(
    py: Python<'py>,
    times: PyReadonlyArray1<'py, f64>,
    values: PyReadonlyArray1<'py, f64>,
    edges: PyReadonlyArray1<'py, f64>,
    initial: f64,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let (t, v, e) = (times.as_slice()?, values.as_slice()?, edges.as_slice()?);
    if t.len() != v.len() {
        return Err(PyValueError::new_err("times and values differ in length"));
    }
    check_sorted("times", t)?;
    check_sorted("edges", e)?;
    Ok(interval_means(t, v, e, initial).into_pyarray(py))
}

/// A step function as two arrays: the times of its steps and its value from each step on.
type StepFunction<'py> = (Bound<'py, PyArray1<f64>>, Bound<'py, PyArray1<f64>>);

#[pyfunction(name = "in_system_steps")]
fn py_in_system_steps<'py>(
    py: Python<'py>,
    enter: PyReadonlyArray1<'py, f64>,
    leave: PyReadonlyArray1<'py, f64>,
) -> PyResult<StepFunction<'py>> {
    let (t, c) = in_system_steps(enter.as_slice()?, leave.as_slice()?);
    Ok((t.into_pyarray(py), c.into_pyarray(py)))
}

#[pyfunction(name = "mser5")]
fn py_mser5(observations: PyReadonlyArray1<'_, f64>) -> PyResult<usize> {
    Ok(mser5(observations.as_slice()?))
}

#[pyfunction(name = "student_t_quantile")]
fn py_student_t_quantile(p: f64, dof: f64) -> PyResult<f64> {
    if !(p > 0.0 && p < 1.0 && dof > 0.0) {
        return Err(PyValueError::new_err("need 0 < p < 1 and dof > 0"));
    }
    Ok(student_t_quantile(p, dof))
}

fn interval_tuple(i: Interval) -> (f64, f64, f64, usize) {
    (i.estimate, i.lo, i.hi, i.batches)
}

#[pyfunction(name = "batch_means_slope")]
#[pyo3(signature = (times, values, start, end, confidence = 0.95))]
fn py_batch_means_slope(
    times: PyReadonlyArray1<'_, f64>,
    values: PyReadonlyArray1<'_, f64>,
    start: f64,
    end: f64,
    confidence: f64,
) -> PyResult<(f64, f64, f64, usize)> {
    check_confidence(confidence)?;
    let (t, v) = (times.as_slice()?, values.as_slice()?);
    if t.len() != v.len() {
        return Err(PyValueError::new_err("times and values differ in length"));
    }
    check_sorted("times", t)?;
    Ok(interval_tuple(batch_means_slope(
        t, v, start, end, confidence,
    )))
}

#[pyfunction(name = "event_rate")]
#[pyo3(signature = (event_times, start, end, confidence = 0.95))]
fn py_event_rate(
    event_times: PyReadonlyArray1<'_, f64>,
    start: f64,
    end: f64,
    confidence: f64,
) -> PyResult<(f64, f64, f64, usize)> {
    check_confidence(confidence)?;
    Ok(interval_tuple(event_rate(
        event_times.as_slice()?,
        start,
        end,
        confidence,
    )))
}

#[pyfunction(name = "analyze_queue")]
#[pyo3(signature = (enter, leave, end, confidence = 0.95))]
fn py_analyze_queue(
    py: Python<'_>,
    enter: PyReadonlyArray1<'_, f64>,
    leave: PyReadonlyArray1<'_, f64>,
    end: f64,
    confidence: f64,
) -> PyResult<QueueAnalysis> {
    check_confidence(confidence)?;
    if !(end > 0.0) {
        return Err(PyValueError::new_err(format!(
            "end must be positive, got {end}"
        )));
    }
    let (e, l) = (enter.as_slice()?.to_vec(), leave.as_slice()?.to_vec());
    if e.len() != l.len() {
        return Err(PyValueError::new_err("enter and leave differ in length"));
    }
    Ok(py.allow_threads(|| analyze_queue(&e, &l, end, confidence)))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<QueueAnalysis>()?;
    m.add_function(wrap_pyfunction!(step_mean_max, m)?)?;
    m.add_function(wrap_pyfunction!(py_interval_means, m)?)?;
    m.add_function(wrap_pyfunction!(py_in_system_steps, m)?)?;
    m.add_function(wrap_pyfunction!(py_mser5, m)?)?;
    m.add_function(wrap_pyfunction!(py_student_t_quantile, m)?)?;
    m.add_function(wrap_pyfunction!(py_batch_means_slope, m)?)?;
    m.add_function(wrap_pyfunction!(py_event_rate, m)?)?;
    m.add_function(wrap_pyfunction!(py_analyze_queue, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn step_integrator_hand_computed() {
        // f = 0 on [0,1), 2 on [1,3), 5 on [3,4), 1 from 4; window [0.5, 5):
        // area = 0·0.5 + 2·2 + 5·1 + 1·1 = 10 over 4.5 → 2.2222; max 5
        let mut acc = StepIntegrator::new(0.5, 5.0, 0.0);
        for (t, v) in [(1.0, 2.0), (3.0, 5.0), (4.0, 1.0)] {
            acc.push(t, v);
        }
        let (mean, max) = acc.finish();
        assert!(close(mean, 10.0 / 4.5, 1e-12));
        assert_eq!(max, 5.0);
        // a value that holds only outside the window does not count towards the max
        let mut acc = StepIntegrator::new(0.0, 2.0, 0.0);
        acc.push(0.0, 1.0);
        acc.push(2.0, 9.0);
        assert_eq!(acc.finish(), (1.0, 1.0));
    }

    #[test]
    fn interval_means_hand_computed() {
        let times = [1.0, 3.0, 4.0];
        let values = [2.0, 5.0, 1.0];
        let means = interval_means(&times, &values, &[0.0, 2.0, 4.0, 6.0], 0.0);
        // [0,2): 0·1 + 2·1 = 2/2 = 1; [2,4): 2·1 + 5·1 = 7/2; [4,6): 1
        assert_eq!(means, vec![1.0, 3.5, 1.0]);
    }

    #[test]
    fn interval_slopes_hand_computed() {
        // f = 0 on [0,1), 1 on [1,2): slope over [0,2) = ∫(t−1)f dt / (8/12) = (1/2)/(2/3) = 0.75
        let s = interval_slopes(&[1.0], &[1.0], &[0.0, 2.0], 0.0);
        assert!(close(s[0], 0.75, 1e-12));
        // a constant has slope 0
        let s = interval_slopes(&[0.0], &[4.0], &[0.0, 1.0, 3.0], 0.0);
        assert_eq!(s, vec![0.0, 0.0]);
    }

    #[test]
    fn in_system_counts_and_ties() {
        // enters at 0, 1, 1; leaves at 2, 1 (same instant as two enters), never
        let (t, c) = in_system_steps(&[0.0, 1.0, 1.0], &[2.0, 1.0, f64::NAN]);
        assert_eq!(t, vec![0.0, 1.0, 2.0]);
        assert_eq!(c, vec![1.0, 2.0, 1.0]);
    }

    #[test]
    fn mser5_cuts_the_transient() {
        // 50 observations at 10 (10 batches), then 150 at 0: the first 10 batches are warm-up
        let mut obs = vec![10.0; 50];
        obs.extend(vec![0.0; 150]);
        assert_eq!(mser5(&obs), 50);
        // stationary data: nothing to cut
        let flat: Vec<f64> = (0..100)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        assert_eq!(mser5(&flat), 0);
        // hand-computed: batches z = [4, 0, 1, 0, 1, 0]; d=0: mean 1, ss = 9+1+0+1+0+1 = 12,
        // 12/36 = 0.333; d=1: mean 0.4, ss = 5·0.24 = 1.2, 1.2/25 = 0.048; d=2: mean 0.5,
        // ss = 1, 1/16 = 0.0625; d=3: mean 1/3, ss = 2/3, /9 = 0.074 → d = 1
        let mut obs = Vec::new();
        for z in [4.0, 0.0, 1.0, 0.0, 1.0, 0.0] {
            obs.extend(vec![z; 5]);
        }
        assert_eq!(mser5(&obs), 5);
    }

    #[test]
    fn student_t_quantiles_match_tables() {
        assert!(close(student_t_quantile(0.975, 1.0), 12.706_204_736, 1e-6));
        assert!(close(student_t_quantile(0.975, 4.0), 2.776_445_105, 1e-8));
        assert!(close(student_t_quantile(0.975, 8.0), 2.306_004_135, 1e-8));
        assert!(close(student_t_quantile(0.995, 30.0), 2.749_995_654, 1e-8));
        assert!(close(student_t_quantile(0.025, 8.0), -2.306_004_135, 1e-8));
        assert!(close(student_t_quantile(0.975, 1e7), 1.959_963_985, 1e-5));
    }

    #[test]
    fn slope_of_a_noiseless_ramp_is_exact() {
        // N(t) = floor(t) on [0, 96): 32 batches of 3 s have means 3i + 1, a line of slope 1
        let times: Vec<f64> = (0..96).map(|i| i as f64).collect();
        let values = times.clone();
        let s = batch_means_slope(&times, &values, 0.0, 96.0, 0.95);
        assert_eq!(s.batches, 32);
        assert!(close(s.estimate, 1.0, 1e-12));
        assert!(close(s.lo, 1.0, 1e-9) && close(s.hi, 1.0, 1e-9));
    }

    #[test]
    fn slope_interval_hand_computed() {
        // 6 points y = [0, 2, 1, 3, 2, 4] at x = 0.5..5.5: x̄ = 3, ȳ = 2, Sxx = 17.5, Sxy = 2.5·2 + 1.5·0 + 0.5·1 + 0.5·1 + 1.5·0 + 2.5·2 = 11
        // → slope 0.628571; residuals r = y − 2 − 0.628571(x − 3)
        let y = [0.0, 2.0, 1.0, 3.0, 2.0, 4.0];
        let x: Vec<f64> = (0..6).map(|i| i as f64 + 0.5).collect();
        let (slope, sxx, resid) = ols_slope(&x, &y);
        assert!(close(slope, 11.0 / 17.5, 1e-12));
        assert!(close(sxx, 17.5, 1e-12));
        let ss: f64 = resid.iter().map(|r| r * r).sum();
        // Syy = 10, SSres = Syy − Sxy²/Sxx = 10 − 121/17.5 = 3.085714
        assert!(close(ss, 10.0 - 121.0 / 17.5, 1e-12));
        // lag-1 autocorrelation of the residuals is negative (zig-zag): no inflation
        let r1 = lag1_autocorrelation(&resid);
        assert!(r1 < 0.0);
        assert_eq!(ar1_inflation(r1), 1.0);
    }

    #[test]
    fn event_rate_of_regular_events() {
        // one event every 0.5 s on [0, 64): rate 2 with zero spread across the 32 batches
        let ev: Vec<f64> = (0..128).map(|i| i as f64 * 0.5 + 0.25).collect();
        let r = event_rate(&ev, 0.0, 64.0, 0.95);
        assert!(close(r.estimate, 2.0, 1e-12));
        assert!(close(r.lo, 2.0, 1e-12) && close(r.hi, 2.0, 1e-12));
        assert_eq!(r.batches, 32);
    }

    /// A small deterministic generator so the statistical tests need no extra crate.
    fn lcg(state: &mut u64) -> f64 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*state >> 11) as f64) / ((1u64 << 53) as f64)
    }

    fn mm_infinity(
        lambda: f64,
        mean_service: f64,
        horizon: f64,
        seed: u64,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut s = seed;
        let (mut enter, mut leave) = (Vec::new(), Vec::new());
        let mut t = 0.0;
        loop {
            t += -(1.0 - lcg(&mut s)).ln() / lambda;
            if t >= horizon {
                break;
            }
            enter.push(t);
            let done = t - (1.0 - lcg(&mut s)).ln() * mean_service;
            leave.push(if done < horizon { done } else { f64::NAN });
        }
        (enter, leave)
    }

    #[test]
    fn stable_queue_slope_interval_covers_zero_mostly() {
        // M/M/∞ with λ = 3, mean stay 10 s: stationary after warm-up, true slope 0.
        let mut covered = 0;
        for seed in 0..100 {
            let (e, l) = mm_infinity(3.0, 10.0, 600.0, seed + 1);
            let a = analyze_queue(&e, &l, 600.0, 0.95);
            if a.slope_lo <= 0.0 && 0.0 <= a.slope_hi {
                covered += 1;
            }
            assert!(a.departure_lo < 3.3 && a.departure_hi > 2.7);
        }
        assert!(covered >= 88, "coverage {covered}/100");
    }

    #[test]
    fn overloaded_queue_grows_at_the_excess_rate() {
        // arrivals at 3/s, a single "server" that completes one request every 0.4 s (2.5/s):
        // requests in system grow at 0.5/s and the departure rate estimates the capacity 2.5.
        let mut s = 7;
        let (mut enter, mut leave) = (Vec::new(), Vec::new());
        let (mut t, mut free_at) = (0.0, 0.0f64);
        while t < 400.0 {
            t += -(1.0 - lcg(&mut s)).ln() / 3.0;
            enter.push(t);
            free_at = free_at.max(t) + 0.4;
            leave.push(if free_at < 400.0 { free_at } else { f64::NAN });
        }
        let a = analyze_queue(&enter, &leave, 400.0, 0.95);
        assert!(
            a.slope_lo > 0.0 && a.slope_lo < 0.5 && a.slope_hi > 0.5,
            "{a:?}"
        );
        assert_eq!(a.slope_method, "batch slopes");
        assert!(close(a.departure_rate, 2.5, 0.01), "{a:?}");
        assert!(a.departure_hi < 2.6);
    }
}
