//! The Ollama handle: one HTTP client and one tokio runtime for its whole life.

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ollama_rs::generation::chat::ChatMessage;
use ollama_rs::generation::chat::request::ChatMessageRequest;
use ollama_rs::generation::parameters::{KeepAlive as WireKeepAlive, TimeUnit};
use ollama_rs::models::ModelOptions;
use tokio::runtime::Runtime;
use url::Url;

use crate::error::{LlmError, TimeoutStage};
use crate::history::{History, HistoryBudget, Role};
use crate::ndjson::{LineDecoder, WireEvent};
use crate::reply::{CancelState, Reply, ReplyEvent, ReplySender, ReplyStats, TrySend};
use crate::{ChatModel, LlmShutdownReport};

/// How long the model stays loaded in the server's memory after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeepAlive {
    /// The server's default (5 minutes unless `OLLAMA_KEEP_ALIVE` says otherwise).
    #[default]
    ServerDefault,
    /// Keep it loaded until the server stops (`-1`).
    Forever,
    /// Unload it after each reply (`0`).
    UnloadAfterReply,
    /// Keep it loaded this long after each request (whole seconds, at least 1).
    For(Duration),
}

impl KeepAlive {
    fn to_wire(self) -> Option<WireKeepAlive> {
        match self {
            KeepAlive::ServerDefault => None,
            KeepAlive::Forever => Some(WireKeepAlive::Indefinitely),
            KeepAlive::UnloadAfterReply => Some(WireKeepAlive::UnloadOnCompletion),
            KeepAlive::For(d) => Some(WireKeepAlive::Until {
                time: d.as_secs().max(1),
                unit: TimeUnit::Seconds,
            }),
        }
    }
}

/// Model options sent with each request (`None`: the model's default).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ChatOptions {
    /// Sampling temperature (0 = deterministic), finite and `>= 0`.
    pub temperature: Option<f32>,
    /// Maximum tokens to generate (`-1`: unlimited). Keep phone replies short.
    pub num_predict: Option<i32>,
    /// Context window in tokens (`> 0`).
    pub num_ctx: Option<u64>,
}

/// Configuration of an [`OllamaChat`].
#[derive(Debug, Clone, PartialEq)]
pub struct OllamaConfig {
    /// Base URL of the server, e.g. `http://127.0.0.1:11434` (plain `http` only: this
    /// build has no TLS). A path prefix (`http://proxy/ollama`) is kept.
    pub base_url: String,
    /// Model name as the server knows it, e.g. `llama3.2:1b`.
    pub model: String,
    /// System prompt of every conversation ([`ChatModel::new_history`]).
    pub system_prompt: Option<String>,
    /// Model options.
    pub options: ChatOptions,
    /// Model residency on the server.
    pub keep_alive: KeepAlive,
    /// History budget of every conversation.
    pub history_budget: HistoryBudget,
    /// Deadline for establishing the TCP connection.
    pub connect_timeout: Duration,
    /// Deadline from sending the request to the first reply text (covers a model load).
    pub first_token_timeout: Duration,
    /// Deadline for the whole reply.
    pub total_timeout: Duration,
    /// Capacity of each reply's event channel (at least 1).
    pub channel_capacity: usize,
    /// Longest accepted reply line in bytes (a protection against a broken server).
    pub max_line_bytes: usize,
}

impl OllamaConfig {
    /// Defaults for `base_url` and `model`: 2 s connect, 15 s first token (a cold model
    /// load), 60 s total, 64-event channels, 1 MiB lines, no system prompt.
    pub fn new(base_url: &str, model: &str) -> OllamaConfig {
        OllamaConfig {
            base_url: base_url.to_string(),
            model: model.to_string(),
            system_prompt: None,
            options: ChatOptions::default(),
            keep_alive: KeepAlive::ServerDefault,
            history_budget: HistoryBudget::default(),
            connect_timeout: Duration::from_secs(2),
            first_token_timeout: Duration::from_secs(15),
            total_timeout: Duration::from_secs(60),
            channel_capacity: 64,
            max_line_bytes: 1 << 20,
        }
    }

