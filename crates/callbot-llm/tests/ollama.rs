//! OllamaChat against the local Ollama-protocol server of callbot-testkit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use callbot_llm::{
    ChatModel, ChatOptions, ChunkerConfig, LlmError, OllamaChat, OllamaConfig, ReplyEvent, TimeoutStage,
};
use callbot_testkit::ollama::{OllamaServer, ReplyText, Script, TokenSplit};

fn config(server: &OllamaServer) -> OllamaConfig {
    OllamaConfig::new(&server.url(), "test-model")
}

fn chat(server: &OllamaServer) -> OllamaChat {
    OllamaChat::new(config(server)).unwrap()
}

/// A client of `server` whose default configuration `change` adjusts.
fn chat_with(server: &OllamaServer, change: impl FnOnce(&mut OllamaConfig)) -> OllamaChat {
    let mut cfg = config(server);
    change(&mut cfg);
    OllamaChat::new(cfg).unwrap()
}

/// Asks `chat` and checks that the reply fails with a timeout at `stage` within 2 s.
fn times_out(chat: &OllamaChat, stage: TimeoutStage) {
    let started = Instant::now();
    let err = ask(chat, "hi").collect_text().unwrap_err();
    assert_eq!(err, LlmError::Timeout { stage });
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// When the server saw the `n`th connection closed by the client before its reply's end
/// (waits up to 2 s for it).
fn early_disconnects(server: &OllamaServer, n: u64) -> Instant {
    server
        .wait_for_early_disconnects(n, Duration::from_secs(2))
        .expect("the server saw the client disconnect")
}

/// Waits up to `within` for `chat` to have no reply in flight.
fn no_reply_in_flight(chat: &OllamaChat, within: Duration) {
    let until = Instant::now() + within;
    while chat.in_flight() > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(chat.in_flight(), 0);
}

fn slow_script(tokens: usize, delay_ms: u64) -> Script {
    Script {
        reply: ReplyText::Fixed("word ".repeat(tokens)),
        token_delay: Duration::from_millis(delay_ms),
        ..Script::default()
    }
}

/// A new history holding `text` from the caller, and the reply to it.
fn ask(chat: &OllamaChat, text: &str) -> callbot_llm::Reply {
    let mut history = chat.new_history();
    history.push_user(text);
    chat.start_reply(&history).unwrap()
}

/// Receives events until the first delta; returns it.
fn first_delta(reply: &mut callbot_llm::Reply) -> String {
    match reply.recv_timeout(Duration::from_secs(5)) {
        Ok(Some(ReplyEvent::Delta(d))) => d,
        other => panic!("expected a delta, got {other:?}"),
    }
}

#[test]
fn streams_a_reply_with_the_configured_request() {
    let server = OllamaServer::start(Script::default()).unwrap();
    let mut cfg = config(&server);
    cfg.system_prompt = Some("You are a phone bot.".into());
    cfg.options = ChatOptions {
        temperature: Some(0.2),
        num_predict: Some(80),
        num_ctx: Some(2048),
    };
    let mut chat = OllamaChat::new(cfg).unwrap();
    let (text, stats) = ask(&chat, "Hello there. How are you?").collect_text().unwrap();
    assert_eq!(text, "Hello there. How are you?");
    assert_eq!(stats.done_reason.as_deref(), Some("stop"));
    assert_eq!(stats.eval_count, Some(5));
    assert!(stats.total_duration.is_some() && stats.prompt_eval_count.is_some());
    assert!(stats.time_to_first_token.is_some());
    assert_eq!(stats.text_bytes, text.len());

    let request = server.chats()[0].request.clone();
    assert_eq!(request["model"], "test-model");
    assert_eq!(request["stream"], true);
    assert_eq!(request["options"]["num_predict"], 80);
    assert_eq!(request["messages"][0]["role"], "system");
    assert_eq!(request["messages"][1]["content"], "Hello there. How are you?");
    let report = chat.shutdown(Instant::now() + Duration::from_secs(2));
    assert!(!report.timed_out, "{report:?}");
    assert_eq!(report.threads_left, 0);
}

const TRICKY: &str = "Grüß Gott, hello. Ça va? Ünïcödé 😀 everywhere… 你好。Done.";

/// The reply [`TRICKY`], its multi-byte characters split across network chunks.
fn split_tricky_text() -> Script {
    Script {
        reply: ReplyText::Fixed(TRICKY.into()),
        split_multibyte: true,
        ..Script::default()
    }
}

/// The reply "One two three four", cut by an error line after two words.
fn error_after_two_words() -> Script {
    Script {
        reply: ReplyText::Fixed("One two three four".into()),
        error_after: Some((2, "CUDA error: out of memory".into())),
        ..Script::default()
    }
}

/// Asks `server` for a reply through ollama-rs's own stream: the text of its items, and
/// how many of them were errors.
fn ollama_rs_stream(server: &OllamaServer) -> (String, usize) {
    use ollama_rs::generation::chat::ChatMessage;
    use ollama_rs::generation::chat::request::ChatMessageRequest;
    use tokio_stream::StreamExt as _;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ollama = ollama_rs::Ollama::try_new(server.url()).unwrap();
        let request = ChatMessageRequest::new("test-model".into(), vec![ChatMessage::user("hi".into())]);
        let mut stream = ollama.send_chat_messages_stream(request).await.unwrap();
        let (mut text, mut errors) = (String::new(), 0);
        while let Some(item) = stream.next().await {
            match item {
                Ok(item) => text.push_str(&item.message.content),
                Err(()) => errors += 1,
            }
        }
        (text, errors)
    })
}

