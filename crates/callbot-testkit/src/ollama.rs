//! A local HTTP/1.1 server speaking Ollama's wire protocol, for tests (Ollama itself
//! cannot be installed on the test machines).
//!
//! [`OllamaServer::start`] binds `127.0.0.1:0` and serves, on one named thread
//! (`ollama-peer`) running a current-thread tokio runtime:
//! - `POST /api/chat`: the request JSON is parsed and recorded; the reply streams as
//!   `application/x-ndjson` chunked lines
//!   `{"model","created_at","message":{"role":"assistant","content":...},"done":false}`
//!   and a final line with `done:true`, `done_reason` and the duration/count fields
//!   (`"stream": false` gets one JSON object instead). An unknown model gets
//!   404 `{"error":"model 'x' not found"}`.
//! - `GET /api/tags` (the scripted models) and `GET /api/version`.
//!
//! What a reply does is a [`Script`]: the text (fixed, or an echo of the last user
//! message), how it is split into tokens, delays before the first token and between
//! tokens, a multi-byte character split across two network chunks, an
//! `{"error": ...}` line mid-stream, the connection dropped mid-stream. The server
//! records whether the client disconnected before the reply was complete, and when.
//!
//! Dropping the server stops the runtime (closing every connection) and joins the thread
//! (bounded).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The reply text of a chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyText {
    /// Always this text.
    Fixed(String),
    /// The content of the last user message of the request.
    EchoLastUser,
}

/// How the reply text is cut into streamed tokens (one NDJSON line each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSplit {
    /// Word by word, each token starting with its leading whitespace, like LLM tokens.
    Words,
    /// This many characters a token (at least 1).
    Chars(usize),
    /// The whole text in one token.
    Whole,
}

/// What the server does with the next chats. Change it with [`OllamaServer::set_script`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// The reply text.
    pub reply: ReplyText,
    /// Tokenisation of the reply.
    pub split: TokenSplit,
    /// Delay before the response head and first token (a model loading).
    pub first_token_delay: Duration,
    /// Delay between tokens.
    pub token_delay: Duration,
    /// Write each line that contains a multi-byte character as two network chunks
    /// (flushed 10 ms apart), cut inside that character.
    pub split_multibyte: bool,
    /// After this many tokens, send `{"error": message}` and end the stream.
    pub error_after: Option<(usize, String)>,
    /// After this many tokens, close the connection without ending the stream.
    pub drop_after: Option<usize>,
    /// Models the server has (`/api/tags`); a chat for another model gets a 404.
    /// `name` also matches `name:latest`.
    pub models: Vec<String>,
    /// `done_reason` of the final line.
    pub done_reason: String,
    /// Answer chats with this HTTP status and `{"error": message}` instead of a reply
    /// (Ollama answers 500 when a model fails to load, 400 on a bad request).
    pub http_error: Option<(u16, String)>,
}

impl Default for Script {
    /// Echoes the last user message word by word, no delays, model `test-model:latest`.
    fn default() -> Self {
        Script {
            reply: ReplyText::EchoLastUser,
            split: TokenSplit::Words,
            first_token_delay: Duration::ZERO,
            token_delay: Duration::ZERO,
            split_multibyte: false,
            error_after: None,
            drop_after: None,
            models: vec!["test-model:latest".to_string()],
            done_reason: "stop".to_string(),
            http_error: None,
        }
    }
}

impl Script {
    /// The default script replying with `text`.
    pub fn reply(text: &str) -> Script {
        Script {
            reply: ReplyText::Fixed(text.to_string()),
            ..Script::default()
        }
    }
}

/// One HTTP request the server received.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target, e.g. `/api/chat`.
    pub path: String,
    /// The body parsed as JSON, when it is JSON.
    pub json: Option<serde_json::Value>,
}

/// What happened to one `/api/chat` request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatLog {
    /// The request JSON.
    pub request: serde_json::Value,
    /// When the server wrote the first token line (the first byte of the reply).
    pub first_token_at: Option<Instant>,
    /// True when the whole reply (final line or scripted error/drop) was written.
    pub finished: bool,
    /// When the client closed the connection before the reply was finished.
    pub disconnected_early_at: Option<Instant>,
}

