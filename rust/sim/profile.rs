//! The engine profile as the simulator sees it: `kvbench.profile.EngineProfile`, read attribute by
//! attribute at the Python boundary and checked once, so the engine itself never re-validates.

use pyo3::prelude::*;

/// SGLang reserves at most this many future output tokens per request when it admits
/// (`CLIP_MAX_NEW_TOKENS`, ../shared/docs/engines.md §2.6).
pub const SGLANG_CLIP_MAX_NEW_TOKENS: i64 = 4096;
/// After a retraction SGLang keeps retracting until every remaining request can decode this many
/// more steps, and counts these steps in the new ratio (`SGLANG_RETRACT_DECODE_STEPS`).
pub const SGLANG_RETRACT_DECODE_STEPS: i64 = 20;

/// The admission and preemption rule of one engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// The paper's work-conserving policy: admit by current need, swap the newest request out at
    /// no cost (keeping its progress) when memory would overflow, swap it back in first.
    Ideal,
    /// vLLM v1: admit by current need, preempt the newest request and recompute it later.
    Vllm,
    /// SGLang: admit against a reserve of remaining output × new_token_ratio; retract on shortage.
    Sglang,
    /// TensorRT-LLM GUARANTEED_NO_EVICT: reserve prompt + max_tokens at admission, never evict.
    Trtllm,
}

impl Rule {
    pub fn parse(name: &str) -> Result<Rule, String> {
        match name {
            "ideal" => Ok(Rule::Ideal),
            "vllm" => Ok(Rule::Vllm),
            "sglang" => Ok(Rule::Sglang),
            "trtllm" => Ok(Rule::Trtllm),
            other => Err(format!(
                "unknown engine rule {other:?}; choose one of ideal, vllm, sglang, trtllm"
            )),
        }
    }
}

/// Duration of one iteration, times exp(N(−σ²/2, σ²)):
/// c0 + c1·min(T, knee) + c1_above·max(T − knee, 0) + c2·kv_tokens + c3·Σ chunk·(cached + chunk)
/// for T batch tokens. Below the knee a GEMM's time is mostly the weights' read; above it the
/// GEMMs are compute-bound. The c3 term is prefill attention, quadratic in the chunk's context.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IterationTime {
    pub c0: f64,
    pub c1: f64,
    pub c2: f64,
    pub noise_sigma: f64,
    /// i64::MAX when the model has no knee.
    pub knee: i64,
    pub c1_above: f64,
    pub c3: f64,
}

impl IterationTime {
    #[cfg(test)]
    pub fn constant(batch_time: f64) -> IterationTime {
        IterationTime {
            c0: batch_time,
            c1: 0.0,
            c2: 0.0,
            noise_sigma: 0.0,
            knee: i64::MAX,
            c1_above: 0.0,
            c3: 0.0,
        }
    }

    /// `prefill_pairs`: Σ over the batch's prefill chunks of chunk·(cached + chunk).
    #[inline]
    pub fn mean(&self, batch_tokens: i64, kv_tokens: i64, prefill_pairs: f64) -> f64 {
        let below = batch_tokens.min(self.knee);
        self.c0
            + self.c1 * below as f64
            + self.c1_above * (batch_tokens - below) as f64
            + self.c2 * kv_tokens as f64
            + self.c3 * prefill_pairs
    }
}

/// One replica's scheduler settings and calibration (see `EngineProfile` for each field).
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    pub rule: Rule,
    pub kv_tokens: i64,
    pub block_size: i64,
    pub chunk_size: i64,
    pub token_budget: i64,
    pub max_running: i64,
    pub iteration_time: IterationTime,
    pub max_tokens_cap: Option<i64>,
    pub separate_prefill_decode: bool,
    pub sglang_init_ratio: f64,
    pub sglang_min_ratio: f64,
    pub sglang_decay_steps: i64,
    /// vLLM's automatic prefix caching: a preempted request's freed pages stay reusable until
    /// reallocated, and its re-admission restores the surviving prefix.
    pub prefix_caching: bool,
    /// vLLM's `--scheduler-reserve-full-isl`: a waiting or preempted request is admitted only
    /// when pages for its whole known sequence are free, not only for its first chunk.
    pub full_sequence_admission: bool,
}