#[test]
fn a_character_split_across_network_chunks_arrives_intact() {
    let server = OllamaServer::start(split_tricky_text()).unwrap();
    let chat = chat(&server);
    let (text, _) = ask(&chat, "hi").collect_text().unwrap();
    assert_eq!(text, TRICKY);
}

/// The reason this crate reads the stream itself: ollama-rs 0.3.6's own stream loses
/// the text of a chunk that ends inside a multi-byte character. If this test starts to
/// fail, ollama-rs fixed it and its stream could be used again.
#[test]
fn ollama_rs_own_stream_loses_split_characters() {
    let server = OllamaServer::start(split_tricky_text()).unwrap();
    let (text, _) = ollama_rs_stream(&server);
    assert_ne!(text, TRICKY);
    assert!(!text.contains("Grüß"), "{text}");
}

#[test]
fn an_error_line_mid_stream_surfaces_as_a_server_error() {
    let server = OllamaServer::start(error_after_two_words()).unwrap();
    let chat = chat(&server);
    let mut reply = ask(&chat, "hi");
    let mut deltas = String::new();
    let end = loop {
        match reply.recv().unwrap() {
            ReplyEvent::Delta(d) => deltas.push_str(&d),
            other => break other,
        }
    };
    assert_eq!(deltas, "One two");
    assert_eq!(
        end,
        ReplyEvent::Failed(LlmError::Server("CUDA error: out of memory".into()))
    );
    assert_eq!(reply.recv(), None);
}

#[test]
fn a_connection_dropped_mid_stream_is_reported() {
    let server = OllamaServer::start(Script {
        reply: ReplyText::Fixed("One two three four".into()),
        drop_after: Some(2),
        ..Script::default()
    })
    .unwrap();
    let chat = chat(&server);
    let err = ask(&chat, "hi").collect_text().unwrap_err();
    assert!(matches!(err, LlmError::Disconnected(_)), "{err:?}");
    assert!(err.is_transient());
}

#[test]
fn an_unknown_model_is_model_not_found() {
    let server = OllamaServer::start(Script::default()).unwrap();
    let chat = chat_with(&server, |cfg| {
        cfg.model = "llama9:70b".into();
    });
    let err = ask(&chat, "hi").collect_text().unwrap_err();
    match err {
        LlmError::ModelNotFound(m) => assert!(m.contains("llama9:70b"), "{m}"),
        other => panic!("{other:?}"),
    }
    let probe = chat.probe(Duration::from_secs(2)).unwrap();
    assert!(!probe.model_available);
    assert_eq!(probe.models, ["test-model:latest"]);
}

#[test]
fn probe_finds_the_model() {
    let server = OllamaServer::start(Script::default()).unwrap();
    let chat = chat(&server);
    let probe = chat.probe(Duration::from_secs(2)).unwrap();
    assert!(probe.model_available);
    assert_eq!(server.requests().last().unwrap().path, "/api/tags");
}

