//! One engine replica, advanced one iteration at a time.
//!
//! Each iteration the scheduler forms a batch (running requests first: one decode token each or
//! their next prefill chunk; then waiting requests FCFS) under the KV capacity, the token budget,
//! the cap on running requests and the profile's admission and preemption rule, and the iteration
//! lasts as long as the profile's iteration-time model says. Requests that arrive during an
//! iteration are considered at the next one. Decoding requests advance in aggregate
//! (`DecodeSet`), so an iteration costs O(1) plus the requests that start, finish, prefill or are
//! preempted in it.

use std::collections::VecDeque;

use rand::SeedableRng;
use rand_distr::{Distribution, LogNormal};
use rand_pcg::Pcg64Mcg;

use super::decode::DecodeSet;
use super::pages::PageSize;
use super::prefix_cache::{FreeQueue, NO_SEGMENT};
use super::profile::{Profile, Rule, SGLANG_CLIP_MAX_NEW_TOKENS, SGLANG_RETRACT_DECODE_STEPS};
use super::request::{IterationRecord, Observer, Phase, Slot};

/// Marks a slot that is not running, so its entries in the admission-order stack are stale.
const NOT_RUNNING: u64 = u64::MAX;

pub struct Engine {
    profile: Profile,
    block: i64,
    page: PageSize,
    total_pages: i64,
    used_pages: i64,
    slab: Vec<Slot>,
    free_slots: Vec<u32>,
    waiting: VecDeque<u32>,
    /// Running requests still prefilling, in admission order.
    prefilling: Vec<u32>,
    decode: DecodeSet,
    /// (admission sequence, slot) in admission order; the newest live entry is preempted first.
    admission_order: Vec<(u64, u32)>,
    next_seq: u64,
    running: i64,
    /// Running requests whose output exceeds SGLang's clip (then the reserve needs a scan).
    long_outputs_running: i64,
    /// TensorRT-LLM: pages reserved by running requests for their whole lifetime.
    reserved_pages: i64,
    /// vLLM with prefix caching: the free pages in eviction order.
    free_queue: Option<FreeQueue>,
    /// SGLang's new_token_ratio and its per-decode-step decay.
    ratio: f64,
    ratio_decay: f64,
    rng: Pcg64Mcg,
    noise: Option<LogNormal<f64>>,
    clock: f64,
    in_flight: Option<IterationRecord>,
    retracted_in_flight: bool,
    /// Running requests the client abandoned during the iteration in flight (see `abort`).
    aborted: Vec<u32>,
    pub iterations: u64,
    pub preemptions: u64,
    pub completed: u64,
    pub busy_time: f64,
    pub peak_kv_tokens: i64,
    last: IterationRecord,
}

impl Engine {
    /// A replica with an empty cache. The profile must be valid (`Profile::validate`).
    pub fn new(profile: Profile, seed: u64) -> Engine {
        let block = profile.block_size;
        let sigma = profile.iteration_time.noise_sigma;
        let noise = (sigma > 0.0).then(|| LogNormal::new(-0.5 * sigma * sigma, sigma).unwrap());
        let ratio_decay = (profile.sglang_init_ratio - profile.sglang_min_ratio)
            / profile.sglang_decay_steps as f64;
        let free_queue = (profile.rule == Rule::Vllm && profile.prefix_caching)
            .then(|| FreeQueue::new(profile.total_pages()));
        Engine {
            free_queue,
            total_pages: profile.total_pages(),
            ratio: profile.sglang_init_ratio,
            ratio_decay,
            block,
            used_pages: 0,
            slab: Vec::new(),
            free_slots: Vec::new(),
            waiting: VecDeque::new(),
            prefilling: Vec::new(),
            decode: DecodeSet::new(PageSize::new(block)),
            page: PageSize::new(block),
            admission_order: Vec::new(),
            next_seq: 0,
            running: 0,
            long_outputs_running: 0,
            reserved_pages: 0,
            rng: Pcg64Mcg::seed_from_u64(seed),
            noise,
            clock: 0.0,
            in_flight: None,
            retracted_in_flight: false,
            aborted: Vec::new(),
            iterations: 0,
            preemptions: 0,
            completed: 0,
            busy_time: 0.0,
            peak_kv_tokens: 0,
            last: IterationRecord::default(),
            profile,
        }
    }

