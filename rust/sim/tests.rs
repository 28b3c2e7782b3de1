//! Engine tests against hand-computed schedules and invariants that must hold for every rule.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

use super::batch::{simulate, Dispatch, Options};
use super::engine::Engine;
use super::profile::{IterationTime, Profile, Rule};
use super::request::{IterationRecord, Observer};

/// Records everything, and checks every iteration's KV against the capacity.
#[derive(Default)]
struct Log {
    admitted: HashMap<u64, Vec<f64>>,
    first: HashMap<u64, f64>,
    tokens: HashMap<u64, Vec<i64>>,
    finished: HashMap<u64, (f64, i64)>,
    preempted: u64,
    victims: Vec<u64>,
    iterations: Vec<IterationRecord>,
}

impl Observer for Log {
    const TOKENS: bool = true;
    fn admitted(&mut self, id: u64, time: f64, _generated: i64) {
        self.admitted.entry(id).or_default().push(time);
    }
    fn first_token(&mut self, id: u64, time: f64) {
        assert!(
            self.first.insert(id, time).is_none(),
            "two first tokens for {id}"
        );
    }
    fn token(&mut self, id: u64, _time: f64, generated: i64) {
        self.tokens.entry(id).or_default().push(generated);
    }
    fn finished(&mut self, id: u64, time: f64, generated: i64) {
        assert!(self.finished.insert(id, (time, generated)).is_none());
    }
    fn preempted(&mut self, id: u64, _time: f64, _generated: i64) {
        self.preempted += 1;
        self.victims.push(id);
    }
    fn iteration(&mut self, it: &IterationRecord) {
        self.iterations.push(*it);
    }
    fn records_iterations(&self) -> bool {
        true
    }
}

fn profile(
    rule: Rule,
    kv_tokens: i64,
    block: i64,
    chunk: i64,
    budget: i64,
    max_running: i64,
) -> Profile {
    Profile {
        rule,
        block_size: block,
        token_budget: budget,
        max_running,
        separate_prefill_decode: rule == Rule::Sglang,
        ..Profile::ideal(kv_tokens, chunk, 0.1)
    }
}

#[test]
fn one_request_by_hand() {
    // s = 1000, ŝ = 512: prefill chunks of 512 and 488 (2 iterations, the second samples token
    // 1), then 4 decode iterations for tokens 2..5; b = 0.1 s each.
    let mut e = Engine::new(Profile::ideal(10_000, 512, 0.1), 0);
    let mut log = Log::default();
    e.add_request(7, 1000, 5, 1.0).unwrap();
    e.advance(f64::INFINITY, &mut log);
    assert_eq!(log.admitted[&7], vec![1.0]);
    assert!((log.first[&7] - 1.2).abs() < 1e-12);
    let (t, n) = log.finished[&7];
    assert!((t - 1.6).abs() < 1e-12 && n == 5);
    assert_eq!(log.tokens[&7], vec![1, 2, 3, 4, 5]);
    let kv: Vec<i64> = log.iterations.iter().map(|i| i.kv_used).collect();
    // KV allocated per iteration: 512, 1000, then s + j for the step writing token j + 1.
    assert_eq!(kv, vec![512, 1000, 1001, 1002, 1003, 1004]);
    assert_eq!(e.kv_used_tokens(), 0);
    assert_eq!(e.next_event_time(), None);
}

#[test]
fn iteration_time_model_and_pages() {
    // c0 + c1·tokens + c2·KV; vLLM pages of 16 round the allocation up.
    let mut p = profile(Rule::Vllm, 1600, 16, 512, 2048, 256);
    p.iteration_time = IterationTime {
        c0: 0.01,
        c1: 1e-4,
        c2: 1e-6,
        noise_sigma: 0.0,
        ..IterationTime::constant(0.01)
    };
    let mut e = Engine::new(p, 0);
    let mut log = Log::default();
    e.add_request(0, 100, 3, 0.0).unwrap();
    e.advance(f64::INFINITY, &mut log);
    let it = &log.iterations;
    assert_eq!(it.len(), 3);
    assert_eq!((it[0].batch_tokens, it[0].kv_used), (100, 112));
    assert!((it[0].duration - (0.01 + 100.0 * 1e-4 + 100.0 * 1e-6)).abs() < 1e-15);
    // Decode attends over 100 prompt tokens + 1 generated + the one it writes.
    assert!((it[1].duration - (0.01 + 1e-4 + 101.0 * 1e-6)).abs() < 1e-15);
    assert_eq!(it[2].kv_used, 112);
}

