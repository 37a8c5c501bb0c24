//! [`WhisperTranscriber`]: one whisper.cpp model shared by a bounded pool of worker threads.

use std::collections::HashMap;
use std::ffi::c_void;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use whisper_rs::{FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters, WhisperState};

use crate::error::SttError;
use crate::job::{
    AudioWindow, Decoding, JobCompletion, JobControl, JobTimings, MAX_UTTERANCE, MIN_UTTERANCE, SAMPLE_RATE,
    Segment, SttShutdownReport, TranscribeOptions, Transcriber, Transcript, TranscriptionJob,
    TranscriptionRequest, job_channel, samples_to_duration,
};
use crate::model_file::{ModelInfo, validate_model_file};

/// Encoder frames per second of audio (Whisper: one frame per 20 ms).
const FRAMES_PER_SECOND: usize = 50;
/// Frames added to the utterance length by [`AudioWindow::Auto`] (2.56 s of padding).
const AUTO_MARGIN_FRAMES: usize = 128;
/// Smallest window [`AudioWindow::Auto`] uses (15.36 s): smaller ones cost accuracy.
const AUTO_MIN_FRAMES: usize = 768;
/// The auto window is a multiple of this many frames.
const AUTO_ROUND_FRAMES: usize = 64;
/// Silence appended to every utterance before whisper sees it (0.5 s). Without it
/// whisper.cpp often drops a last word that ends right at the end of the audio ("my account
/// number is four five six seven eight" came back without "eight"): it only keeps text
/// whose timestamps fall inside the audio it was given. Costs nothing measurable: the
/// window is sized from the padded length and 3-4 s turns keep the 768-frame minimum.
const TRAILING_SILENCE: usize = SAMPLE_RATE as usize / 2;
/// Longest initial prompt accepted, in bytes.
const MAX_PROMPT_BYTES: usize = 1000;
/// Deadline used by `Drop`.
const DROP_SHUTDOWN: Duration = Duration::from_secs(2);
/// How long `new` waits for the workers to allocate their states.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Configuration of a [`WhisperTranscriber`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhisperConfig {
    /// The ggml model file (e.g. `ggml-tiny.en.bin`).
    pub model_path: PathBuf,
    /// Worker threads, i.e. jobs run at the same time (1..=64). Each holds one whisper state
    /// at a time (the running job's, or the one ready for its next job).
    pub workers: usize,
    /// Jobs that may wait for a worker (1..=10,000); beyond it `submit` fails with
    /// [`SttError::QueueFull`].
    pub queue_capacity: usize,
    /// Compute threads per job unless the request says otherwise (1..=64).
    pub threads_per_job: usize,
    /// Deadline of requests that carry none, counted from submission.
    pub default_timeout: Duration,
    /// How long [`shutdown`](Transcriber::shutdown) waits, after its deadline, for aborted
    /// jobs to return. The vendored whisper.cpp checks the abort flag between graph nodes
    /// (`vendor/whisper-rs-sys/PATCHES.md`), so an aborted job returns within milliseconds;
    /// the grace only matters on a badly overloaded machine. A worker still busy after it is
    /// reported in [`SttShutdownReport::workers_not_joined`] and waited for again by the
    /// next `shutdown` call or `Drop`.
    pub abort_grace: Duration,
}

impl WhisperConfig {
    /// Defaults for this machine: one worker per two cores, the cores split between the
    /// workers (on 2 cores: 1 worker with 2 threads), a queue of 8, 30 s job timeout.
    pub fn new(model_path: impl Into<PathBuf>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let workers = (cores / 2).max(1);
        Self {
            model_path: model_path.into(),
            workers,
            queue_capacity: 8,
            threads_per_job: (cores / workers).clamp(1, 4),
            default_timeout: Duration::from_secs(30),
            abort_grace: Duration::from_secs(1),
        }
    }

    fn validate(&self) -> Result<(), SttError> {
        let bad = |m: String| Err(SttError::InvalidConfig(m));
        if !(1..=64).contains(&self.workers) {
            return bad(format!("workers = {} (1..=64)", self.workers));
        }
        if !(1..=10_000).contains(&self.queue_capacity) {
            return bad(format!("queue_capacity = {} (1..=10000)", self.queue_capacity));
        }
        if !(1..=64).contains(&self.threads_per_job) {
            return bad(format!("threads_per_job = {} (1..=64)", self.threads_per_job));
        }
        if self.default_timeout.is_zero() {
            return bad("default_timeout is zero".into());
        }
        Ok(())
    }
}

