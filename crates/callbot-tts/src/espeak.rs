//! [`EspeakSynthesizer`]: libespeak-ng owned by one worker thread.
//!
//! libespeak-ng keeps its state in process globals (voice, parameters, the synth
//! callback, its buffers), so exactly one thread may use it, and only one engine may be
//! alive per process: [`EspeakSynthesizer::start`] while another engine lives returns
//! [`TtsError::AlreadyRunning`]; share one engine through [`EspeakSynthesizer::client`].

// FFI into libespeak-ng: every call is made from the single worker thread that owns the
// library (see `worker_main`), and each unsafe block says why it is sound.
#![allow(unsafe_code)]

use std::ffi::{CString, c_int, c_short, c_uint};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use espeakng_sys as sys;

use crate::synth::{ChunkSender, SendAbort, Signal};
use crate::{SynthesisJob, Synthesizer, TtsError, VoiceOptions};

/// Set while an engine's worker may touch libespeak-ng; cleared by the worker itself
/// after `espeak_Terminate`, so a new engine can start once the old one is gone.
static ENGINE_LIVE: AtomicBool = AtomicBool::new(false);

/// Settings of an [`EspeakSynthesizer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspeakConfig {
    /// Voice options used by [`EspeakSynthesizer::default_options`]; its voice is
    /// checked at start.
    pub default_options: VoiceOptions,
    /// Audio per chunk in milliseconds (espeak-ng's buffer length), 10..=1000.
    pub chunk_ms: u32,
    /// Chunks a job's channel holds before the engine waits for the consumer.
    pub chunk_queue: usize,
    /// Requests that may wait for the worker before [`TtsError::QueueFull`].
    pub request_queue: usize,
    /// Longest accepted text in bytes of UTF-8.
    pub max_text_bytes: usize,
    /// How long the worker waits for a consumer that leaves its channel full before it
    /// abandons that job ([`TtsError::ConsumerStalled`]) and serves the next one.
    pub consumer_timeout: Duration,
    /// How long [`EspeakSynthesizer::start`] waits for the library to initialise.
    pub startup_timeout: Duration,
}

impl Default for EspeakConfig {
    fn default() -> Self {
        EspeakConfig {
            default_options: VoiceOptions::default(),
            chunk_ms: 40,
            chunk_queue: 512,
            request_queue: 64,
            max_text_bytes: 4096,
            consumer_timeout: Duration::from_secs(5),
            startup_timeout: Duration::from_secs(10),
        }
    }
}

impl EspeakConfig {
    fn validate(&self) -> Result<(), TtsError> {
        self.default_options.validate()?;
        let bad = |m: &str| Err(TtsError::InvalidOption(m.to_string()));
        if !(10..=1000).contains(&self.chunk_ms) {
            return bad("chunk_ms must be 10..=1000");
        }
        if self.chunk_queue == 0 || self.request_queue == 0 || self.max_text_bytes == 0 {
            return bad("chunk_queue, request_queue and max_text_bytes must be positive");
        }
        Ok(())
    }
}

/// What [`EspeakSynthesizer::shutdown`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EspeakShutdownReport {
    /// True when an earlier call already shut the engine down (nothing done now).
    pub already_shut_down: bool,
    /// Queued requests that were failed with [`TtsError::EngineStopped`].
    pub queued_cancelled: usize,
    /// True when a synthesis was running and was aborted.
    pub running_cancelled: bool,
    /// Requests the worker served over the engine's life.
    pub requests_served: u64,
    /// True when the worker thread was joined (and `espeak_Terminate` called).
    pub worker_joined: bool,
    /// True when the deadline passed before the worker finished.
    pub timed_out: bool,
    /// Time the shutdown took.
    pub elapsed: Duration,
}

/// A request for the worker.
struct Request {
    text: CString,
    options: VoiceOptions,
    sink: ChunkSender,
    enqueued: Instant,
}

/// What the worker reports when it exits.
#[derive(Debug, Clone, Copy)]
struct WorkerExit {
    queued_cancelled: usize,
    running_cancelled: bool,
}

/// State shared by the owner handle, its clients and the worker.
#[derive(Debug)]
struct Shared {
    sample_rate: u32,
    config: EspeakConfig,
    stop: Arc<Signal>,
    served: Arc<AtomicU64>,
}

