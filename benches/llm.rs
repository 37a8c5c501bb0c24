//! LLM layer: time from the local Ollama-protocol server's first reply byte to the
//! first sentence handed to speech synthesis (goal: under 1 ms of our own overhead),
//! and the sentence chunker's cost.
//!
//! The server (callbot-testkit) records the instant it writes the first token line;
//! the measured interval covers the loopback TCP hop, HTTP chunk decoding, our NDJSON
//! decoder, the reply channel, the consumer thread's wake-up and the chunker.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::{Duration, Instant};

use callbot_llm::{ChatModel, ChunkerConfig, OllamaChat, OllamaConfig, SentenceChunker};
use callbot_testkit::ollama::{OllamaServer, Script, TokenSplit};
use criterion::{Criterion, criterion_group, criterion_main};

const REPLY: &str = "Hello there. How can I help you today? We are open from 9.30 until 6, Monday to Friday.";

fn first_sentence(c: &mut Criterion) {
    let server = OllamaServer::start(Script {
        split: TokenSplit::Words,
        ..Script::reply(REPLY)
    })
    .unwrap();
    let mut chat = OllamaChat::new(OllamaConfig::new(&server.url(), "test-model")).unwrap();
    let mut group = c.benchmark_group("llm");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_millis(500));
    group.bench_function("server_first_byte_to_first_sentence", |b| {
        b.iter_custom(|iters| first_byte_to_first_sentence(&chat, &server, iters));
    });
    group.bench_function("request_to_first_sentence", |b| {
        b.iter(|| ask_first_sentence(&chat, |_| {}));
    });
    // The same with the whole reply in one token line: no server time between tokens,
    // only transfer and our processing.
    server.set_script(Script {
        split: TokenSplit::Whole,
        ..Script::reply(REPLY)
    });
    group.bench_function("server_first_byte_to_first_sentence_one_line", |b| {
        b.iter_custom(|iters| first_byte_to_first_sentence(&chat, &server, iters));
    });
    group.bench_function("chunker_whole_reply_by_words", |b| {
        let words: Vec<String> = REPLY.split_inclusive(' ').map(str::to_string).collect();
        let mut chunker = SentenceChunker::new(ChunkerConfig::default());
        b.iter(|| {
            let mut n = 0;
            for w in &words {
                n += chunker.push(w).count();
            }
            n + chunker.finish().count()
        });
    });
    group.finish();
    let report = chat.shutdown(Instant::now() + Duration::from_secs(2));
    assert!(!report.timed_out);
}

/// Baseline for the figures above: a loopback TCP round trip between two threads (two
/// hops, two thread wake-ups: the same kernel work our path has without any of our code).
fn loopback_baseline(c: &mut Criterion) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.set_nodelay(true).unwrap();
    server.set_nodelay(true).unwrap();
    let echo = std::thread::Builder::new()
        .name("echo".into())
        .spawn(move || {
            let mut b = [0u8; 1];
            while server.read_exact(&mut b).is_ok() && b[0] != 0 {
                if server.write_all(&b).is_err() {
                    break;
                }
            }
        })
        .unwrap();
    c.bench_function("llm/baseline_loopback_tcp_round_trip", |b| {
        let mut buf = [0u8; 1];
        b.iter(|| {
            client.write_all(&[1]).unwrap();
            client.read_exact(&mut buf).unwrap();
        });
    });
    client.write_all(&[0]).unwrap();
    echo.join().unwrap();
}

criterion_group!(benches, first_sentence, loopback_baseline);
criterion_main!(benches);

/// Total time, over `iters` replies, from the server's first token byte to the first
/// sentence handed out by the chunker.
fn first_byte_to_first_sentence(chat: &OllamaChat, server: &OllamaServer, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let mut handed_out = Instant::now();
        let first = ask_first_sentence(chat, |_| handed_out = Instant::now());
        assert_eq!(first, "Hello there. ");
        let first_byte = server.last_chat().and_then(|c| c.first_token_at).unwrap();
        total += handed_out.saturating_duration_since(first_byte);
    }
    total
}

/// Asks "When are you open?", calls `on_first` as soon as the chunker hands out the
/// first sentence, drains the rest of the reply and returns the first sentence.
fn ask_first_sentence(chat: &OllamaChat, on_first: impl FnOnce(&str)) -> String {
    let mut history = chat.new_history();
    history.push_user("When are you open?");
    let mut sentences = chat
        .start_reply(&history)
        .unwrap()
        .sentences(ChunkerConfig::default());
    let first = sentences.next().unwrap().unwrap();
    on_first(&first);
    for piece in sentences.by_ref() {
        piece.unwrap();
    }
    first
}
