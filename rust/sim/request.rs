//! Per-request state inside one replica, and the observer that hears what happens to requests.

/// Where a request is in its life inside one replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// In the waiting queue: new, preempted for recompute, or swapped out (ideal rule).
    Waiting,
    /// Running, prefilling its prompt (plus, after a recompute, the tokens already generated).
    Prefill,
    /// Running, one token per step, in the aggregated decode set.
    Decode,
    /// Finished; the slot is free for reuse.
    Done,
}

/// One request in a replica's slab. `computed` and `generated` are absolute, except while the
/// request is in the decode set, where they are offsets from the set's step counter.
#[derive(Clone, Debug)]
pub struct Slot {
    pub id: u64,
    pub prompt: i64,
    pub output: i64,
    pub arrival: f64,
    /// KV tokens computed (held on the GPU while running; kept while swapped out).
    pub computed: i64,
    /// Output tokens emitted so far.
    pub generated: i64,
    pub phase: Phase,
    /// Admission order among running requests (the newest is preempted first).
    pub seq: u64,
    /// Bumped whenever the request leaves the decode set, so stale heap entries are skipped.
    pub epoch: u32,
    /// Index in the decode set's member list.
    pub pos: u32,
    /// Prefill tokens scheduled in the iteration in flight.
    pub chunk: i64,
    /// Pages reserved at admission (TensorRT-LLM's GUARANTEED_NO_EVICT).
    pub reserved: i64,
    /// vLLM prefix caching: the free-queue segment of the pages freed when this request was
    /// preempted (`prefix_cache::NO_SEGMENT` when none), and the KV tokens they held.
    pub cached_segment: u64,
    pub cached_tokens: i64,
}

impl Slot {
    /// Tokens whose KV must exist before the next token can be sampled: prompt + generated.
    #[inline]
    pub fn known(&self) -> i64 {
        self.prompt + self.generated
    }
}

/// What the engine tells its caller about requests and iterations. The batch simulator records
/// times into arrays; the stepping API turns them into events. `TOKENS` asks for one call per
/// output token, which costs a pass over the running requests per iteration, so the batch
/// simulator leaves it off.
pub trait Observer {
    const TOKENS: bool;
    fn admitted(&mut self, id: u64, time: f64, generated: i64);
    fn first_token(&mut self, id: u64, time: f64);
    fn token(&mut self, id: u64, time: f64, generated: i64);
    fn finished(&mut self, id: u64, time: f64, generated: i64);
    fn preempted(&mut self, id: u64, time: f64, generated: i64);
    fn iteration(&mut self, it: &IterationRecord);
    /// Whether `iteration` must hear of every iteration; when not, the engine may run stretches
    /// of decode-only iterations in which no request changes state without reporting each.
    fn records_iterations(&self) -> bool;
}

/// One engine iteration, as scheduled at its start.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct IterationRecord {
    pub start: f64,
    pub duration: f64,
    pub waiting: i64,
    pub running: i64,
    /// KV tokens allocated during the iteration (pages × page size).
    pub kv_used: i64,
    pub batch_tokens: i64,
    pub decode: bool,
    /// Requests that stepped a decode token, and requests and tokens of prefill chunks: the
    /// batch's composition, as TensorRT-LLM's iteration stats report it.
    pub decode_requests: i64,
    pub prefill_requests: i64,
    pub prefill_tokens: i64,
}