#[test]
fn an_unreachable_server_is_a_typed_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let chat = OllamaChat::new(OllamaConfig::new(&format!("http://127.0.0.1:{port}"), "m")).unwrap();
    let err = ask(&chat, "hi").collect_text().unwrap_err();
    assert!(matches!(err, LlmError::Unreachable(_)), "{err:?}");
    assert!(matches!(
        chat.probe(Duration::from_secs(1)),
        Err(LlmError::Unreachable(_))
    ));
}

#[test]
fn a_slow_first_token_times_out_and_the_connection_is_dropped() {
    let server = OllamaServer::start(Script {
        first_token_delay: Duration::from_secs(3),
        ..Script::default()
    })
    .unwrap();
    let chat = chat_with(&server, |cfg| {
        cfg.first_token_timeout = Duration::from_millis(200);
    });
    times_out(&chat, TimeoutStage::FirstToken);
    early_disconnects(&server, 1);
}

#[test]
fn a_slow_reply_hits_the_total_timeout() {
    let server = OllamaServer::start(slow_script(100, 50)).unwrap();
    let chat = chat_with(&server, |cfg| {
        cfg.total_timeout = Duration::from_millis(300);
    });
    let mut reply = ask(&chat, "hi");
    let mut deltas = 0;
    let end = loop {
        match reply.recv().unwrap() {
            ReplyEvent::Delta(_) => deltas += 1,
            other => break other,
        }
    };
    assert!((1..100).contains(&deltas), "{deltas}");
    assert_eq!(
        end,
        ReplyEvent::Failed(LlmError::Timeout {
            stage: TimeoutStage::Total
        })
    );
}

#[test]
fn cancel_drops_the_connection_at_once_and_the_next_reply_works() {
    let server = OllamaServer::start(slow_script(200, 50)).unwrap();
    let chat = chat(&server);
    let mut history = chat.new_history();
    history.push_user("hi");
    let mut reply = chat.start_reply(&history).unwrap();
    first_delta(&mut reply);
    let cancelled_at = Instant::now();
    reply.cancel();
    let seen = early_disconnects(&server, 1);
    let latency = seen.saturating_duration_since(cancelled_at);
    // 200 tokens at 50 ms would take 10 s; the close is seen long before the next token.
    assert!(latency < Duration::from_millis(500), "{latency:?}");
    let rest: Vec<ReplyEvent> = std::iter::from_fn(|| reply.recv()).collect();
    assert!(rest.len() <= 2, "{rest:?}");
    assert!(!server.chats()[0].finished);

    server.set_script(Script::default());
    history.commit_assistant("word");
    history.push_user("again");
    let (text, _) = chat.start_reply(&history).unwrap().collect_text().unwrap();
    assert_eq!(text, "again");
    assert_eq!(chat.in_flight(), 0);
}

#[test]
fn dropping_a_reply_cancels_it() {
    let server = OllamaServer::start(slow_script(200, 50)).unwrap();
    let chat = chat(&server);
    let mut reply = ask(&chat, "hi");
    first_delta(&mut reply);
    drop(reply);
    early_disconnects(&server, 1);
    no_reply_in_flight(&chat, Duration::from_secs(2));
}

#[test]
fn shutdown_cancels_replies_in_flight_within_the_deadline() {
    let server = OllamaServer::start(slow_script(200, 50)).unwrap();
    let mut chat = chat(&server);
    let mut history = chat.new_history();
    history.push_user("hi");
    let mut a = chat.start_reply(&history).unwrap();
    let mut b = chat.start_reply(&history).unwrap();
    first_delta(&mut a);
    first_delta(&mut b);
    let report = chat.shutdown(Instant::now() + Duration::from_secs(2));
    assert_eq!(report.cancelled_replies, 2, "{report:?}");
    assert_eq!(report.abandoned_replies, 0);
    assert_eq!(report.threads_left, 0);
    assert!(!report.timed_out && report.waited_for_threads);
    assert!(report.elapsed < Duration::from_secs(2));
    early_disconnects(&server, 2);
    for reply in [&mut a, &mut b] {
        let end = std::iter::from_fn(|| reply.recv()).last();
        assert!(
            matches!(
                end,
                Some(ReplyEvent::Failed(LlmError::Cancelled | LlmError::Shutdown))
            ),
            "{end:?}"
        );
    }
    assert!(chat.shutdown(Instant::now()).already_shut_down);
    assert_eq!(chat.start_reply(&history).err(), Some(LlmError::Shutdown));
}