    #[inline]
    fn pages(&self, tokens: i64) -> i64 {
        self.page.pages(tokens)
    }

    /// TensorRT-LLM's max_tokens for a request: the configured cap, or the request's own output
    /// length; never less than what the request will generate.
    fn max_tokens(&self, output: i64) -> i64 {
        self.profile
            .max_tokens_cap
            .map_or(output, |cap| cap.max(output))
    }

    /// Queues a request that arrives at `arrival` (not before the previous one). It waits until
    /// an iteration starts at or after its arrival.
    pub fn add_request(
        &mut self,
        id: u64,
        prompt: i64,
        output: i64,
        arrival: f64,
    ) -> Result<(), String> {
        if prompt < 1 || output < 1 {
            return Err(format!(
                "request {id}: prompt and output lengths must be at least 1 (got {prompt}, {output})"
            ));
        }
        let footprint = match self.profile.rule {
            Rule::Trtllm => prompt + self.max_tokens(output),
            _ => prompt + output,
        };
        if self.pages(footprint) > self.total_pages {
            return Err(format!(
                "request {id}: needs {footprint} KV tokens, more than the capacity of {} tokens",
                self.total_pages * self.block
            ));
        }
        let slot = Slot {
            id,
            prompt,
            output,
            arrival,
            computed: 0,
            generated: 0,
            phase: Phase::Waiting,
            seq: NOT_RUNNING,
            epoch: 0,
            pos: 0,
            chunk: 0,
            reserved: 0,
            cached_segment: NO_SEGMENT,
            cached_tokens: 0,
        };
        let index = match self.free_slots.pop() {
            Some(i) => {
                let epoch = self.slab[i as usize].epoch.wrapping_add(1);
                self.slab[i as usize] = Slot { epoch, ..slot };
                i
            }
            None => {
                self.slab.push(slot);
                (self.slab.len() - 1) as u32
            }
        };
        self.waiting.push_back(index);
        Ok(())
    }

    /// Completes every iteration that ends by `until`, starting the next one at each end (or at
    /// the next arrival when idle).
    pub fn advance<O: Observer>(&mut self, until: f64, obs: &mut O) {
        loop {
            match self.in_flight {
                Some(it) => {
                    let end = it.start + it.duration;
                    if end > until {
                        return;
                    }
                    self.complete(obs);
                    if !O::TOKENS && !obs.records_iterations() {
                        self.run_quiet_steps(until);
                    }
                    let now = self.clock;
                    self.start(now, obs);
                }
                None => {
                    let Some(&front) = self.waiting.front() else {
                        return;
                    };
                    let t = self.slab[front as usize].arrival.max(self.clock);
                    if t > until || !self.start(t, obs) {
                        return;
                    }
                }
            }
        }
    }

    /// When the next thing happens: the end of the iteration in flight, or, when idle, the start
    /// of the next one; None when there is nothing to do.
    pub fn next_event_time(&self) -> Option<f64> {
        match self.in_flight {
            Some(it) => Some(it.start + it.duration),
            None => self
                .waiting
                .front()
                .map(|&s| self.slab[s as usize].arrival.max(self.clock)),
        }
    }

    pub fn clock(&self) -> f64 {
        self.clock
    }
    pub fn waiting(&self) -> i64 {
        self.waiting.len() as i64
    }
    pub fn running(&self) -> i64 {
        self.running
    }
    pub fn in_system(&self) -> i64 {
        self.running + self.waiting.len() as i64
    }
    pub fn kv_used_tokens(&self) -> i64 {
        self.used_pages * self.block
    }
    pub fn kv_total_tokens(&self) -> i64 {
        self.total_pages * self.block
    }
    pub fn new_token_ratio(&self) -> f64 {
        self.ratio
    }
    /// The iteration in flight, if any.
    pub fn in_flight(&self) -> Option<&IterationRecord> {
        self.in_flight.as_ref()
    }
    /// The last iteration started (in flight or completed).
    pub fn last_iteration(&self) -> &IterationRecord {
        &self.last
    }