/// What the pool shares: the model, and the flags shutdown uses.
struct Shared {
    ctx: WhisperContext,
    /// Set by shutdown: jobs still queued are failed instead of run.
    closing: AtomicBool,
    /// Set by shutdown at its deadline: running jobs abort.
    abort_all: AtomicBool,
    /// Jobs inside whisper right now.
    running: AtomicUsize,
    /// Running jobs that shutdown aborted.
    aborted_by_shutdown: AtomicUsize,
    /// Jobs that ended on their own (not aborted by shutdown) after shutdown began.
    finished_while_closing: AtomicUsize,
    /// Test hook: every job first sleeps this long, deaf to aborts (a stuck whisper call).
    stall_jobs: Option<Duration>,
    /// Test hook: this many jobs still unwind (panic) after whisper returns.
    panic_jobs: AtomicUsize,
    /// Queued jobs a worker failed because shutdown had started.
    cancelled_by_workers: AtomicUsize,
    /// The model's full encoder window in frames.
    n_audio_ctx: usize,
    /// End-of-text token: ids below it are text.
    token_eot: i32,
}

/// Failure injection for tests; `Default` injects nothing.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TestHooks {
    /// This worker reports a state allocation failure after allocating its state, to
    /// exercise the failed-start path with real states alive.
    pub(crate) fail_worker: Option<usize>,
    /// Every job sleeps this long before running whisper, ignoring aborts: a worker stuck
    /// past shutdown's abort grace.
    pub(crate) stall_jobs: Option<Duration>,
    /// The first this many jobs unwind after whisper returns, as a panic while reading the
    /// results would.
    pub(crate) panic_jobs: usize,
}

/// A queued job.
struct Job {
    audio: Vec<f32>,
    options: TranscribeOptions,
    prompt_tokens: Vec<i32>,
    threads: usize,
    completion: JobCompletion,
    submitted: Instant,
}

struct Worker {
    index: usize,
    handle: Option<JoinHandle<()>>,
    done: bool,
}

/// The Whisper speech-to-text handle. See the [crate documentation](crate) for what it owns.
pub struct WhisperTranscriber {
    config: WhisperConfig,
    info: ModelInfo,
    tx: Option<Sender<Job>>,
    rx: Receiver<Job>,
    done_rx: Receiver<usize>,
    workers: Vec<Worker>,
    shared: Option<Arc<Shared>>,
    shut_down: bool,
}

impl std::fmt::Debug for WhisperTranscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperTranscriber")
            .field("config", &self.config)
            .field("info", &self.info)
            .field("shut_down", &self.shut_down)
            .finish_non_exhaustive()
    }
}

impl WhisperTranscriber {
    /// Checks the model file, loads it once, and starts the workers (each allocates its
    /// whisper state before this returns). Fails cleanly (nothing left running, every state
    /// freed before the model) on a missing, foreign or truncated file, a model whisper.cpp
    /// refuses, or a state it cannot allocate.
    pub fn new(config: WhisperConfig) -> Result<Self, SttError> {
        Self::start(config, TestHooks::default())
    }

