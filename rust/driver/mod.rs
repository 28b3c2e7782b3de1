//! The HTTP load generator's timed send/receive loop: every request sent at its scheduled time,
//! every streamed chunk timed, every failure recorded with its kind.
//!
//! Python hands over the whole schedule (intended send times, prompt and output lengths, and its
//! engine adapter's body as a template that `body.rs` renders as each request comes due) and
//! polls for finished records; the loop itself never takes the GIL.
//!
//! Timing: a dedicated OS thread walks the schedule. It sleeps (`std::thread::sleep`, a
//! high-resolution timer) until `LEAD` before each send and hands the request to a small tokio
//! runtime, whose task spins to the instant, then POSTs it over pooled keep-alive connections
//! and reads its event stream. Tokio's own timer wheel has millisecond granularity, and the
//! schedule-lag budget is 1 ms, so it times only timeouts and the end of the run.
//!
//! Failure kinds: `http_<status>` (with a body excerpt), `timeout`, `connection_refused`,
//! `connection_reset`, `bad_stream`, `truncated_stream`, `missing_usage`, `short_output`,
//! `long_output`, `engine_down`. A refused connection means the engine is gone: sending stops
//! and requests in flight end as `engine_down`. Requests still in flight at `duration` (or at
//! `stop()`) are reported unfinished: sent, no finish, no error. Nothing is sent at or after
//! `duration`, even by a client that fell behind its schedule: the requests it could not send
//! in time are not part of the run. An infinite `duration` runs until every request has ended.
//!
//! Every request carries the caller's extra headers (an API key, a gateway's routing header);
//! their values are marked sensitive and never appear in a record or an error.
//!
//! Plain `http://` only: engines serve plain HTTP, and a load generator that measured through a
//! TLS terminating proxy would measure the proxy. The Python side refuses `https://` URLs with a
//! message saying so.

mod body;
mod request;
pub mod stream;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue};
use hyper::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use tokio::runtime::{Handle, Runtime};
use tokio::sync::watch;

