//! Server-sent events of an OpenAI-style streaming completion.
//!
//! All three engines send `data: {json}` lines, a final chunk with `"choices": []` and the
//! request's `usage`, then `data: [DONE]`. TensorRT-LLM serialises that final chunk as a chat
//! object, so it is recognised by empty choices plus usage, never by `object`. One chunk can
//! carry several tokens: counts come from `usage.completion_tokens`, never from the number of
//! chunks or the text.

use serde::Deserialize;

/// The fields of a chunk kvbench reads; serde skips everything else (text, logprobs, ids).
#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Option<Vec<Choice>>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    completion_tokens: Option<i64>,
    #[serde(default)]
    prompt_tokens: Option<i64>,
}

/// What one line of the stream is.
#[derive(Debug, PartialEq)]
pub enum Line {
    /// Blank lines, comments (`: ping`), `event:`/`id:` fields.
    Other,
    /// `data: [DONE]`.
    Done,
    /// A chunk; `true` when it carried output (non-empty choices).
    Chunk(bool),
}

/// What one stream said about its request.
#[derive(Debug, Default, PartialEq)]
pub struct StreamResult {
    /// Chunks that carried output (non-empty choices).
    pub chunks: usize,
    /// From the final usage chunk (or the running count of continuous usage until then).
    pub completion_tokens: Option<i64>,
    pub prompt_tokens: Option<i64>,
    pub finish_reason: Option<String>,
    /// The closing chunk (no choices, with usage) arrived.
    pub final_usage: bool,
    /// `data: [DONE]` seen.
    pub done: bool,
}

impl StreamResult {
    /// Take one line of the stream. An error is a `bad_stream` failure with its message.
    pub fn feed_line(&mut self, line: &[u8]) -> Result<Line, String> {
        let line = line.trim_ascii();
        let Some(payload) = line.strip_prefix(b"data:") else {
            return Ok(Line::Other);
        };
        let payload = payload.trim_ascii();
        if payload == b"[DONE]" {
            self.done = true;
            return Ok(Line::Done);
        }
        // serde would also read a JSON array into the struct, positionally: only objects count.
        if payload.first() != Some(&b'{') {
            return Err(format!("chunk is not an object: {}", excerpt(payload, 80)));
        }
        let chunk: Chunk = serde_json::from_slice(payload)
            .map_err(|err| format!("{err}: {}", excerpt(payload, 120)))?;
        Ok(Line::Chunk(self.feed(chunk)))
    }

    fn feed(&mut self, chunk: Chunk) -> bool {
        match chunk.choices {
            Some(choices) if !choices.is_empty() => {
                self.chunks += 1;
                if let Some(reason) = choices.into_iter().next().and_then(|c| c.finish_reason) {
                    self.finish_reason = Some(reason);
                }
                // Continuous usage: a running count; the final chunk confirms it.
                if let Some(usage) = chunk.usage {
                    self.completion_tokens = usage.completion_tokens.or(self.completion_tokens);
                }
                true
            }
            _ => {
                if let Some(usage) = chunk.usage {
                    self.final_usage = true;
                    self.completion_tokens = usage.completion_tokens;
                    self.prompt_tokens = usage.prompt_tokens;
                }
                false
            }
        }
    }
}

/// At most `max` characters of `bytes` as text, for error messages.
pub fn excerpt(bytes: &[u8], max: usize) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .take(max)
        .collect::<String>()
        .trim()
        .to_string()
}

/// Splits a byte stream into lines across reads (SSE lines end in `\n`, `\r\n` is trimmed).
#[derive(Default)]
pub struct LineBuffer {
    pending: Vec<u8>,
}