    /// Drops request `id` as an engine aborts a request whose client disconnected: a waiting
    /// request leaves the queue at once; a running one is in the batch in flight, so it leaves
    /// when that iteration ends, freeing its KV (and TensorRT-LLM's reservation) before the next
    /// batch is planned. It reports no further event. Unknown or finished ids are ignored.
    pub fn abort(&mut self, id: u64) {
        let Some(s) = (0..self.slab.len() as u32).find(|&s| {
            self.slab[s as usize].phase != Phase::Done && self.slab[s as usize].id == id
        }) else {
            return;
        };
        if self.in_flight.is_some() && self.slab[s as usize].phase != Phase::Waiting {
            self.aborted.push(s);
        } else {
            self.release(s);
        }
    }

    /// Frees a request the client abandoned (not in the batch in flight) and its slot.
    fn release(&mut self, s: u32) {
        match self.slab[s as usize].phase {
            Phase::Waiting => self.waiting.retain(|&w| w != s),
            Phase::Prefill | Phase::Decode => {
                if self.slab[s as usize].phase == Phase::Decode {
                    self.decode.leave(s, &mut self.slab);
                } else {
                    self.prefilling.retain(|&p| p != s);
                }
                let computed = self.slab[s as usize].computed;
                self.free_pages(computed);
                self.reserved_pages -= self.slab[s as usize].reserved;
                self.running -= 1;
                self.long_outputs_running -= self.is_long(s);
            }
            // finished in the iteration it was aborted in: nothing left to free
            Phase::Done => return,
        }
        self.forget_cached_prefix(s);
        let r = &mut self.slab[s as usize];
        r.reserved = 0;
        r.chunk = 0;
        r.phase = Phase::Done;
        r.seq = NOT_RUNNING;
        self.free_slots.push(s);
    }

    /// Returns a finished or aborted request's KV pages to the free pool; with prefix caching
    /// they join the free queue as pages nobody can hit, its full ones at the back (hashed) and
    /// its partly filled last one at the front.
    fn free_pages(&mut self, computed: i64) {
        let pages = self.pages(computed);
        self.used_pages -= pages;
        if let Some(q) = self.free_queue.as_mut() {
            let full = computed / self.block;
            q.free_anonymous(full);
            q.free_unhashed(pages - full);
        }
    }

    /// Takes `pages` new pages from the free pool (evicting the least recently freed).
    fn allocate_pages(&mut self, pages: i64) {
        self.used_pages += pages;
        if let Some(q) = self.free_queue.as_mut() {
            q.allocate(pages);
        }
    }

    /// The KV tokens a waiting request would start from if admitted now, after the step has
    /// allocated `taken` pages for the requests scheduled before it: its swapped-out progress
    /// (ideal rule), or with vLLM's prefix caching the full pages of its own that are still
    /// hashed then, at most num_tokens − 1 (`get_computed_blocks` leaves the last token to be
    /// computed so that it samples).
    fn resume_point(&self, s: u32, taken: i64) -> i64 {
        let r = &self.slab[s as usize];
        match &self.free_queue {
            Some(q) if r.cached_segment != NO_SEGMENT => {
                let full = r.cached_tokens.min(r.known() - 1) / self.block;
                q.surviving_after(r.cached_segment, taken).min(full) * self.block
            }
            _ => r.computed,
        }
    }

    /// Drops a waiting request's claim on its freed pages (it was re-admitted or aborted).
    fn forget_cached_prefix(&mut self, s: u32) {
        let r = &mut self.slab[s as usize];
        if r.cached_segment != NO_SEGMENT {
            if let Some(q) = self.free_queue.as_mut() {
                q.reclaim(r.cached_segment, 0);
            }
            r.cached_segment = NO_SEGMENT;
            r.cached_tokens = 0;
        }
    }