/// A cheap, clonable `Send + Sync` handle that submits requests to an
/// [`EspeakSynthesizer`]'s worker. It does not keep the engine alive: after the owner
/// shuts down, [`Synthesizer::synthesize`] returns [`TtsError::EngineStopped`].
#[derive(Debug, Clone)]
pub struct EspeakClient {
    requests: Sender<Request>,
    shared: Arc<Shared>,
}

impl EspeakClient {
    /// The options from [`EspeakConfig::default_options`].
    pub fn default_options(&self) -> VoiceOptions {
        self.shared.config.default_options.clone()
    }

    /// Requests waiting for the worker now.
    pub fn queued(&self) -> usize {
        self.requests.len()
    }

    fn check_text(&self, text: &str) -> Result<CString, TtsError> {
        let max = self.shared.config.max_text_bytes;
        if text.len() > max {
            return Err(TtsError::TextTooLong { len: text.len(), max });
        }
        if text.trim().is_empty() {
            return Err(TtsError::EmptyText);
        }
        CString::new(text).map_err(|_| TtsError::InvalidText("contains a NUL byte".into()))
    }
}

impl Synthesizer for EspeakClient {
    fn sample_rate(&self) -> u32 {
        self.shared.sample_rate
    }

    fn synthesize(&self, text: &str, options: &VoiceOptions) -> Result<SynthesisJob, TtsError> {
        let text = self.check_text(text)?;
        options.validate()?;
        if self.shared.stop.is_set() {
            return Err(TtsError::EngineStopped);
        }
        let (job, sink) = SynthesisJob::channel(self.shared.sample_rate, self.shared.config.chunk_queue);
        let request = Request {
            text,
            options: options.clone(),
            sink,
            enqueued: Instant::now(),
        };
        match self.requests.try_send(request) {
            Ok(()) => Ok(job),
            Err(TrySendError::Full(_)) => Err(TtsError::QueueFull {
                capacity: self.shared.config.request_queue,
            }),
            Err(TrySendError::Disconnected(_)) => Err(TtsError::EngineStopped),
        }
    }
}

/// The espeak-ng engine handle: owns the worker thread `callbot-tts-espeak`, which owns
/// libespeak-ng (initialised on start, `espeak_Terminate`d on shutdown).
#[derive(Debug)]
pub struct EspeakSynthesizer {
    client: EspeakClient,
    worker: Option<JoinHandle<()>>,
    exit: Receiver<WorkerExit>,
    done: bool,
}