/// How many log entries are kept (older ones are dropped; the counters keep counting),
/// so a long test does not grow memory.
const LOG_LIMIT: usize = 256;

#[derive(Debug, Default)]
struct State {
    script: Script,
    requests: VecDeque<RecordedRequest>,
    chats: VecDeque<ChatLog>,
    chat_total: u64,
    early_disconnects: u64,
    connections: u64,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits up to `timeout` for `done` to give something, checking at every change.
    fn wait_for<T>(&self, timeout: Duration, mut done: impl FnMut(&State) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if let Some(found) = done(&state) {
                return Some(found);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// The local Ollama-protocol server. See the module docs.
#[derive(Debug)]
pub struct OllamaServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: std::sync::mpsc::Receiver<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OllamaServer {
    /// Binds `127.0.0.1:0` and starts serving with `script`.
    pub fn start(script: Script) -> io::Result<OllamaServer> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        shared.lock().script = script;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        let thread_shared = Arc::clone(&shared);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("ollama-peer".to_string())
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => serve(listener, stop_rx, thread_shared).await,
                        Err(e) => tracing::error!(error = %e, "ollama peer: listener"),
                    }
                });
                // Dropping the runtime drops every connection task (closing its socket).
                drop(runtime);
                let _ = done_tx.send(());
            })?;
        Ok(OllamaServer {
            addr,
            shared,
            stop: Some(stop_tx),
            done: done_rx,
            thread: Some(thread),
        })
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the script for the next chats.
    pub fn set_script(&self, script: Script) {
        self.shared.lock().script = script;
    }

    /// The last requests received (at most 256), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.iter().cloned().collect()
    }

    /// The last chats (at most 256), oldest first.
    pub fn chats(&self) -> Vec<ChatLog> {
        self.shared.lock().chats.iter().cloned().collect()
    }

    /// The most recent chat.
    pub fn last_chat(&self) -> Option<ChatLog> {
        self.shared.lock().chats.back().cloned()
    }

    /// Chats received since the start.
    pub fn chat_total(&self) -> u64 {
        self.shared.lock().chat_total
    }

    /// Chats whose client disconnected before the reply was finished, since the start.
    pub fn early_disconnects(&self) -> u64 {
        self.shared.lock().early_disconnects
    }

    /// TCP connections accepted since the start.
    pub fn connections(&self) -> u64 {
        self.shared.lock().connections
    }

    /// Waits until at least `n` chats disconnected early; returns the time of the n-th
    /// such disconnect seen in the log, or `None` after `timeout`.
    pub fn wait_for_early_disconnects(&self, n: u64, timeout: Duration) -> Option<Instant> {
        self.shared
            .wait_for(timeout, |state| {
                (state.early_disconnects >= n)
                    .then(|| state.chats.iter().filter_map(|c| c.disconnected_early_at).max())
            })
            .flatten()
    }

    /// Waits until the last chat is finished or disconnected; returns its log.
    pub fn wait_for_chat_end(&self, timeout: Duration) -> Option<ChatLog> {
        self.shared.wait_for(timeout, |state| {
            state
                .chats
                .back()
                .filter(|last| last.finished || last.disconnected_early_at.is_some())
                .cloned()
        })
    }

    /// Stops serving and joins the thread, waiting until `deadline`. Idempotent;
    /// returns false if the thread did not stop in time.
    pub fn shutdown(&mut self, deadline: Instant) -> bool {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(thread) = self.thread.take() else {
            return true;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match self.done.recv_timeout(left) {
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let _ = thread.join();
                true
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                tracing::error!("ollama peer thread did not stop in time");
                self.thread = Some(thread);
                false
            }
        }
    }
}

impl Drop for OllamaServer {
    fn drop(&mut self) {
        let _ = self.shutdown(Instant::now() + Duration::from_secs(5));
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    shared: Arc<Shared>,
) {
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    shared.lock().connections += 1;
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(connection(stream, Arc::clone(&shared)));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ollama peer: accept");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            },
        }
    }
}