    /// Checks every value; the URL with [`validate_base_url`].
    pub fn validate(&self) -> Result<Url, LlmError> {
        let url = validate_base_url(&self.base_url)?;
        let bad = |m: &str| Err(LlmError::InvalidConfig(m.to_string()));
        if self.model.trim().is_empty() {
            return bad("the model name is empty");
        }
        if let Some(t) = self.options.temperature
            && (!t.is_finite() || t < 0.0)
        {
            return bad("temperature must be finite and >= 0");
        }
        if self.options.num_ctx == Some(0) {
            return bad("num_ctx must be > 0");
        }
        if self.options.num_predict.is_some_and(|n| n < -2 || n == 0) {
            return bad("num_predict must be > 0, -1 (unlimited) or -2 (fill the context)");
        }
        if self.connect_timeout.is_zero()
            || self.first_token_timeout.is_zero()
            || self.total_timeout.is_zero()
        {
            return bad("timeouts must be > 0");
        }
        if self.channel_capacity == 0 || self.max_line_bytes < 64 {
            return bad("channel_capacity must be >= 1 and max_line_bytes >= 64");
        }
        if self.history_budget.max_messages == 0 {
            return bad("the history budget must keep at least one message");
        }
        Ok(url)
    }
}

/// Parses and checks an Ollama base URL without panicking (ollama-rs's `.host()` and
/// `.url()` builders panic on a bad one). Accepts `http://host[:port][/prefix]`;
/// rejects other schemes (`https` needs TLS, which this build leaves out), missing
/// hosts, credentials, queries and fragments. The result ends with `/`, so
/// `api/chat` can be joined to it.
pub fn validate_base_url(base_url: &str) -> Result<Url, LlmError> {
    let invalid = |reason: &str| LlmError::InvalidUrl {
        url: base_url.to_string(),
        reason: reason.to_string(),
    };
    let mut url = Url::parse(base_url.trim()).map_err(|e| invalid(&e.to_string()))?;
    match url.scheme() {
        "http" => {}
        "https" => return Err(invalid("https is not supported (built without TLS)")),
        _ => return Err(invalid("the scheme must be http")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("credentials in the URL are not supported"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("a query or fragment is not allowed"));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// What [`OllamaChat::probe`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Models the server has (`GET /api/tags`).
    pub models: Vec<String>,
    /// True when the configured model is among them (`name` matches `name:latest`).
    pub model_available: bool,
    /// How long the probe took.
    pub elapsed: Duration,
}

/// Live threads of a runtime, counted by its start/stop hooks.
type ThreadCount = Arc<AtomicUsize>;

/// Requests in flight, by id, so that shutdown can cancel them.
type InFlight = Arc<Mutex<HashMap<u64, Arc<CancelState>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A streaming chat client for one Ollama server and model.
///
/// Owns one `reqwest` client (one connection pool) and one multi-thread tokio runtime
/// with one worker thread (`callbot-llm`) for its whole life. See the crate docs.
pub struct OllamaChat {
    config: OllamaConfig,
    chat_url: String,
    ollama: ollama_rs::Ollama,
    client: reqwest::Client,
    runtime: Option<Runtime>,
    in_flight: InFlight,
    next_id: AtomicU64,
    closed: Arc<AtomicBool>,
    threads: ThreadCount,
}

impl std::fmt::Debug for OllamaChat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OllamaChat")
            .field("chat_url", &self.chat_url)
            .field("model", &self.config.model)
            .field("running", &self.runtime.is_some())
            .finish_non_exhaustive()
    }
}

/// Limits of one streamed reply.
#[derive(Debug, Clone)]
struct Limits {
    first_token_timeout: Duration,
    total_timeout: Duration,
    max_line_bytes: usize,
}

