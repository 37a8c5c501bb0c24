//! [`LocalSpeaker`]: speak aloud on this machine through speech-dispatcher (`tts`).

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

/// Why the local speaker failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalSpeakerError {
    /// speech-dispatcher could not be reached (not installed, not running, no session).
    #[error("speech-dispatcher is not available ({0}); install and start speech-dispatcher to speak locally")]
    Unavailable(String),
    /// speech-dispatcher did not answer within the timeout.
    #[error("speech-dispatcher did not answer within {0:?}")]
    Timeout(Duration),
    /// speech-dispatcher refused a command.
    #[error("speech-dispatcher error: {0}")]
    Speech(String),
    /// The text was empty or longer than [`LocalSpeaker::MAX_TEXT_BYTES`].
    #[error("text must be 1..={} bytes", LocalSpeaker::MAX_TEXT_BYTES)]
    InvalidText,
    /// The speaker was shut down.
    #[error("the local speaker is shut down")]
    Stopped,
    /// The worker thread could not be started.
    #[error("could not start the local speaker thread: {0}")]
    Spawn(String),
}

/// What [`LocalSpeaker::shutdown`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocalSpeakerReport {
    /// True when an earlier call already shut it down.
    pub already_shut_down: bool,
    /// True when the worker thread was joined.
    pub worker_joined: bool,
    /// True when the deadline passed first.
    pub timed_out: bool,
    /// Time the shutdown took.
    pub elapsed: Duration,
}

type Reply = Sender<Result<(), LocalSpeakerError>>;

enum Command {
    Speak {
        text: String,
        interrupt: bool,
        reply: Reply,
    },
    Stop {
        reply: Reply,
    },
}

/// Speaks text aloud on the local sound card through speech-dispatcher.
///
/// Owns one named thread, `callbot-local-speaker`, which owns the `tts::Tts` connection
/// (that type is built on `Rc`, so it stays on one thread). Commands go to it on a
/// bounded channel and each waits a bounded time for its answer. `shutdown(deadline)`
/// stops speech, closes the connection and joins the thread; `Drop` calls it.
/// This produces no samples: for call audio use a [`crate::Synthesizer`].
#[derive(Debug)]
pub struct LocalSpeaker {
    commands: Option<Sender<Command>>,
    exit: Receiver<()>,
    worker: Option<JoinHandle<()>>,
    timeout: Duration,
}

impl LocalSpeaker {
    /// Longest accepted text in bytes.
    pub const MAX_TEXT_BYTES: usize = 16 * 1024;

    /// Connects to speech-dispatcher, waiting at most `timeout` (for the connection and,
    /// later, for each command's answer). Without a reachable speech-dispatcher this
    /// returns [`LocalSpeakerError::Unavailable`].
    pub fn new(timeout: Duration) -> Result<LocalSpeaker, LocalSpeakerError> {
        let (cmd_tx, cmd_rx) = crossbeam_channel::bounded::<Command>(16);
        let (init_tx, init_rx) = crossbeam_channel::bounded::<Result<(), LocalSpeakerError>>(1);
        let (exit_tx, exit_rx) = crossbeam_channel::bounded::<()>(1);
        let worker = std::thread::Builder::new()
            .name("callbot-local-speaker".into())
            .spawn(move || worker_main(cmd_rx, init_tx, exit_tx))
            .map_err(|e| LocalSpeakerError::Spawn(e.to_string()))?;
        match init_rx.recv_timeout(timeout) {
            Ok(Ok(())) => Ok(LocalSpeaker {
                commands: Some(cmd_tx),
                exit: exit_rx,
                worker: Some(worker),
                timeout,
            }),
            Ok(Err(e)) => {
                // The worker has already given up and exits now.
                let _ = exit_rx.recv_timeout(timeout);
                let _ = worker.join();
                Err(e)
            }
            Err(_) => {
                // Dropping the command sender makes the worker exit as soon as
                // libspeechd's connect returns; it owns nothing else.
                drop(cmd_tx);
                if exit_rx.recv_timeout(timeout).is_ok() {
                    let _ = worker.join();
                }
                Err(LocalSpeakerError::Timeout(timeout))
            }
        }
    }