struct Request {
    method: String,
    path: String,
    close: bool,
    body: Vec<u8>,
}

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Reads one request; `Ok(None)` on a clean end of the connection.
async fn read_request(read: &mut OwnedReadHalf, buf: &mut Vec<u8>) -> io::Result<Option<Request>> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if buf.len() > MAX_HEAD {
            return Err(bad("request head too long"));
        }
        let mut chunk = [0u8; 4096];
        let n = read.read(&mut chunk).await?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(bad("truncated head"))
            };
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
    };
    let head = String::from_utf8_lossy(buf.get(..head_end).unwrap_or(&[])).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    let version = first.next().unwrap_or("");
    let mut content_length = 0usize;
    let mut close = version == "HTTP/1.0";
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                content_length = value.parse().map_err(|_| bad("bad content-length"))?;
            }
            "connection" if value.eq_ignore_ascii_case("close") => close = true,
            "transfer-encoding" => return Err(bad("chunked request bodies are not supported")),
            _ => {}
        }
    }
    if content_length > MAX_BODY {
        return Err(bad("body too large"));
    }
    buf.drain(..head_end + 4);
    while buf.len() < content_length {
        let mut chunk = [0u8; 8192];
        let n = read.read(&mut chunk).await?;
        if n == 0 {
            return Err(bad("truncated body"));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
    }
    let body: Vec<u8> = buf.drain(..content_length).collect();
    Ok(Some(Request {
        method,
        path,
        close,
        body,
    }))
}

async fn connection(stream: TcpStream, shared: Arc<Shared>) {
    let (mut read, mut write) = stream.into_split();
    let mut buf = Vec::new();
    loop {
        let request = match read_request(&mut read, &mut buf).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                let _ = respond(&mut write, 400, "text/plain", e.to_string().as_bytes()).await;
                return;
            }
        };
        let json = serde_json::from_slice::<serde_json::Value>(&request.body).ok();
        {
            let mut state = shared.lock();
            if state.requests.len() >= LOG_LIMIT {
                state.requests.pop_front();
            }
            state.requests.push_back(RecordedRequest {
                method: request.method.clone(),
                path: request.path.clone(),
                json: json.clone(),
            });
        }
        let keep = match (request.method.as_str(), request.path.as_str()) {
            ("POST", "/api/chat") => chat(&mut read, &mut write, json, &shared).await,
            ("GET", "/api/tags") => {
                let models = shared.lock().script.models.clone();
                respond(&mut write, 200, "application/json", tags_json(&models).as_bytes()).await
            }
            ("GET", "/api/version") => {
                respond(&mut write, 200, "application/json", br#"{"version":"0.12.6"}"#).await
            }
            ("GET" | "HEAD", "/") => respond(&mut write, 200, "text/plain", b"Ollama is running").await,
            _ => respond(&mut write, 404, "text/plain", b"404 page not found").await,
        };
        if !keep || request.close {
            let _ = write.shutdown().await;
            return;
        }
    }
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Error",
    }
}

/// Writes a whole response; true when the connection can be kept.
async fn respond(write: &mut OwnedWriteHalf, status: u16, content_type: &str, body: &[u8]) -> bool {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nDate: {}\r\nContent-Length: {}\r\n\r\n",
        status_text(status),
        now_rfc3339(),
        body.len()
    );
    write.write_all(head.as_bytes()).await.is_ok() && write.write_all(body).await.is_ok()
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

