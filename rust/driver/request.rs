//! One request on the tokio runtime: POST the body, read the event stream, time every chunk that
//! carries output, and end with exactly one record — finished, failed with a kind, or
//! unfinished (the run ended first).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::Request;
use tokio::time::sleep_until;

use super::stream::{excerpt, Line, LineBuffer, StreamResult};
use super::{DriverRecord, RunState, Shared};

/// Longest event-stream line kept while waiting for its end. Engines' chunks are a few hundred
/// bytes (a few KiB with logprobs); a server that never ends a line must not fill the memory.
const MAX_LINE: usize = 1 << 20;
/// How much of an HTTP error's body the record keeps: enough for an engine's JSON error whole
/// (Python takes its `message` and trims it for the summary), a bound for anything else.
const ERROR_BODY_CHARS: usize = 2000;

/// How a request ended, besides what is already written on its record.
enum Ending {
    /// The stream was read to `[DONE]`; the record has its finish (and maybe short/long output).
    Complete,
    Failed(String, String),
    /// The run ended (duration reached, or stopped) while the request was in flight.
    Unfinished,
}

fn failed(kind: impl Into<String>, message: impl Into<String>) -> Ending {
    Ending::Failed(kind.into(), message.into())
}

/// Sends request `index` at `at` (spinning until then: the worker is awake and the send is
/// on time) and reports its record to `shared`.
pub(super) async fn run(shared: Arc<Shared>, index: usize, at: Instant, body: Bytes, wanted: i64) {
    while Instant::now() < at {
        std::hint::spin_loop();
    }
    let sent_at = Instant::now();
    if shared.end.is_some_and(|end| sent_at >= end) {
        // A runtime this far behind would send past the window the run is judged on: the
        // request is not part of the run, as one the scheduler never reached.
        shared.sent.fetch_sub(1, Ordering::SeqCst);
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    let mut record = DriverRecord::new(index, shared.secs(sent_at));
    shared.progress(|p| p.sent.push((index as i64, record.sent)));
    let mut leftover: Option<Incoming> = None;
    let mut state = shared.state.subscribe();
    let timeout = shared.timeout;
    let ending = tokio::select! {
        biased;
        ending = exchange(&shared, body, wanted, &mut record, &mut leftover) => ending,
        run = async { state.wait_for(|s| *s != RunState::Sending).await.map(|s| *s) } => {
            match run {
                Ok(RunState::EngineDown) => {
                    failed("engine_down", "run stopped: the engine refused connections")
                }
                _ => Ending::Unfinished,
            }
        }
        _ = async {
            match shared.end {
                Some(end) => sleep_until(end.into()).await,
                None => std::future::pending().await,
            }
        } => Ending::Unfinished,
        _ = async {
            match timeout {
                Some(t) => sleep_until((sent_at + t).into()).await,
                None => std::future::pending().await,
            }
        } => failed("timeout", format!("no answer within {} s", timeout.unwrap_or_default().as_secs_f64())),
    };
    match ending {
        Ending::Complete | Ending::Unfinished => {}
        Ending::Failed(kind, message) => {
            record.error = Some(kind);
            record.message = Some(message);
        }
    }
    if record.first_token.is_none() {
        // ended without starting: for the bounded backlog, a place to fill as a start is
        let now = shared.secs(Instant::now());
        shared.progress(|p| p.unstarted.push((index as i64, now)));
        shared.started();
    }
    shared.report(record);
    // Read what follows `[DONE]` (the chunked-encoding terminator) so the connection goes back
    // to the pool; a server that keeps the stream open after it loses the connection instead.
    if let Some(mut body) = leftover {
        let drain = async { while let Some(Ok(_)) = body.frame().await {} };
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    }
}

/// The request itself: everything it learns goes on `record`; the body is left in `leftover`
/// when the stream ended at `[DONE]` before the response did.
async fn exchange(
    shared: &Arc<Shared>,
    body: Bytes,
    wanted: i64,
    record: &mut DriverRecord,
    leftover: &mut Option<Incoming>,
) -> Ending {
    let mut request = Request::post(shared.uri.clone())
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .expect("a POST with a valid URI and a static header is a valid request");
    for (name, value) in &shared.headers {
        request.headers_mut().insert(name.clone(), value.clone());
    }
    let response = match shared.client.request(request).await {
        Ok(response) => response,
        Err(err) => {
            let message = chain(&err);
            if err.is_connect() {
                // Nothing listens any more: the engine is gone. Stop sending; requests in
                // flight end as engine_down.
                shared.engine_down(Instant::now());
                return failed("connection_refused", message);
            }
            return failed("connection_reset", message);
        }
    };
    let status = response.status();
    let mut body = response.into_body();
    if status != hyper::StatusCode::OK {
        let text = match Limited::new(body, 64 * 1024).collect().await {
            Ok(collected) => excerpt(&collected.to_bytes(), ERROR_BODY_CHARS),
            Err(_) => String::new(),
        };
        return failed(format!("http_{}", status.as_u16()), text);
    }
    let mut result = StreamResult::default();
    let mut lines = LineBuffer::default();
    let mut counted = 0i64; // output tokens the chunks so far carried, as the driver counts them
    while !result.done {
        let Some(frame) = body.frame().await else {
            break;
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(err) => return failed("connection_reset", chain(&err)),
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let now = shared.secs(Instant::now());
        let fed: Result<(), String> = lines.push(data, |line| {
            if result.done {
                return Ok(()); // after [DONE]: nothing more belongs to the request
            }
            if let Line::Chunk(tokens) = result.feed_line(line)? {
                if tokens > 0 {
                    let first = record.first_token.is_none();
                    record.tokens_arrived(now, tokens);
                    counted += tokens as i64;
                    let index = record.index as i64;
                    shared.progress(|p| p.chunks.push((index, now, counted)));
                    if first {
                        shared.started();
                    }
                }
            }
            Ok(())
        });
        if let Err(message) = fed {
            return failed("bad_stream", message);
        }
        if lines.pending() > MAX_LINE {
            return failed(
                "bad_stream",
                format!("line longer than {MAX_LINE} bytes without an end"),
            );
        }
    }
    if result.done {
        *leftover = Some(body);
    } else if let Some(line) = lines.finish() {
        if let Err(message) = result.feed_line(&line) {
            return failed("bad_stream", message);
        }
    }
    finish(shared, record, &result, wanted)
}

/// Counts from the server's final usage chunk, checked against the requested output length.
fn finish(
    shared: &Shared,
    record: &mut DriverRecord,
    result: &StreamResult,
    wanted: i64,
) -> Ending {
    if !result.done {
        return failed("truncated_stream", "stream ended without data: [DONE]");
    }
    let (true, Some(tokens)) = (result.final_usage, result.completion_tokens) else {
        return failed(
            "missing_usage",
            "no final usage chunk (choices: [] with usage)",
        );
    };
    record.finished = Some(shared.secs(Instant::now()));
    record.output_tokens = Some(tokens);
    record.prompt_tokens = result.prompt_tokens;
    if tokens < wanted {
        let reason = result.finish_reason.as_deref().unwrap_or("None");
        record.error = Some("short_output".into());
        record.message = Some(format!(
            "{tokens} of {wanted} tokens (finish_reason {reason})"
        ));
    } else if tokens > wanted {
        record.error = Some("long_output".into());
        record.message = Some(format!("{tokens} of {wanted} tokens"));
    }
    Ending::Complete
}

/// An error and its causes on one line (hyper's own message alone says only "client error").
fn chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

impl Shared {
    pub(super) fn engine_down(&self, at: Instant) {
        let mut down = self.engine_down_at.lock().unwrap();
        if down.is_none() {
            *down = Some(self.secs(at));
        }
        drop(down);
        self.end_sending(RunState::EngineDown);
    }

    fn report(&self, record: DriverRecord) {
        self.records.lock().unwrap().push(record);
        // After the push: `finished` (nothing in flight, sending over) implies every record is
        // ready to poll.
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}