#[test]
fn iteration_time_knee_and_prefill_attention() {
    // Below the knee c1 per token, above it c1_above; c3 per chunk token × attended token.
    let mut p = profile(Rule::Vllm, 1600, 16, 64, 2048, 256);
    p.iteration_time = IterationTime {
        c0: 0.01,
        c1: 1e-4,
        c2: 0.0,
        noise_sigma: 0.0,
        knee: 40,
        c1_above: 1e-3,
        c3: 1e-6,
    };
    let mut e = Engine::new(p, 0);
    let mut log = Log::default();
    e.add_request(0, 100, 2, 0.0).unwrap();
    e.advance(f64::INFINITY, &mut log);
    let d: Vec<f64> = log.iterations.iter().map(|i| i.duration).collect();
    // Chunks of 64 (after 0 cached) and 36 (after 64), then one decode of 1 token.
    let first = 0.01 + 40.0 * 1e-4 + 24.0 * 1e-3 + 64.0 * 64.0 * 1e-6;
    let second = 0.01 + 36.0 * 1e-4 + 36.0 * 100.0 * 1e-6;
    assert!((d[0] - first).abs() < 1e-12 && (d[1] - second).abs() < 1e-12);
    assert!((d[2] - (0.01 + 1e-4)).abs() < 1e-12);
}

#[test]
fn vllm_preempts_the_newest_and_recomputes() {
    // M = 40 tokens, two requests of s = 10, o = 15: together they outgrow memory; vLLM preempts
    // the newer (id 1) which recomputes prompt + generated tokens when room frees.
    let mut e = Engine::new(profile(Rule::Vllm, 40, 1, 512, 2048, 256), 0);
    let mut log = Log::default();
    e.add_request(0, 10, 15, 0.0).unwrap();
    e.add_request(1, 10, 15, 0.0).unwrap();
    e.advance(f64::INFINITY, &mut log);
    assert!(log.preempted >= 1);
    assert_eq!(log.admitted[&0].len(), 1, "the oldest is never preempted");
    assert!(log.admitted[&1].len() >= 2);
    // A recompute resumes where it stopped: the tokens still come 1, 2, …, 15.
    assert_eq!(log.tokens[&1], (1..=15).collect::<Vec<_>>());
    assert!(log.iterations.iter().all(|i| i.kv_used <= 40));
    // Request 1 was re-prefilled over more than its prompt.
    assert!(log
        .iterations
        .iter()
        .any(|i| i.batch_tokens > 10 && i.batch_tokens < 30));
}

/// Pages of 4, M = 10 usable pages (vLLM reports 11, its null block included), two requests of s = 8, o = 20 (hand-traced): both prefill, then
/// decode until both hold 5 full pages and need a sixth; vLLM preempts the newer (B, 20 KV
/// tokens, 21 known) and frees its 5 pages tail first. A's next two pages come from the front of
/// the free queue, which is B's tail, so 3 of B's pages survive; B, blocked until A finishes,
/// hits those 12 tokens and re-prefills only 21 − 12 = 9. Without prefix caching it re-prefills
/// all 21.
#[test]
fn vllm_prefix_cache_restores_the_surviving_prefix() {
    for (caching, reprefill) in [(true, 9), (false, 21)] {
        let mut p = profile(Rule::Vllm, 44, 4, 512, 2048, 256);
        p.prefix_caching = caching;
        let mut e = Engine::new(p, 0);
        let mut log = Log::default();
        e.add_request(0, 8, 20, 0.0).unwrap();
        e.add_request(1, 8, 20, 0.0).unwrap();
        e.advance(f64::INFINITY, &mut log);
        assert_eq!(log.preempted, 1);
        assert_eq!(log.admitted[&1].len(), 2);
        let batches: Vec<i64> = log.iterations.iter().map(|i| i.batch_tokens).collect();
        // Prefill (16), 12 decode steps of both, then A alone, then B's re-prefill.
        assert_eq!(batches[0], 16);
        let resumed = batches.iter().skip(1).position(|&b| b > 2).unwrap() + 1;
        assert_eq!(
            batches[resumed], reprefill,
            "caching {caching}: {batches:?}"
        );
        assert_eq!(log.tokens[&1], (1..=20).collect::<Vec<_>>());
        assert_eq!(e.kv_used_tokens(), 0);
    }
}