    /// Schedules an iteration starting at `now`; false when there is nothing to run.
    fn start<O: Observer>(&mut self, now: f64, obs: &mut O) -> bool {
        debug_assert!(self.in_flight.is_none());
        for s in std::mem::take(&mut self.aborted) {
            self.release(s);
        }
        self.clock = now;
        if self.running == 0 && self.waiting.is_empty() {
            // SGLang resets its ratio when the server goes idle.
            self.ratio = self.profile.sglang_init_ratio;
            return false;
        }
        self.retracted_in_flight = false;
        let planned = if self.profile.separate_prefill_decode {
            // SGLang runs a prefill batch whenever it can form one, else a decode batch.
            self.plan(now, false, obs)
                .or_else(|| self.plan(now, true, obs))
        } else {
            self.plan(now, true, obs)
        };
        let Some(decode) = planned else { return false };
        let it = self.commit(now, decode);
        obs.iteration(&it);
        self.last = it;
        self.in_flight = Some(it);
        true
    }
}

// Scheduling one iteration: running requests, shortage handling, admission.
impl Engine {
    /// Plans a batch at `now`. With `decode` the batch holds every decoding request and any
    /// prefill chunks (mixed batches); without it (SGLang's prefill batches) only prefill work.
    /// Sets each prefilling request's `chunk`; returns whether decoding requests step in the
    /// batch, or None when the batch would be empty.
    fn plan<O: Observer>(&mut self, now: f64, decode: bool, obs: &mut O) -> Option<bool> {
        let mut preempted = false;
        let (mut budget, mut need);
        loop {
            budget = self.profile.token_budget;
            need = 0;
            if decode {
                need += self.decode.growth_pages();
                budget -= self.decode.len();
            }
            for i in 0..self.prefilling.len() {
                let s = self.prefilling[i] as usize;
                let (known, computed) = (self.slab[s].known(), self.slab[s].computed);
                let mut n = (known - computed)
                    .min(self.profile.chunk_size)
                    .min(budget.max(0));
                if !decode {
                    // A prefill batch never retracts: the chunk shrinks to what memory holds.
                    let free_pages =
                        self.total_pages - self.used_pages - need + self.pages(computed);
                    n = n.min(free_pages * self.block - computed).max(0);
                }
                self.slab[s].chunk = n;
                budget -= n;
                need += self.pages(computed + n) - self.pages(computed);
            }
            if self.used_pages + need <= self.total_pages || self.running == 0 {
                break;
            }
            self.relieve_shortage(now, decode, obs);
            preempted = true;
        }
        // vLLM admits nothing in a step that had to preempt; so do the other rules, since memory
        // is short either way.
        if !preempted {
            self.admit(now, budget, need, obs);
        }
        let decode_steps = decode && self.decode.len() > 0;
        let prefills = self
            .prefilling
            .iter()
            .any(|&s| self.slab[s as usize].chunk > 0);
        (decode_steps || prefills).then_some(decode_steps)
    }