impl LineBuffer {
    /// Calls `each` on every complete line in `data` (with what earlier reads left); stops at
    /// the first error `each` returns.
    pub fn push<E>(
        &mut self,
        data: &[u8],
        mut each: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut rest = data;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            if self.pending.is_empty() {
                each(&rest[..nl])?;
            } else {
                self.pending.extend_from_slice(&rest[..nl]);
                let line = std::mem::take(&mut self.pending);
                each(&line)?;
            }
            rest = &rest[nl + 1..];
        }
        self.pending.extend_from_slice(rest);
        Ok(())
    }

    /// Bytes of a line not yet ended.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The last line when the stream ended without a newline after it.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        (!self.pending.is_empty()).then(|| std::mem::take(&mut self.pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VLLM: &str = include_str!("../../tests/fixtures/vllm/completion_stream.sse");
    const SGLANG: &str = include_str!("../../tests/fixtures/sglang/completion_stream.sse");
    const TRTLLM: &str = include_str!("../../tests/fixtures/trtllm/completion_stream.sse");

    /// Replays a stream in reads of `read` bytes; the result and the number of token events.
    fn replay(text: &str, read: usize) -> (StreamResult, usize) {
        let mut result = StreamResult::default();
        let mut buffer = LineBuffer::default();
        let mut events = 0;
        for piece in text.as_bytes().chunks(read) {
            buffer
                .push(piece, |line| {
                    if result.feed_line(line)? == Line::Chunk(true) {
                        events += 1;
                    }
                    Ok::<(), String>(())
                })
                .unwrap();
        }
        if let Some(line) = buffer.finish() {
            result.feed_line(&line).unwrap();
        }
        (result, events)
    }

    #[test]
    fn final_usage_chunk_gives_the_count_for_every_engine() {
        // (stream, prompt, tokens, output chunks): TensorRT-LLM's second chunk carries two
        // tokens, so chunks are not tokens.
        for (text, prompt, tokens, chunks) in
            [(VLLM, 8, 5, 5), (SGLANG, 8, 3, 3), (TRTLLM, 8, 3, 2)]
        {
            for read in [1, 7, 64, 100_000] {
                let (result, events) = replay(text, read);
                assert!(result.done && result.final_usage);
                assert_eq!(result.completion_tokens, Some(tokens));
                assert_eq!(result.prompt_tokens, Some(prompt));
                assert_eq!(result.finish_reason.as_deref(), Some("length"));
                assert_eq!((events, result.chunks), (chunks, chunks));
            }
        }
    }

    #[test]
    fn trtllm_final_chunk_is_a_chat_object_and_still_recognised() {
        let last = TRTLLM.lines().rfind(|l| l.contains("usage")).unwrap();
        assert!(last.contains(r#""object":"chat.completion.chunk""#));
        let mut result = StreamResult::default();
        assert_eq!(result.feed_line(last.as_bytes()), Ok(Line::Chunk(false)));
        assert!(result.final_usage);
        assert_eq!(result.completion_tokens, Some(3));
    }

    #[test]
    fn continuous_usage_alone_is_not_the_final_word() {
        let mut result = StreamResult::default();
        for line in VLLM.lines().filter(|l| l.contains(r#""choices":[{"#)) {
            assert_eq!(result.feed_line(line.as_bytes()), Ok(Line::Chunk(true)));
        }
        assert!(!result.final_usage && !result.done);
        assert_eq!(result.completion_tokens, Some(5)); // the running count, not confirmed
    }

    #[test]
    fn chunks_without_usage_leave_the_count_to_the_final_chunk() {
        // The emulator without continuous usage, and SGLang's default: only the closing chunk
        // carries usage.
        let mut result = StreamResult::default();
        let stream = "data: {\"choices\":[{\"text\":\"a\",\"finish_reason\":null}]}\n\n\
                      data: {\"choices\":[{\"text\":\"b\",\"finish_reason\":\"length\"}]}\n\n\
                      data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2}}\n\n\
                      data: [DONE]\n\n";
        for line in stream.lines() {
            result.feed_line(line.as_bytes()).unwrap();
        }
        assert_eq!(
            result,
            StreamResult {
                chunks: 2,
                completion_tokens: Some(2),
                prompt_tokens: Some(4),
                finish_reason: Some("length".into()),
                final_usage: true,
                done: true,
            }
        );
    }

    #[test]
    fn comments_blank_lines_and_crlf_are_not_chunks() {
        let mut result = StreamResult::default();
        for line in [&b": ping"[..], b"", b"event: message", b"data: [DONE]\r"] {
            result.feed_line(line).unwrap();
        }
        assert!(result.done && result.chunks == 0);
        assert_eq!(result.feed_line(b"data:[DONE]"), Ok(Line::Done));
    }

    #[test]
    fn broken_chunks_are_errors_naming_the_payload() {
        let mut result = StreamResult::default();
        let err = result.feed_line(b"data: {\"choices\": [").unwrap_err();
        assert!(err.contains("{\"choices\": ["), "{err}");
        let err = result.feed_line(b"data: [1, 2]").unwrap_err();
        assert!(err.starts_with("chunk is not an object: [1, 2]"), "{err}");
        assert!(result.feed_line(b"data: {\"choices\": 3}").is_err());
    }

    #[test]
    fn lines_split_across_reads_are_joined() {
        let mut buffer = LineBuffer::default();
        let mut lines: Vec<Vec<u8>> = Vec::new();
        for piece in [&b"da"[..], b"ta: 1\n\nda", b"ta: 2\r\n", b"tail"] {
            buffer
                .push(piece, |l| {
                    lines.push(l.to_vec());
                    Ok::<(), ()>(())
                })
                .unwrap();
        }
        assert_eq!(
            lines,
            vec![b"data: 1".to_vec(), b"".to_vec(), b"data: 2\r".to_vec()]
        );
        assert_eq!(buffer.finish(), Some(b"tail".to_vec()));
        assert_eq!(buffer.finish(), None);
    }
}