/// How long before a send the scheduler thread wakes and hands the request to a runtime worker,
/// which then spins to the instant: both threads' wake-up latencies (timer slack, a parked
/// worker, a halted virtual CPU) fall inside it instead of onto the send. The price is up to
/// this much spinning per request on a worker (about half a worker at 1,000 req/s).
const LEAD: Duration = Duration::from_micros(500);
/// Longest single sleep of the scheduler thread, so `stop()` and a dead engine are seen soon.
const NAP: Duration = Duration::from_millis(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RunState {
    Sending,
    EngineDown,
    Stopped,
}

/// What the scheduler thread, the request tasks and the Python-facing object share.
struct Shared {
    t0: Instant,
    /// The end of the run; None: it ends when every request has.
    end: Option<Instant>,
    uri: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Option<Duration>,
    state: watch::Sender<RunState>,
    in_flight: AtomicUsize,
    sent: AtomicUsize,
    sending_done: AtomicBool,
    engine_down_at: Mutex<Option<f64>>,
    records: Mutex<Vec<DriverRecord>>,
    /// The bounded-backlog mode's top-up signal and event log; None for a timed schedule.
    backlog: Option<Backlog>,
}

/// What a bounded-backlog run shares. The task that sees a request's first token (or its end
/// without one) sends the next request itself, at once: a hop through another thread would
/// leave the backlog short for as long as that thread takes to wake on a busy machine.
struct Backlog {
    template: body::BodyTemplate,
    runtime: Handle,
    stream: Mutex<Stream>,
    progress: Mutex<Progress>,
}

/// The requests not yet sent, and how many places the backlog owes while the stream is empty.
#[derive(Default)]
struct Stream {
    /// (prompt length, output length), in stream order.
    pending: VecDeque<(usize, i64)>,
    next_index: usize,
    owed: usize,
}

/// Events since the last `poll_progress`: (index, time) per send, (index, time, output tokens
/// so far) per chunk that carried output, (index, time) per request that ended unstarted.
#[derive(Default)]
struct Progress {
    sent: Vec<(i64, f64)>,
    chunks: Vec<(i64, f64, i64)>,
    unstarted: Vec<(i64, f64)>,
}

impl Shared {
    /// Records an event of a bounded-backlog run (nothing for a timed schedule).
    fn progress(&self, f: impl FnOnce(&mut Progress)) {
        if let Some(b) = &self.backlog {
            f(&mut b.progress.lock().unwrap());
        }
    }

    /// A request started, or ended without starting: the backlog has a place to fill, now.
    fn started(self: &Arc<Self>) {
        let Some(b) = &self.backlog else { return };
        if !self.running() {
            return;
        }
        let next = {
            let mut stream = b.stream.lock().unwrap();
            match stream.pending.pop_front() {
                Some(spec) => {
                    stream.next_index += 1;
                    Some((stream.next_index - 1, spec))
                }
                None => {
                    stream.owed += 1; // sent by `extend`
                    None
                }
            }
        };
        if let Some((index, (prompt, output))) = next {
            let body = Bytes::from(b.template.render(index, prompt, output, None));
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            self.sent.fetch_add(1, Ordering::SeqCst);
            let task = request::run(self.clone(), index, Instant::now(), body, output);
            b.runtime.spawn(task);
        }
    }

    /// Seconds since t0 (negative before it).
    fn secs(&self, at: Instant) -> f64 {
        match at.checked_duration_since(self.t0) {
            Some(d) => d.as_secs_f64(),
            None => -(self.t0 - at).as_secs_f64(),
        }
    }

    /// Moves the run out of `Sending` (the first reason to end it is the one that counts).
    fn end_sending(&self, to: RunState) {
        self.state.send_if_modified(|s| {
            let changed = *s == RunState::Sending;
            if changed {
                *s = to;
            }
            changed
        });
    }

    fn running(&self) -> bool {
        *self.state.borrow() == RunState::Sending
    }

    fn finished(&self) -> bool {
        self.sending_done.load(Ordering::SeqCst) && self.in_flight.load(Ordering::SeqCst) == 0
    }
}

/// Sleeps until `until`; false when the run stopped sending meanwhile.
fn sleep_until(shared: &Shared, until: Instant) -> bool {
    loop {
        if !shared.running() {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep((until - now).min(NAP));
    }
}

/// The scheduler thread: walks the schedule, renders each body, and starts each request on the
/// runtime `LEAD` before its time; the request's task spins to the instant itself.
fn schedule(shared: Arc<Shared>, runtime: Handle, plan: Plan) {
    for (index, &t) in plan.times.iter().enumerate() {
        let at = shared.t0 + Duration::from_secs_f64(t);
        let output = plan.output_lens[index];
        let body = Bytes::from(plan.template.render(
            index,
            plan.prompt_lens[index],
            output,
            plan.prefixes.get(index).copied(),
        ));
        if !sleep_until(&shared, at.checked_sub(LEAD).unwrap_or(at)) {
            break;
        }
        if shared.end.is_some_and(|end| Instant::now() >= end) {
            break; // a client this far behind would send past the window it is judged on
        }
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        shared.sent.fetch_add(1, Ordering::SeqCst);
        runtime.spawn(request::run(shared.clone(), index, at, body, output));
    }
    shared.sending_done.store(true, Ordering::SeqCst);
}

/// One request's record, as `HttpDriver.poll()` returns it. Times are seconds since t0.
#[pyclass(module = "kvbench._core", frozen, get_all)]
pub struct DriverRecord {
    /// Position of the request in the schedule given to the driver.
    index: usize,
    sent: f64,
    first_token: Option<f64>,
    finished: Option<f64>,
    output_tokens: Option<i64>,
    prompt_tokens: Option<i64>,
    /// One time per output token: the first chunk's arrival once (any further tokens it carried
    /// arrived within the TTFT), then each later chunk's k tokens spread evenly over the gap
    /// since the chunk before it, so an engine that merges tokens into one chunk when its HTTP
    /// task lags gives per-token ITL, not per-chunk.
    token_times: Vec<f64>,
    error: Option<String>,
    message: Option<String>,
}

impl DriverRecord {
    /// A request sent at `sent`, with nothing else known yet; the request task fills it in.
    fn new(index: usize, sent: f64) -> Self {
        DriverRecord {
            index,
            sent,
            first_token: None,
            finished: None,
            output_tokens: None,
            prompt_tokens: None,
            token_times: Vec::new(),
            error: None,
            message: None,
        }
    }

    /// A chunk carrying `tokens` output tokens arrived at `now`.
    fn tokens_arrived(&mut self, now: f64, tokens: usize) {
        match self.token_times.last() {
            None if tokens > 0 => {
                self.first_token = Some(now);
                self.token_times.push(now);
            }
            None => {}
            Some(&previous) => {
                let gap = now - previous;
                let k = tokens as f64;
                self.token_times
                    .extend((1..=tokens).map(|j| previous + gap * j as f64 / k));
            }
        }
    }
}

/// The schedule until `start()` hands it to the scheduler thread.
struct Plan {
    times: Vec<f64>,
    prompt_lens: Vec<usize>,
    output_lens: Vec<i64>,
    /// (prefix id, prefix length) per request of a shared-prefix workload; empty otherwise
    prefixes: Vec<(u64, usize)>,
    template: body::BodyTemplate,
}

#[pyclass(module = "kvbench._core")]
pub struct HttpDriver {
    uri: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    duration: f64,
    timeout: Option<Duration>,
    /// A schedule's plan until `start()` hands it to the scheduler thread.
    plan: Option<Plan>,
    /// A bounded-backlog run's K and its shared state until `start()` moves it into `Shared`.
    backlog: Option<(usize, Backlog)>,
    runtime: Option<Runtime>,
    shared: Option<Arc<Shared>>,
    scheduler: Option<JoinHandle<()>>,
}

fn parse_url(url: &str) -> PyResult<Uri> {
    let uri: Uri = url
        .parse()
        .map_err(|err| PyValueError::new_err(format!("{url}: not a URL ({err})")))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(PyValueError::new_err(format!(
            "{url}: only http://HOST[:PORT]/PATH URLs"
        )));
    }
    Ok(uri)
}

fn parse_headers(headers: Vec<(String, String)>) -> PyResult<Vec<(HeaderName, HeaderValue)>> {
    headers
        .into_iter()
        .map(|(name, value)| {
            let parsed_name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| PyValueError::new_err(format!("{name:?}: not a header name")))?;
            // the value may be a credential: the error names the header only
            let mut parsed = HeaderValue::from_str(&value).map_err(|_| {
                PyValueError::new_err(format!("header {name}: not a valid header value"))
            })?;
            parsed.set_sensitive(true);
            Ok((parsed_name, parsed))
        })
        .collect()
}