    /// Admits waiting requests FCFS while the rule allows, stopping at the first that does not
    /// fit (no overtaking). `need` is the pages the batch already needs beyond those in use.
    fn admit<O: Observer>(&mut self, now: f64, mut budget: i64, mut need: i64, obs: &mut O) {
        let rule = self.profile.rule;
        // SGLang: what running requests may still write, discounted by new_token_ratio, plus the
        // full remaining output of requests admitted in this batch.
        let mut sglang_reserve = match rule {
            Rule::Sglang if !self.waiting.is_empty() => {
                self.ratio * self.remaining_output_clipped()
            }
            _ => 0.0,
        };
        while let Some(&s) = self.waiting.front() {
            if self.running >= self.profile.max_running || budget <= 0 {
                break;
            }
            let r = &self.slab[s as usize];
            if r.arrival > now {
                break;
            }
            let computed = self.resume_point(s, need);
            let n = (r.known() - computed)
                .min(self.profile.chunk_size)
                .min(budget);
            let pages_now = self.pages(computed + n);
            // Under full-sequence admission the pages of its cached prefix count too: vLLM
            // takes them out of the free queue, where they were counted free.
            let pages_gate = if rule == Rule::Vllm && self.profile.full_sequence_admission {
                self.pages(r.known())
            } else {
                pages_now
            };
            if self.used_pages + need + pages_gate > self.total_pages {
                break;
            }
            match rule {
                Rule::Ideal | Rule::Vllm => {}
                Rule::Sglang => {
                    let free_tokens =
                        (self.total_pages - self.used_pages - need - pages_now) * self.block;
                    let wanted = (r.known() - r.computed - n)
                        + (r.output - r.generated).min(SGLANG_CLIP_MAX_NEW_TOKENS);
                    if wanted as f64 > free_tokens as f64 - sglang_reserve {
                        break;
                    }
                    sglang_reserve += wanted as f64;
                }
                Rule::Trtllm => {
                    let reserve = self.pages(r.prompt + self.max_tokens(r.output));
                    if self.reserved_pages + reserve > self.total_pages {
                        break;
                    }
                    self.reserved_pages += reserve;
                    self.slab[s as usize].reserved = reserve;
                }
            }
            self.waiting.pop_front();
            need += pages_now - self.pages(computed);
            budget -= n;
            self.restore_cached_prefix(s, computed);
            self.start_running(s, n, now, obs);
        }
    }

    /// Σ over running requests of their remaining output, clipped as SGLang clips it. Without
    /// outputs long enough for the clip to matter the decode set's running sum gives it in O(1).
    fn remaining_output_clipped(&self) -> f64 {
        let scan = || -> i64 {
            self.decode
                .members
                .iter()
                .map(|&s| {
                    let r = &self.slab[s as usize];
                    (r.output - self.decode.progress(r).1).min(SGLANG_CLIP_MAX_NEW_TOKENS)
                })
                .sum()
        };
        let mut total = if self.long_outputs_running == 0 {
            debug_assert_eq!(self.decode.remaining_output(), scan());
            self.decode.remaining_output()
        } else {
            scan()
        };
        for &s in &self.prefilling {
            let r = &self.slab[s as usize];
            total += (r.output - r.generated).min(SGLANG_CLIP_MAX_NEW_TOKENS);
        }
        total as f64
    }

    /// A re-admitted request takes back the `computed` tokens of its cached prefix: those pages
    /// leave the free queue without being recomputed.
    fn restore_cached_prefix(&mut self, s: u32, computed: i64) {
        let r = &mut self.slab[s as usize];
        if r.cached_segment == NO_SEGMENT {
            return;
        }
        let hit = computed / self.block;
        if let Some(q) = self.free_queue.as_mut() {
            q.reclaim(r.cached_segment, hit);
        }
        r.computed = computed;
        r.cached_segment = NO_SEGMENT;
        r.cached_tokens = 0;
    }

    #[inline]
    fn is_long(&self, s: u32) -> i64 {
        (self.slab[s as usize].output > SGLANG_CLIP_MAX_NEW_TOKENS) as i64
    }

    /// Moves an admitted request into the running set, with `chunk` tokens this iteration.
    fn start_running<O: Observer>(&mut self, s: u32, chunk: i64, now: f64, obs: &mut O) {
        let seq = self.next_seq;
        self.next_seq += 1;
        // The seq first: compacting drops every entry whose slot holds another seq.
        self.slab[s as usize].seq = seq;
        self.admission_order.push((seq, s));
        if self.admission_order.len() as i64 > 2 * self.running + 64 {
            let slab = &self.slab;
            self.admission_order
                .retain(|&(q, i)| slab[i as usize].seq == q);
        }
        self.running += 1;
        self.long_outputs_running += self.is_long(s);
        let computed = self.slab[s as usize].computed;
        self.used_pages += self.pages(computed);
        let r = &mut self.slab[s as usize];
        obs.admitted(r.id, now, r.generated);
        if r.generated >= 1 && r.computed == r.known() - 1 {
            // A swapped-out decoder resumes decoding where it stopped.
            r.phase = Phase::Decode;
            self.decode.enter(s, r);
        } else {
            r.phase = Phase::Prefill;
            r.chunk = chunk;
            self.prefilling.push(s);
        }
    }

