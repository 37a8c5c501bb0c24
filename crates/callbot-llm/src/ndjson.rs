//! Ollama's streamed reply format (`application/x-ndjson`), decoded sans-IO.
//!
//! Why not `ollama-rs`'s own stream: in 0.3.6 it decodes every network chunk with
//! `String::from_utf8` on its own, so a multi-byte character split across two chunks
//! makes the whole chunk (and the line in it) vanish, and an `{"error": ...}` line in
//! the middle of a stream fails to deserialize and is only printed to stderr. This
//! decoder buffers **bytes** up to each `\n` (a byte that never occurs inside a UTF-8
//! sequence), decodes complete lines only, and turns error lines into events. The lines
//! themselves are `ollama-rs` types ([`ChatMessageResponse`], [`InternalOllamaError`]).

use std::time::Duration;

use ollama_rs::error::InternalOllamaError;
use ollama_rs::generation::chat::ChatMessageResponse;
use serde::Deserialize;

use crate::error::LlmError;
use crate::reply::ReplyStats;

/// One decoded line of a streamed chat reply.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum WireEvent {
    /// Reply text (possibly empty: thinking-only or tool-call lines).
    Delta(String),
    /// The final line (`done: true`), with any text it carried first as a `Delta`.
    Done(ReplyStats),
    /// An `{"error": ...}` line.
    Error(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WireLine {
    Error(InternalOllamaError),
    Chunk(Box<ChatChunk>),
}

#[derive(Deserialize)]
struct ChatChunk {
    #[serde(flatten)]
    response: ChatMessageResponse,
    #[serde(default)]
    done_reason: Option<String>,
}

/// Splits a byte stream into lines and decodes them.
#[derive(Debug)]
pub(crate) struct LineDecoder {
    buf: Vec<u8>,
    max_line: usize,
}

impl LineDecoder {
    pub(crate) fn new(max_line: usize) -> LineDecoder {
        LineDecoder {
            buf: Vec::new(),
            max_line,
        }
    }

    /// Adds bytes; appends the events of every line they complete to `out`.
    pub(crate) fn push(&mut self, bytes: &[u8], out: &mut Vec<WireEvent>) -> Result<(), LlmError> {
        let mut rest = bytes;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let (line, tail) = rest.split_at(nl);
            rest = tail.get(1..).unwrap_or(&[]);
            if self.buf.is_empty() {
                decode_line(line, out)?;
            } else {
                self.check_len(line.len())?;
                self.buf.extend_from_slice(line);
                let decoded = decode_line(&self.buf, out);
                self.buf.clear();
                decoded?;
            }
        }
        self.check_len(rest.len())?;
        self.buf.extend_from_slice(rest);
        Ok(())
    }

    /// The stream ended: decodes a last line without its `\n`.
    pub(crate) fn finish(&mut self, out: &mut Vec<WireEvent>) -> Result<(), LlmError> {
        let last = std::mem::take(&mut self.buf);
        decode_line(&last, out)
    }

    fn check_len(&self, more: usize) -> Result<(), LlmError> {
        if self.buf.len() + more > self.max_line {
            Err(LlmError::Protocol(format!(
                "a reply line is longer than {} bytes",
                self.max_line
            )))
        } else {
            Ok(())
        }
    }
}

fn nanos(n: u64) -> Option<Duration> {
    Some(Duration::from_nanos(n))
}

