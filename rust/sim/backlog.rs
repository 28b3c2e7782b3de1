//! The bounded-backlog saturation probe on the simulator: a client that keeps exactly K requests
//! per replica sent but not yet started (no first token), sending the next request of a given
//! stream the moment one starts. The engine then runs saturated from its first iteration while
//! its queue never grows past K. The run is advanced in steps on a caller's clock and reports, per
//! bin of time, the served work (see `crate::served`), first tokens (with the prompt and output
//! lengths of the requests they start) and completions, and the backlog and the engine's waiting
//! gauge at each bin's end.

use super::engine::Engine;
use super::profile::Profile;
use super::request::{IterationRecord, Observer};
use crate::served;

/// Hears every token and adds its served work to the bin that holds its time.
struct Tally {
    prompt: Vec<i64>,
    output: Vec<i64>,
    chunk: i64,
    bin_width: f64,
    work: Vec<f64>,
    starts: Vec<i64>,
    start_prompt: Vec<i64>,
    start_output: Vec<i64>,
    finishes: Vec<i64>,
    /// Requests whose first token came in the step being processed.
    started: Vec<u64>,
}

impl Tally {
    fn bin(&mut self, time: f64) -> usize {
        let b = (time / self.bin_width) as usize;
        if b >= self.work.len() {
            self.work.resize(b + 1, 0.0);
            self.starts.resize(b + 1, 0);
            self.start_prompt.resize(b + 1, 0);
            self.start_output.resize(b + 1, 0);
            self.finishes.resize(b + 1, 0);
        }
        b
    }
}

impl Observer for Tally {
    const TOKENS: bool = true;
    fn admitted(&mut self, _id: u64, _time: f64, _generated: i64) {}
    fn first_token(&mut self, id: u64, time: f64) {
        let b = self.bin(time);
        self.starts[b] += 1;
        self.start_prompt[b] += self.prompt[id as usize];
        self.start_output[b] += self.output[id as usize];
        self.started.push(id);
    }
    fn token(&mut self, id: u64, time: f64, generated: i64) {
        let s = self.prompt[id as usize];
        let b = self.bin(time);
        self.work[b] += served::progress(s, generated, self.chunk)
            - served::progress(s, generated - 1, self.chunk);
    }
    fn finished(&mut self, _id: u64, time: f64, _generated: i64) {
        let b = self.bin(time);
        self.finishes[b] += 1;
    }
    fn preempted(&mut self, _id: u64, _time: f64, _generated: i64) {}
    fn iteration(&mut self, _it: &IterationRecord) {}
    fn records_iterations(&self) -> bool {
        true
    }
}

/// The bins completed by one `advance`.
pub struct Bins {
    pub first: usize,
    pub work: Vec<f64>,
    pub starts: Vec<i64>,
    /// Prompt and output tokens of the requests that started in each bin.
    pub start_prompt: Vec<i64>,
    pub start_output: Vec<i64>,
    pub finishes: Vec<i64>,
    /// Sent-but-not-started requests, over all replicas, at each bin's end.
    pub backlog: Vec<i64>,
    /// The engines' waiting queues, summed, at each bin's end.
    pub waiting: Vec<i64>,
}

pub struct Backlog {
    engines: Vec<Engine>,
    tally: Tally,
    replica_of: Vec<u32>,
    next: usize,
    k: usize,
    unstarted: Vec<usize>,
    clock: f64,
    reported: usize,
    backlog_at: Vec<i64>,
    waiting_at: Vec<i64>,
}