    /// `hooks`: failure injection for tests (none in production).
    pub(crate) fn start(config: WhisperConfig, hooks: TestHooks) -> Result<Self, SttError> {
        config.validate()?;
        crate::logging::install();
        let info = validate_model_file(&config.model_path)?;
        let t0 = Instant::now();
        let mut params = WhisperContextParameters::default();
        params.use_gpu(false);
        let ctx =
            WhisperContext::new_with_params(&config.model_path, params).map_err(|_| SttError::ModelLoad {
                path: config.model_path.clone(),
            })?;
        let n_audio_ctx = usize::try_from(ctx.n_audio_ctx()).unwrap_or(0).max(1);
        let token_eot = ctx.token_eot();
        let shared = Arc::new(Shared {
            ctx,
            closing: AtomicBool::new(false),
            abort_all: AtomicBool::new(false),
            running: AtomicUsize::new(0),
            aborted_by_shutdown: AtomicUsize::new(0),
            finished_while_closing: AtomicUsize::new(0),
            cancelled_by_workers: AtomicUsize::new(0),
            stall_jobs: hooks.stall_jobs,
            panic_jobs: AtomicUsize::new(hooks.panic_jobs),
            n_audio_ctx,
            token_eot,
        });
        let (tx, rx) = crossbeam_channel::bounded::<Job>(config.queue_capacity);
        let (done_tx, done_rx) = crossbeam_channel::bounded::<usize>(config.workers);
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<(), SttError>>(config.workers);
        let mut this = Self {
            info,
            tx: Some(tx),
            rx: rx.clone(),
            done_rx,
            workers: Vec::with_capacity(config.workers),
            shared: Some(Arc::clone(&shared)),
            shut_down: false,
            config,
        };
        let mut failure: Option<SttError> = None;
        for index in 0..this.config.workers {
            let shared = Arc::clone(&shared);
            let rx = rx.clone();
            let done_tx = done_tx.clone();
            let ready_tx = ready_tx.clone();
            let fail = hooks.fail_worker == Some(index);
            let spawned = std::thread::Builder::new()
                .name(format!("stt-whisper-{index}"))
                .spawn(move || worker_main(index, shared, rx, ready_tx, done_tx, fail));
            match spawned {
                Ok(handle) => this.workers.push(Worker {
                    index,
                    handle: Some(handle),
                    done: false,
                }),
                Err(e) => {
                    failure = Some(SttError::Spawn(e));
                    break;
                }
            }
        }
        drop((shared, rx, done_tx, ready_tx));
        let started = this.workers.len();
        let ready_deadline = Instant::now() + STARTUP_TIMEOUT;
        for _ in 0..started {
            match ready_rx.recv_deadline(ready_deadline) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    failure.get_or_insert(e);
                }
                Err(_) => {
                    failure.get_or_insert(SttError::WorkerLost);
                    break;
                }
            }
        }
        if let Some(err) = failure {
            tracing::warn!(error = %err, "Whisper transcriber start failed; cleaning up");
            let report = this.shutdown(Instant::now() + DROP_SHUTDOWN);
            tracing::debug!(?report, "failed start cleaned up");
            return Err(err);
        }
        tracing::info!(
            model = %this.config.model_path.display(),
            workers = this.config.workers,
            threads_per_job = this.config.threads_per_job,
            load_ms = t0.elapsed().as_millis(),
            "Whisper model loaded"
        );
        Ok(this)
    }

    /// What the model file's header says.
    pub fn model_info(&self) -> &ModelInfo {
        &self.info
    }

    /// The configuration in use.
    pub fn config(&self) -> &WhisperConfig {
        &self.config
    }

    /// Jobs waiting for a worker.
    pub fn queued(&self) -> usize {
        self.rx.len()
    }

    /// Jobs inside whisper right now.
    pub fn running(&self) -> usize {
        self.shared
            .as_ref()
            .map_or(0, |s| s.running.load(Ordering::Acquire))
    }

    /// The encoder window [`AudioWindow::Auto`] picks for `samples` of 16 kHz audio: the
    /// utterance's 20 ms frames plus 128 (2.56 s), rounded up to a multiple of 64, at least
    /// 768 (15.36 s) and at most the model's window (1500 = 30 s). Phone turns up to 12 s
    /// get 768: about half the encoder work of the full window.
    ///
    /// Why 768: on the espeak-ng test sentences (3-4 s) tiny.en scored 16.2 % WER with the
    /// full window, 15.3 % at 768, 18.0 % at 640, 20.7 % at 512 and 24.3 % at 384 and 448
    /// (an earlier test set): smaller windows are faster but lose more than 2 points. On the
    /// five-voice set of `tests/accuracy.rs` (12 sentences by 5 voices, 555 words): 23.6 %
    /// at 768, 24.0 % with the full window (its first set, 111 words: 17.1 % and 25.2 %).
    ///
    /// `samples` is the utterance as submitted: the 0.5 s of silence every job gets
    /// appended (so whisper keeps a last word that ends at the very end) is counted here.
    pub fn audio_ctx_for(&self, samples: usize) -> u16 {
        let full = self.shared.as_ref().map_or(1500, |s| s.n_audio_ctx);
        auto_audio_ctx(samples.saturating_add(TRAILING_SILENCE), full)
    }
}

/// `audio` followed by [`TRAILING_SILENCE`], never beyond one 30 s window.
fn with_trailing_silence(mut audio: Vec<f32>, full_frames: usize) -> Vec<f32> {
    let window = full_frames * (SAMPLE_RATE as usize / FRAMES_PER_SECOND);
    let padded = (audio.len() + TRAILING_SILENCE).min(window.max(audio.len()));
    audio.resize(padded, 0.0);
    audio
}

fn auto_audio_ctx(samples: usize, full: usize) -> u16 {
    let frames = samples.div_ceil(usize::try_from(SAMPLE_RATE).unwrap_or(16_000) / FRAMES_PER_SECOND);
    let ctx =
        ((frames + AUTO_MARGIN_FRAMES).div_ceil(AUTO_ROUND_FRAMES) * AUTO_ROUND_FRAMES).max(AUTO_MIN_FRAMES);
    u16::try_from(ctx.min(full)).unwrap_or(u16::MAX)
}