impl OllamaChat {
    /// Validates `config`, builds the HTTP client and starts the runtime's worker thread.
    /// Does not contact the server (see [`OllamaChat::probe`]).
    pub fn new(config: OllamaConfig) -> Result<OllamaChat, LlmError> {
        let url = config.validate()?;
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .no_proxy()
            // A redirect would turn the POST into a GET elsewhere: report it instead.
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4)
            .build()
            .map_err(|e| LlmError::InvalidConfig(format!("HTTP client: {}", chain(&e))))?;
        let threads: ThreadCount = Arc::new(AtomicUsize::new(0));
        let (up, down) = (Arc::clone(&threads), Arc::clone(&threads));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(2)
            .thread_keep_alive(Duration::from_secs(10))
            .thread_name("callbot-llm")
            .on_thread_start(move || {
                up.fetch_add(1, Ordering::SeqCst);
            })
            .on_thread_stop(move || {
                down.fetch_sub(1, Ordering::SeqCst);
            })
            .enable_all()
            .build()
            .map_err(|e| LlmError::InvalidConfig(format!("tokio runtime: {e}")))?;
        let ollama = ollama_rs::Ollama::builder()
            .url(url.clone())
            .reqwest_client(client.clone())
            .build();
        let chat_url = format!("{url}api/chat");
        tracing::info!(url = %url, model = %config.model, "LLM client started");
        Ok(OllamaChat {
            config,
            chat_url,
            ollama,
            client,
            runtime: Some(runtime),
            in_flight: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(0),
            closed: Arc::new(AtomicBool::new(false)),
            threads,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &OllamaConfig {
        &self.config
    }

    /// Replies in flight right now.
    pub fn in_flight(&self) -> usize {
        lock(&self.in_flight).len()
    }

    /// Threads the runtime is running now (worker plus any blocking-pool thread).
    pub fn runtime_threads(&self) -> usize {
        self.threads.load(Ordering::SeqCst)
    }

    /// Asks the server which models it has (`GET /api/tags` through ollama-rs), blocking
    /// the calling thread at most `timeout` (call it from a plain thread). Use it at start to fall back (to echo mode, say) when the
    /// server is down: `Err(Unreachable)` / `Err(Timeout{Probe})`, or `Ok` with
    /// `model_available == false` when the model is missing.
    pub fn probe(&self, timeout: Duration) -> Result<Probe, LlmError> {
        let runtime = self.runtime.as_ref().ok_or(LlmError::Shutdown)?;
        let ollama = self.ollama.clone();
        let started = Instant::now();
        let (tx, rx) = crossbeam_channel::bounded(1);
        let task = runtime.spawn(async move {
            let result = match tokio::time::timeout(timeout, ollama.list_local_models()).await {
                Err(_) => Err(LlmError::Timeout {
                    stage: TimeoutStage::Probe,
                }),
                Ok(Ok(models)) => Ok(models.into_iter().map(|m| m.name).collect::<Vec<_>>()),
                Ok(Err(e)) => Err(map_ollama_error(e)),
            };
            let _ = tx.try_send(result);
        });
        let result = match rx.recv_timeout(timeout + Duration::from_millis(200)) {
            Ok(r) => r,
            Err(_) => {
                task.abort();
                Err(LlmError::Timeout {
                    stage: TimeoutStage::Probe,
                })
            }
        };
        let models = result?;
        let model_available = models.iter().any(|m| model_matches(m, &self.config.model));
        Ok(Probe {
            models,
            model_available,
            elapsed: started.elapsed(),
        })
    }

    fn request_body(&self, history: &History) -> Result<Vec<u8>, LlmError> {
        let messages = history
            .messages()
            .map(|m| match m.role {
                Role::System => ChatMessage::system(m.content.clone()),
                Role::User => ChatMessage::user(m.content.clone()),
                Role::Assistant => ChatMessage::assistant(m.content.clone()),
            })
            .collect();
        let mut request = ChatMessageRequest::new(self.config.model.clone(), messages);
        let o = self.config.options;
        if o.temperature.is_some() || o.num_predict.is_some() || o.num_ctx.is_some() {
            let mut options = ModelOptions::default();
            if let Some(t) = o.temperature {
                options = options.temperature(t);
            }
            if let Some(n) = o.num_predict {
                options = options.num_predict(n);
            }
            if let Some(n) = o.num_ctx {
                options = options.num_ctx(n);
            }
            request = request.options(options);
        }
        if let Some(k) = self.config.keep_alive.to_wire() {
            request = request.keep_alive(k);
        }
        // ollama-rs sets its (crate-private) `stream` flag only in its own send methods.
        let mut value = serde_json::to_value(&request)
            .map_err(|e| LlmError::Protocol(format!("request encoding: {e}")))?;
        if let Some(obj) = value.as_object_mut() {
            obj.insert("stream".to_string(), serde_json::Value::Bool(true));
        }
        serde_json::to_vec(&value).map_err(|e| LlmError::Protocol(format!("request encoding: {e}")))
    }

    /// Stops what is in flight and the runtime, within `deadline`. Idempotent: a second
    /// call does nothing and says so. Logs "LLM client shutdown complete".
    pub fn shutdown(&mut self, deadline: Instant) -> LlmShutdownReport {
        let started = Instant::now();
        let Some(runtime) = self.runtime.take() else {
            return LlmShutdownReport {
                already_shut_down: true,
                ..LlmShutdownReport::default()
            };
        };
        self.closed.store(true, Ordering::SeqCst);
        let cancelled: Vec<Arc<CancelState>> = lock(&self.in_flight).values().cloned().collect();
        let cancelled_replies = cancelled.iter().filter(|c| c.cancel()).count();
        // The tasks notice the cancellation on the worker thread and drop their
        // connections; wait for that (bounded) so the server sees a clean close.
        while !lock(&self.in_flight).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let abandoned_replies = lock(&self.in_flight).len();
        let remaining = deadline.saturating_duration_since(Instant::now());
        let waited = if tokio::runtime::Handle::try_current().is_ok() {
            // Blocking inside another runtime would panic: stop without waiting.
            runtime.shutdown_background();
            false
        } else {
            runtime.shutdown_timeout(remaining);
            true
        };
        let threads_left = self.threads.load(Ordering::SeqCst);
        let report = LlmShutdownReport {
            already_shut_down: false,
            cancelled_replies,
            abandoned_replies,
            threads_left,
            waited_for_threads: waited,
            timed_out: threads_left > 0 || abandoned_replies > 0,
            elapsed: started.elapsed(),
        };
        tracing::info!(
            cancelled = report.cancelled_replies,
            abandoned = report.abandoned_replies,
            threads_left = report.threads_left,
            elapsed_ms = report.elapsed.as_secs_f64() * 1e3,
            "LLM client shutdown complete"
        );
        report
    }
}

impl ChatModel for OllamaChat {
    fn new_history(&self) -> History {
        History::new(self.config.system_prompt.as_deref(), self.config.history_budget)
    }

    fn start_reply(&self, history: &History) -> Result<Reply, LlmError> {
        let runtime = match &self.runtime {
            Some(r) if !self.closed.load(Ordering::SeqCst) => r,
            _ => return Err(LlmError::Shutdown),
        };
        let body = self.request_body(history)?;
        let (sender, reply) = Reply::channel(self.config.channel_capacity);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.in_flight).insert(id, Arc::clone(sender.cancel_state()));
        let guard = InFlightGuard {
            id,
            in_flight: Arc::clone(&self.in_flight),
        };
        let job = ReplyJob {
            client: self.client.clone(),
            url: self.chat_url.clone(),
            model: self.config.model.clone(),
            body,
            limits: Limits {
                first_token_timeout: self.config.first_token_timeout,
                total_timeout: self.config.total_timeout,
                max_line_bytes: self.config.max_line_bytes,
            },
        };
        runtime.spawn(job.run(sender, guard));
        Ok(reply)
    }

    fn shutdown(&mut self, deadline: Instant) -> LlmShutdownReport {
        OllamaChat::shutdown(self, deadline)
    }
}

impl Drop for OllamaChat {
    fn drop(&mut self) {
        let _ = self.shutdown(Instant::now() + Duration::from_secs(1));
    }
}

/// Removes a reply from the in-flight table when its task ends or is dropped.
struct InFlightGuard {
    id: u64,
    in_flight: InFlight,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        lock(&self.in_flight).remove(&self.id);
    }
}

