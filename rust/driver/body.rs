//! Request bodies, rendered as the schedule reaches each request instead of all at start: a run
//! holds one body at a time, so its memory does not grow with its length (an hour at 1,000 req/s
//! of 1,000-token prompts would be ~20 GB of JSON built up front).
//!
//! The engine adapter's body is given once as a template: its JSON with the prompt written as
//! `[PROMPT_SLOT]` and the output length as `OUTPUT_SLOT` (integers no request uses). Each request
//! gets fresh random prompt ids drawn from its own generator, seeded by the run's seed and the
//! request's index, so a body is the same whenever and in whatever order it is rendered. A request
//! of a shared-prefix workload starts with its prefix's ids, drawn from a generator seeded by the
//! run's seed and the prefix's id, so every request naming that prefix sends the same tokens and
//! an engine's prefix cache can reuse their KV.

use std::io::Write;

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

/// Where the prompt's token ids go: the template holds `[PROMPT_SLOT]` exactly once.
pub const PROMPT_SLOT: i64 = -917_340_051;
/// Where the output length goes (every occurrence: max_tokens, min_tokens, …).
pub const OUTPUT_SLOT: i64 = -917_340_052;

enum Part {
    Text(Vec<u8>),
    Prompt,
    Output,
}

pub struct BodyTemplate {
    parts: Vec<Part>,
    seed: u64,
    lo: i64,
    hi: i64,
}

impl BodyTemplate {
    /// The template of `json`; prompt ids are drawn uniformly from [lo, hi).
    pub fn new(json: &str, seed: u64, lo: i64, hi: i64) -> Result<Self, String> {
        if lo >= hi {
            return Err(format!("token id range [{lo}, {hi}) is empty"));
        }
        let prompt = format!("[{PROMPT_SLOT}]");
        let output = OUTPUT_SLOT.to_string();
        if json.matches(&prompt).count() != 1 {
            return Err(format!(
                "body template must hold the prompt slot {prompt} once"
            ));
        }
        if !json.contains(&output) {
            return Err(format!("body template has no output-length slot {output}"));
        }
        let mut parts = Vec::new();
        for (i, piece) in json.split(&prompt).enumerate() {
            if i > 0 {
                parts.push(Part::Prompt);
            }
            for (j, text) in piece.split(&output).enumerate() {
                if j > 0 {
                    parts.push(Part::Output);
                }
                parts.push(Part::Text(text.as_bytes().to_vec()));
            }
        }
        Ok(BodyTemplate {
            parts,
            seed,
            lo,
            hi,
        })
    }

    /// The body of request `index`: `prompt_len` ids and `output_len` tokens asked for. With
    /// `prefix` = (id, length), the first `length` ids are prefix `id`'s, the same in every
    /// request that names it; the rest are the request's own.
    pub fn render(
        &self,
        index: usize,
        prompt_len: usize,
        output_len: i64,
        prefix: Option<(u64, usize)>,
    ) -> Vec<u8> {
        let mut own =
            Pcg64Mcg::seed_from_u64(self.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let (prefix_id, prefix_len) = prefix.unwrap_or((0, 0));
        // a different odd multiplier and an offset keep prefix streams apart from request streams
        let mut shared = Pcg64Mcg::seed_from_u64(
            !self.seed ^ (prefix_id.wrapping_add(1)).wrapping_mul(0xD1B5_4A32_D192_ED03),
        );
        let mut out = Vec::with_capacity(64 + prompt_len * 6);
        for part in &self.parts {
            match part {
                Part::Text(text) => out.extend_from_slice(text),
                Part::Output => write!(out, "{output_len}").expect("writing to a Vec"),
                Part::Prompt => {
                    out.push(b'[');
                    for k in 0..prompt_len {
                        if k > 0 {
                            out.push(b',');
                        }
                        let rng = if k < prefix_len {
                            &mut shared
                        } else {
                            &mut own
                        };
                        let id = rng.random_range(self.lo..self.hi);
                        write!(out, "{id}").expect("writing to a Vec");
                    }
                    out.push(b']');
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> String {
        format!(
            r#"{{"model":"m","prompt":[{PROMPT_SLOT}],"max_tokens":{OUTPUT_SLOT},"min_tokens":{OUTPUT_SLOT},"stream":true}}"#
        )
    }

    #[test]
    fn renders_valid_json_with_the_lengths_asked_for() {
        let t = BodyTemplate::new(&template(), 7, 1000, 30000).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&t.render(3, 5, 12, None)).unwrap();
        let prompt = body["prompt"].as_array().unwrap();
        assert_eq!(prompt.len(), 5);
        assert!(prompt
            .iter()
            .all(|id| (1000..30000).contains(&id.as_i64().unwrap())));
        assert_eq!(body["max_tokens"], 12);
        assert_eq!(body["min_tokens"], 12);
        assert_eq!(body["model"], "m");
    }

    #[test]
    fn a_request_renders_the_same_whenever_and_requests_differ() {
        let t = BodyTemplate::new(&template(), 7, 1000, 30000).unwrap();
        assert_eq!(t.render(3, 50, 2, None), t.render(3, 50, 2, None));
        assert_ne!(t.render(3, 50, 2, None), t.render(4, 50, 2, None));
        let other_seed = BodyTemplate::new(&template(), 8, 1000, 30000).unwrap();
        assert_ne!(t.render(3, 50, 2, None), other_seed.render(3, 50, 2, None));
    }

    #[test]
    fn templates_without_their_slots_are_refused() {
        assert!(BodyTemplate::new(r#"{"prompt":[1],"max_tokens":2}"#, 0, 1, 2).is_err());
        let no_output = format!(r#"{{"prompt":[{PROMPT_SLOT}]}}"#);
        assert!(BodyTemplate::new(&no_output, 0, 1, 2).is_err());
        assert!(BodyTemplate::new(&template(), 0, 5, 5).is_err());
    }

    #[test]
    fn requests_naming_a_prefix_share_its_ids_and_differ_after_it() {
        let t = BodyTemplate::new(&template(), 7, 1000, 30000).unwrap();
        let ids = |index, prefix| -> Vec<i64> {
            let body: serde_json::Value =
                serde_json::from_slice(&t.render(index, 40, 2, prefix)).unwrap();
            let prompt = body["prompt"].as_array().unwrap();
            prompt.iter().map(|id| id.as_i64().unwrap()).collect()
        };
        let (a, b) = (ids(3, Some((5, 16))), ids(9, Some((5, 16))));
        assert_eq!(a.len(), 40);
        assert_eq!(a[..16], b[..16]);
        assert_ne!(a[16..], b[16..]);
        // another prefix, and no prefix, start differently; the request's own ids are its own
        let other = ids(3, Some((6, 16)));
        assert_ne!(a[..16], other[..16]);
        assert_eq!(a[16..], other[16..]);
        assert_ne!(a[..16], ids(3, None)[..16]);
    }
}
