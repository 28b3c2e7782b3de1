//! The stepping front of the engine: one replica driven by a caller's clock (the HTTP emulators
//! run it in real time), reporting every admission, token, preemption and finish as an event.

use super::engine::Engine;
use super::profile::Profile;
use super::request::{IterationRecord, Observer};

/// What happened to a request, as the stepping API reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Admitted,
    FirstToken,
    Token,
    Finished,
    Preempted,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Admitted => "admitted",
            EventKind::FirstToken => "first_token",
            EventKind::Token => "token",
            EventKind::Finished => "finished",
            EventKind::Preempted => "preempted",
        }
    }
}

/// (request id, kind, time, output tokens so far).
pub type Event = (u64, EventKind, f64, i64);

#[derive(Default)]
struct EventLog {
    events: Vec<Event>,
}

impl Observer for EventLog {
    const TOKENS: bool = true;
    fn admitted(&mut self, id: u64, time: f64, generated: i64) {
        self.events.push((id, EventKind::Admitted, time, generated));
    }
    fn first_token(&mut self, id: u64, time: f64) {
        self.events.push((id, EventKind::FirstToken, time, 1));
    }
    fn token(&mut self, id: u64, time: f64, generated: i64) {
        self.events.push((id, EventKind::Token, time, generated));
    }
    fn finished(&mut self, id: u64, time: f64, generated: i64) {
        self.events.push((id, EventKind::Finished, time, generated));
    }
    fn preempted(&mut self, id: u64, time: f64, generated: i64) {
        self.events
            .push((id, EventKind::Preempted, time, generated));
    }
    fn iteration(&mut self, _it: &IterationRecord) {}
    fn records_iterations(&self) -> bool {
        true
    }
}

/// One replica plus the events not yet handed to the caller.
pub struct Stepper {
    engine: Engine,
    log: EventLog,
}

impl Stepper {
    pub fn new(profile: Profile, seed: u64) -> Result<Stepper, String> {
        profile.validate()?;
        Ok(Stepper {
            engine: Engine::new(profile, seed),
            log: EventLog::default(),
        })
    }

    pub fn add_request(
        &mut self,
        id: u64,
        prompt: i64,
        output: i64,
        now: f64,
    ) -> Result<(), String> {
        if now < self.engine.clock() {
            return Err(format!(
                "request {id}: added at t={now} before the engine clock t={}",
                self.engine.clock()
            ));
        }
        self.engine.add_request(id, prompt, output, now)
    }

    /// Runs every iteration that completes by `until` and returns the events so far, in order.
    pub fn advance(&mut self, until: f64) -> Vec<Event> {
        self.engine.advance(until, &mut self.log);
        std::mem::take(&mut self.log.events)
    }

    /// The client abandoned request `id` (see `Engine::abort`).
    pub fn abort(&mut self, id: u64) {
        self.engine.abort(id);
    }

    pub fn next_event_time(&self) -> Option<f64> {
        self.engine.next_event_time()
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}