impl Profile {
    /// A profile with the given rule and memory, every other limit off and a constant iteration
    /// time: the setting of the paper's theorems.
    #[cfg(test)]
    pub fn ideal(kv_tokens: i64, chunk_size: i64, batch_time: f64) -> Profile {
        Profile {
            rule: Rule::Ideal,
            kv_tokens,
            block_size: 1,
            chunk_size,
            token_budget: 1 << 40,
            max_running: 1 << 40,
            iteration_time: IterationTime::constant(batch_time),
            max_tokens_cap: None,
            separate_prefill_decode: false,
            sglang_init_ratio: 0.7,
            sglang_min_ratio: 0.1,
            sglang_decay_steps: 600,
            prefix_caching: false,
            full_sequence_admission: false,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let it = &self.iteration_time;
        let checks: [(bool, &str); 10] = [
            (self.kv_tokens >= 1, "kv_tokens must be at least 1"),
            (self.block_size >= 1, "block_size must be at least 1"),
            (
                self.block_size >= 1 && self.total_pages() >= 1,
                "kv_tokens must hold at least one block (two for vllm: its first is the null block)",
            ),
            (self.chunk_size >= 1, "chunk_size must be at least 1"),
            (self.token_budget >= 1, "token_budget must be at least 1"),
            (self.max_running >= 1, "max_running must be at least 1"),
            (
                it.c0 > 0.0 && it.c1 >= 0.0 && it.c2 >= 0.0 && it.c0.is_finite(),
                "iteration time needs c0 > 0 and c1, c2 >= 0",
            ),
            (
                it.noise_sigma >= 0.0 && it.noise_sigma.is_finite(),
                "noise_sigma must be >= 0",
            ),
            (
                it.knee >= 1 && it.c1_above >= 0.0 && it.c3 >= 0.0,
                "iteration time needs knee >= 1 and c1_above, c3 >= 0",
            ),
            (
                self.sglang_init_ratio >= self.sglang_min_ratio
                    && self.sglang_min_ratio >= 0.0
                    && self.sglang_decay_steps >= 1,
                "sglang ratios need init >= min >= 0 and decay_steps >= 1",
            ),
        ];
        for (ok, msg) in checks {
            if !ok {
                return Err(format!("engine profile: {msg}"));
            }
        }
        if let Some(cap) = self.max_tokens_cap {
            if cap < 1 {
                return Err("engine profile: max_tokens_cap must be at least 1".into());
            }
        }
        Ok(())
    }

    /// Whole pages of the KV cache that requests can hold. vLLM's block pool takes its first page
    /// as the null block (`BlockPool.null_block`, never allocated to a request) while the
    /// "KV cache size" it reports, kv_tokens here, counts it.
    pub fn total_pages(&self) -> i64 {
        let pages = self.kv_tokens / self.block_size;
        match self.rule {
            Rule::Vllm => pages - 1,
            _ => pages,
        }
    }
}

#[derive(FromPyObject)]
struct PyIterationTime {
    c0: f64,
    c1: f64,
    c2: f64,
    noise_sigma: f64,
    knee: Option<i64>,
    c1_above: f64,
    c3: f64,
}

/// Mirror of `kvbench.profile.EngineProfile`, read by attribute name.
#[derive(FromPyObject)]
struct PyProfile {
    policy: String,
    kv_tokens: i64,
    block_size: i64,
    chunk_size: i64,
    token_budget: i64,
    max_running: i64,
    iteration_time: PyIterationTime,
    max_tokens_cap: Option<i64>,
    separate_prefill_decode: bool,
    sglang_init_ratio: f64,
    sglang_min_ratio: f64,
    sglang_decay_steps: i64,
    prefix_caching: bool,
    full_sequence_admission: bool,
}

impl<'py> FromPyObject<'py> for Profile {
    fn extract_bound(ob: &Bound<'py, PyAny>) -> PyResult<Self> {
        let p: PyProfile = ob.extract()?;
        let it = p.iteration_time;
        let profile = Profile {
            rule: Rule::parse(&p.policy).map_err(pyo3::exceptions::PyValueError::new_err)?,
            kv_tokens: p.kv_tokens,
            block_size: p.block_size,
            chunk_size: p.chunk_size,
            token_budget: p.token_budget,
            max_running: p.max_running,
            iteration_time: IterationTime {
                c0: it.c0,
                c1: it.c1,
                c2: it.c2,
                noise_sigma: it.noise_sigma,
                knee: it.knee.unwrap_or(i64::MAX),
                c1_above: it.c1_above,
                c3: it.c3,
            },
            max_tokens_cap: p.max_tokens_cap,
            separate_prefill_decode: p.separate_prefill_decode,
            sglang_init_ratio: p.sglang_init_ratio,
            sglang_min_ratio: p.sglang_min_ratio,
            sglang_decay_steps: p.sglang_decay_steps,
            prefix_caching: p.prefix_caching,
            full_sequence_admission: p.full_sequence_admission,
        };
        profile
            .validate()
            .map_err(pyo3::exceptions::PyValueError::new_err)?;
        Ok(profile)
    }
}