/// Pages of 4, M = 8 usable pages (9 with vLLM's null block), 8-token chunks; A (s = 8, o = 4) and B (s = 28, o = 4) queued at
/// t = 0 (hand-traced). First-chunk admission takes B in beside A's 2 pages with one 2-page
/// chunk; B's prefill and A's decode then need 3 + 8 = 11 pages and vLLM preempts B. Under
/// full-sequence admission B's 7 prompt pages do not fit beside A's 2, so B waits, and it still
/// waits while A holds 3 pages (5 free): it starts when A finishes and nothing is preempted.
#[test]
fn vllm_full_sequence_admission_waits_instead_of_preempting() {
    for full in [false, true] {
        let mut p = profile(Rule::Vllm, 36, 4, 8, 2048, 256);
        p.prefix_caching = true;
        p.full_sequence_admission = full;
        let mut e = Engine::new(p, 0);
        let mut log = Log::default();
        e.add_request(0, 8, 4, 0.0).unwrap();
        e.add_request(1, 28, 4, 0.0).unwrap();
        e.advance(f64::INFINITY, &mut log);
        if full {
            assert_eq!(log.preempted, 0);
            assert_eq!(log.admitted[&1].len(), 1);
            assert!(log.admitted[&1][0] >= log.finished[&0].0);
        } else {
            assert!(log.preempted >= 1);
            assert_eq!(log.admitted[&1][0], 0.0);
        }
        assert_eq!(log.tokens[&1], (1..=4).collect::<Vec<_>>());
        assert_eq!(e.kv_used_tokens(), 0);
    }
}

/// vLLM's first page is its null block: a cache it reports as 3 pages of 4 holds a 2-page
/// request (8 tokens) but not a 3-page one, which the other rules hold.
#[test]
fn vllm_leaves_the_null_block_out_of_the_cache() {
    for (rule, fits) in [(Rule::Vllm, false), (Rule::Ideal, true)] {
        let mut e = Engine::new(profile(rule, 12, 4, 512, 2048, 256), 0);
        assert!(e.add_request(0, 4, 4, 0.0).is_ok());
        assert_eq!(e.add_request(1, 8, 4, 0.0).is_ok(), fits, "{rule:?}");
        assert_eq!(e.kv_total_tokens(), if fits { 12 } else { 8 });
    }
}

/// vLLM preempts the request it admitted last (`self.running.pop()`), however many requests
/// came and went before it. A (s = 10, o = 30) runs beside `n` one-token requests, then B
/// (s = 10, o = 30) is admitted; in M = 60 tokens A and B cannot both finish, and B, the newer,
/// must be the one preempted. (The engine once lost the newest admission from its order when
/// that admission compacted the order, and preempted A.)
#[test]
fn vllm_preempts_the_last_admitted_after_many_admissions() {
    for n in 40..160 {
        let mut e = Engine::new(profile(Rule::Vllm, 60, 1, 512, 2048, 256), 0);
        let mut log = Log::default();
        e.add_request(0, 10, 30, 0.0).unwrap();
        for id in 1..=n {
            e.add_request(id, 1, 1, 0.0).unwrap();
        }
        e.add_request(1000, 10, 30, 0.0).unwrap();
        e.advance(f64::INFINITY, &mut log);
        assert!(log.preempted >= 1, "n = {n}");
        assert!(
            log.victims.iter().all(|&v| v == 1000),
            "n = {n}: {:?}",
            log.victims
        );
    }
}