fn tags_json(models: &[String]) -> String {
    let entries: Vec<String> = models
        .iter()
        .map(|m| {
            format!(
                r#"{{"name":{n},"model":{n},"modified_at":"2026-11-01T10:00:00.000000000Z","size":1321098329,"digest":"baf6a787fdffd633537aa2eb51cfd54cb93ff08e28040095462bb63daf552878","details":{{"parent_model":"","format":"gguf","family":"llama","families":["llama"],"parameter_size":"1.2B","quantization_level":"Q8_0"}}}}"#,
                n = json_string(m)
            )
        })
        .collect();
    format!(r#"{{"models":[{}]}}"#, entries.join(","))
}

fn model_known(models: &[String], wanted: &str) -> bool {
    models
        .iter()
        .any(|m| m == wanted || (!wanted.contains(':') && m.strip_suffix(":latest") == Some(wanted)))
}

fn last_user(request: &serde_json::Value) -> String {
    request
        .get("messages")
        .and_then(|m| m.as_array())
        .and_then(|msgs| {
            msgs.iter()
                .rev()
                .find(|m| m.get("role").and_then(|r| r.as_str()) == Some("user"))
        })
        .and_then(|m| m.get("content"))
        .and_then(|c| c.as_str())
        .unwrap_or("")
        .to_string()
}

fn tokens(text: &str, split: TokenSplit) -> Vec<String> {
    match split {
        TokenSplit::Whole => vec![text.to_string()],
        TokenSplit::Chars(n) => {
            let chars: Vec<char> = text.chars().collect();
            chars.chunks(n.max(1)).map(|c| c.iter().collect()).collect()
        }
        TokenSplit::Words => {
            let mut out: Vec<String> = Vec::new();
            let mut cur = String::new();
            let mut prev_ws = true;
            for ch in text.chars() {
                if ch.is_whitespace() && !prev_ws && !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                prev_ws = ch.is_whitespace();
                cur.push(ch);
            }
            if !cur.is_empty() {
                out.push(cur);
            }
            out
        }
    }
}

/// Sleeps `d` while watching the connection; false when the client closed it.
async fn pause(read: &mut OwnedReadHalf, d: Duration) -> bool {
    let mut byte = [0u8; 1];
    if d.is_zero() {
        // A non-blocking look (no timer: tokio timers tick in milliseconds): has the
        // client already closed?
        return match read.try_read(&mut byte) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        };
    }
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        r = read.read(&mut byte) => !matches!(r, Ok(0) | Err(_)),
    }
}

/// Writes one HTTP chunk; with `split_multibyte`, a line holding a multi-byte character
/// goes out as two chunks cut inside it.
async fn write_line(write: &mut OwnedWriteHalf, line: &str, split_multibyte: bool) -> io::Result<()> {
    let bytes = line.as_bytes();
    let cut = if split_multibyte {
        line.char_indices()
            .find(|(_, c)| c.len_utf8() > 1)
            .map(|(i, _)| i + 1)
    } else {
        None
    };
    match cut {
        Some(cut) => {
            let (a, b) = bytes.split_at(cut);
            write_chunk(write, a).await?;
            tokio::time::sleep(Duration::from_millis(10)).await;
            write_chunk(write, b).await
        }
        None => write_chunk(write, bytes).await,
    }
}

async fn write_chunk(write: &mut OwnedWriteHalf, data: &[u8]) -> io::Result<()> {
    let mut frame = format!("{:x}\r\n", data.len()).into_bytes();
    frame.extend_from_slice(data);
    frame.extend_from_slice(b"\r\n");
    write.write_all(&frame).await?;
    write.flush().await
}

fn token_line(model: &str, content: &str) -> String {
    format!(
        r#"{{"model":{},"created_at":"{}","message":{{"role":"assistant","content":{}}},"done":false}}"#,
        json_string(model),
        now_rfc3339(),
        json_string(content)
    ) + "\n"
}

struct Figures {
    total: Duration,
    load: Duration,
    prompt_tokens: u64,
    eval_count: u64,
    eval: Duration,
}

fn final_line(model: &str, content: &str, done_reason: &str, f: &Figures, streamed: bool) -> String {
    let ns = |d: Duration| d.as_nanos().min(u128::from(u64::MAX));
    format!(
        r#"{{"model":{},"created_at":"{}","message":{{"role":"assistant","content":{}}},"done_reason":{},"done":true,"total_duration":{},"load_duration":{},"prompt_eval_count":{},"prompt_eval_duration":{},"eval_count":{},"eval_duration":{}}}"#,
        json_string(model),
        now_rfc3339(),
        json_string(content),
        json_string(done_reason),
        ns(f.total),
        ns(f.load),
        f.prompt_tokens,
        ns(f.load / 4),
        f.eval_count,
        ns(f.eval)
    ) + if streamed { "\n" } else { "" }
}

