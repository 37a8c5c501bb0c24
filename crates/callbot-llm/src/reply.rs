//! A streamed reply: deltas on a bounded channel, cancellable at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

use crate::chunker::{ChunkerConfig, SentenceChunker};
use crate::error::LlmError;

/// Figures of a finished reply: what the server reported on its final line and what we
/// measured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplyStats {
    /// Why the model stopped (`"stop"`, `"length"` when `num_predict` was reached, ...).
    pub done_reason: Option<String>,
    /// Server: time spent on the whole request.
    pub total_duration: Option<Duration>,
    /// Server: time spent loading the model.
    pub load_duration: Option<Duration>,
    /// Server: tokens in the prompt.
    pub prompt_eval_count: Option<u64>,
    /// Server: time spent evaluating the prompt.
    pub prompt_eval_duration: Option<Duration>,
    /// Server: tokens generated.
    pub eval_count: Option<u64>,
    /// Server: time spent generating.
    pub eval_duration: Option<Duration>,
    /// Ours: from the start of the request to the first reply text.
    pub time_to_first_token: Option<Duration>,
    /// Ours: from the start of the request to the final line.
    pub elapsed: Duration,
    /// Ours: bytes of reply text received.
    pub text_bytes: usize,
}

/// One event of a streamed reply. A reply ends with exactly one `Done` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyEvent {
    /// More reply text (a token or a few), never empty, always whole characters.
    Delta(String),
    /// The reply is complete.
    Done(ReplyStats),
    /// The reply failed; the deltas received before stay valid (they may have been
    /// spoken already).
    Failed(LlmError),
}

/// Cancellation shared by a [`Reply`] and whatever produces it.
#[derive(Debug, Default)]
pub(crate) struct CancelState {
    cancelled: AtomicBool,
    notify: tokio::sync::Notify,
    /// The final error when it could not be queued (the consumer never made room).
    undelivered: std::sync::Mutex<Option<LlmError>>,
}

impl CancelState {
    pub(crate) fn cancel(&self) -> bool {
        let first = !self.cancelled.swap(true, Ordering::SeqCst);
        // notify_one stores a permit when nobody waits yet, so the producer cannot miss it.
        self.notify.notify_one();
        first
    }

    pub(crate) fn set_undelivered(&self, error: LlmError) {
        if let Ok(mut slot) = self.undelivered.lock() {
            *slot = Some(error);
        }
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Resolves once cancelled.
    pub(crate) async fn cancelled(&self) {
        while !self.is_cancelled() {
            self.notify.notified().await;
        }
    }
}

/// Outcome of [`ReplySender::try_send`].
pub(crate) enum TrySend {
    Sent,
    /// The channel is full: the event comes back.
    Full(ReplyEvent),
    /// The consumer is gone.
    Gone,
}

/// The producing end of a reply, for [`crate::ChatModel`] implementations other than
/// [`crate::OllamaChat`] (test doubles, other back ends). Create it with [`Reply::channel`].
#[derive(Debug)]
pub struct ReplySender {
    tx: Sender<ReplyEvent>,
    cancel: Arc<CancelState>,
}

impl ReplySender {
    /// True once the consumer cancelled or dropped the reply: stop producing.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Sends an event, waiting at most `timeout` for room in the channel.
    /// Fails with [`LlmError::Cancelled`] when the reply was cancelled or dropped and
    /// with [`LlmError::Timeout`] (stage `Total`) when the consumer does not read.
    pub fn send(&self, event: ReplyEvent, timeout: Duration) -> Result<(), LlmError> {
        if self.is_cancelled() {
            return Err(LlmError::Cancelled);
        }
        match self.tx.send_timeout(event, timeout) {
            Ok(()) => Ok(()),
            Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => Err(LlmError::Cancelled),
            Err(crossbeam_channel::SendTimeoutError::Timeout(_)) => Err(LlmError::Timeout {
                stage: crate::TimeoutStage::Total,
            }),
        }
    }

    /// Sends without waiting.
    pub(crate) fn try_send(&self, event: ReplyEvent) -> TrySend {
        match self.tx.try_send(event) {
            Ok(()) => TrySend::Sent,
            Err(TrySendError::Full(e)) => TrySend::Full(e),
            Err(TrySendError::Disconnected(_)) => TrySend::Gone,
        }
    }

    pub(crate) fn cancel_state(&self) -> &Arc<CancelState> {
        &self.cancel
    }
}

/// A reply being streamed: receive its events, cancel it at once.
///
/// Dropping a `Reply` cancels it. When the producer goes away without a final event
/// (the client was shut down), the reply ends with [`LlmError::Shutdown`].
#[derive(Debug)]
pub struct Reply {
    rx: Receiver<ReplyEvent>,
    cancel: Arc<CancelState>,
    started: Instant,
    finished: bool,
}

impl Reply {
    /// A bounded reply channel (`capacity` events, at least 1): the [`ReplySender`]
    /// produces, the [`Reply`] consumes.
    pub fn channel(capacity: usize) -> (ReplySender, Reply) {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        let cancel = Arc::new(CancelState::default());
        (
            ReplySender {
                tx,
                cancel: Arc::clone(&cancel),
            },
            Reply {
                rx,
                cancel,
                started: Instant::now(),
                finished: false,
            },
        )
    }