fn decode_line(line: &[u8], out: &mut Vec<WireEvent>) -> Result<(), LlmError> {
    let line = line.trim_ascii();
    if line.is_empty() {
        return Ok(());
    }
    let parsed: WireLine = serde_json::from_slice(line).map_err(|e| {
        let shown = String::from_utf8_lossy(line.get(..120).unwrap_or(line)).into_owned();
        LlmError::Protocol(format!("bad reply line ({e}): {shown}"))
    })?;
    match parsed {
        WireLine::Error(e) => out.push(WireEvent::Error(e.message)),
        WireLine::Chunk(chunk) => {
            let ChatChunk {
                response,
                done_reason,
            } = *chunk;
            if !response.message.content.is_empty() || !response.done {
                out.push(WireEvent::Delta(response.message.content));
            }
            if response.done {
                let mut stats = ReplyStats {
                    done_reason,
                    ..ReplyStats::default()
                };
                if let Some(f) = response.final_data {
                    stats.total_duration = nanos(f.total_duration);
                    stats.load_duration = nanos(f.load_duration);
                    stats.prompt_eval_count = Some(f.prompt_eval_count);
                    stats.prompt_eval_duration = nanos(f.prompt_eval_duration);
                    stats.eval_count = Some(f.eval_count);
                    stats.eval_duration = nanos(f.eval_duration);
                }
                out.push(WireEvent::Done(stats));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LINES: &str = concat!(
        r#"{"model":"m","created_at":"2026-01-01T00:00:00Z","message":{"role":"assistant","content":"Grüß "},"done":false}"#,
        "\n",
        r#"{"model":"m","created_at":"2026-01-01T00:00:00Z","message":{"role":"assistant","content":"Gott 😀."},"done":false}"#,
        "\n",
        r#"{"model":"m","created_at":"2026-01-01T00:00:00Z","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","total_duration":5000,"load_duration":1000,"prompt_eval_count":7,"prompt_eval_duration":2000,"eval_count":3,"eval_duration":1500}"#,
        "\n",
    );

    fn decode_in_pieces(bytes: &[u8], cuts: &[usize]) -> Result<Vec<WireEvent>, LlmError> {
        let mut d = LineDecoder::new(1 << 20);
        let mut out = Vec::new();
        let mut rest = bytes;
        for &c in cuts {
            let (a, b) = rest.split_at(c.min(rest.len()));
            d.push(a, &mut out)?;
            rest = b;
        }
        d.push(rest, &mut out)?;
        d.finish(&mut out)?;
        Ok(out)
    }

    #[test]
    fn decodes_text_and_final_figures() {
        let events = decode_in_pieces(LINES.as_bytes(), &[]).unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0], WireEvent::Delta("Grüß ".into()));
        assert_eq!(events[1], WireEvent::Delta("Gott 😀.".into()));
        let WireEvent::Done(stats) = &events[2] else {
            panic!("{events:?}")
        };
        assert_eq!(stats.done_reason.as_deref(), Some("stop"));
        assert_eq!(stats.eval_count, Some(3));
        assert_eq!(stats.prompt_eval_count, Some(7));
        assert_eq!(stats.total_duration, Some(Duration::from_nanos(5000)));
    }

    #[test]
    fn a_character_split_across_chunks_survives() {
        let bytes = LINES.as_bytes();
        // Cut inside "ü" (2 bytes) and inside the emoji (4 bytes).
        let u = LINES.find('ü').unwrap() + 1;
        let e = LINES.find('😀').unwrap() + 2;
        let events = decode_in_pieces(bytes, &[u, e - u]).unwrap();
        assert_eq!(events, decode_in_pieces(bytes, &[]).unwrap());
    }

    #[test]
    fn error_lines_become_events() {
        let line = b"{\"error\":\"out of memory\"}\n";
        let events = decode_in_pieces(line, &[3]).unwrap();
        assert_eq!(events, [WireEvent::Error("out of memory".into())]);
    }

    #[test]
    fn garbage_and_overlong_lines_are_protocol_errors() {
        assert!(matches!(
            decode_in_pieces(b"not json\n", &[]),
            Err(LlmError::Protocol(_))
        ));
        assert!(matches!(
            decode_in_pieces(b"{\"model\":1}\n", &[]),
            Err(LlmError::Protocol(_))
        ));
        let mut d = LineDecoder::new(16);
        let mut out = Vec::new();
        assert!(d.push(&[b'x'; 10], &mut out).is_ok());
        assert!(matches!(
            d.push(&[b'x'; 10], &mut out),
            Err(LlmError::Protocol(_))
        ));
        // Invalid UTF-8 inside a line.
        assert!(matches!(
            decode_in_pieces(b"{\"error\":\"\xff\"}\n", &[]),
            Err(LlmError::Protocol(_))
        ));
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_events(cuts in prop::collection::vec(0usize..40, 0..20)) {
            let whole = decode_in_pieces(LINES.as_bytes(), &[]).unwrap();
            prop_assert_eq!(decode_in_pieces(LINES.as_bytes(), &cuts).unwrap(), whole);
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300), cut in 0usize..300) {
            let _ = decode_in_pieces(&bytes, &[cut]);
        }
    }
}