impl EspeakSynthesizer {
    /// Starts the worker and initialises libespeak-ng on it (about 60 ms).
    ///
    /// One engine per process: while another `EspeakSynthesizer` is alive (until its
    /// shutdown has joined its worker) this returns [`TtsError::AlreadyRunning`]. Share
    /// one engine between calls with [`EspeakSynthesizer::client`] instead.
    pub fn start(config: EspeakConfig) -> Result<EspeakSynthesizer, TtsError> {
        config.validate()?;
        if ENGINE_LIVE
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(TtsError::AlreadyRunning);
        }
        let live = LiveGuard;
        let (req_tx, req_rx) = crossbeam_channel::bounded::<Request>(config.request_queue);
        let (init_tx, init_rx) = crossbeam_channel::bounded::<Result<u32, TtsError>>(1);
        let (exit_tx, exit_rx) = crossbeam_channel::bounded::<WorkerExit>(1);
        let stop = Signal::new();
        let served = Arc::new(AtomicU64::new(0));
        let ctx = WorkerContext {
            live,
            config: config.clone(),
            requests: req_rx,
            stop: Arc::clone(&stop),
            served: Arc::clone(&served),
            init: init_tx,
            exit: exit_tx,
        };
        let worker = std::thread::Builder::new()
            .name("callbot-tts-espeak".into())
            .spawn(move || worker_main(ctx))
            .map_err(|e| TtsError::Spawn(e.to_string()))?;
        let sample_rate = match init_rx.recv_timeout(config.startup_timeout) {
            Ok(Ok(rate)) => rate,
            Ok(Err(e)) => {
                // The worker has already terminated the library and exits now.
                let _ = worker.join();
                return Err(e);
            }
            Err(_) => {
                stop.set();
                // Bounded: the worker exits right after initialisation returns.
                let _ = exit_rx.recv_timeout(config.startup_timeout);
                if worker.is_finished() {
                    let _ = worker.join();
                }
                return Err(TtsError::Init(format!(
                    "libespeak-ng did not initialise within {:?}",
                    config.startup_timeout
                )));
            }
        };
        let shared = Arc::new(Shared {
            sample_rate,
            config,
            stop,
            served,
        });
        tracing::info!(sample_rate, "TTS engine started (espeak-ng)");
        Ok(EspeakSynthesizer {
            client: EspeakClient {
                requests: req_tx,
                shared,
            },
            worker: Some(worker),
            exit: exit_rx,
            done: false,
        })
    }

    /// A clonable handle for calls to share (see [`EspeakClient`]).
    pub fn client(&self) -> EspeakClient {
        self.client.clone()
    }

    /// The options from [`EspeakConfig::default_options`].
    pub fn default_options(&self) -> VoiceOptions {
        self.client.default_options()
    }

    /// True until shutdown begins.
    pub fn is_running(&self) -> bool {
        !self.client.shared.stop.is_set()
    }

    /// Stops the engine: fails queued requests with [`TtsError::EngineStopped`], aborts
    /// the running synthesis, joins the worker (which calls `espeak_Terminate`) and logs
    /// "TTS engine cleaned up". Bounded by `deadline`; idempotent (later calls return a
    /// report with `already_shut_down`).
    pub fn shutdown(&mut self, deadline: Instant) -> EspeakShutdownReport {
        let started = Instant::now();
        if self.done {
            return EspeakShutdownReport {
                already_shut_down: true,
                ..Default::default()
            };
        }
        let shared = &self.client.shared;
        shared.stop.set();
        let mut report = EspeakShutdownReport::default();
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.exit.recv_timeout(wait) {
            Ok(exit) => {
                report.queued_cancelled = exit.queued_cancelled;
                report.running_cancelled = exit.running_cancelled;
                if let Some(worker) = self.worker.take() {
                    // The worker sent its exit report as its last act: this join is immediate.
                    report.worker_joined = worker.join().is_ok();
                }
                self.done = true;
            }
            Err(_) => {
                // Still busy (or crashed): keep the join handle so a later call (or Drop)
                // can finish the job.
                report.timed_out = true;
                if self.worker.as_ref().is_some_and(|w| w.is_finished()) {
                    if let Some(worker) = self.worker.take() {
                        let _ = worker.join();
                    }
                    self.done = true;
                }
            }
        }
        report.requests_served = shared.served.load(Ordering::SeqCst);
        report.elapsed = started.elapsed();
        if report.timed_out {
            tracing::warn!(?report, "TTS engine shutdown timed out");
        } else {
            tracing::info!(?report, "TTS engine cleaned up");
        }
        report
    }
}

impl Synthesizer for EspeakSynthesizer {
    fn sample_rate(&self) -> u32 {
        self.client.sample_rate()
    }

    fn synthesize(&self, text: &str, options: &VoiceOptions) -> Result<SynthesisJob, TtsError> {
        self.client.synthesize(text, options)
    }
}

impl Drop for EspeakSynthesizer {
    fn drop(&mut self) {
        if !self.done {
            self.shutdown(Instant::now() + Duration::from_secs(2));
        }
    }
}

/// Clears [`ENGINE_LIVE`] when dropped (last thing the worker does, panic or not).
struct LiveGuard;

impl Drop for LiveGuard {
    fn drop(&mut self) {
        ENGINE_LIVE.store(false, Ordering::SeqCst);
    }
}

/// The job the synth callback feeds. Set by the worker before `espeak_Synth` and taken
/// back after `espeak_Synchronize`; in between only the callback touches it (it runs
/// on libespeak-ng's internal command thread in retrieval mode).
struct ActiveJob {
    sink: ChunkSender,
    stop: Arc<Signal>,
    consumer_timeout: Duration,
    chunk_samples: usize,
    abort: Option<SendAbort>,
    /// Passed to espeak as the message's user data: tells this job's events apart from
    /// any late event of an earlier message.
    tag: usize,
    /// Signalled when espeak reports the end of this message (`MSG_TERMINATED`).
    done: Sender<()>,
}

static ACTIVE: Mutex<Option<ActiveJob>> = Mutex::new(None);

fn active_slot() -> std::sync::MutexGuard<'static, Option<ActiveJob>> {
    ACTIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// libespeak-ng's synth callback: hands each buffer to the active job. Returns 1 to