    /// Queues `text` to be spoken (interrupting current speech when `interrupt`).
    /// Returns once speech-dispatcher accepted it, not when speech ends.
    pub fn speak(&self, text: &str, interrupt: bool) -> Result<(), LocalSpeakerError> {
        if text.trim().is_empty() || text.len() > Self::MAX_TEXT_BYTES {
            return Err(LocalSpeakerError::InvalidText);
        }
        self.call(|reply| Command::Speak {
            text: text.to_string(),
            interrupt,
            reply,
        })
    }

    /// Stops the current speech.
    pub fn stop(&self) -> Result<(), LocalSpeakerError> {
        self.call(|reply| Command::Stop { reply })
    }

    fn call(&self, make: impl FnOnce(Reply) -> Command) -> Result<(), LocalSpeakerError> {
        let commands = self.commands.as_ref().ok_or(LocalSpeakerError::Stopped)?;
        let (tx, rx) = crossbeam_channel::bounded(1);
        commands
            .send_timeout(make(tx), self.timeout)
            .map_err(|e| match e {
                crossbeam_channel::SendTimeoutError::Timeout(_) => LocalSpeakerError::Timeout(self.timeout),
                crossbeam_channel::SendTimeoutError::Disconnected(_) => LocalSpeakerError::Stopped,
            })?;
        rx.recv_timeout(self.timeout).map_err(|e| match e {
            crossbeam_channel::RecvTimeoutError::Timeout => LocalSpeakerError::Timeout(self.timeout),
            crossbeam_channel::RecvTimeoutError::Disconnected => LocalSpeakerError::Stopped,
        })?
    }

    /// Stops speech, closes the speech-dispatcher connection and joins the thread,
    /// bounded by `deadline`. Idempotent.
    pub fn shutdown(&mut self, deadline: Instant) -> LocalSpeakerReport {
        let started = Instant::now();
        let Some(commands) = self.commands.take() else {
            return LocalSpeakerReport {
                already_shut_down: true,
                ..Default::default()
            };
        };
        drop(commands);
        let mut report = LocalSpeakerReport::default();
        match self
            .exit
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(()) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                if let Some(worker) = self.worker.take() {
                    report.worker_joined = worker.join().is_ok();
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => report.timed_out = true,
        }
        report.elapsed = started.elapsed();
        tracing::info!(?report, "local speaker shut down");
        report
    }
}

impl Drop for LocalSpeaker {
    fn drop(&mut self) {
        self.shutdown(Instant::now() + Duration::from_secs(2));
    }
}

fn worker_main(commands: Receiver<Command>, init: Sender<Result<(), LocalSpeakerError>>, exit: Sender<()>) {
    let mut tts = match tts::Tts::default() {
        Ok(tts) => tts,
        Err(e) => {
            let _ = init.send(Err(LocalSpeakerError::Unavailable(e.to_string())));
            let _ = exit.send(());
            return;
        }
    };
    if init.send(Ok(())).is_ok() {
        for command in commands.iter() {
            match command {
                Command::Speak {
                    text,
                    interrupt,
                    reply,
                } => {
                    let result = tts.speak(text, interrupt).map(|_| ()).map_err(speech_error);
                    let _ = reply.send(result);
                }
                Command::Stop { reply } => {
                    let result = tts.stop().map(|_| ()).map_err(speech_error);
                    let _ = reply.send(result);
                }
            }
        }
        let _ = tts.stop();
    }
    drop(tts);
    let _ = exit.send(());
}

fn speech_error(e: tts::Error) -> LocalSpeakerError {
    LocalSpeakerError::Speech(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// There is no speech-dispatcher daemon on the build machines: construction must
    /// fail with the clear error, promptly, without a panic or a hang.
    #[test]
    fn without_speech_dispatcher_new_returns_a_clear_error() {
        let daemon_present = callbot_testkit::tools::find("speech-dispatcher").is_some();
        let started = Instant::now();
        let result = LocalSpeaker::new(Duration::from_secs(10));
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_secs(11), "took {elapsed:?}");
        match result {
            Err(LocalSpeakerError::Unavailable(why)) => {
                assert!(!why.is_empty());
                let msg = LocalSpeakerError::Unavailable(why).to_string();
                assert!(msg.contains("speech-dispatcher is not available"), "{msg}");
            }
            Ok(mut speaker) => {
                assert!(
                    daemon_present,
                    "connected although no speech-dispatcher is installed"
                );
                let report = speaker.shutdown(Instant::now() + Duration::from_secs(5));
                assert!(report.worker_joined);
                assert!(speaker.shutdown(Instant::now()).already_shut_down);
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
}