#[test]
fn ideal_swap_keeps_progress() {
    // Same squeeze under the ideal rule: the swapped request resumes decoding without prefill,
    // so no iteration ever has more than one token per running request after the first.
    let mut e = Engine::new(profile(Rule::Ideal, 40, 1, 512, 1 << 40, 1 << 40), 0);
    let mut log = Log::default();
    e.add_request(0, 10, 15, 0.0).unwrap();
    e.add_request(1, 10, 15, 0.0).unwrap();
    e.advance(f64::INFINITY, &mut log);
    assert!(log.preempted >= 1);
    assert_eq!(log.tokens[&1], (1..=15).collect::<Vec<_>>());
    assert!(log.iterations[1..]
        .iter()
        .all(|i| i.batch_tokens <= i.running));
}

#[test]
fn trtllm_reserves_the_whole_lifetime() {
    // M = 64 tokens in pages of 32: one request reserves ⌈(10 + 40)/32⌉ = 2 pages = all memory,
    // so the second waits for the first to finish, and nothing is ever evicted.
    let mut e = Engine::new(profile(Rule::Trtllm, 64, 32, 8192, 8192, 2048), 0);
    let mut log = Log::default();
    e.add_request(0, 10, 40, 0.0).unwrap();
    e.add_request(1, 10, 40, 0.0).unwrap();
    e.advance(f64::INFINITY, &mut log);
    assert_eq!(log.preempted, 0);
    assert!(log.admitted[&1][0] >= log.finished[&0].0);
    assert!(log.iterations.iter().all(|i| i.running == 1));
}

#[test]
fn sglang_ratio_decays_and_resets_when_idle() {
    let p = profile(Rule::Sglang, 100_000, 1, 512, 2048, 4096);
    let steps = p.sglang_decay_steps;
    let mut e = Engine::new(p, 0);
    let mut log = Log::default();
    e.add_request(0, 10, 1000, 0.0).unwrap();
    e.advance(0.1 * 301.0 + 0.05, &mut log);
    // 1 prefill iteration, then 300 decode steps: 0.7 − 300·0.6/600.
    assert!((e.new_token_ratio() - (0.7 - 300.0 * 0.6 / steps as f64)).abs() < 1e-9);
    // 998 decode steps: the floor.
    e.advance(99.95, &mut log);
    assert!((e.new_token_ratio() - 0.1).abs() < 1e-12);
    // Idle again after the last token: back to the initial ratio.
    e.advance(f64::INFINITY, &mut log);
    assert!((e.new_token_ratio() - 0.7).abs() < 1e-12);
}

#[test]
fn sglang_prefill_batches_pause_decoding() {
    // With separate prefill and decode batches, a new prompt's prefill runs alone.
    let mut e = Engine::new(profile(Rule::Sglang, 100_000, 1, 512, 2048, 4096), 0);
    let mut log = Log::default();
    e.add_request(0, 10, 50, 0.0).unwrap();
    e.add_request(1, 100, 5, 1.05).unwrap();
    e.advance(f64::INFINITY, &mut log);
    let mixed = log
        .iterations
        .iter()
        .filter(|i| i.decode && i.batch_tokens > i.running)
        .count();
    assert_eq!(mixed, 0);
    assert!(log
        .iterations
        .iter()
        .any(|i| !i.decode && i.batch_tokens == 100));
}

