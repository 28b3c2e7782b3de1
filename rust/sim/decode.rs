//! The set of decoding requests, advanced in aggregate.
//!
//! Every decoding request gains exactly one KV token and one output token per decode step, so the
//! set stores each request's progress as an offset from a shared step counter `step`: a request
//! that entered with `computed` KV tokens at step D₀ holds `computed + (step − D₀)` now. A step
//! therefore costs O(1) however many requests decode; what remains per request are events —
//! entering, leaving, finishing (a heap keyed by the step of the last token) — and page
//! crossings, counted per residue class of the offset modulo the page size.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::pages::PageSize;
use super::request::Slot;

#[derive(Debug)]
pub struct DecodeSet {
    page: PageSize,
    /// Decode steps taken so far (the shared clock of all offsets).
    pub step: i64,
    /// Σ (computed − step at entry) over members: Σ computed = sum_offset + len·step.
    sum_offset: i64,
    /// Σ (output − generated offset) over members: Σ remaining output = this − len·step.
    sum_remaining_offset: i64,
    /// Members per residue (computed − step at entry) mod block: those whose KV fills whole
    /// pages at a step need a new page for it.
    residues: Vec<i64>,
    /// (step of the last token, slot, epoch); stale entries are skipped by epoch.
    finishes: BinaryHeap<Reverse<(i64, u32, u32)>>,
    /// Member slots in no particular order (for per-token events and SGLang's retraction).
    pub members: Vec<u32>,
}

impl DecodeSet {
    pub fn new(page: PageSize) -> DecodeSet {
        DecodeSet {
            page,
            step: 0,
            sum_offset: 0,
            sum_remaining_offset: 0,
            residues: vec![0; page.size() as usize],
            finishes: BinaryHeap::new(),
            members: Vec::new(),
        }
    }

    #[inline]
    pub fn len(&self) -> i64 {
        self.members.len() as i64
    }

    /// Σ computed KV tokens over members.
    #[inline]
    pub fn kv_tokens(&self) -> i64 {
        self.sum_offset + self.len() * self.step
    }

    /// Σ output tokens members have still to emit.
    #[inline]
    pub fn remaining_output(&self) -> i64 {
        self.sum_remaining_offset - self.len() * self.step
    }

    /// Pages the next step needs: one per member whose KV exactly fills its pages.
    #[inline]
    pub fn growth_pages(&self) -> i64 {
        self.growth_pages_at(self.step)
    }

    /// Pages step `step` would need with the current members.
    #[inline]
    pub fn growth_pages_at(&self, step: i64) -> i64 {
        if self.page.size() == 1 {
            return self.len();
        }
        self.residues[self.page.residue(-step)]
    }

    /// The earliest step that may emit some member's last token (a stale entry can make it
    /// early, never late).
    #[inline]
    pub fn next_finish_step(&self) -> Option<i64> {
        self.finishes.peek().map(|Reverse((step, _, _))| *step)
    }

    /// Current (computed, generated) of a member.
    #[inline]
    pub fn progress(&self, r: &Slot) -> (i64, i64) {
        (r.computed + self.step, r.generated + self.step)
    }

    /// Adds a request whose `computed`/`generated` are absolute; they become offsets.
    pub fn enter(&mut self, slot: u32, r: &mut Slot) {
        debug_assert!(r.generated >= 1 && r.generated < r.output);
        r.computed -= self.step;
        r.generated -= self.step;
        self.sum_offset += r.computed;
        self.sum_remaining_offset += r.output - r.generated;
        self.residues[self.page.residue(r.computed)] += 1;
        r.pos = self.members.len() as u32;
        self.members.push(slot);
        // The step that emits token `output` is the one taken when generated = output − 1.
        let last_step = r.output - 1 - r.generated;
        self.finishes.push(Reverse((last_step, slot, r.epoch)));
    }

    /// Removes a member and turns its offsets back into absolute progress.
    pub fn leave(&mut self, slot: u32, slab: &mut [Slot]) {
        let r = &mut slab[slot as usize];
        self.sum_offset -= r.computed;
        self.sum_remaining_offset -= r.output - r.generated;
        self.residues[self.page.residue(r.computed)] -= 1;
        r.computed += self.step;
        r.generated += self.step;
        r.epoch = r.epoch.wrapping_add(1);
        let pos = r.pos as usize;
        self.members.swap_remove(pos);
        if let Some(&moved) = self.members.get(pos) {
            slab[moved as usize].pos = pos as u32;
        }
    }

    /// The next member whose last token was emitted by step `step` (call after advancing).
    #[inline]
    pub fn pop_finished(&mut self, step: i64, slab: &[Slot]) -> Option<u32> {
        while let Some(&Reverse((last, slot, epoch))) = self.finishes.peek() {
            if last > step {
                return None;
            }
            self.finishes.pop();
            if slab[slot as usize].epoch == epoch {
                return Some(slot);
            }
        }
        None
    }
}