    /// Frees memory when the batch does not fit, by the rule's victim choice.
    fn relieve_shortage<O: Observer>(&mut self, now: f64, decode: bool, obs: &mut O) {
        match self.profile.rule {
            Rule::Ideal => self.preempt_newest(now, true, obs),
            // GUARANTEED_NO_EVICT reserves every page a request will need, so TensorRT-LLM never
            // gets here; preempting like vLLM keeps the engine live if a profile breaks that.
            Rule::Vllm | Rule::Trtllm => self.preempt_newest(now, false, obs),
            Rule::Sglang if decode && self.decode.len() > 0 => self.retract(now, obs),
            Rule::Sglang => self.preempt_newest(now, false, obs),
        }
    }

    fn preempt_newest<O: Observer>(&mut self, now: f64, keep_kv: bool, obs: &mut O) {
        while let Some((seq, s)) = self.admission_order.pop() {
            if self.slab[s as usize].seq == seq {
                self.preempt(s, now, keep_kv, true, obs);
                return;
            }
        }
        unreachable!("a shortage with no running request");
    }

    /// SGLang's retraction: retract the decoding requests with the fewest generated tokens
    /// (longest prompt first among equals) until the rest can decode SGLANG_RETRACT_DECODE_STEPS
    /// more steps, then re-estimate new_token_ratio from the requests that remain.
    fn retract<O: Observer>(&mut self, now: f64, obs: &mut O) {
        let mut order: Vec<(i64, i64, u32)> = self
            .decode
            .members
            .iter()
            .map(|&s| {
                let r = &self.slab[s as usize];
                (self.decode.progress(r).1, -r.prompt, s)
            })
            .collect();
        order.sort_unstable();
        for &(_, _, s) in &order {
            self.preempt(s, now, false, false, obs);
            let free = (self.total_pages - self.used_pages) * self.block;
            if free >= SGLANG_RETRACT_DECODE_STEPS * self.decode.len() {
                break;
            }
        }
        let (mut decoded, mut max_new) = (0i64, 0i64);
        for &s in &self.decode.members {
            let r = &self.slab[s as usize];
            decoded += self.decode.progress(r).1;
            max_new += r.output;
        }
        let n = self.decode.len();
        self.ratio =
            ((decoded + SGLANG_RETRACT_DECODE_STEPS * n) as f64 / (max_new + 1) as f64).min(1.0);
        self.retracted_in_flight = true;
    }

    /// Takes a running request off the GPU. With `keep_kv` (ideal swap-out) its KV progress is
    /// kept for a free swap-in; otherwise it will recompute prompt + generated tokens.
    /// vLLM and the ideal rule put it at the front of the queue; SGLang appends it.
    fn preempt<O: Observer>(
        &mut self,
        s: u32,
        now: f64,
        keep_kv: bool,
        to_front: bool,
        obs: &mut O,
    ) {
        match self.slab[s as usize].phase {
            Phase::Decode => self.decode.leave(s, &mut self.slab),
            Phase::Prefill => {
                let i = self.prefilling.iter().position(|&p| p == s).unwrap();
                self.prefilling.remove(i);
            }
            Phase::Waiting | Phase::Done => unreachable!("only running requests are preempted"),
        }
        let computed = self.slab[s as usize].computed;
        let pages = self.pages(computed);
        self.used_pages -= pages;
        let full = computed / self.block;
        let segment = self.free_queue.as_mut().map(|q| {
            q.free_unhashed(pages - full);
            q.free_owned(full)
        });
        self.reserved_pages -= self.slab[s as usize].reserved;
        let r = &mut self.slab[s as usize];
        r.reserved = 0;
        r.chunk = 0;
        if let Some(id) = segment {
            r.cached_segment = id;
            r.cached_tokens = computed;
        }
        if !keep_kv {
            r.computed = 0;
        }
        r.phase = Phase::Waiting;
        r.seq = NOT_RUNNING;
        self.running -= 1;
        self.long_outputs_running -= (r.output > SGLANG_CLIP_MAX_NEW_TOKENS) as i64;
        self.preemptions += 1;
        obs.preempted(r.id, now, r.generated);
        if to_front {
            self.waiting.push_front(s);
        } else {
            self.waiting.push_back(s);
        }
    }