fn validate_options(options: &TranscribeOptions) -> Result<(), SttError> {
    let bad = |m: String| Err(SttError::InvalidOptions(m));
    let lang = options.language.as_str();
    if lang != "auto" {
        let well_formed = (2..=3).contains(&lang.len()) && lang.bytes().all(|b| b.is_ascii_lowercase());
        if !well_formed || whisper_rs::get_lang_id(lang).is_none() {
            return bad(format!("unknown language {lang:?}"));
        }
    }
    match options.decoding {
        Decoding::Greedy { best_of: n } | Decoding::BeamSearch { beam_size: n } if !(1..=8).contains(&n) => {
            return bad(format!("{:?}: must be 1..=8", options.decoding));
        }
        _ => {}
    }
    if let Some(p) = &options.initial_prompt {
        if p.len() > MAX_PROMPT_BYTES {
            return bad(format!(
                "initial prompt of {} bytes (at most {MAX_PROMPT_BYTES})",
                p.len()
            ));
        }
        if p.contains('\0') {
            return bad("initial prompt contains NUL".into());
        }
    }
    if let Some(t) = options.threads
        && !(1..=64).contains(&t)
    {
        return bad(format!("threads = {t} (1..=64)"));
    }
    if let AudioWindow::Frames(0) = options.window {
        return bad("window of 0 frames".into());
    }
    Ok(())
}

impl Transcriber for WhisperTranscriber {
    fn submit(&self, request: TranscriptionRequest) -> Result<TranscriptionJob, SttError> {
        let submitted = Instant::now();
        let (Some(tx), Some(shared)) = (&self.tx, &self.shared) else {
            return Err(SttError::ShutDown);
        };
        if shared.closing.load(Ordering::Acquire) {
            return Err(SttError::ShutDown);
        }
        let length = request.duration();
        if length > MAX_UTTERANCE {
            return Err(SttError::AudioTooLong {
                length,
                max: MAX_UTTERANCE,
            });
        }
        if let Some(index) = request.audio.iter().position(|s| !s.is_finite()) {
            return Err(SttError::InvalidAudio { index });
        }
        validate_options(&request.options)?;
        let prompt_tokens = match request.options.initial_prompt.as_deref() {
            Some(p) if !p.trim().is_empty() => shared
                .ctx
                // Every token covers at least one byte, so len + 1 slots always suffice
                // (whisper-rs mishandles a too-small buffer).
                .tokenize(p, p.len() + 1)
                .map_err(|e| SttError::InvalidOptions(format!("initial prompt: {e}")))?,
            _ => Vec::new(),
        };
        let deadline = request
            .deadline
            .unwrap_or(submitted + self.config.default_timeout);
        let (job, completion) = job_channel(deadline);
        if length < MIN_UTTERANCE {
            let timings = JobTimings {
                total: submitted.elapsed(),
                ..JobTimings::default()
            };
            completion.complete(Ok(Transcript::empty(length, timings)));
            return Ok(job);
        }
        let queued = Job {
            threads: request.options.threads.unwrap_or(self.config.threads_per_job),
            prompt_tokens,
            completion,
            submitted,
            audio: request.audio,
            options: request.options,
        };
        match tx.try_send(queued) {
            Ok(()) => Ok(job),
            Err(TrySendError::Full(_)) => Err(SttError::QueueFull {
                capacity: self.config.queue_capacity,
            }),
            Err(TrySendError::Disconnected(_)) => Err(SttError::ShutDown),
        }
    }

    fn shutdown(&mut self, deadline: Instant) -> SttShutdownReport {
        let start = Instant::now();
        let mut report = SttShutdownReport::default();
        if self.shut_down {
            report.already_shut_down = true;
            if self.workers.iter().any(|w| !w.done) {
                // Workers an earlier call reported stuck: they were aborted already.
                self.wait_for_workers(deadline);
                self.join_workers_and_free_model(&mut report);
                if report.model_freed {
                    tracing::info!(?report, "Whisper model cleaned up");
                }
            }
            report.elapsed = start.elapsed();
            return report;
        }
        self.shut_down = true;
        if let Some(shared) = &self.shared {
            shared.closing.store(true, Ordering::Release);
        }
        // No new jobs; workers leave their loop once the queue is empty.
        self.tx = None;
        while let Ok(job) = self.rx.try_recv() {
            job.completion.complete(Err(SttError::Cancelled));
            report.queued_cancelled += 1;
        }

        if !self.wait_for_workers(deadline) {
            let aborted_at = Instant::now();
            if let Some(shared) = &self.shared {
                shared.abort_all.store(true, Ordering::Release);
            }
            tracing::debug!("Whisper shutdown deadline reached; aborting running jobs");
            if let Some(last) = self
                .wait_for_workers(aborted_at + self.config.abort_grace)
                .then(Instant::now)
            {
                report.abort_latency = Some(last.saturating_duration_since(aborted_at));
            }
        }
        if let Some(shared) = &self.shared {
            report.queued_cancelled += shared.cancelled_by_workers.load(Ordering::Acquire);
            report.running_aborted = shared.aborted_by_shutdown.load(Ordering::Acquire);
            report.running_finished = shared.finished_while_closing.load(Ordering::Acquire);
        }
        self.join_workers_and_free_model(&mut report);
        report.elapsed = start.elapsed();
        if report.model_freed {
            tracing::info!(?report, "Whisper model cleaned up");
        } else {
            tracing::error!(
                ?report,
                "Whisper workers did not stop within the abort grace; the model stays loaded until a later shutdown or drop joins them"
            );
        }
        report
    }
}

