//! A transcription that times out leaves a trace (issue 7): the call runs with the real
//! Whisper engine and a transcription deadline too short for any utterance; the
//! transcript file gets a `transcription_failed` turn with the engine's error and the
//! stage timings, the bot says its re-prompt (`stt_failed_phrase`), and no reply is
//! asked for.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use callbot::call::{CallControl, CallSetup};
use callbot::dialogue::DialogueConfig;
use callbot::testing::{InstantChat, instant_call_setup, spawn_fake_call};
use callbot_stt::{
    JobCompletion, SttError, SttShutdownReport, Transcriber, TranscriptionJob, TranscriptionRequest,
    WhisperConfig, WhisperTranscriber, job_channel,
};

#[test]
fn timed_out_transcription_is_recorded_with_its_error_and_reprompted() {
    let Some(model) = callbot_testkit::whisper_model() else {
        return;
    };
    let dir = callbot_testkit::temp_dir("callbot-stt-timeout");
    let mut config = WhisperConfig::new(&model);
    config.threads_per_job = 1;
    let stt = Arc::new(WhisperTranscriber::new(config).unwrap());
    let chat = Arc::new(InstantChat::new("You should not hear this."));
    let dialogue = DialogueConfig {
        greeting: String::new(),
        speculative_stt: false,
        ..DialogueConfig::default()
    };
    let reprompt = dialogue.stt_failed_phrase.clone();
    let setup = CallSetup {
        stt: stt.clone(),
        // What `stt.timeout_secs` sets; far too short for any transcription.
        stt_timeout: Duration::from_millis(1),
        llm: chat.clone(),
        transcript_dir: Some(dir.path().to_path_buf()),
        ..instant_call_setup("stt-timeout", dialogue, &[], "")
    };
    let (remote, control, thread) = spawn_fake_call("stt-timeout-call", setup, true).unwrap();
    // One utterance: 400 ms of loud audio, then silence past the endpoint.
    remote.frames(5000, 20);
    remote.frames(0, 10);
    // The re-prompt is written to the transcript once played (the fake media finishes
    // each playback at once).
    let written = |kind: &str| {
        callbot::testing::transcript_lines(dir.path())
            .iter()
            .any(|l| l["kind"] == kind)
    };
    callbot_testkit::harness::wait_for(Duration::from_secs(10), "the re-prompt", || written("reprompt"));
    assert_eq!(remote.plays().len(), 1, "the re-prompt only");
    control.send(CallControl::CallerHungUp).unwrap();
    let outcome = thread.join().unwrap();
    let path = outcome.transcript.expect("a transcript file");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for l in &lines {
        println!("{l}");
    }
    let failed = lines
        .iter()
        .find(|l| l["kind"] == "transcription_failed")
        .expect("a transcription_failed turn");
    assert_eq!(failed["error"], "transcription timed out after 1ms", "{failed}");
    assert!(failed["user"].is_null());
    assert!(failed["timings"]["endpoint"].as_f64().unwrap() > 0.0, "{failed}");
    assert!(failed["timings"]["stt"].as_f64().is_some(), "{failed}");
    let asked = lines
        .iter()
        .find(|l| l["kind"] == "reprompt")
        .expect("the re-prompt as a turn");
    assert_eq!(asked["bot"], reprompt.as_str());
    assert_eq!(
        chat.started.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no reply without a transcript"
    );
    let summary = lines.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["replies"], 0);
}

/// An engine that takes the request's deadline but never ends the job (a stuck worker).
#[derive(Debug, Default)]
struct StuckTranscriber {
    jobs: std::sync::Mutex<Vec<JobCompletion>>,
}

impl Transcriber for StuckTranscriber {
    fn submit(&self, request: TranscriptionRequest) -> Result<TranscriptionJob, SttError> {
        let deadline = request.deadline.expect("the call sets a deadline");
        let (job, completion) = job_channel(deadline);
        self.jobs.lock().unwrap().push(completion);
        Ok(job)
    }
    fn shutdown(&mut self, _deadline: Instant) -> SttShutdownReport {
        SttShutdownReport::default()
    }
}

/// An engine that does not end a job at its deadline: the call gives up on it
/// `STT_STALL_SLACK` later, cancels it, records the failure and re-prompts.
#[test]
fn a_transcription_the_engine_never_ends_is_given_up_at_its_deadline() {
    let stt = Arc::new(StuckTranscriber::default());
    let chat = Arc::new(InstantChat::new("You should not hear this."));
    let (turn_tx, turns) = crossbeam_channel::bounded(16);
    let dialogue = DialogueConfig {
        greeting: String::new(),
        speculative_stt: false,
        ..DialogueConfig::default()
    };
    let setup = CallSetup {
        stt: stt.clone(),
        stt_timeout: Duration::from_millis(100),
        llm: chat.clone(),
        turn_observer: Some(turn_tx),
        ..instant_call_setup("stt-stall", dialogue, &[], "")
    };
    let (remote, control, thread) = spawn_fake_call("stt-stall-call", setup, true).unwrap();
    remote.frames(5000, 20);
    remote.frames(0, 10);
    let t0 = Instant::now();
    let failed = turns.recv_timeout(Duration::from_secs(5)).expect("a turn");
    let waited = t0.elapsed();
    println!("gave up after {waited:?}: {failed:?}");
    assert_eq!(failed.kind, callbot::dialogue::TurnKind::TranscriptionFailed);
    assert_eq!(
        failed.error.as_deref(),
        Some("transcription timed out after 100ms (the engine did not end it)")
    );
    let slack = callbot::call::STT_STALL_SLACK;
    assert!(waited >= slack, "{waited:?}");
    assert!(waited < slack + Duration::from_secs(2), "{waited:?}");
    let jobs = stt.jobs.lock().unwrap();
    assert_eq!(jobs.len(), 1);
    assert!(
        matches!(jobs[0].stop_reason(), Some(SttError::Cancelled)),
        "the stalled job was cancelled"
    );
    drop(jobs);
    let asked = turns.recv_timeout(Duration::from_secs(5)).expect("the re-prompt");
    assert_eq!(asked.kind, callbot::dialogue::TurnKind::Reprompt);
    control.send(CallControl::CallerHungUp).unwrap();
    let outcome = thread.join().unwrap();
    assert!(outcome.errors.iter().any(|e| e.contains("did not end it")));
    assert_eq!(chat.started.load(std::sync::atomic::Ordering::SeqCst), 0);
}