struct ReplyJob {
    client: reqwest::Client,
    url: String,
    model: String,
    body: Vec<u8>,
    limits: Limits,
}

impl ReplyJob {
    async fn run(self, sender: ReplySender, in_flight: InFlightGuard) {
        let started = tokio::time::Instant::now();
        let total_deadline = started + self.limits.total_timeout;
        let cancel = Arc::clone(sender.cancel_state());
        // Whichever finishes first: the reply, or the cancellation. Returning drops the
        // response body, which closes the HTTP connection at once.
        let outcome = tokio::select! {
            biased;
            () = cancel.cancelled() => Err(LlmError::Cancelled),
            r = self.stream(&sender, started) => r,
        };
        let last = match outcome {
            Ok((stats, mut response)) => {
                let delivered = tokio::select! {
                    biased;
                    () = cancel.cancelled() => false,
                    r = deliver(&sender, ReplyEvent::Done(stats), total_deadline + Duration::from_secs(1)) => r.is_ok(),
                };
                drop(in_flight);
                if delivered {
                    // Read the end of the chunked body (normally already buffered) so
                    // the connection goes back to the pool instead of being closed.
                    let drain = async { while let Ok(Some(_)) = response.chunk().await {} };
                    let _ = tokio::time::timeout(Duration::from_millis(250), drain).await;
                }
                return;
            }
            Err(LlmError::Cancelled) => {
                tracing::debug!("reply cancelled");
                // The consumer is gone or will not read: do not wait for room.
                let _ = sender.try_send(ReplyEvent::Failed(LlmError::Cancelled));
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "LLM reply failed");
                ReplyEvent::Failed(e)
            }
        };
        let error = match &last {
            ReplyEvent::Failed(e) => e.clone(),
            _ => LlmError::Cancelled,
        };
        tokio::select! {
            biased;
            () = cancel.cancelled() => {}
            r = deliver(&sender, last, total_deadline + Duration::from_secs(1)) => {
                if r.is_err() {
                    // The consumer sees it once it has drained the channel.
                    cancel.set_undelivered(error);
                }
            }
        }
    }

    async fn stream(
        &self,
        sender: &ReplySender,
        started: tokio::time::Instant,
    ) -> Result<(ReplyStats, reqwest::Response), LlmError> {
        let total_deadline = started + self.limits.total_timeout;
        let first_deadline = started + self.limits.first_token_timeout;
        let (wait_first, first_stage) = if first_deadline <= total_deadline {
            (first_deadline, TimeoutStage::FirstToken)
        } else {
            (total_deadline, TimeoutStage::Total)
        };
        let request = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/x-ndjson")
            .body(self.body.clone())
            .send();
        let mut response = match tokio::time::timeout_at(wait_first, request).await {
            Err(_) => return Err(LlmError::Timeout { stage: first_stage }),
            Ok(Err(e)) => return Err(map_reqwest_error(&e)),
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        if !status.is_success() {
            let message = read_error_body(&mut response, wait_first).await;
            return Err(if status == reqwest::StatusCode::NOT_FOUND {
                LlmError::ModelNotFound(format!("{} ({message})", self.model))
            } else {
                LlmError::Server(format!("HTTP {}: {message}", status.as_u16()))
            });
        }
        let mut decoder = LineDecoder::new(self.limits.max_line_bytes);
        let mut events = Vec::new();
        let mut first_text: Option<Duration> = None;
        let mut text_bytes = 0usize;
        loop {
            let (deadline, stage) = if first_text.is_none() {
                (wait_first, first_stage)
            } else {
                (total_deadline, TimeoutStage::Total)
            };
            let chunk = match tokio::time::timeout_at(deadline, response.chunk()).await {
                Err(_) => return Err(LlmError::Timeout { stage }),
                Ok(Err(e)) => return Err(LlmError::Disconnected(chain(&e))),
                Ok(Ok(c)) => c,
            };
            match &chunk {
                Some(bytes) => decoder.push(bytes, &mut events)?,
                None => decoder.finish(&mut events)?,
            }
            for event in events.drain(..) {
                match event {
                    WireEvent::Delta(text) if text.is_empty() => {}
                    WireEvent::Delta(text) => {
                        if first_text.is_none() {
                            first_text = Some(started.elapsed());
                        }
                        text_bytes += text.len();
                        deliver(sender, ReplyEvent::Delta(text), total_deadline).await?;
                    }
                    WireEvent::Done(mut stats) => {
                        stats.time_to_first_token = first_text;
                        stats.elapsed = started.elapsed();
                        stats.text_bytes = text_bytes;
                        return Ok((stats, response));
                    }
                    WireEvent::Error(message) => return Err(LlmError::Server(message)),
                }
            }
            if chunk.is_none() {
                return Err(LlmError::Disconnected(
                    "the stream ended without its final line".to_string(),
                ));
            }
        }
    }
}