    /// Waits for the next event. After the final event (`Done` or `Failed`) it returns
    /// `None`. Bounded by the producer's own deadlines (the total timeout for Ollama).
    pub fn recv(&mut self) -> Option<ReplyEvent> {
        if self.finished {
            return None;
        }
        let event = self.rx.recv().unwrap_or_else(|_| ReplyEvent::Failed(self.gone()));
        Some(self.track(event))
    }

    /// Like [`Reply::recv`], waiting at most `timeout`: `Err(())` when nothing came in
    /// time (`Duration::ZERO` polls).
    #[allow(clippy::result_unit_err)]
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<ReplyEvent>, ()> {
        if self.finished {
            return Ok(None);
        }
        let event = match self.rx.recv_timeout(timeout) {
            Ok(e) => e,
            Err(RecvTimeoutError::Timeout) => return Err(()),
            Err(RecvTimeoutError::Disconnected) => ReplyEvent::Failed(self.gone()),
        };
        Ok(Some(self.track(event)))
    }

    /// The raw event channel, for `crossbeam_channel::select!` with other channels.
    /// A disconnected channel without a final event means the client shut down.
    pub fn events(&self) -> &Receiver<ReplyEvent> {
        &self.rx
    }

    /// Cancels the reply at once: the producer stops and (for Ollama) the HTTP
    /// connection is dropped. Idempotent. Events already queued stay readable.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// True once [`Reply::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// When the reply was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Waits for the whole reply: its text and figures, or the first error.
    pub fn collect_text(mut self) -> Result<(String, ReplyStats), LlmError> {
        let mut text = String::new();
        while let Some(event) = self.recv() {
            match event {
                ReplyEvent::Delta(d) => text.push_str(&d),
                ReplyEvent::Done(stats) => return Ok((text, stats)),
                ReplyEvent::Failed(e) => return Err(e),
            }
        }
        Err(LlmError::Shutdown)
    }

    /// Turns the reply into an iterator of speakable pieces (see [`SentenceChunker`]).
    pub fn sentences(self, config: ChunkerConfig) -> Sentences {
        Sentences {
            reply: self,
            chunker: SentenceChunker::new(config),
            queue: std::collections::VecDeque::new(),
            stats: None,
            ended: false,
        }
    }

    fn gone(&self) -> LlmError {
        if let Some(e) = self.cancel.undelivered.lock().ok().and_then(|s| s.clone()) {
            e
        } else if self.cancel.is_cancelled() {
            LlmError::Cancelled
        } else {
            LlmError::Shutdown
        }
    }

    fn track(&mut self, event: ReplyEvent) -> ReplyEvent {
        if matches!(event, ReplyEvent::Done(_) | ReplyEvent::Failed(_)) {
            self.finished = true;
        }
        event
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A reply as speakable pieces: `Ok(piece)` as each sentence completes, then `None`
/// after the last piece, or one `Err` when the reply failed (pieces before it stay
/// valid; the unfinished sentence at the failure is dropped, not spoken half).
#[derive(Debug)]
pub struct Sentences {
    reply: Reply,
    chunker: SentenceChunker,
    queue: std::collections::VecDeque<String>,
    stats: Option<ReplyStats>,
    ended: bool,
}

impl Sentences {
    /// Cancels the underlying reply (see [`Reply::cancel`]).
    pub fn cancel(&self) {
        self.reply.cancel();
    }

    /// The final figures, once the reply is complete.
    pub fn stats(&self) -> Option<&ReplyStats> {
        self.stats.as_ref()
    }

    /// Text received but not yet handed out as a piece.
    pub fn pending(&self) -> &str {
        self.chunker.pending()
    }
}

impl Iterator for Sentences {
    type Item = Result<String, LlmError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(piece) = self.queue.pop_front() {
                return Some(Ok(piece));
            }
            if self.ended {
                return None;
            }
            match self.reply.recv() {
                Some(ReplyEvent::Delta(d)) => self.queue.extend(self.chunker.push(&d)),
                Some(ReplyEvent::Done(stats)) => {
                    self.stats = Some(stats);
                    self.ended = true;
                    self.queue.extend(self.chunker.finish());
                }
                Some(ReplyEvent::Failed(e)) => {
                    self.ended = true;
                    self.chunker.reset();
                    return Some(Err(e));
                }
                None => self.ended = true,
            }
        }
    }
}