    /// Allocates the planned batch's pages and fixes its duration.
    fn commit(&mut self, now: f64, decode: bool) -> IterationRecord {
        let mut batch_tokens = 0;
        let mut kv_tokens = 0;
        let mut prefill_pairs = 0.0;
        let (mut prefill_requests, mut prefill_tokens) = (0, 0);
        if decode {
            self.allocate_pages(self.decode.growth_pages());
            batch_tokens += self.decode.len();
            // Each decoding request attends over its KV plus the token it writes.
            kv_tokens += self.decode.kv_tokens() + self.decode.len();
        }
        for i in 0..self.prefilling.len() {
            let r = &self.slab[self.prefilling[i] as usize];
            let (computed, chunk) = (r.computed, r.chunk);
            if chunk > 0 {
                self.allocate_pages(self.pages(computed + chunk) - self.pages(computed));
                batch_tokens += chunk;
                prefill_requests += 1;
                prefill_tokens += chunk;
                kv_tokens += computed + chunk;
                prefill_pairs += (chunk as f64) * ((computed + chunk) as f64);
            }
        }
        debug_assert!(self.used_pages <= self.total_pages);
        #[cfg(debug_assertions)]
        if let Some(q) = &self.free_queue {
            debug_assert_eq!(q.free_pages(), self.total_pages - self.used_pages);
        }
        let mut duration = self
            .profile
            .iteration_time
            .mean(batch_tokens, kv_tokens, prefill_pairs);
        if let Some(noise) = &self.noise {
            duration *= noise.sample(&mut self.rng);
        }
        let kv_used = self.used_pages * self.block;
        self.peak_kv_tokens = self.peak_kv_tokens.max(kv_used);
        IterationRecord {
            start: now,
            duration,
            waiting: self.waiting.len() as i64,
            running: self.running,
            kv_used,
            batch_tokens,
            decode,
            decode_requests: if decode { self.decode.len() } else { 0 },
            prefill_requests,
            prefill_tokens,
        }
    }
}

// Quiet stretches: decode-only iterations in which no request changes state.
impl Engine {
    /// Runs, without planning each, the decode-only iterations from the clock on in which no
    /// request is admitted, finishes, prefills or is preempted, ending by `until`. Each is exactly
    /// the iteration `start` would plan: every decoding request steps, pages grow by residue
    /// class, and the waiting queue's head stays blocked (memory only fills up, reservations and
    /// the running count do not change). SGLang's ratio decays, so with a waiting queue it could
    /// admit: its stretches need an empty queue. Noise would need a draw per iteration anyway.
    fn run_quiet_steps(&mut self, until: f64) {
        let n = self.decode.len();
        if n == 0 || !self.prefilling.is_empty() || self.noise.is_some() {
            return;
        }
        let blocked_pages = match self.waiting.front() {
            None => None,
            Some(_) if self.profile.rule == Rule::Sglang => return,
            // The head's cached prefix shrinks as pages are allocated, which can unblock it.
            Some(&s) if self.slab[s as usize].cached_segment != NO_SEGMENT => return,
            Some(&s) => match self.head_blocked(s) {
                Blocked::No => return,
                Blocked::Always => None,
                Blocked::ByMemory(pages) => Some(pages),
            },
        };
        let last_quiet = self.decode.next_finish_step().map_or(i64::MAX, |f| f - 1);
        let model = self.profile.iteration_time;
        let sglang = self.profile.rule == Rule::Sglang;
        while self.decode.step <= last_quiet {
            let growth = self.decode.growth_pages();
            let used = self.used_pages + growth;
            if used > self.total_pages
                || blocked_pages.is_some_and(|p| used + p <= self.total_pages)
            {
                break;
            }
            let duration = model.mean(n, self.decode.kv_tokens() + n, 0.0);
            let end = self.clock + duration;
            if end > until {
                break;
            }
            self.allocate_pages(growth);
            self.peak_kv_tokens = self.peak_kv_tokens.max(used * self.block);
            self.decode.step += 1;
            self.clock = end;
            self.busy_time += duration;
            self.iterations += 1;
            if sglang {
                self.ratio = (self.ratio - self.ratio_decay).max(self.profile.sglang_min_ratio);
            }
        }
    }

