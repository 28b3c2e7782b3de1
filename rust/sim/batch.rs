//! The batch simulator: a whole arrival schedule through G replicas behind a dispatcher, in
//! virtual time, recording per-request times and a queue time series.

use super::engine::Engine;
use super::profile::Profile;
use super::request::{IterationRecord, Observer};

/// How arrivals are spread over replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dispatch {
    RoundRobin,
    /// Join the shortest queue: the replica with the fewest requests waiting or running
    /// (lowest index on ties).
    ShortestQueue,
}

impl Dispatch {
    pub fn parse(name: &str) -> Result<Dispatch, String> {
        match name {
            "round_robin" | "rr" => Ok(Dispatch::RoundRobin),
            "jsq" | "shortest_queue" => Ok(Dispatch::ShortestQueue),
            other => Err(format!(
                "unknown dispatch {other:?}; choose round_robin or jsq"
            )),
        }
    }
}

pub struct Options {
    pub replicas: usize,
    pub dispatch: Dispatch,
    pub seed: u64,
    /// Stop the simulated clock here; None drains every request.
    pub until: Option<f64>,
    /// Sample every replica's state every Δt instead of recording every iteration.
    pub sample_interval: Option<f64>,
}

/// Per-request times (NaN where the event did not happen) and counts.
#[derive(Default)]
pub struct Records {
    pub arrival: Vec<f64>,
    pub admitted: Vec<f64>,
    pub first_token: Vec<f64>,
    pub finished: Vec<f64>,
    pub preemptions: Vec<i64>,
    pub replica: Vec<i64>,
}

/// One row per iteration (time = its start) or per sample and replica.
#[derive(Default)]
pub struct TimeSeries {
    pub time: Vec<f64>,
    pub waiting: Vec<i64>,
    pub running: Vec<i64>,
    pub kv_used: Vec<i64>,
    pub batch_tokens: Vec<i64>,
    pub iteration_time: Vec<f64>,
    pub replica: Vec<i64>,
}

impl TimeSeries {
    fn push(
        &mut self,
        time: f64,
        replica: usize,
        it: &IterationRecord,
        waiting: i64,
        running: i64,
        kv_used: i64,
    ) {
        self.time.push(time);
        self.waiting.push(waiting);
        self.running.push(running);
        self.kv_used.push(kv_used);
        self.batch_tokens.push(it.batch_tokens);
        self.iteration_time.push(it.duration);
        self.replica.push(replica as i64);
    }
}

pub struct Summary {
    pub requests: u64,
    pub dispatched: u64,
    pub completed: u64,
    pub end_time: f64,
    pub iterations: u64,
    pub preemptions: u64,
    pub busy_time: f64,
    pub peak_kv_tokens: i64,
    pub kv_capacity: i64,
    pub replicas: usize,
}

pub struct Outcome {
    pub records: Records,
    pub timeseries: TimeSeries,
    pub summary: Summary,
}

struct Recorder {
    records: Records,
    series: TimeSeries,
    per_iteration: bool,
    replica: usize,
}

impl Observer for Recorder {
    const TOKENS: bool = false;
    #[inline]
    fn admitted(&mut self, id: u64, time: f64, _generated: i64) {
        let slot = &mut self.records.admitted[id as usize];
        if slot.is_nan() {
            *slot = time;
        }
    }
    #[inline]
    fn first_token(&mut self, id: u64, time: f64) {
        self.records.first_token[id as usize] = time;
    }
    #[inline]
    fn token(&mut self, _id: u64, _time: f64, _generated: i64) {}
    #[inline]
    fn finished(&mut self, id: u64, time: f64, _generated: i64) {
        self.records.finished[id as usize] = time;
    }
    #[inline]
    fn preempted(&mut self, id: u64, _time: f64, _generated: i64) {
        self.records.preemptions[id as usize] += 1;
    }
    #[inline]
    fn iteration(&mut self, it: &IterationRecord) {
        if self.per_iteration {
            self.series.push(
                it.start,
                self.replica,
                it,
                it.waiting,
                it.running,
                it.kv_used,
            );
        }
    }
    fn records_iterations(&self) -> bool {
        self.per_iteration
    }
}