fn parse_timeout(request_timeout: Option<f64>) -> PyResult<Option<Duration>> {
    match request_timeout {
        Some(t) if t.is_finite() && t > 0.0 => Ok(Some(Duration::from_secs_f64(t))),
        Some(t) => Err(PyValueError::new_err(format!(
            "request_timeout {t} must be > 0"
        ))),
        None => Ok(None),
    }
}

fn build_runtime(workers: usize) -> PyResult<Runtime> {
    if workers == 0 {
        return Err(PyValueError::new_err("workers must be ≥ 1"));
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("kvbench-driver")
        .enable_all()
        .build()
        .map_err(|err| PyRuntimeError::new_err(format!("cannot start the driver's runtime: {err}")))
}

/// One (prompt, output) pair per request, prompts ≥ 1 and outputs ≥ 0.
fn lengths(prompt_lens: &[i64], output_lens: &[i64]) -> PyResult<Vec<(usize, i64)>> {
    if prompt_lens.len() != output_lens.len() {
        return Err(PyValueError::new_err(format!(
            "{} prompt lengths and {} output lengths: one of each per request",
            prompt_lens.len(),
            output_lens.len()
        )));
    }
    if let Some(i) = prompt_lens.iter().position(|n| *n < 1) {
        return Err(PyValueError::new_err(format!(
            "prompt length {} of request {i} must be ≥ 1",
            prompt_lens[i]
        )));
    }
    Ok(prompt_lens
        .iter()
        .zip(output_lens)
        .map(|(&p, &o)| (p as usize, o))
        .collect())
}

/// A bounded-backlog run's events since the last poll, as `HttpDriver.poll_progress()` returns
/// them. Times are seconds since t0.
#[pyclass(module = "kvbench._core", frozen)]
pub struct DriverProgress {
    sent: Vec<(i64, f64)>,
    chunks: Vec<(i64, f64, i64)>,
    unstarted: Vec<(i64, f64)>,
}

#[pymethods]
impl DriverProgress {
    /// (request index, send time) per request sent.
    #[getter]
    fn sent<'py>(&self, py: Python<'py>) -> (Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<f64>>) {
        let (i, t): (Vec<i64>, Vec<f64>) = self.sent.iter().copied().unzip();
        (i.into_pyarray(py), t.into_pyarray(py))
    }

    /// (request index, arrival time, output tokens so far) per chunk that carried output.
    #[getter]
    #[allow(clippy::type_complexity)]
    fn chunks<'py>(
        &self,
        py: Python<'py>,
    ) -> (
        Bound<'py, PyArray1<i64>>,
        Bound<'py, PyArray1<f64>>,
        Bound<'py, PyArray1<i64>>,
    ) {
        let i: Vec<i64> = self.chunks.iter().map(|c| c.0).collect();
        let t: Vec<f64> = self.chunks.iter().map(|c| c.1).collect();
        let k: Vec<i64> = self.chunks.iter().map(|c| c.2).collect();
        (i.into_pyarray(py), t.into_pyarray(py), k.into_pyarray(py))
    }

    /// (request index, end time) per request that ended without a first token.
    #[getter]
    fn unstarted<'py>(
        &self,
        py: Python<'py>,
    ) -> (Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<f64>>) {
        let (i, t): (Vec<i64>, Vec<f64>) = self.unstarted.iter().copied().unzip();
        (i.into_pyarray(py), t.into_pyarray(py))
    }
}