    /// Whether the head of the queue could be admitted in a decode-only iteration, and if only
    /// memory stops it, how many pages it needs beyond the step's growth.
    fn head_blocked(&self, s: u32) -> Blocked {
        let r = &self.slab[s as usize];
        let budget = self.profile.token_budget - self.decode.len();
        if r.arrival > self.clock {
            return Blocked::No;
        }
        if self.running >= self.profile.max_running || budget <= 0 {
            return Blocked::Always;
        }
        if self.profile.rule == Rule::Trtllm
            && self.reserved_pages + self.pages(r.prompt + self.max_tokens(r.output))
                > self.total_pages
        {
            return Blocked::Always;
        }
        let n = (r.known() - r.computed)
            .min(self.profile.chunk_size)
            .min(budget);
        let pages_now = self.pages(r.computed + n);
        if self.used_pages + self.decode.growth_pages() + pages_now > self.total_pages {
            Blocked::ByMemory(pages_now)
        } else {
            Blocked::No
        }
    }
}

enum Blocked {
    No,
    Always,
    ByMemory(i64),
}

// Completing an iteration: tokens, first tokens, finishes.
impl Engine {
    fn complete<O: Observer>(&mut self, obs: &mut O) {
        let it = self.in_flight.take().expect("an iteration in flight");
        let t = it.start + it.duration;
        self.clock = t;
        if it.decode {
            if O::TOKENS {
                for &s in &self.decode.members {
                    let r = &self.slab[s as usize];
                    obs.token(r.id, t, self.decode.progress(r).1 + 1);
                }
            }
            let step = self.decode.step;
            self.decode.step += 1;
            while let Some(s) = self.decode.pop_finished(step, &self.slab) {
                self.decode.leave(s, &mut self.slab);
                self.finish(s, t, obs);
            }
            if self.profile.rule == Rule::Sglang && !self.retracted_in_flight {
                self.ratio = (self.ratio - self.ratio_decay).max(self.profile.sglang_min_ratio);
            }
        }
        let mut i = 0;
        while i < self.prefilling.len() {
            let s = self.prefilling[i];
            let r = &mut self.slab[s as usize];
            if r.chunk > 0 {
                r.computed += r.chunk;
                r.chunk = 0;
                if r.computed == r.known() {
                    // The last prefill chunk samples the next token.
                    r.generated += 1;
                    if r.generated == 1 {
                        obs.first_token(r.id, t);
                    }
                    if O::TOKENS {
                        obs.token(r.id, t, r.generated);
                    }
                    let finished = r.generated == r.output;
                    if !finished {
                        r.phase = Phase::Decode;
                        self.decode.enter(s, r);
                    }
                    self.prefilling.remove(i);
                    if finished {
                        self.finish(s, t, obs);
                    }
                    continue;
                }
            }
            i += 1;
        }
        self.iterations += 1;
        self.busy_time += it.duration;
    }

    fn finish<O: Observer>(&mut self, s: u32, t: f64, obs: &mut O) {
        let computed = self.slab[s as usize].computed;
        self.free_pages(computed);
        self.reserved_pages -= self.slab[s as usize].reserved;
        let r = &mut self.slab[s as usize];
        r.reserved = 0;
        r.phase = Phase::Done;
        r.seq = NOT_RUNNING;
        self.running -= 1;
        self.long_outputs_running -= (r.output > SGLANG_CLIP_MAX_NEW_TOKENS) as i64;
        self.completed += 1;
        obs.finished(r.id, t, r.generated);
        self.free_slots.push(s);
    }
}