/// Random small-memory runs of every rule: KV within capacity every iteration, every request
/// finishes with exactly its output length in tokens 1..=o, first admissions in FCFS order.
#[test]
fn invariants_under_pressure() {
    for (k, (rule, caching)) in [
        (Rule::Ideal, false),
        (Rule::Vllm, false),
        (Rule::Vllm, true),
        (Rule::Sglang, false),
        (Rule::Trtllm, false),
    ]
    .into_iter()
    .enumerate()
    {
        for block in [1, 16] {
            let mut p = profile(rule, 4096, block, 64, 256, 32);
            p.prefix_caching = caching;
            p.iteration_time.noise_sigma = 0.3;
            let mut rng = Pcg64Mcg::seed_from_u64(k as u64 * 10 + block as u64);
            let mut e = Engine::new(p, 1);
            let mut log = Log::default();
            let mut t = 0.0;
            let n = 400;
            let mut outputs = Vec::new();
            for id in 0..n {
                t += rng.random::<f64>() * 0.2;
                let (s, o) = (rng.random_range(1..700), rng.random_range(1..700));
                outputs.push(o);
                e.advance(t, &mut log);
                e.add_request(id, s, o, t).unwrap();
            }
            e.advance(f64::INFINITY, &mut log);
            assert!(log.iterations.iter().all(|i| i.kv_used <= 4096), "{rule:?}");
            for id in 0..n {
                let o = outputs[id as usize];
                assert_eq!(log.finished[&id].1, o, "{rule:?} request {id}");
                assert_eq!(
                    log.tokens[&id],
                    (1..=o).collect::<Vec<_>>(),
                    "{rule:?} request {id}"
                );
            }
            let mut firsts: Vec<(f64, u64)> = (0..n).map(|id| (log.admitted[&id][0], id)).collect();
            firsts.sort_by(|a, b| a.partial_cmp(b).unwrap());
            assert!(
                firsts.windows(2).all(|w| w[0].1 < w[1].1),
                "{rule:?}: FCFS admission"
            );
            assert_eq!(e.kv_used_tokens(), 0);
            if rule == Rule::Trtllm {
                assert_eq!(log.preempted, 0);
            }
        }
    }
}

#[test]
fn batch_runs_are_reproducible_and_dispatch_spreads_load() {
    let mut p = profile(Rule::Vllm, 20_000, 16, 512, 2048, 256);
    p.iteration_time.noise_sigma = 0.2;
    let mut rng = Pcg64Mcg::seed_from_u64(3);
    let n = 3000;
    let prompt: Vec<i64> = (0..n).map(|_| rng.random_range(10..800)).collect();
    let output: Vec<i64> = (0..n).map(|_| rng.random_range(10..800)).collect();
    let arrivals: Vec<f64> = (0..n).map(|i| i as f64 * 0.05).collect();
    for dispatch in [Dispatch::RoundRobin, Dispatch::ShortestQueue] {
        let opts = Options {
            replicas: 4,
            dispatch,
            seed: 9,
            until: None,
            sample_interval: None,
        };
        let a = simulate(&p, &prompt, &output, &arrivals, &opts).unwrap();
        let b = simulate(&p, &prompt, &output, &arrivals, &opts).unwrap();
        assert_eq!(a.records.finished, b.records.finished);
        assert_eq!(a.summary.completed, n as u64);
        for r in 0..4 {
            let share = a.records.replica.iter().filter(|&&x| x == r).count();
            assert!(share > n / 8, "{dispatch:?} replica {r} got {share}");
        }
    }
    let rr = Options {
        replicas: 4,
        dispatch: Dispatch::RoundRobin,
        seed: 9,
        until: None,
        sample_interval: None,
    };
    let out = simulate(&p, &prompt, &output, &arrivals, &rr).unwrap();
    assert!((0..n).all(|i| out.records.replica[i] == (i % 4) as i64));
}

#[test]
fn until_stops_the_clock_and_samples_cover_it() {
    let p = Profile::ideal(1000, 64, 0.1);
    let prompt = vec![100; 50];
    let output = vec![500; 50];
    let arrivals: Vec<f64> = (0..50).map(|i| i as f64).collect();
    let opts = Options {
        replicas: 1,
        dispatch: Dispatch::RoundRobin,
        seed: 0,
        until: Some(20.5),
        sample_interval: Some(1.0),
    };
    let out = simulate(&p, &prompt, &output, &arrivals, &opts).unwrap();
    assert_eq!(out.summary.dispatched, 21);
    // Each request needs 2 + 499 iterations of 0.1 s: none finishes by 20.5 s.
    assert!(out.records.finished.iter().all(|f| f.is_nan()));
    assert!((out.records.first_token[0] - 0.2).abs() < 1e-9);
    assert_eq!(out.timeseries.time.len(), 21);
    assert!((out.timeseries.time[20] - 20.0).abs() < 1e-12);
}