/// make espeak abort the synthesis (job cancelled, consumer gone or stalled, engine
/// stopping), 0 to continue.
unsafe extern "C" fn synth_callback(
    wav: *mut c_short,
    numsamples: c_int,
    events: *mut sys::espeak_EVENT,
) -> c_int {
    let run = std::panic::AssertUnwindSafe(|| {
        {
            let mut guard = active_slot();
            let Some(job) = guard.as_mut() else { return 1 };
            if !events.is_null() {
                // SAFETY: espeak passes a valid event list (at least one entry) for the
                // duration of the call; we read the first entry's plain fields.
                let first = unsafe { &*events };
                if first.user_data as usize != job.tag {
                    return 1; // an event of an earlier message: not ours
                }
                if wav.is_null() && first.type_ == sys::espeak_EVENT_TYPE_espeakEVENT_MSG_TERMINATED {
                    let _ = job.done.try_send(());
                    return 0;
                }
            }
            if job.abort.is_some() {
                return 1;
            }
            if job.stop.is_set() {
                job.abort = Some(SendAbort::Stopping);
                return 1;
            }
            let n = usize::try_from(numsamples).unwrap_or(0);
            if wav.is_null() || n == 0 {
                return if job.sink.is_cancelled() {
                    job.abort = Some(SendAbort::Cancelled);
                    1
                } else {
                    0
                };
            }
            // SAFETY: espeak passes `numsamples` valid i16 samples at `wav` (non-null,
            // checked above), alive for the duration of this call; we copy them out.
            let samples = unsafe { std::slice::from_raw_parts(wav, n) };
            let stop = Arc::clone(&job.stop);
            for piece in samples.chunks(job.chunk_samples.max(1)) {
                let sent = job
                    .sink
                    .send_or_stop(piece.to_vec(), job.consumer_timeout, Some(stop.watch()));
                if let Err(abort) = sent {
                    job.abort = Some(abort);
                    return 1;
                }
            }
            0
        }
    });
    std::panic::catch_unwind(run).unwrap_or(1)
}

/// Reads an espeak status code as text.
fn espeak_error(code: sys::espeak_ERROR) -> String {
    match code {
        sys::espeak_ERROR_EE_INTERNAL_ERROR => "internal error".into(),
        sys::espeak_ERROR_EE_BUFFER_FULL => "buffer full".into(),
        sys::espeak_ERROR_EE_NOT_FOUND => "not found".into(),
        other => format!("error code {other}"),
    }
}

/// Everything the worker thread owns.
struct WorkerContext {
    live: LiveGuard,
    config: EspeakConfig,
    requests: Receiver<Request>,
    stop: Arc<Signal>,
    served: Arc<AtomicU64>,
    init: Sender<Result<u32, TtsError>>,
    exit: Sender<WorkerExit>,
}

