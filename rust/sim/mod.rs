//! The iteration-level engine simulator (`ideal`, `vllm`, `sglang`, `trtllm` rules) and its two
//! Python fronts: `simulate` runs a whole schedule in virtual time, `EngineSim` steps one replica
//! on a caller's clock, `BacklogSim` runs the bounded-backlog saturation probe. All drive the
//! same `Engine`.

mod backlog;
mod batch;
mod decode;
mod engine;
mod pages;
mod prefix_cache;
mod profile;
mod request;
mod stepping;
#[cfg(test)]
mod tests;

use numpy::{IntoPyArray, PyReadonlyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use batch::{Dispatch, Options, Outcome};
use profile::Profile;

fn value_error(msg: String) -> PyErr {
    PyValueError::new_err(msg)
}

/// Simulates `arrivals` (sorted, seconds) with the given lengths through `replicas` engines.
#[pyfunction]
#[pyo3(signature = (profile, prompt_len, output_len, arrivals, *, replicas = 1, dispatch = "round_robin", seed = 0, until = None, sample_interval = None))]
#[allow(clippy::too_many_arguments)]
fn simulate<'py>(
    py: Python<'py>,
    profile: Profile,
    prompt_len: PyReadonlyArray1<'py, i64>,
    output_len: PyReadonlyArray1<'py, i64>,
    arrivals: PyReadonlyArray1<'py, f64>,
    replicas: usize,
    dispatch: &str,
    seed: u64,
    until: Option<f64>,
    sample_interval: Option<f64>,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = Options {
        replicas,
        dispatch: Dispatch::parse(dispatch).map_err(value_error)?,
        seed,
        until,
        sample_interval,
    };
    let prompt = prompt_len.as_slice()?;
    let output = output_len.as_slice()?;
    let arrivals = arrivals.as_slice()?;
    let outcome = py
        .allow_threads(|| batch::simulate(&profile, prompt, output, arrivals, &opts))
        .map_err(value_error)?;
    let Outcome {
        records: r,
        timeseries: t,
        summary: s,
    } = outcome;

    let records = PyDict::new(py);
    records.set_item("arrival", r.arrival.into_pyarray(py))?;
    records.set_item("admitted", r.admitted.into_pyarray(py))?;
    records.set_item("first_token", r.first_token.into_pyarray(py))?;
    records.set_item("finished", r.finished.into_pyarray(py))?;
    records.set_item("preemptions", r.preemptions.into_pyarray(py))?;
    records.set_item("replica", r.replica.into_pyarray(py))?;

    let series = PyDict::new(py);
    series.set_item("time", t.time.into_pyarray(py))?;
    series.set_item("waiting", t.waiting.into_pyarray(py))?;
    series.set_item("running", t.running.into_pyarray(py))?;
    series.set_item("kv_used", t.kv_used.into_pyarray(py))?;
    series.set_item("batch_tokens", t.batch_tokens.into_pyarray(py))?;
    series.set_item("iteration_time", t.iteration_time.into_pyarray(py))?;
    series.set_item("replica", t.replica.into_pyarray(py))?;

    let summary = PyDict::new(py);
    summary.set_item("requests", s.requests)?;
    summary.set_item("dispatched", s.dispatched)?;
    summary.set_item("completed", s.completed)?;
    summary.set_item("end_time", s.end_time)?;
    summary.set_item("iterations", s.iterations)?;
    summary.set_item("preemptions", s.preemptions)?;
    summary.set_item("busy_time", s.busy_time)?;
    summary.set_item("peak_kv_tokens", s.peak_kv_tokens)?;
    summary.set_item("kv_capacity", s.kv_capacity)?;
    summary.set_item("replicas", s.replicas)?;
    summary.set_item("sampled", opts.sample_interval.is_some())?;

    let out = PyDict::new(py);
    out.set_item("records", records)?;
    out.set_item("timeseries", series)?;
    out.set_item("summary", summary)?;
    Ok(out)
}

/// One engine replica stepped on the caller's clock; see `kvbench/_core.pyi`.
#[pyclass(module = "kvbench._core")]
struct EngineSim {
    inner: stepping::Stepper,
}

#[pymethods]
impl EngineSim {
    #[new]
    #[pyo3(signature = (profile, seed = 0))]
    fn new(profile: Profile, seed: u64) -> PyResult<Self> {
        Ok(EngineSim {
            inner: stepping::Stepper::new(profile, seed).map_err(value_error)?,
        })
    }