#[pymethods]
impl HttpDriver {
    #[new]
    #[pyo3(signature = (
        url, send_times, prompt_lens, output_lens, body_template, duration, *, seed=0,
        token_range=(1000, 30000), headers=Vec::new(), request_timeout=None, workers=2,
        prefix_ids=None, prefix_lens=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        url: &str,
        send_times: PyReadonlyArray1<'_, f64>,
        prompt_lens: PyReadonlyArray1<'_, i64>,
        output_lens: PyReadonlyArray1<'_, i64>,
        body_template: &str,
        duration: f64,
        seed: u64,
        token_range: (i64, i64),
        headers: Vec<(String, String)>,
        request_timeout: Option<f64>,
        workers: usize,
        prefix_ids: Option<PyReadonlyArray1<'_, i64>>,
        prefix_lens: Option<PyReadonlyArray1<'_, i64>>,
    ) -> PyResult<Self> {
        let uri = parse_url(url)?;
        let times = send_times.as_slice()?.to_vec();
        if prompt_lens.len()? != times.len() {
            return Err(PyValueError::new_err(format!(
                "{} send times and {} prompt lengths: one of each per request",
                times.len(),
                prompt_lens.len()?
            )));
        }
        let (prompt_lens, output_lens): (Vec<usize>, Vec<i64>) =
            lengths(prompt_lens.as_slice()?, output_lens.as_slice()?)?
                .into_iter()
                .unzip();
        let prefixes = match (prefix_ids, prefix_lens) {
            (None, None) => Vec::new(),
            (Some(ids), Some(lens)) => {
                let (ids, lens) = (ids.as_slice()?, lens.as_slice()?);
                if ids.len() != times.len() || lens.len() != times.len() {
                    return Err(PyValueError::new_err(format!(
                        "{} prefix ids and {} prefix lengths for {} requests: one of each per request",
                        ids.len(),
                        lens.len(),
                        times.len()
                    )));
                }
                let bad = (0..ids.len())
                    .find(|&i| ids[i] < 0 || lens[i] < 0 || lens[i] as usize > prompt_lens[i]);
                if let Some(i) = bad {
                    return Err(PyValueError::new_err(format!(
                        "prefix {} of {} tokens in request {i} of {} prompt tokens: ids and \
                         lengths must be ≥ 0 and a prefix no longer than its prompt",
                        ids[i], lens[i], prompt_lens[i]
                    )));
                }
                ids.iter()
                    .zip(lens)
                    .map(|(&id, &len)| (id as u64, len as usize))
                    .collect()
            }
            _ => {
                return Err(PyValueError::new_err(
                    "prefix_ids and prefix_lens go together",
                ))
            }
        };
        let template = body::BodyTemplate::new(body_template, seed, token_range.0, token_range.1)
            .map_err(PyValueError::new_err)?;
        let headers = parse_headers(headers)?;
        if let Some(i) = times.iter().position(|t| !(t.is_finite() && *t >= 0.0)) {
            return Err(PyValueError::new_err(format!(
                "send time {} of request {i} is not a finite time ≥ 0",
                times[i]
            )));
        }
        if let Some(i) = times.windows(2).position(|w| w[1] < w[0]) {
            return Err(PyValueError::new_err(format!(
                "send times must not decrease (request {} at {} after {})",
                i + 1,
                times[i + 1],
                times[i]
            )));
        }
        if duration.is_nan() || duration <= 0.0 {
            return Err(PyValueError::new_err(format!(
                "duration {duration} must be > 0 (inf: until every request has ended)"
            )));
        }
        let timeout = parse_timeout(request_timeout)?;
        // Requests the run cannot send before it ends are not part of it.
        let n = times.partition_point(|t| *t < duration);
        let runtime = build_runtime(workers)?;
        Ok(HttpDriver {
            uri,
            headers,
            duration,
            timeout,
            plan: Some(Plan {
                times: times[..n].to_vec(),
                prompt_lens: prompt_lens[..n].to_vec(),
                output_lens: output_lens[..n].to_vec(),
                prefixes: prefixes[..prefixes.len().min(n)].to_vec(),
                template,
            }),
            backlog: None,
            runtime: Some(runtime),
            shared: None,
            scheduler: None,
        })
    }

    /// A bounded-backlog run instead of a schedule: see `kvbench/_core.pyi`.
    #[staticmethod]
    #[pyo3(signature = (
        url, prompt_lens, output_lens, body_template, *, backlog, seed=0,
        token_range=(1000, 30000), headers=Vec::new(), request_timeout=None, workers=2
    ))]
    #[allow(clippy::too_many_arguments)]
    fn backlog(
        url: &str,
        prompt_lens: PyReadonlyArray1<'_, i64>,
        output_lens: PyReadonlyArray1<'_, i64>,
        body_template: &str,
        backlog: usize,
        seed: u64,
        token_range: (i64, i64),
        headers: Vec<(String, String)>,
        request_timeout: Option<f64>,
        workers: usize,
    ) -> PyResult<Self> {
        if backlog == 0 {
            return Err(PyValueError::new_err("backlog must be ≥ 1"));
        }
        let uri = parse_url(url)?;
        let stream = lengths(prompt_lens.as_slice()?, output_lens.as_slice()?)?;
        let template = body::BodyTemplate::new(body_template, seed, token_range.0, token_range.1)
            .map_err(PyValueError::new_err)?;
        let runtime = build_runtime(workers)?;
        Ok(HttpDriver {
            uri,
            headers: parse_headers(headers)?,
            duration: f64::INFINITY,
            timeout: parse_timeout(request_timeout)?,
            plan: None,
            backlog: Some((
                backlog,
                Backlog {
                    template,
                    runtime: runtime.handle().clone(),
                    stream: Mutex::new(Stream {
                        pending: stream.into(),
                        ..Stream::default()
                    }),
                    progress: Mutex::new(Progress::default()),
                },
            )),
            runtime: Some(runtime),
            shared: None,
            scheduler: None,
        })
    }

    /// Appends requests to a bounded-backlog run's stream.
    fn extend(
        &mut self,
        prompt_lens: PyReadonlyArray1<'_, i64>,
        output_lens: PyReadonlyArray1<'_, i64>,
    ) -> PyResult<()> {
        let more = lengths(prompt_lens.as_slice()?, output_lens.as_slice()?)?;
        let owed = {
            let backlog = self
                .stream_state()
                .ok_or_else(|| PyRuntimeError::new_err("extend: not a bounded-backlog run"))?;
            let mut stream = backlog.stream.lock().unwrap();
            stream.pending.extend(more);
            let owed = stream.owed.min(stream.pending.len());
            stream.owed -= owed;
            owed
        };
        if let Some(shared) = &self.shared {
            for _ in 0..owed {
                shared.started();
            }
        }
        Ok(())
    }

    /// Requests of a bounded-backlog run's stream not yet sent.
    #[getter]
    fn remaining(&self) -> usize {
        self.stream_state()
            .map_or(0, |b| b.stream.lock().unwrap().pending.len())
    }

    /// A bounded-backlog run's events since the last call (empty for a schedule).
    fn poll_progress(&self) -> DriverProgress {
        let taken = self
            .shared
            .as_ref()
            .and_then(|s| s.backlog.as_ref())
            .map(|b| std::mem::take(&mut *b.progress.lock().unwrap()))
            .unwrap_or_default();
        DriverProgress {
            sent: taken.sent,
            chunks: taken.chunks,
            unstarted: taken.unstarted,
        }
    }

    /// Starts sending; `elapsed` is how many seconds have passed since the run's t0 on the
    /// monotonic clock (`time.monotonic() - t0`, negative when t0 is still ahead).
    fn start(&mut self, elapsed: f64) -> PyResult<()> {
        if self.shared.is_some() {
            return Err(PyRuntimeError::new_err("the driver was already started"));
        }
        if !elapsed.is_finite() {
            return Err(PyValueError::new_err("elapsed must be finite"));
        }
        let now = Instant::now();
        let offset = Duration::from_secs_f64(elapsed.abs());
        let t0 = if elapsed >= 0.0 {
            now - offset
        } else {
            now + offset
        };
        let mut kept = 0;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true); // small request bodies and chunks must not wait for Nagle
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(usize::MAX)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .build(connector);
        let shared = Arc::new(Shared {
            t0,
            end: self
                .duration
                .is_finite()
                .then(|| t0 + Duration::from_secs_f64(self.duration)),
            uri: self.uri.clone(),
            headers: std::mem::take(&mut self.headers),
            client,
            timeout: self.timeout,
            state: watch::channel(RunState::Sending).0,
            in_flight: AtomicUsize::new(0),
            sent: AtomicUsize::new(0),
            sending_done: AtomicBool::new(false),
            engine_down_at: Mutex::new(None),
            records: Mutex::new(Vec::new()),
            backlog: self.backlog.take().map(|(k, b)| {
                kept = k;
                b
            }),
        });
        self.shared = Some(shared.clone());
        let Some(plan) = self.plan.take() else {
            // a bounded backlog: its first K at once, then each start sends the next
            for _ in 0..kept {
                shared.started();
            }
            return Ok(());
        };
        let handle = self
            .runtime
            .as_ref()
            .expect("the runtime lives until drop")
            .handle()
            .clone();
        let scheduler = std::thread::Builder::new()
            .name("kvbench-schedule".into())
            .spawn(move || schedule(shared, handle, plan))
            .map_err(|err| {
                PyRuntimeError::new_err(format!("cannot start the scheduler thread: {err}"))
            })?;
        self.scheduler = Some(scheduler);
        Ok(())
    }

    /// The records of requests that ended since the last call.
    fn poll(&self) -> Vec<DriverRecord> {
        match &self.shared {
            Some(shared) => std::mem::take(&mut *shared.records.lock().unwrap()),
            None => Vec::new(),
        }
    }

    /// Ends the run now: nothing more is sent and requests in flight are reported unfinished.
    /// Returns once every record is ready to poll (or after `wait` seconds).
    #[pyo3(signature = (wait=5.0))]
    fn stop(&self, py: Python<'_>, wait: f64) {
        let Some(shared) = &self.shared else { return };
        shared.end_sending(RunState::Stopped);
        if shared.backlog.is_some() {
            shared.sending_done.store(true, Ordering::SeqCst); // nothing tops up once stopped
        }
        let deadline = Instant::now() + Duration::from_secs_f64(wait.max(0.0));
        py.allow_threads(|| {
            while !shared.finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        });
    }

    /// Requests sent and not yet reported.
    #[getter]
    fn in_flight(&self) -> usize {
        self.shared
            .as_ref()
            .map_or(0, |s| s.in_flight.load(Ordering::SeqCst))
    }

    /// Requests sent so far.
    #[getter]
    fn sent(&self) -> usize {
        self.shared
            .as_ref()
            .map_or(0, |s| s.sent.load(Ordering::SeqCst))
    }

    /// Seconds since t0 at which the engine first refused a connection; None while it answers.
    #[getter]
    fn engine_down_at(&self) -> Option<f64> {
        self.shared
            .as_ref()
            .and_then(|s| *s.engine_down_at.lock().unwrap())
    }

    /// True once sending is over and every sent request has its record (poll once more).
    #[getter]
    fn finished(&self) -> bool {
        self.shared.as_ref().is_some_and(|s| s.finished())
    }
}