/// The worker: the only thread that calls into libespeak-ng.
fn worker_main(ctx: WorkerContext) {
    let WorkerContext {
        live,
        config,
        requests,
        stop,
        served,
        init,
        exit,
    } = ctx;
    let chunk_ms = c_int::try_from(config.chunk_ms).unwrap_or(40);
    // SAFETY: called on the worker thread, the only thread using the library while
    // ENGINE_LIVE is held; a null path means the default espeak-ng-data location;
    // DONT_EXIT stops the library from calling exit() when its data is missing.
    // Retrieval mode, not synchronous: with libespeak-ng 1.51 in synchronous mode the
    // second `espeak_Terminate` in a process never returns (its internal command thread,
    // unused in that mode, misses the stop signal), so an engine could not be restarted.
    // In retrieval mode that thread runs each synthesis (and our callback), the worker
    // waits for it with `espeak_Synchronize`, and init/terminate cycles repeat cleanly.
    let rate = unsafe {
        sys::espeak_Initialize(
            sys::espeak_AUDIO_OUTPUT_AUDIO_OUTPUT_RETRIEVAL,
            chunk_ms,
            std::ptr::null(),
            sys::espeakINITIALIZE_DONT_EXIT as c_int,
        )
    };
    let Ok(sample_rate) = u32::try_from(rate) else {
        let _ = init.send(Err(TtsError::Init(format!(
            "espeak_Initialize returned {rate} (is espeak-ng-data installed?)"
        ))));
        // SAFETY: worker thread; releases whatever the failed initialisation allocated.
        unsafe { sys::espeak_Terminate() };
        drop(live);
        return;
    };
    // SAFETY: worker thread; `synth_callback` is a valid `extern "C"` function for the
    // whole life of the process.
    unsafe { sys::espeak_SetSynthCallback(Some(synth_callback)) };
    let chunk_samples = usize::try_from(u64::from(sample_rate) * u64::from(config.chunk_ms) / 1000)
        .unwrap_or(1)
        .max(1);
    let mut worker = Worker {
        current_voice: None,
        config,
        chunk_samples,
        tag: 0,
    };
    let default_voice = worker.config.default_options.voice.clone();
    if let Err(e) = worker.set_voice(&default_voice) {
        let _ = init.send(Err(e));
        // SAFETY: worker thread; frees the library state initialised above.
        unsafe { sys::espeak_Terminate() };
        drop(live);
        return;
    }
    // Warm-up: one short synthesis before serving, so the first caller does not pay for
    // loading the voice data, and a broken installation fails at start, not mid-call.
    let (warm_job, warm_sink) = SynthesisJob::channel(sample_rate, 256);
    let warm_text = CString::new("ok").unwrap_or_default();
    let warm = worker.synth(&warm_text, warm_sink, &stop);
    drop(warm_job);
    if !matches!(&warm, Some((code, job)) if *code == sys::espeak_ERROR_EE_OK && job.abort.is_none()) {
        let _ = init.send(Err(TtsError::Init("warm-up synthesis failed".into())));
        // SAFETY: worker thread; frees the library state initialised above.
        unsafe { sys::espeak_Terminate() };
        drop(live);
        return;
    }
    let _ = init.send(Ok(sample_rate));
    let mut running_cancelled = false;
    while !stop.is_set() {
        crossbeam_channel::select! {
            recv(requests) -> req => match req {
                Ok(req) => {
                    if worker.run(req, &stop) == Some(SendAbort::Stopping) {
                        running_cancelled = true;
                    }
                    served.fetch_add(1, Ordering::SeqCst);
                }
                Err(_) => break,
            },
            recv(stop.watch()) -> _ => break,
        }
    }
    let mut queued_cancelled = 0;
    for req in requests.try_iter() {
        req.sink.fail(TtsError::EngineStopped);
        queued_cancelled += 1;
    }
    // Requests sent after this point fail at once with `EngineStopped` (disconnected).
    drop(requests);
    // SAFETY: worker thread; no synthesis is running (we are between requests) and no
    // other thread touches the library; after this the library holds no state.
    unsafe { sys::espeak_Terminate() };
    drop(live);
    let _ = exit.send(WorkerExit {
        queued_cancelled,
        running_cancelled,
    });
}

/// The worker's own state.
struct Worker {
    current_voice: Option<String>,
    config: EspeakConfig,
    /// Largest chunk handed to a job (espeak's buffers can exceed `chunk_ms`).
    chunk_samples: usize,
    /// Tag of the last message handed to espeak.
    tag: usize,
}

impl Worker {
    fn set_voice(&mut self, voice: &str) -> Result<(), TtsError> {
        if self.current_voice.as_deref() == Some(voice) {
            return Ok(());
        }
        let name = CString::new(voice).map_err(|_| TtsError::VoiceNotFound(voice.to_string()))?;
        // SAFETY: worker thread; `name` is a valid NUL-terminated string alive for the call.
        let code = unsafe { sys::espeak_SetVoiceByName(name.as_ptr()) };
        if code != sys::espeak_ERROR_EE_OK {
            self.current_voice = None;
            return Err(TtsError::VoiceNotFound(voice.to_string()));
        }
        self.current_voice = Some(voice.to_string());
        Ok(())
    }

    fn set_parameters(&self, o: &VoiceOptions) -> Result<(), TtsError> {
        let params = [
            (sys::espeak_PARAMETER_espeakRATE, c_int::from(o.rate_wpm)),
            (sys::espeak_PARAMETER_espeakPITCH, c_int::from(o.pitch)),
            (sys::espeak_PARAMETER_espeakVOLUME, c_int::from(o.volume)),
        ];
        for (param, value) in params {
            // SAFETY: worker thread; plain integer arguments (absolute values, relative=0).
            let code = unsafe { sys::espeak_SetParameter(param, value, 0) };
            if code != sys::espeak_ERROR_EE_OK {
                return Err(TtsError::Synthesis(format!(
                    "set parameter {param}: {}",
                    espeak_error(code)
                )));
            }
        }
        Ok(())
    }