#[test]
fn a_slow_consumer_gets_every_delta_through_a_small_channel() {
    let text: String = (0..300).map(|i| format!("w{i} ")).collect();
    let server = OllamaServer::start(Script::reply(&text)).unwrap();
    let chat = chat_with(&server, |cfg| {
        cfg.channel_capacity = 2;
    });
    let mut reply = ask(&chat, "hi");
    std::thread::sleep(Duration::from_millis(100));
    assert!(reply.events().len() <= 2);
    let mut got = String::new();
    while let Some(event) = reply.recv() {
        match event {
            ReplyEvent::Delta(d) => got.push_str(&d),
            ReplyEvent::Done(_) => break,
            ReplyEvent::Failed(e) => panic!("{e}"),
        }
    }
    assert_eq!(got, text);
}

#[test]
fn sentences_and_barge_in_history() {
    let server = OllamaServer::start(Script {
        reply: ReplyText::Fixed(
            "Dr. Smith is in at 9.30 today. He can see you then. Shall I book it? ".repeat(3),
        ),
        split: TokenSplit::Chars(3),
        ..Script::default()
    })
    .unwrap();
    let chat = chat(&server);
    let mut history = chat.new_history();
    history.push_user("When is the doctor in?");
    let mut sentences = chat
        .start_reply(&history)
        .unwrap()
        .sentences(ChunkerConfig::default());
    let first = sentences.next().unwrap().unwrap();
    assert_eq!(first, "Dr. Smith is in at 9.30 today. ");
    let second = sentences.next().unwrap().unwrap();
    assert_eq!(second, "He can see you then. ");
    // The caller talks over the bot here: only the first two sentences were spoken.
    sentences.cancel();
    drop(sentences);
    history.commit_assistant(&(first + &second));
    history.push_user("Yes please.");
    server.set_script(Script::reply("Booked."));
    let (text, _) = chat.start_reply(&history).unwrap().collect_text().unwrap();
    assert_eq!(text, "Booked.");
    let request = server.chats().last().unwrap().request.clone();
    let messages = request["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3);
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(
        messages[1]["content"],
        "Dr. Smith is in at 9.30 today. He can see you then."
    );
}

#[test]
fn heavy_1000_chats_on_one_handle_keep_rss_and_threads_flat() {
    let server = OllamaServer::start(Script::reply("Hello there. How can I help you today?")).unwrap();
    let chat = chat(&server);
    let run = |n: usize| {
        for i in 0..n {
            let reply = ask(&chat, &format!("question {i}"));
            if i % 10 == 9 {
                // Some replies are cancelled after their first delta (barge-in).
                let mut reply = reply;
                let _ = reply.recv();
                reply.cancel();
            } else {
                let (text, _) = reply.collect_text().unwrap();
                assert_eq!(text, "Hello there. How can I help you today?");
            }
        }
    };
    run(300); // warm up: pool connections, allocator arenas, the server's 256-entry log
    let (rss0, threads0) = (
        callbot_testkit::resources::rss_kib(),
        callbot_testkit::resources::threads(),
    );
    let started = Instant::now();
    run(1000);
    let elapsed = started.elapsed();
    let (rss1, threads1) = (
        callbot_testkit::resources::rss_kib(),
        callbot_testkit::resources::threads(),
    );
    eprintln!(
        "1000 chats in {elapsed:?}: RSS {rss0} -> {rss1} KiB, threads {threads0} -> {threads1}, connections {}",
        server.connections()
    );
    assert_eq!(threads1, threads0);
    assert!(rss1 < rss0 + 2 * 1024, "RSS grew from {rss0} to {rss1} KiB");
    assert_eq!(chat.in_flight(), 0);
}

/// A listener whose accept queue is full drops new SYNs, so connecting hangs: the
/// connect timeout must fire (and be told apart from "unreachable").
#[test]
fn a_hanging_connect_hits_the_connect_timeout() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    // Fill the accept queue (never accepted).
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            fillers.push(s);
        }
    }
    let hangs = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err();
    if !hangs {
        eprintln!("SKIP: this kernel accepts connections beyond the backlog");
        return;
    }
    let mut cfg = OllamaConfig::new(&format!("http://{addr}"), "m");
    cfg.connect_timeout = Duration::from_millis(200);
    let chat = OllamaChat::new(cfg).unwrap();
    times_out(&chat, TimeoutStage::Connect);
    drop(listener);
}