impl HttpDriver {
    /// A bounded-backlog run's shared state, wherever it is before and after `start()`.
    fn stream_state(&self) -> Option<&Backlog> {
        match &self.shared {
            Some(shared) => shared.backlog.as_ref(),
            None => self.backlog.as_ref().map(|(_, b)| b),
        }
    }
}

impl Drop for HttpDriver {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.end_sending(RunState::Stopped);
        }
        if let Some(scheduler) = self.scheduler.take() {
            let _ = scheduler.join(); // sees the stop within one nap
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<HttpDriver>()?;
    m.add_class::<DriverRecord>()?;
    m.add_class::<DriverProgress>()?;
    m.add("PROMPT_SLOT", body::PROMPT_SLOT)?;
    m.add("OUTPUT_SLOT", body::OUTPUT_SLOT)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::DriverRecord;

    #[test]
    fn a_chunk_of_k_tokens_spreads_its_gap_over_them() {
        let mut r = DriverRecord::new(0, 0.0);
        r.tokens_arrived(1.0, 2); // the first chunk: one time, the second token is in the TTFT
        r.tokens_arrived(1.1, 1);
        r.tokens_arrived(1.4, 3); // three tokens merged: 0.1 s each, not one 0.3 s gap
        r.tokens_arrived(1.5, 0); // a chunk that carried no new token
        assert_eq!(r.first_token, Some(1.0));
        let gaps: Vec<f64> = r.token_times.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps.len(), 4);
        assert!(gaps.iter().all(|g| (g - 0.1).abs() < 1e-12), "{gaps:?}");
    }
}