    fn add_request(
        &mut self,
        request_id: u64,
        prompt_len: i64,
        output_len: i64,
        now: f64,
    ) -> PyResult<()> {
        self.inner
            .add_request(request_id, prompt_len, output_len, now)
            .map_err(value_error)
    }

    fn advance(&mut self, until: f64) -> Vec<(u64, &'static str, f64, i64)> {
        self.inner
            .advance(until)
            .into_iter()
            .map(|(id, kind, time, tokens)| (id, kind.name(), time, tokens))
            .collect()
    }

    fn abort(&mut self, request_id: u64) {
        self.inner.abort(request_id);
    }

    fn next_event_time(&self) -> Option<f64> {
        self.inner.next_event_time()
    }

    fn state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let e = self.inner.engine();
        let last = e.last_iteration();
        let d = PyDict::new(py);
        d.set_item("time", e.clock())?;
        d.set_item("waiting", e.waiting())?;
        d.set_item("running", e.running())?;
        d.set_item("kv_used_tokens", e.kv_used_tokens())?;
        d.set_item("kv_total", e.kv_total_tokens())?;
        d.set_item("preemptions_total", e.preemptions)?;
        d.set_item("completed_total", e.completed)?;
        d.set_item("iteration", e.iterations)?;
        d.set_item("last_iteration_time", last.duration)?;
        d.set_item("batch_tokens", last.batch_tokens)?;
        d.set_item("decode_requests", last.decode_requests)?;
        d.set_item("prefill_requests", last.prefill_requests)?;
        d.set_item("prefill_tokens", last.prefill_tokens)?;
        d.set_item("in_flight", e.in_flight().is_some())?;
        d.set_item("new_token_ratio", e.new_token_ratio())?;
        Ok(d)
    }
}

/// The bounded-backlog saturation probe in virtual time; see `kvbench/_core.pyi`.
#[pyclass(module = "kvbench._core")]
struct BacklogSim {
    inner: backlog::Backlog,
}

#[pymethods]
impl BacklogSim {
    #[new]
    #[pyo3(signature = (profile, prompt_len, output_len, *, backlog, replicas = 1, seed = 0, bin_width = 0.25))]
    fn new(
        profile: Profile,
        prompt_len: PyReadonlyArray1<'_, i64>,
        output_len: PyReadonlyArray1<'_, i64>,
        backlog: usize,
        replicas: usize,
        seed: u64,
        bin_width: f64,
    ) -> PyResult<Self> {
        let inner = backlog::Backlog::new(
            profile,
            prompt_len.as_slice()?.to_vec(),
            output_len.as_slice()?.to_vec(),
            backlog,
            replicas,
            seed,
            bin_width,
        )
        .map_err(value_error)?;
        Ok(BacklogSim { inner })
    }

    fn extend(
        &mut self,
        prompt_len: PyReadonlyArray1<'_, i64>,
        output_len: PyReadonlyArray1<'_, i64>,
    ) -> PyResult<()> {
        self.inner
            .extend(
                prompt_len.as_slice()?.to_vec(),
                output_len.as_slice()?.to_vec(),
            )
            .map_err(value_error)
    }

    fn advance<'py>(&mut self, py: Python<'py>, until: f64) -> PyResult<Bound<'py, PyDict>> {
        let b = py
            .allow_threads(|| self.inner.advance(until))
            .map_err(value_error)?;
        let d = PyDict::new(py);
        d.set_item("first", b.first)?;
        d.set_item("work", b.work.into_pyarray(py))?;
        d.set_item("starts", b.starts.into_pyarray(py))?;
        d.set_item("start_prompt", b.start_prompt.into_pyarray(py))?;
        d.set_item("start_output", b.start_output.into_pyarray(py))?;
        d.set_item("finishes", b.finishes.into_pyarray(py))?;
        d.set_item("backlog", b.backlog.into_pyarray(py))?;
        d.set_item("waiting", b.waiting.into_pyarray(py))?;
        Ok(d)
    }

    #[getter]
    fn remaining(&self) -> usize {
        self.inner.remaining()
    }

    #[getter]
    fn sent(&self) -> usize {
        self.inner.sent()
    }

    #[getter]
    fn clock(&self) -> f64 {
        self.inner.clock()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(simulate, m)?)?;
    m.add_class::<EngineSim>()?;
    m.add_class::<BacklogSim>()?;
    Ok(())
}