impl WhisperTranscriber {
    /// Waits until every worker has signalled its end, at most until `limit`; true when all have.
    fn wait_for_workers(&mut self, limit: Instant) -> bool {
        while self.workers.iter().any(|w| !w.done) {
            match self.done_rx.recv_deadline(limit) {
                Ok(index) => {
                    if let Some(w) = self.workers.iter_mut().find(|w| w.index == index) {
                        w.done = true;
                    }
                }
                Err(_) => return false,
            }
        }
        true
    }

    /// Joins the workers that have ended (at once: ending is their last action), counts
    /// the others, and frees the model once no worker is left.
    fn join_workers_and_free_model(&mut self, report: &mut SttShutdownReport) {
        for w in &mut self.workers {
            if w.done {
                if let Some(h) = w.handle.take() {
                    if h.join().is_err() {
                        tracing::error!(worker = w.index, "Whisper worker panicked");
                    }
                    report.workers_joined += 1;
                }
            } else {
                // Still inside whisper.cpp despite the abort. Kept, not detached: a later
                // shutdown, or Drop, waits for it again. It holds its own reference to the
                // model, so nothing it uses is freed under it.
                tracing::error!(
                    worker = w.index,
                    "Whisper worker did not stop within the abort grace"
                );
                report.workers_not_joined += 1;
            }
        }
        if report.workers_not_joined > 0 {
            return;
        }
        // Every worker freed its states and dropped its reference before it ended: this is
        // the last owner of the model.
        if let Some(shared) = self.shared.take() {
            match Arc::try_unwrap(shared) {
                Ok(shared) => {
                    drop(shared);
                    report.model_freed = true;
                }
                Err(shared) => self.shared = Some(shared),
            }
        }
    }
}

impl Drop for WhisperTranscriber {
    fn drop(&mut self) {
        let report = self.shutdown(Instant::now() + DROP_SHUTDOWN);
        if !report.already_shut_down {
            tracing::debug!(?report, "Whisper transcriber dropped");
        }
        if self.workers.iter().any(|w| !w.done) {
            tracing::error!(
                "Whisper worker still inside whisper.cpp at drop; it frees its state, then the model, when it returns"
            );
        }
    }
}

/// Tells shutdown that a worker has ended, as the worker's very last action, also when it
/// unwinds from a panic.
struct DoneGuard {
    index: usize,
    tx: Sender<usize>,
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        // Bounded by the number of workers: never blocks.
        let _ = self.tx.try_send(self.index);
    }
}

fn worker_main(
    index: usize,
    shared: Arc<Shared>,
    rx: Receiver<Job>,
    ready_tx: Sender<Result<(), SttError>>,
    done_tx: Sender<usize>,
    fail: bool,
) {
    // Locals drop in reverse order, on return and on unwinding alike: the state, then the
    // queue, then this worker's reference to the model, and last the done signal. (A
    // state also keeps the whisper.cpp context alive until it is freed.)
    let _done = DoneGuard { index, tx: done_tx };
    let shared = shared;
    let rx = rx;
    let mut state = shared.ctx.create_state().ok();
    let ready = match (&state, fail) {
        (Some(_), false) => Ok(()),
        _ => Err(SttError::StateAllocation),
    };
    let ok = ready.is_ok();
    let _ = ready_tx.send(ready);
    drop(ready_tx);
    if ok {
        while let Ok(job) = rx.recv() {
            if shared.closing.load(Ordering::Acquire) {
                job.completion.complete(Err(SttError::Cancelled));
                shared.cancelled_by_workers.fetch_add(1, Ordering::AcqRel);
                continue;
            }
            // A fresh state per job: results never depend on earlier jobs (whisper's
            // temperature fallback draws from a random generator kept in the state).
            let st = match state.take() {
                Some(st) => Some(st),
                None => shared.ctx.create_state().ok(),
            };
            // A panic (a bug) fails this job only: its caller sees `WorkerLost` (the
            // completion is dropped), its state is freed while unwinding, and the worker
            // goes on serving the queue.
            let run = std::panic::AssertUnwindSafe(|| run_job(&shared, st, job));
            if std::panic::catch_unwind(run).is_err() {
                tracing::error!(worker = index, "Whisper job panicked; the worker goes on");
            }
            // The used state is freed; allocate the next one now, off the next job's path.
            if !shared.closing.load(Ordering::Acquire) {
                state = shared.ctx.create_state().ok();
            }
        }
    }
}