impl Backlog {
    pub fn new(
        profile: Profile,
        prompt: Vec<i64>,
        output: Vec<i64>,
        k: usize,
        replicas: usize,
        seed: u64,
        bin_width: f64,
    ) -> Result<Backlog, String> {
        profile.validate()?;
        if k < 1 || replicas < 1 {
            return Err("backlog and replicas must be at least 1".into());
        }
        if !(bin_width > 0.0 && bin_width.is_finite()) {
            return Err("bin_width must be a positive number of seconds".into());
        }
        let chunk = profile.chunk_size;
        let mut b = Backlog {
            engines: (0..replicas)
                .map(|r| Engine::new(profile.clone(), seed.wrapping_add(r as u64)))
                .collect(),
            tally: Tally {
                prompt: Vec::new(),
                output: Vec::new(),
                chunk,
                bin_width,
                work: Vec::new(),
                starts: Vec::new(),
                start_prompt: Vec::new(),
                start_output: Vec::new(),
                finishes: Vec::new(),
                started: Vec::new(),
            },
            replica_of: Vec::new(),
            next: 0,
            k,
            unstarted: vec![0; replicas],
            clock: 0.0,
            reported: 0,
            backlog_at: Vec::new(),
            waiting_at: Vec::new(),
        };
        b.extend(prompt, output)?;
        for r in 0..replicas {
            b.top_up(r, 0.0)?;
        }
        Ok(b)
    }

    /// Appends requests to the stream the client sends from.
    pub fn extend(&mut self, prompt: Vec<i64>, output: Vec<i64>) -> Result<(), String> {
        if prompt.len() != output.len() {
            return Err(format!(
                "prompt_len and output_len differ in length ({}, {})",
                prompt.len(),
                output.len()
            ));
        }
        self.tally.prompt.extend(prompt);
        self.tally.output.extend(output);
        self.replica_of.resize(self.tally.output.len(), u32::MAX);
        Ok(())
    }

    /// Requests of the stream not yet sent.
    pub fn remaining(&self) -> usize {
        self.tally.output.len() - self.next
    }

    pub fn sent(&self) -> usize {
        self.next
    }

    pub fn clock(&self) -> f64 {
        self.clock
    }

    fn top_up(&mut self, r: usize, now: f64) -> Result<(), String> {
        while self.unstarted[r] < self.k {
            let i = self.next;
            if i >= self.tally.output.len() {
                return Err(format!(
                    "the request stream ran out after {i} requests; extend it before advancing"
                ));
            }
            self.engines[r].add_request(
                i as u64,
                self.tally.prompt[i],
                self.tally.output[i],
                now,
            )?;
            self.replica_of[i] = r as u32;
            self.unstarted[r] += 1;
            self.next += 1;
        }
        Ok(())
    }

    /// Records the backlog and waiting gauge at every bin end up to `t`.
    fn mark_bin_ends(&mut self, t: f64) {
        let dt = self.tally.bin_width;
        while ((self.backlog_at.len() + 1) as f64) * dt <= t {
            self.backlog_at
                .push(self.unstarted.iter().sum::<usize>() as i64);
            self.waiting_at
                .push(self.engines.iter().map(Engine::waiting).sum());
        }
    }

    /// Runs every iteration that ends by `until`, topping each replica's backlog back up to K the
    /// moment a request starts, and returns the bins that ended since the last call.
    pub fn advance(&mut self, until: f64) -> Result<Bins, String> {
        if until.is_nan() || until < self.clock {
            return Err(format!(
                "advance to t={until} before the clock t={}",
                self.clock
            ));
        }
        loop {
            let next = self
                .engines
                .iter()
                .enumerate()
                .filter_map(|(r, e)| e.next_event_time().map(|t| (r, t)))
                .min_by(|a, b| a.1.total_cmp(&b.1));
            let Some((r, t)) = next else { break };
            if t > until {
                break;
            }
            self.mark_bin_ends(t);
            self.engines[r].advance(t, &mut self.tally);
            for id in std::mem::take(&mut self.tally.started) {
                self.unstarted[self.replica_of[id as usize] as usize] -= 1;
            }
            self.top_up(r, t)?;
        }
        self.clock = until;
        self.mark_bin_ends(until);
        let end = self.backlog_at.len();
        let first = self.reported;
        self.tally.bin(end as f64 * self.tally.bin_width);
        self.reported = end;
        Ok(Bins {
            first,
            work: self.tally.work[first..end].to_vec(),
            starts: self.tally.starts[first..end].to_vec(),
            start_prompt: self.tally.start_prompt[first..end].to_vec(),
            start_output: self.tally.start_output[first..end].to_vec(),
            finishes: self.tally.finishes[first..end].to_vec(),
            backlog: self.backlog_at[first..end].to_vec(),
            waiting: self.waiting_at[first..end].to_vec(),
        })
    }
}