#[test]
fn bad_input_is_named() {
    let p = Profile::ideal(1000, 64, 0.1);
    let too_big = simulate(
        &p,
        &[900],
        &[200],
        &[0.0],
        &Options {
            replicas: 1,
            dispatch: Dispatch::RoundRobin,
            seed: 0,
            until: None,
            sample_interval: None,
        },
    );
    assert!(too_big.err().unwrap().contains("request 0"));
    let unsorted = simulate(
        &p,
        &[1, 1],
        &[1, 1],
        &[1.0, 0.5],
        &Options {
            replicas: 1,
            dispatch: Dispatch::RoundRobin,
            seed: 0,
            until: None,
            sample_interval: None,
        },
    );
    assert!(unsorted.err().unwrap().contains("arrivals[1]"));
}

/// Quiet stretches (taken only when iterations are not recorded one by one) must not change
/// anything: per-request times and totals equal the iteration-by-iteration run exactly.
#[test]
fn quiet_stretches_change_nothing() {
    for (rule, caching) in [
        (Rule::Ideal, false),
        (Rule::Vllm, false),
        (Rule::Vllm, true),
        (Rule::Sglang, false),
        (Rule::Trtllm, false),
    ] {
        for block in [1, 16] {
            let mut p = profile(rule, 30_000, block, 512, 2048, 256);
            p.prefix_caching = caching;
            p.iteration_time = IterationTime {
                c0: 0.02,
                c1: 5e-5,
                c2: 1e-7,
                noise_sigma: 0.0,
                ..IterationTime::constant(0.02)
            };
            let mut rng = Pcg64Mcg::seed_from_u64(block as u64);
            let n = 4000;
            let prompt: Vec<i64> = (0..n).map(|_| rng.random_range(10..1600)).collect();
            let output: Vec<i64> = (0..n).map(|_| rng.random_range(10..1600)).collect();
            let mut t = 0.0;
            let arrivals: Vec<f64> = (0..n)
                .map(|_| {
                    t += rng.random::<f64>() * 0.6;
                    t
                })
                .collect();
            let run = |sample_interval| {
                let opts = Options {
                    replicas: 1,
                    dispatch: Dispatch::RoundRobin,
                    seed: 0,
                    until: Some(1500.0),
                    sample_interval,
                };
                simulate(&p, &prompt, &output, &arrivals, &opts).unwrap()
            };
            let (every, sampled) = (run(None), run(Some(5.0)));
            let same = |a: &[f64], b: &[f64]| {
                a.iter()
                    .zip(b)
                    .all(|(x, y)| x == y || (x.is_nan() && y.is_nan()))
            };
            assert!(
                same(&every.records.finished, &sampled.records.finished),
                "{rule:?} {block}"
            );
            assert!(
                same(&every.records.admitted, &sampled.records.admitted),
                "{rule:?} {block}"
            );
            assert_eq!(every.records.preemptions, sampled.records.preemptions);
            assert_eq!(every.summary.iterations, sampled.summary.iterations);
            assert_eq!(every.summary.peak_kv_tokens, sampled.summary.peak_kv_tokens);
            assert_eq!(every.summary.busy_time, sampled.summary.busy_time);
        }
    }
}

/// SGLang's reserve clips each remaining output at 4096: with some longer outputs running the
/// engine scans, otherwise it uses the running sum (checked against the scan in debug builds).
#[test]
fn sglang_with_outputs_beyond_the_clip() {
    let mut e = Engine::new(profile(Rule::Sglang, 60_000, 1, 512, 2048, 4096), 0);
    let mut log = Log::default();
    let mut rng = Pcg64Mcg::seed_from_u64(5);
    let mut outputs = Vec::new();
    for id in 0..120u64 {
        let o = if id % 10 == 0 {
            rng.random_range(4097..9000)
        } else {
            rng.random_range(1..2000)
        };
        outputs.push(o);
        let t = id as f64 * 2.0;
        e.advance(t, &mut log);
        e.add_request(id, rng.random_range(1..3000), o, t).unwrap();
    }
    e.advance(f64::INFINITY, &mut log);
    for (id, &o) in outputs.iter().enumerate() {
        assert_eq!(log.tokens[&(id as u64)].len() as i64, o);
    }
    assert!(log.iterations.iter().all(|i| i.kv_used <= 60_000));
}