#[test]
fn an_http_error_status_is_a_server_error_with_its_message() {
    let server = OllamaServer::start(Script {
        http_error: Some((500, "llama runner process has terminated".into())),
        ..Script::default()
    })
    .unwrap();
    let chat = chat(&server);
    let err = ask(&chat, "hi").collect_text().unwrap_err();
    assert_eq!(
        err,
        LlmError::Server("HTTP 500: llama runner process has terminated".into())
    );
    // The handle is still usable after errors.
    server.set_script(Script::default());
    let (text, _) = ask(&chat, "hi").collect_text().unwrap();
    assert_eq!(text, "hi");
}

#[test]
fn concurrent_calls_share_one_handle() {
    let server = OllamaServer::start(Script::default()).unwrap();
    let chat = std::sync::Arc::new(chat(&server));
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let chat = std::sync::Arc::clone(&chat);
            std::thread::Builder::new()
                .name(format!("call-{t}"))
                .spawn(move || {
                    let mut history = chat.new_history();
                    for i in 0..25 {
                        let said = format!("Call {t} turn {i} says hello.");
                        history.push_user(&said);
                        let reply = chat.start_reply(&history).unwrap();
                        if i % 5 == 4 {
                            drop(reply); // hung up mid-reply
                            history.commit_assistant("");
                            continue;
                        }
                        let (text, _) = reply.collect_text().unwrap();
                        // After a hang-up the unanswered user turn merges with this one.
                        assert_eq!(Some(text.as_str()), history.pending_user());
                        assert!(text.ends_with(&said));
                        history.commit_assistant(&text);
                    }
                    history.turns().len()
                })
                .unwrap()
        })
        .collect();
    for w in workers {
        assert!(w.join().unwrap() <= 24);
    }
    let until = Instant::now() + Duration::from_secs(2);
    while chat.in_flight() > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(chat.in_flight(), 0);
    // 80 answered; the 20 dropped at once may not even have been sent.
    assert!(
        (80..=100).contains(&server.chat_total()),
        "{}",
        server.chat_total()
    );
}

/// ollama-rs's own stream also swallows an error line mid-stream (it only prints it):
/// the reply just looks shorter. Ours fails with `LlmError::Server` (test above).
#[test]
fn ollama_rs_own_stream_hides_error_lines() {
    let server = OllamaServer::start(error_after_two_words()).unwrap();
    let (text, errors) = ollama_rs_stream(&server);
    assert_eq!(text, "One two");
    assert_eq!(errors, 0);
}

#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn shutdown_logs_the_lifecycle_line_once() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let server = OllamaServer::start(Script::default()).unwrap();
        let mut chat = chat(&server);
        let _ = chat.shutdown(Instant::now() + Duration::from_secs(2));
        let _ = chat.shutdown(Instant::now() + Duration::from_secs(2));
        drop(chat);
    });
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert_eq!(text.matches("LLM client started").count(), 1, "{text}");
    assert_eq!(text.matches("LLM client shutdown complete").count(), 1, "{text}");
}

#[test]
fn a_consumer_that_never_reads_gets_the_timeout_not_a_shutdown() {
    let server = OllamaServer::start(slow_script(50, 0)).unwrap();
    let chat = chat_with(&server, |cfg| {
        cfg.channel_capacity = 4;
        cfg.total_timeout = Duration::from_millis(200);
    });
    let mut reply = ask(&chat, "hi");
    // Do not read until the task gave up (the total timeout, then 1 s of grace for the
    // final event).
    std::thread::sleep(Duration::from_millis(300));
    no_reply_in_flight(&chat, Duration::from_secs(5));
    assert_eq!(reply.events().len(), 4);
    let events: Vec<ReplyEvent> = std::iter::from_fn(|| reply.recv()).collect();
    assert_eq!(events.len(), 5, "{events:?}");
    assert_eq!(
        events.last(),
        Some(&ReplyEvent::Failed(LlmError::Timeout {
            stage: TimeoutStage::Total
        }))
    );
}