/// Puts an event in the bounded channel, waiting for room until `deadline`.
/// (crossbeam's blocking send would block the runtime's worker thread.)
async fn deliver(
    sender: &ReplySender,
    mut event: ReplyEvent,
    deadline: tokio::time::Instant,
) -> Result<(), LlmError> {
    let mut pause = Duration::from_micros(200);
    loop {
        match sender.try_send(event) {
            TrySend::Sent => return Ok(()),
            TrySend::Gone => return Err(LlmError::Cancelled),
            TrySend::Full(back) => event = back,
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(LlmError::Timeout {
                stage: TimeoutStage::Total,
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

/// The `error` of an error body (`{"error":"..."}`), or the body itself, at most 4 KiB.
async fn read_error_body(response: &mut reqwest::Response, deadline: tokio::time::Instant) -> String {
    let mut body = Vec::new();
    while body.len() < 4096 {
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(b))) => body.extend_from_slice(&b),
            _ => break,
        }
    }
    body.truncate(4096);
    match serde_json::from_slice::<ollama_rs::error::InternalOllamaError>(&body) {
        Ok(e) => e.message,
        Err(_) => String::from_utf8_lossy(&body).trim().to_string(),
    }
}

fn model_matches(server_name: &str, wanted: &str) -> bool {
    server_name == wanted || (!wanted.contains(':') && server_name.strip_suffix(":latest") == Some(wanted))
}

/// An error and its sources, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

fn map_reqwest_error(e: &reqwest::Error) -> LlmError {
    if e.is_connect() {
        if e.is_timeout() {
            LlmError::Timeout {
                stage: TimeoutStage::Connect,
            }
        } else {
            LlmError::Unreachable(chain(e))
        }
    } else if e.is_timeout() {
        LlmError::Timeout {
            stage: TimeoutStage::Total,
        }
    } else if e.is_decode() || e.is_body() {
        LlmError::Protocol(chain(e))
    } else {
        // Sent, then the connection broke before the response head.
        match e.source() {
            Some(_) => LlmError::Disconnected(chain(e)),
            None => LlmError::Unreachable(chain(e)),
        }
    }
}

fn map_ollama_error(e: ollama_rs::error::OllamaError) -> LlmError {
    use ollama_rs::error::OllamaError;
    match e {
        OllamaError::ReqwestError(e) => map_reqwest_error(&e),
        OllamaError::JsonError(e) => LlmError::Protocol(e.to_string()),
        OllamaError::InternalError(e) => LlmError::Server(e.message),
        OllamaError::Other(text) => LlmError::Server(text),
        other => LlmError::Server(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_validated_without_panicking() {
        let ok = validate_base_url("http://127.0.0.1:11434").unwrap();
        assert_eq!(ok.as_str(), "http://127.0.0.1:11434/");
        let prefixed = validate_base_url("http://proxy.local/ollama").unwrap();
        assert_eq!(
            format!("{prefixed}api/chat"),
            "http://proxy.local/ollama/api/chat"
        );
        for bad in [
            "",
            "localhost:11434",
            "127.0.0.1:11434",
            "ftp://host/",
            "https://host/",
            "http://",
            "http://user:pw@host/",
            "http://host/?q=1",
            "http://host/#x",
            "http://[::1",
            "not a url at all",
        ] {
            assert!(
                matches!(validate_base_url(bad), Err(LlmError::InvalidUrl { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn config_values_are_checked() {
        let ok = OllamaConfig::new("http://127.0.0.1:1", "m");
        assert!(ok.validate().is_ok());
        let mut c = ok.clone();
        c.model = " ".into();
        assert!(matches!(c.validate(), Err(LlmError::InvalidConfig(_))));
        let mut c = ok.clone();
        c.options.temperature = Some(f32::NAN);
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.total_timeout = Duration::ZERO;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.options.num_ctx = Some(0);
        assert!(c.validate().is_err());
        let mut c = ok;
        c.base_url = "http//x".into();
        assert!(matches!(OllamaChat::new(c), Err(LlmError::InvalidUrl { .. })));
    }

    #[test]
    fn request_body_uses_ollama_fields() {
        let mut config = OllamaConfig::new("http://127.0.0.1:1", "llama3.2:1b");
        config.system_prompt = Some("Be brief.".into());
        config.options = ChatOptions {
            temperature: Some(0.5),
            num_predict: Some(64),
            num_ctx: Some(2048),
        };
        config.keep_alive = KeepAlive::For(Duration::from_secs(300));
        let chat = OllamaChat::new(config).unwrap();
        let mut h = chat.new_history();
        h.push_user("Hi");
        let v: serde_json::Value = serde_json::from_slice(&chat.request_body(&h).unwrap()).unwrap();
        assert_eq!(v["model"], "llama3.2:1b");
        assert_eq!(v["stream"], true);
        assert_eq!(v["keep_alive"], "300s");
        assert_eq!(v["options"]["temperature"], 0.5);
        assert_eq!(v["options"]["num_predict"], 64);
        assert_eq!(v["options"]["num_ctx"], 2048);
        assert_eq!(v["messages"][0]["role"], "system");
        assert_eq!(v["messages"][0]["content"], "Be brief.");
        assert_eq!(v["messages"][1]["role"], "user");
        assert_eq!(v["messages"][1]["content"], "Hi");
    }

    #[test]
    fn model_names_match_latest_tag() {
        assert!(model_matches("llama3.2:latest", "llama3.2"));
        assert!(model_matches("llama3.2:1b", "llama3.2:1b"));
        assert!(!model_matches("llama3.2:1b", "llama3.2"));
        assert!(!model_matches("llama3.2:latest", "llama3"));
    }

    #[test]
    fn shutdown_is_idempotent_and_drop_is_safe() {
        let mut chat = OllamaChat::new(OllamaConfig::new("http://127.0.0.1:1", "m")).unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        while chat.runtime_threads() == 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(chat.runtime_threads(), 1);
        let first = chat.shutdown(Instant::now() + Duration::from_secs(2));
        assert!(!first.already_shut_down);
        assert_eq!(first.threads_left, 0, "{first:?}");
        assert!(!first.timed_out);
        let second = chat.shutdown(Instant::now() + Duration::from_secs(2));
        assert!(second.already_shut_down);
        let h = chat.new_history();
        assert_eq!(chat.start_reply(&h).err(), Some(LlmError::Shutdown));
        assert_eq!(
            chat.probe(Duration::from_millis(10)).err(),
            Some(LlmError::Shutdown)
        );
    }
}
