//! vLLM v1's free-page queue, as far as automatic prefix caching matters for kvbench's requests
//! (random prompts share no prefix, so the only hits are a preempted request's own pages).
//!
//! vLLM keeps every free page in one queue (`FreeKVCacheBlockQueue`): allocation takes pages
//! from the front, evicting whatever hash they held. Freeing (`BlockPool.free_blocks`) appends a
//! request's hashed (full) pages at the back, in reverse order (`free` passes
//! `reversed(req_blocks)`), so its tail is evicted first, and puts its unhashed pages (the
//! partly filled last one) at the front, to be reused first. A freed full page stays hashed
//! until it is reallocated, and a re-admitted request's `get_computed_blocks` hits the longest
//! run of its pages from the start that are still hashed.
//!
//! Only the count of pages matters, so the queue is a sequence of segments: the full pages one
//! preempted request freed (tail first: the front of the segment is its last full page), and
//! runs of pages nobody can hit (freed by finished requests, unhashed, or never used).
//! Allocation eats segments from the front; what is left of a preempted request's segment is its
//! surviving prefix.

use std::collections::VecDeque;

#[derive(Clone, Copy, Debug)]
struct Segment {
    pages: i64,
    /// Held for a preempted request that may still hit these pages.
    owned: bool,
}

#[derive(Debug)]
pub struct FreeQueue {
    segments: VecDeque<Segment>,
    /// Id of `segments[0]`; ids grow by one per segment pushed at the back and shrink by one per
    /// segment pushed at the front, from FIRST_ID.
    front_id: u64,
}

/// The first segment's id: room below it for the segments pushed at the front.
const FIRST_ID: u64 = 1 << 62;

/// A preempted request's segment, as its slot remembers it.
pub const NO_SEGMENT: u64 = u64::MAX;

impl FreeQueue {
    /// A cache whose `pages` pages are all free and hold nothing.
    pub fn new(pages: i64) -> FreeQueue {
        let mut q = FreeQueue {
            segments: VecDeque::new(),
            front_id: FIRST_ID,
        };
        q.free_anonymous(pages);
        q
    }

    /// Pages taken for new KV, from the least recently freed on.
    pub fn allocate(&mut self, mut pages: i64) {
        while pages > 0 {
            let front = self
                .segments
                .front_mut()
                .expect("allocation beyond the free pages");
            let n = front.pages.min(pages);
            front.pages -= n;
            pages -= n;
            if front.pages == 0 {
                // An owner whose segment is gone finds an id below `front_id`: nothing survives.
                self.segments.pop_front();
                self.front_id += 1;
            }
        }
    }

    /// Pages no request can hit (a finished or aborted request's), appended at the back.
    pub fn free_anonymous(&mut self, pages: i64) {
        if pages == 0 {
            return;
        }
        match self.segments.back_mut() {
            Some(back) if !back.owned => back.pages += pages,
            _ => self.segments.push_back(Segment {
                pages,
                owned: false,
            }),
        }
    }

    /// Pages no request can hit that vLLM reuses first (a freed request's unhashed last page),
    /// put at the front.
    pub fn free_unhashed(&mut self, pages: i64) {
        if pages == 0 {
            return;
        }
        match self.segments.front_mut() {
            Some(front) if !front.owned => front.pages += pages,
            _ => {
                self.segments.push_front(Segment {
                    pages,
                    owned: false,
                });
                self.front_id -= 1;
            }
        }
    }

    /// A preempted request's pages, appended tail first; returns the segment's id.
    pub fn free_owned(&mut self, pages: i64) -> u64 {
        self.segments.push_back(Segment { pages, owned: true });
        self.front_id + self.segments.len() as u64 - 1
    }

    /// How many of the segment's pages (the request's first pages) would still be hashed once
    /// `taken` more pages are allocated: vLLM allocates for the running requests, and for those
    /// admitted before, ahead of a waiting request's prefix lookup in the same step.
    pub fn surviving_after(&self, id: u64, taken: i64) -> i64 {
        if id == NO_SEGMENT || id < self.front_id {
            return 0;
        }
        let index = (id - self.front_id) as usize;
        let Some(segment) = self.segments.get(index) else {
            return 0;
        };
        let ahead: i64 = self.segments.range(..index).map(|s| s.pages).sum();
        segment.pages - (taken - ahead).clamp(0, segment.pages)
    }

    /// The owner is re-admitted and reuses `hit` of its surviving pages; the rest stay free
    /// and can no longer be hit.
    pub fn reclaim(&mut self, id: u64, hit: i64) {
        if id == NO_SEGMENT || id < self.front_id {
            debug_assert_eq!(hit, 0);
            return;
        }
        if let Some(s) = self.segments.get_mut((id - self.front_id) as usize) {
            debug_assert!(hit <= s.pages);
            s.pages -= hit;
            s.owned = false;
        }
    }

    /// Free pages in the queue (debug checks against the engine's count).
    #[cfg(any(test, debug_assertions))]
    pub fn free_pages(&self) -> i64 {
        self.segments.iter().map(|s| s.pages).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_pages_are_evicted_first_and_the_prefix_survives() {
        // 10 free pages; a request preempted with 6 pages frees them behind the 10.
        let mut q = FreeQueue::new(10);
        let id = q.free_owned(6);
        q.allocate(8);
        assert_eq!(q.surviving_after(id, 0), 6);
        assert_eq!(q.surviving_after(id, 5), 3); // 2 left of the first run, then 3 tail pages
        q.allocate(4); // the 2 left of the first run, then the request's 2 tail pages
        assert_eq!(q.surviving_after(id, 0), 4);
        q.reclaim(id, 3);
        assert_eq!(q.free_pages(), 1);
    }

    #[test]
    fn a_fully_evicted_segment_has_nothing_left() {
        let mut q = FreeQueue::new(0);
        let a = q.free_owned(3);
        let b = q.free_owned(2);
        q.free_anonymous(4);
        q.allocate(4);
        assert_eq!(q.surviving_after(a, 0), 0);
        assert_eq!(q.surviving_after(b, 0), 1);
        assert_eq!(q.free_pages(), 5);
    }

    #[test]
    fn unhashed_pages_are_reused_before_any_hashed_one() {
        // A request preempted with 3 full pages and a partial one: the partial page goes to the
        // front, so the next allocation of 1 page leaves all 3 full pages hashed.
        let mut q = FreeQueue::new(0);
        let id = q.free_owned(3);
        q.free_unhashed(1);
        assert_eq!(q.surviving_after(id, 1), 3);
        q.allocate(2);
        assert_eq!(q.surviving_after(id, 0), 2);
        // ids stay valid across pushes at the front
        q.free_unhashed(2);
        let later = q.free_owned(1);
        assert_eq!(q.surviving_after(id, 2), 2);
        assert_eq!(q.surviving_after(later, 4), 1);
        assert_eq!(q.free_pages(), 5);
    }
}