/// Serves one chat; true when the connection can be kept.
async fn chat(
    read: &mut OwnedReadHalf,
    write: &mut OwnedWriteHalf,
    json: Option<serde_json::Value>,
    shared: &Shared,
) -> bool {
    let started = Instant::now();
    let Some(request) = json else {
        return respond(
            write,
            400,
            "application/json",
            br#"{"error":"invalid JSON body"}"#,
        )
        .await;
    };
    let model = request
        .get("model")
        .and_then(|m| m.as_str())
        .unwrap_or("")
        .to_string();
    let script = shared.lock().script.clone();
    if !model_known(&script.models, &model) {
        let body = format!(
            r#"{{"error":{}}}"#,
            json_string(&format!("model '{model}' not found"))
        );
        return respond(write, 404, "application/json", body.as_bytes()).await;
    }
    if let Some((status, message)) = &script.http_error {
        let body = format!(r#"{{"error":{}}}"#, json_string(message));
        return respond(write, *status, "application/json", body.as_bytes()).await;
    }
    let index = {
        let mut state = shared.lock();
        state.chat_total += 1;
        if state.chats.len() >= LOG_LIMIT {
            state.chats.pop_front();
        }
        state.chats.push_back(ChatLog {
            request: request.clone(),
            first_token_at: None,
            finished: false,
            disconnected_early_at: None,
        });
        state.chat_total
    };
    let update = |f: &dyn Fn(&mut ChatLog)| {
        let mut state = shared.lock();
        let skip = state.chat_total - index;
        let len = state.chats.len();
        if let Some(entry) = usize::try_from(skip)
            .ok()
            .and_then(|s| len.checked_sub(1 + s))
            .and_then(|i| state.chats.get_mut(i))
        {
            f(entry);
        }
        drop(state);
        shared.changed.notify_all();
    };
    let early = |shared: &Shared| {
        update(&|c: &mut ChatLog| c.disconnected_early_at = Some(Instant::now()));
        shared.lock().early_disconnects += 1;
        shared.changed.notify_all();
    };

    let text = match &script.reply {
        ReplyText::Fixed(t) => t.clone(),
        ReplyText::EchoLastUser => last_user(&request),
    };
    let toks = tokens(&text, script.split);
    let prompt_tokens = request
        .get("messages")
        .and_then(|m| m.as_array())
        .map_or(0, |msgs| {
            msgs.iter()
                .filter_map(|m| m.get("content").and_then(|c| c.as_str()))
                .map(|c| c.chars().count().div_ceil(4) as u64 + 4)
                .sum()
        });
    let streamed = request.get("stream").and_then(|s| s.as_bool()).unwrap_or(true);

    if !pause(read, script.first_token_delay).await {
        early(shared);
        return false;
    }
    let load = started.elapsed();
    // The figures of the final line, as of when it is written.
    let figures = || Figures {
        total: started.elapsed(),
        load,
        prompt_tokens,
        eval_count: toks.len() as u64,
        eval: started.elapsed().saturating_sub(load),
    };
    if !streamed {
        let body = final_line(&model, &text, &script.done_reason, &figures(), false);
        let ok = respond(write, 200, "application/json", body.as_bytes()).await;
        update(&|c: &mut ChatLog| c.finished = true);
        return ok;
    }
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nDate: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        now_rfc3339()
    );
    if write.write_all(head.as_bytes()).await.is_err() {
        early(shared);
        return false;
    }
    for (i, token) in toks.iter().enumerate() {
        if let Some((after, message)) = &script.error_after
            && i == *after
        {
            let line = format!("{{\"error\":{}}}\n", json_string(message));
            let ok = write_line(write, &line, false).await.is_ok() && write_chunk(write, b"").await.is_ok();
            update(&|c: &mut ChatLog| c.finished = true);
            return ok;
        }
        if script.drop_after == Some(i) {
            update(&|c: &mut ChatLog| c.finished = true);
            let _ = write.shutdown().await;
            return false;
        }
        if i > 0 && !pause(read, script.token_delay).await {
            early(shared);
            return false;
        }
        if i == 0 {
            let now = Instant::now();
            update(&|c: &mut ChatLog| c.first_token_at = Some(now));
        }
        if write_line(write, &token_line(&model, token), script.split_multibyte)
            .await
            .is_err()
        {
            early(shared);
            return false;
        }
    }
    if !pause(read, Duration::ZERO).await {
        early(shared);
        return false;
    }
    let ok = write_line(
        write,
        &final_line(&model, "", &script.done_reason, &figures(), true),
        false,
    )
    .await
    .is_ok()
        && write_chunk(write, b"").await.is_ok();
    if ok {
        update(&|c: &mut ChatLog| c.finished = true);
    } else {
        early(shared);
    }
    ok
}