/// Decoding requests always step; the token budget only limits prefill. So a budget below the
/// running cap (SGLang's defaults with mixed batches) is valid, and prefill waits while the
/// decodes alone fill the budget.
#[test]
fn budget_below_the_running_cap_limits_prefill_only() {
    let mut p = profile(Rule::Sglang, 100_000, 1, 512, 8, 64);
    p.separate_prefill_decode = false;
    assert!(p.validate().is_ok());
    let mut e = Engine::new(p, 0);
    let mut log = Log::default();
    for id in 0..20 {
        e.add_request(id, 4, 200, 0.0).unwrap();
    }
    e.advance(f64::INFINITY, &mut log);
    assert_eq!(log.finished.len(), 20);
    // Once 8 requests decode, nobody else is admitted until one finishes.
    assert!(log
        .iterations
        .iter()
        .all(|i| i.batch_tokens <= 8 || i.batch_tokens == i.running));
    assert!(log.iterations.iter().map(|i| i.running).max().unwrap() <= 9);
}

#[test]
fn aborted_requests_leave_and_free_their_memory() {
    // TensorRT-LLM, M = 64 in pages of 32: request 0 reserves all of it (b = 0.1 s). Aborted
    // during its second iteration, it leaves when that iteration ends (t = 0.2) and request 1,
    // which waited for its reservation, is admitted then instead of after 0's 41 iterations.
    let mut e = Engine::new(profile(Rule::Trtllm, 64, 32, 8192, 8192, 2048), 0);
    let mut log = Log::default();
    e.add_request(0, 10, 40, 0.0).unwrap();
    e.add_request(1, 10, 40, 0.0).unwrap();
    e.add_request(2, 10, 5, 0.0).unwrap();
    e.advance(0.15, &mut log);
    e.abort(0);
    e.abort(2); // waiting: gone at once
    assert_eq!(e.waiting(), 1);
    assert_eq!(
        e.running(),
        1,
        "the running request stays until its iteration ends"
    );
    e.advance(f64::INFINITY, &mut log);
    assert!(!log.finished.contains_key(&0) && !log.admitted.contains_key(&2));
    assert_eq!(
        log.tokens[&0],
        vec![1, 2],
        "no token after the iteration it was aborted in"
    );
    assert!((log.admitted[&1][0] - 0.2).abs() < 1e-12);
    assert_eq!(log.finished[&1].1, 40);
    assert_eq!((e.kv_used_tokens(), e.running(), e.waiting()), (0, 0, 0));
    e.abort(1); // finished: ignored
    e.abort(99); // unknown: ignored
    assert_eq!(e.next_event_time(), None);
}

#[test]
fn aborts_under_pressure_keep_the_books() {
    // Every rule, with preemptions and retractions: a third of the requests are abandoned at
    // random moments; the rest finish whole, and memory, reservations and counts return to 0.
    for (k, rule) in [Rule::Ideal, Rule::Vllm, Rule::Sglang, Rule::Trtllm]
        .into_iter()
        .enumerate()
    {
        let mut e = Engine::new(profile(rule, 2048, 16, 64, 256, 32), 0);
        let mut rng = Pcg64Mcg::seed_from_u64(k as u64);
        let mut log = Log::default();
        let (mut t, n) = (0.0, 300u64);
        let mut abandoned = Vec::new();
        for id in 0..n {
            t += rng.random::<f64>() * 0.2;
            e.advance(t, &mut log);
            e.add_request(id, rng.random_range(1..300), rng.random_range(1..300), t)
                .unwrap();
            if rng.random::<f64>() < 0.33 {
                let victim = rng.random_range(0..=id);
                e.abort(victim);
                abandoned.push(victim);
            }
            assert!(e.kv_used_tokens() <= 2048);
        }
        e.advance(f64::INFINITY, &mut log);
        for id in 0..n {
            if !abandoned.contains(&id) {
                assert!(log.finished.contains_key(&id), "{rule:?} request {id}");
            }
        }
        assert_eq!(
            (e.kv_used_tokens(), e.running(), e.waiting()),
            (0, 0, 0),
            "{rule:?}"
        );
    }
}