/// Data behind whisper's abort callback; lives on the worker's stack during `state.full`.
struct AbortCheck<'a> {
    control: &'a JobControl,
    abort_all: &'a AtomicBool,
    /// Set once the check said stop (shared with the log hook, see `logging::during_job`).
    fired: Arc<AtomicBool>,
}

impl AbortCheck<'_> {
    fn should_abort(&self) -> bool {
        let stop =
            self.abort_all.load(Ordering::Acquire) || self.control.stop_reason(Instant::now()).is_some();
        if stop {
            self.fired.store(true, Ordering::Release);
        }
        stop
    }
}

/// whisper.cpp calls this between graph nodes and decoder steps; `true` stops the job.
unsafe extern "C" fn abort_trampoline(data: *mut c_void) -> bool {
    if data.is_null() {
        return false;
    }
    // SAFETY: `data` is the `AbortCheck` set in `run_job`, which outlives the `state.full`
    // call during which whisper.cpp may call this; it is only read (atomics).
    let check = unsafe { &*(data as *const AbortCheck<'_>) };
    check.should_abort()
}

/// Parameter templates per (language, decoding). whisper-rs leaks the language string on
/// every `set_language`; building each template once and cloning it keeps that to one
/// small allocation per language ever used (bounded by the ~100 languages), still reachable.
fn params_template(language: &str, decoding: Decoding) -> FullParams<'static, 'static> {
    static TEMPLATES: OnceLock<Mutex<HashMap<(String, Decoding), FullParams<'static, 'static>>>> =
        OnceLock::new();
    let map = TEMPLATES.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    map.entry((language.to_owned(), decoding))
        .or_insert_with(|| {
            let strategy = match decoding {
                Decoding::Greedy { best_of } => SamplingStrategy::Greedy {
                    best_of: i32::from(best_of),
                },
                Decoding::BeamSearch { beam_size } => SamplingStrategy::BeamSearch {
                    beam_size: i32::from(beam_size),
                    patience: -1.0,
                },
            };
            let mut p = FullParams::new(strategy);
            match language {
                "auto" => p.set_language(None),
                // The default of whisper.cpp's params is a static "en": nothing to allocate.
                "en" => {}
                other => {
                    let static_name = whisper_rs::get_lang_id(other).and_then(whisper_rs::get_lang_str);
                    p.set_language(static_name);
                }
            }
            p.set_print_progress(false);
            p.set_print_realtime(false);
            p.set_print_timestamps(false);
            p.set_print_special(false);
            p.set_no_context(true);
            p
        })
        .clone()
}

/// Runs one job on its own `state` (freed when this returns).
fn run_job(shared: &Shared, state: Option<WhisperState>, job: Job) {
    let started = Instant::now();
    let queued = started.saturating_duration_since(job.submitted);
    let Job {
        audio,
        options,
        prompt_tokens,
        threads,
        completion,
        submitted,
    } = job;
    if let Some(err) = completion.stop_reason() {
        completion.complete(Err(err));
        return;
    }
    let Some(mut st) = state else {
        completion.complete(Err(SttError::StateAllocation));
        return;
    };
    let length = samples_to_duration(audio.len());
    let audio = with_trailing_silence(audio, shared.n_audio_ctx);
    let audio_ctx = match options.window {
        AudioWindow::Auto => auto_audio_ctx(audio.len(), shared.n_audio_ctx),
        AudioWindow::Full => 0,
        AudioWindow::Frames(n) => u16::try_from(usize::from(n).min(shared.n_audio_ctx)).unwrap_or(0),
    };
    let mut params = params_template(&options.language, options.decoding);
    params.set_n_threads(i32::try_from(threads.max(1)).unwrap_or(1));
    params.set_audio_ctx(i32::from(audio_ctx));
    if !prompt_tokens.is_empty() {
        params.set_tokens(&prompt_tokens);
    }
    let check = AbortCheck {
        control: completion.control(),
        abort_all: &shared.abort_all,
        fired: Arc::new(AtomicBool::new(false)),
    };
    // SAFETY: the trampoline matches `ggml_abort_callback`; the user data points to `check`,
    // which lives until after `st.full` returns (the params are consumed by that call) and
    // is only read through atomics.
    unsafe {
        params.set_abort_callback(Some(abort_trampoline));
        params.set_abort_callback_user_data(std::ptr::from_ref(&check).cast_mut().cast::<c_void>());
    }
    shared.running.fetch_add(1, Ordering::AcqRel);
    if let Some(stall) = shared.stall_jobs {
        std::thread::sleep(stall);
    }
    let result = crate::logging::during_job(&check.fired, || st.full(params, &audio));
    shared.running.fetch_sub(1, Ordering::AcqRel);
    if shared
        .panic_jobs
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok()
    {
        std::panic::resume_unwind(Box::new("test hook: job panics"));
    }
    let inference = started.elapsed();
    let aborted = check.fired.load(Ordering::Acquire);
    let by_shutdown = aborted && shared.abort_all.load(Ordering::Acquire);
    if by_shutdown {
        shared.aborted_by_shutdown.fetch_add(1, Ordering::AcqRel);
    } else if shared.closing.load(Ordering::Acquire) {
        shared.finished_while_closing.fetch_add(1, Ordering::AcqRel);
    }

    if aborted || result.is_err() {
        // whisper.cpp fails an aborted pass ("failed to encode" / "failed to decode"): that
        // is the abort, reported as the reason the job was stopped, not as a failure.
        let err = if by_shutdown {
            SttError::Cancelled
        } else if let Some(reason) = completion.stop_reason() {
            reason
        } else {
            match result {
                Err(e) => SttError::Inference(e.to_string()),
                Ok(()) => SttError::Cancelled,
            }
        };
        if aborted {
            tracing::debug!(error = %err, ms = inference.as_millis(), "Whisper job aborted");
        } else {
            tracing::warn!(error = %err, "Whisper job failed");
        }
        completion.complete(Err(err));
        return;
    }
    let mut transcript = collect(&st, shared.token_eot, length);
    transcript.audio_ctx = if audio_ctx == 0 {
        u16::try_from(shared.n_audio_ctx).unwrap_or(u16::MAX)
    } else {
        audio_ctx
    };
    transcript.timings = JobTimings {
        queued,
        inference,
        total: submitted.elapsed(),
    };
    completion.complete(Ok(transcript));
}

fn centis(t: i64) -> Duration {
    Duration::from_millis(u64::try_from(t).unwrap_or(0).saturating_mul(10))
}

fn collect(st: &WhisperState, token_eot: i32, audio: Duration) -> Transcript {
    let mut segments = Vec::new();
    let mut sum_all = 0.0f64;
    let mut n_all = 0usize;
    let mut no_speech_max: Option<f32> = None;
    for seg in st.as_iter() {
        let text = seg
            .to_str_lossy()
            .map(|t| t.trim().to_owned())
            .unwrap_or_default();
        let mut sum = 0.0f64;
        let mut n = 0usize;
        for i in 0..seg.n_tokens() {
            let Some(tok) = seg.get_token(i) else { continue };
            if tok.token_id() >= token_eot {
                continue; // special and timestamp tokens
            }
            sum += f64::from(tok.token_data().plog);
            n += 1;
        }
        sum_all += sum;
        n_all += n;
        let no_speech = seg.no_speech_probability();
        no_speech_max = Some(no_speech_max.map_or(no_speech, |m| m.max(no_speech)));
        segments.push(Segment {
            text,
            // whisper's timestamps can run past the audio into the padded window.
            start: centis(seg.start_timestamp()).min(audio),
            end: centis(seg.end_timestamp()).min(audio),
            #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
            avg_logprob: if n == 0 { 0.0 } else { (sum / n as f64) as f32 },
            no_speech_prob: no_speech,
        });
    }
    let text = segments
        .iter()
        .map(|s| s.text.as_str())
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    Transcript {
        text,
        segments,
        #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
        avg_logprob: (n_all > 0).then(|| (sum_all / n_all as f64) as f32),
        no_speech_prob: no_speech_max.unwrap_or(1.0),
        audio,
        audio_ctx: 0,
        timings: JobTimings::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_window_covers_the_utterance_with_margin() {
        for secs in [0.1f64, 1.0, 3.0, 3.5, 4.0, 10.0, 25.0, 30.0] {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let samples = (secs * 16_000.0) as usize;
            let ctx = usize::from(auto_audio_ctx(samples, 1500));
            let frames = samples.div_ceil(320);
            assert!(ctx >= frames.min(1500), "{secs} s -> {ctx}");
            assert!(ctx <= 1500);
            assert!(
                ctx == 1500 || ctx >= frames + AUTO_MARGIN_FRAMES,
                "{secs} s -> {ctx}"
            );
        }
        assert_eq!(auto_audio_ctx(16_000 * 7 / 2, 1500), 768);
        assert_eq!(auto_audio_ctx(16_000 * 12, 1500), 768);
        assert_eq!(auto_audio_ctx(16_000 * 20, 1500), 1152);
        assert_eq!(auto_audio_ctx(16_000 * 30, 1500), 1500);
        assert_eq!(auto_audio_ctx(16_000, 448), 448, "never above the model's window");
    }

    #[test]
    fn trailing_silence_is_appended_up_to_one_window() {
        let padded = with_trailing_silence(vec![0.5; 16_000], 1500);
        assert_eq!(padded.len(), 16_000 + TRAILING_SILENCE);
        assert!(padded[..16_000].iter().all(|&s| s == 0.5));
        assert!(padded[16_000..].iter().all(|&s| s == 0.0));
        assert_eq!(
            with_trailing_silence(vec![0.5; 16_000 * 30 - 100], 1500).len(),
            16_000 * 30
        );
        assert_eq!(
            with_trailing_silence(vec![0.5; 16_000 * 30], 1500).len(),
            16_000 * 30
        );
    }

    #[test]
    fn options_are_validated() {
        let ok = TranscribeOptions::default();
        assert!(validate_options(&ok).is_ok());
        for o in [
            TranscribeOptions {
                language: "xx".into(),
                ..ok.clone()
            },
            TranscribeOptions {
                language: "en\0".into(),
                ..ok.clone()
            },
            TranscribeOptions {
                language: "".into(),
                ..ok.clone()
            },
            TranscribeOptions {
                decoding: Decoding::BeamSearch { beam_size: 0 },
                ..ok.clone()
            },
            TranscribeOptions {
                decoding: Decoding::Greedy { best_of: 9 },
                ..ok.clone()
            },
            TranscribeOptions {
                initial_prompt: Some("a\0b".into()),
                ..ok.clone()
            },
            TranscribeOptions {
                initial_prompt: Some("x".repeat(1001)),
                ..ok.clone()
            },
            TranscribeOptions {
                threads: Some(0),
                ..ok.clone()
            },
            TranscribeOptions {
                window: AudioWindow::Frames(0),
                ..ok.clone()
            },
        ] {
            assert!(
                matches!(validate_options(&o), Err(SttError::InvalidOptions(_))),
                "{o:?}"
            );
        }
        for lang in ["auto", "de", "fr"] {
            let o = TranscribeOptions {
                language: lang.into(),
                ..ok.clone()
            };
            assert!(validate_options(&o).is_ok(), "{lang}");
        }
    }

    #[test]
    fn bad_config_is_rejected_before_touching_the_model() {
        let mut c = WhisperConfig::new("/nonexistent/model.bin");
        c.workers = 0;
        assert!(matches!(
            WhisperTranscriber::new(c),
            Err(SttError::InvalidConfig(_))
        ));
        let c = WhisperConfig::new("/nonexistent/model.bin");
        assert!(matches!(
            WhisperTranscriber::new(c),
            Err(SttError::ModelNotFound { .. })
        ));
    }

    use callbot_testkit::resources::threads;

    /// A worker failing its start while another holds a live state: `new` returns the
    /// error, every thread is joined and the states are freed before the model.
    #[test]
    fn heavy_failed_start_frees_states_then_model() {
        let Some(model) = callbot_testkit::whisper_model() else {
            return;
        };
        let before = threads();
        let mut c = WhisperConfig::new(model);
        c.workers = 3;
        c.threads_per_job = 1;
        for fail_at in [0, 2] {
            let hooks = TestHooks {
                fail_worker: Some(fail_at),
                ..TestHooks::default()
            };
            let err = WhisperTranscriber::start(c.clone(), hooks).unwrap_err();
            assert!(matches!(err, SttError::StateAllocation), "{err}");
        }
        assert_eq!(threads(), before, "worker threads left behind");
        // The model still loads and works afterwards.
        let mut t = WhisperTranscriber::new(c).unwrap();
        let r = t.shutdown(Instant::now() + Duration::from_secs(5));
        assert!(r.model_freed);
        assert_eq!(r.workers_joined, 3);
    }
}