    /// Runs `espeak_Synth` on `text`, feeding `sink` through the callback. Returns the
    /// status code and the job state (`None` only if the slot was emptied meanwhile).
    fn synth(
        &mut self,
        text: &CString,
        sink: ChunkSender,
        stop: &Arc<Signal>,
    ) -> Option<(sys::espeak_ERROR, ActiveJob)> {
        self.tag = self.tag.wrapping_add(1).max(1);
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        // Held across `espeak_Synth` so the callback cannot see the job half set up.
        let mut slot = active_slot();
        *slot = Some(ActiveJob {
            sink,
            stop: Arc::clone(stop),
            consumer_timeout: self.config.consumer_timeout,
            chunk_samples: self.chunk_samples,
            abort: None,
            tag: self.tag,
            done: done_tx,
        });
        let bytes = text.as_bytes_with_nul();
        let flags = sys::espeakCHARS_UTF8 | sys::espeakENDPAUSE;
        // SAFETY: worker thread; `bytes` is NUL-terminated UTF-8 that espeak copies into
        // its command queue; SSML and phoneme input are off (flags); the identifier
        // pointer is unused (null) and the user data is an integer tag, never dereferenced.
        let code = unsafe {
            sys::espeak_Synth(
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                sys::espeak_POSITION_TYPE_POS_CHARACTER,
                0,
                flags as c_uint,
                std::ptr::null_mut(),
                self.tag as *mut std::ffi::c_void,
            )
        };
        drop(slot);
        if code == sys::espeak_ERROR_EE_OK {
            // espeak's command thread runs the synthesis and then reports the end of the
            // message to the callback, which signals `done`. (Not `espeak_Synchronize`: it
            // polls every 20 ms.) The callback gives up within `consumer_timeout` per chunk
            // and at once on cancel or stop, so this wait ends; as a safety net, a message
            // that makes no progress for `consumer_timeout` + 5 s is abandoned.
            let patience = self.config.consumer_timeout + Duration::from_secs(5);
            let mut sent = 0;
            while done_rx.recv_timeout(patience).is_err() {
                let now_sent = active_slot().as_ref().map_or(0, |j| j.sink.samples_sent());
                if now_sent == sent {
                    tracing::error!(?patience, "espeak-ng made no progress on a message");
                    let mut job = active_slot().take()?;
                    job.abort.get_or_insert(SendAbort::Stalled);
                    return Some((sys::espeak_ERROR_EE_INTERNAL_ERROR, job));
                }
                sent = now_sent;
            }
        }
        let job = active_slot().take()?;
        Some((code, job))
    }

    /// Serves one request; returns why it was aborted, if it was.
    fn run(&mut self, req: Request, stop: &Arc<Signal>) -> Option<SendAbort> {
        let Request {
            text,
            options,
            sink,
            enqueued,
        } = req;
        if sink.is_cancelled() {
            sink.fail(TtsError::Cancelled);
            return Some(SendAbort::Cancelled);
        }
        let queued = enqueued.elapsed();
        if let Err(e) = self
            .set_voice(&options.voice)
            .and_then(|()| self.set_parameters(&options))
        {
            sink.fail(e);
            return None;
        }
        let started = Instant::now();
        let (code, job) = self.synth(&text, sink, stop)?;
        let synthesis = started.elapsed();
        match job.abort {
            Some(abort) => {
                let error = match abort {
                    SendAbort::Cancelled | SendAbort::ReceiverGone => TtsError::Cancelled,
                    SendAbort::Stalled => TtsError::ConsumerStalled(job.consumer_timeout),
                    SendAbort::Stopping => TtsError::EngineStopped,
                };
                tracing::debug!(?abort, "synthesis aborted");
                job.sink.fail(error);
                Some(abort)
            }
            None if code != sys::espeak_ERROR_EE_OK => {
                job.sink.fail(TtsError::Synthesis(espeak_error(code)));
                None
            }
            None => {
                let summary = job.sink.summary(queued, synthesis);
                job.sink
                    .finish_or_stop(summary, job.consumer_timeout, Some(stop.watch()));
                None
            }
        }
    }
}