/// Runs the schedule. Arrivals must be sorted; lengths are validated per request.
pub fn simulate(
    profile: &Profile,
    prompt: &[i64],
    output: &[i64],
    arrivals: &[f64],
    opts: &Options,
) -> Result<Outcome, String> {
    let n = arrivals.len();
    if prompt.len() != n || output.len() != n {
        return Err(format!(
            "prompt_len, output_len and arrivals differ in length ({}, {}, {n})",
            prompt.len(),
            output.len()
        ));
    }
    // Negated so that NaN, which fails every comparison, is caught too.
    if let Some(i) = (1..n).find(|&i| !(arrivals[i] >= arrivals[i - 1])) {
        return Err(format!(
            "arrivals must be sorted and finite: arrivals[{i}] < arrivals[{}]",
            i - 1
        ));
    }
    if n > 0 && !arrivals[0].is_finite() {
        return Err("arrivals must be finite".into());
    }
    if opts.replicas < 1 {
        return Err("replicas must be at least 1".into());
    }
    if let Some(dt) = opts.sample_interval {
        if !(dt > 0.0 && dt.is_finite()) {
            return Err("sample_interval must be a positive number of seconds".into());
        }
    }
    profile.validate()?;
    let horizon = opts.until.unwrap_or(f64::INFINITY);
    let mut engines: Vec<Engine> = (0..opts.replicas)
        .map(|r| Engine::new(profile.clone(), opts.seed.wrapping_add(r as u64)))
        .collect();
    let mut rec = Recorder {
        records: Records {
            arrival: arrivals.to_vec(),
            admitted: vec![f64::NAN; n],
            first_token: vec![f64::NAN; n],
            finished: vec![f64::NAN; n],
            preemptions: vec![0; n],
            replica: vec![-1; n],
        },
        series: TimeSeries::default(),
        per_iteration: opts.sample_interval.is_none(),
        replica: 0,
    };
    let mut sampler = opts.sample_interval.map(|dt| Sampler { dt, k: 0 });
    let mut dispatched = 0u64;
    for i in 0..n {
        let t = arrivals[i];
        if t > horizon {
            break;
        }
        if let Some(s) = sampler.as_mut() {
            s.sample_before(t, &mut engines, &mut rec);
        }
        let target = match opts.dispatch {
            Dispatch::RoundRobin => i % engines.len(),
            Dispatch::ShortestQueue => {
                for (r, e) in engines.iter_mut().enumerate() {
                    rec.replica = r;
                    e.advance(t, &mut rec);
                }
                (0..engines.len())
                    .min_by_key(|&r| engines[r].in_system())
                    .unwrap()
            }
        };
        rec.replica = target;
        let engine = &mut engines[target];
        // Requests that arrive at the same instant are all queued before an idle engine plans its
        // next iteration, as an engine finds them all waiting (a saturated run queues every
        // request at t = 0); advancing to t again would start one with the first alone.
        if i == 0 || t > arrivals[i - 1] {
            engine.advance(t, &mut rec);
        }
        engine.add_request(i as u64, prompt[i], output[i], t)?;
        rec.records.replica[i] = target as i64;
        dispatched += 1;
    }
    if let Some(s) = sampler.as_mut() {
        s.sample_until_drained(horizon, &mut engines, &mut rec);
    }
    for (r, e) in engines.iter_mut().enumerate() {
        rec.replica = r;
        e.advance(horizon, &mut rec);
    }
    let end_time = if horizon.is_finite() {
        horizon
    } else {
        engines
            .iter()
            .map(Engine::clock)
            .fold(arrivals.last().copied().unwrap_or(0.0), f64::max)
    };
    let summary = Summary {
        requests: n as u64,
        dispatched,
        completed: engines.iter().map(|e| e.completed).sum(),
        end_time,
        iterations: engines.iter().map(|e| e.iterations).sum(),
        preemptions: engines.iter().map(|e| e.preemptions).sum(),
        busy_time: engines.iter().map(|e| e.busy_time).sum(),
        peak_kv_tokens: engines.iter().map(|e| e.peak_kv_tokens).max().unwrap_or(0),
        kv_capacity: engines[0].kv_total_tokens(),
        replicas: engines.len(),
    };
    Ok(Outcome {
        records: rec.records,
        timeseries: rec.series,
        summary,
    })
}

/// Samples every replica at times 0, Δt, 2Δt, …
struct Sampler {
    dt: f64,
    k: u64,
}

impl Sampler {
    fn next(&self) -> f64 {
        self.k as f64 * self.dt
    }

    fn sample_before(&mut self, t: f64, engines: &mut [Engine], rec: &mut Recorder) {
        while self.next() < t {
            self.sample(engines, rec);
        }
    }

    fn sample_until_drained(&mut self, horizon: f64, engines: &mut [Engine], rec: &mut Recorder) {
        while self.next() <= horizon {
            let busy = engines.iter().any(|e| e.next_event_time().is_some());
            self.sample(engines, rec);
            if !busy {
                break;
            }
        }
    }

    fn sample(&mut self, engines: &mut [Engine], rec: &mut Recorder) {
        let ts = self.next();
        for (r, e) in engines.iter_mut().enumerate() {
            rec.replica = r;
            e.advance(ts, rec);
            let it = e.in_flight().copied().unwrap_or_default();
            rec.series
                .push(ts, r, &it, e.waiting(), e.running(), e.kv_used_tokens());
        }
        self.k += 1;
    }
}