/// The current UTC time as RFC 3339 with nanoseconds, like Ollama's `created_at`.
fn now_rfc3339() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn http(addr: SocketAddr, raw: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(raw.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    fn post_chat(addr: SocketAddr, body: &str) -> String {
        http(
            addr,
            &format!(
                "POST /api/chat HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    }

    #[test]
    fn streams_ndjson_lines_and_a_final_line() {
        let server = OllamaServer::start(Script::default()).unwrap();
        let out = post_chat(
            server.addr(),
            r#"{"model":"test-model","messages":[{"role":"user","content":"Hello big world"}]}"#,
        );
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("Content-Type: application/x-ndjson"));
        assert!(out.contains("Transfer-Encoding: chunked"));
        let lines: Vec<serde_json::Value> = out
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        let text: String = lines
            .iter()
            .map(|l| l["message"]["content"].as_str().unwrap())
            .collect();
        assert_eq!(text, "Hello big world");
        assert_eq!(lines[1]["message"]["content"], " big");
        assert_eq!(lines[0]["done"], false);
        assert_eq!(lines[0]["message"]["role"], "assistant");
        let last = &lines[3];
        assert_eq!(last["done"], true);
        assert_eq!(last["done_reason"], "stop");
        assert_eq!(last["eval_count"], 3);
        for f in [
            "total_duration",
            "load_duration",
            "prompt_eval_count",
            "prompt_eval_duration",
            "eval_duration",
        ] {
            assert!(last[f].is_u64(), "{f} missing in {last}");
        }
        assert!(out.ends_with("0\r\n\r\n"));
        assert_eq!(server.chat_total(), 1);
        assert_eq!(server.chats()[0].request["model"], "test-model");
        assert!(server.chats()[0].finished);
    }

    #[test]
    fn unknown_model_tags_version_and_non_streamed() {
        let server = OllamaServer::start(Script::reply("Hi.")).unwrap();
        let out = post_chat(server.addr(), r#"{"model":"nope","messages":[]}"#);
        assert!(out.starts_with("HTTP/1.1 404"), "{out}");
        assert!(out.ends_with(r#"{"error":"model 'nope' not found"}"#), "{out}");
        let tags = http(
            server.addr(),
            "GET /api/tags HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        assert!(tags.contains(r#""name":"test-model:latest""#), "{tags}");
        let version = http(
            server.addr(),
            "GET /api/version HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        assert!(version.ends_with(r#"{"version":"0.12.6"}"#));
        let whole = post_chat(
            server.addr(),
            r#"{"model":"test-model:latest","stream":false,"messages":[]}"#,
        );
        let body = whole.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["message"]["content"], "Hi.");
        assert_eq!(v["done"], true);
        assert_eq!(server.requests().len(), 4);
    }

    #[test]
    fn timestamps_look_like_ollamas() {
        let t = now_rfc3339();
        assert_eq!(t.len(), "2026-11-25T18:00:00.123456789Z".len(), "{t}");
        assert!(t.starts_with("20"));
    }

    #[test]
    fn drop_joins_the_thread() {
        let mut server = OllamaServer::start(Script::default()).unwrap();
        let addr = server.addr();
        assert!(server.shutdown(Instant::now() + Duration::from_secs(5)));
        assert!(server.shutdown(Instant::now()));
        assert!(std::net::TcpStream::connect(addr).is_err());
    }
}
