//! End-to-end tests of the whole bot against real peers (issue 7, "Tested end to end
//! with real peers"): Kamailio as the registrar and proxy, baresip as the caller sending
//! espeak-ng speech and recording what the bot says, Whisper tiny.en as the judge.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use callbot::settings::RegistrationSettings;
use callbot::{Bot, Settings};
use callbot_audio::AudioFrame;
use callbot_stt::{Transcriber, TranscriptionRequest, WhisperConfig, WhisperTranscriber};
use callbot_testkit::baresip::{BaresipCall, CallEnd};
use callbot_testkit::harness::wait_for;
use callbot_testkit::kamailio::{Kamailio, KamailioConfig, RegistrarEvent};
use callbot_testkit::speech;
use common::turns;

fn settings(dir: &Path, model: PathBuf) -> Settings {
    let mut s = common::loopback_settings(model, 4);
    s.stt.threads = 2;
    s.transcripts.dir = Some(dir.join("transcripts"));
    s
}

/// Writes 8 kHz mono S16 `samples` as a WAV file.
fn write_8k(path: &Path, samples: Vec<i16>) {
    callbot_audio::wav::write_wav(path, &AudioFrame::new(8000, samples)).unwrap();
}

fn silence_8k(secs: f64) -> Vec<i16> {
    vec![0; (secs * 8000.0) as usize]
}

/// What a baresip test speaking one sentence needs: the model, a temp dir, and test
/// sentence 3 as 8 kHz telephone speech; `None` (the test returns) when the model,
/// baresip or espeak-ng is missing.
fn sentence_for_baresip() -> Option<(PathBuf, callbot_testkit::TempDir, Vec<i16>)> {
    let model = callbot_testkit::whisper_model_and(&["baresip"])?;
    let dir = callbot_testkit::temp_dir("callbot-e2e");
    let sentence = speech::SENTENCES[3];
    let pcm = speech::espeak(sentence.text, sentence.voice)?;
    Some((model, dir, speech::telephone_8k(&pcm, None)))
}

/// Splits 8 kHz audio into utterances at pauses of at least 400 ms (20 ms frames whose
/// peak is below 300), each padded with 100 ms either side.
fn utterances(samples: &[i16]) -> Vec<&[i16]> {
    let frame = 160;
    let loud: Vec<bool> = samples
        .chunks(frame)
        .map(|c| c.iter().any(|s| s.unsigned_abs() > 300))
        .collect();
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut quiet = 0;
    for (i, l) in loud.iter().enumerate() {
        if *l {
            start.get_or_insert(i);
            quiet = 0;
        } else if let Some(s) = start {
            quiet += 1;
            if quiet >= 20 {
                let end = i + 1 - quiet;
                out.push((s, end));
                start = None;
            }
        }
    }
    if let Some(s) = start {
        out.push((s, loud.len() - quiet));
    }
    out.into_iter()
        .map(|(s, e)| {
            let a = (s * frame).saturating_sub(800);
            let b = (e * frame + 800).min(samples.len());
            &samples[a..b]
        })
        .collect()
}

/// Whisper tiny.en's reading of 8 kHz audio, utterance by utterance.
fn transcribe_8k(stt: &mut WhisperTranscriber, samples: &[i16]) -> String {
    let mut text = Vec::new();
    for u in utterances(samples) {
        let at16 =
            callbot_audio::resample::resample_frame(&AudioFrame::new(8000, u.to_vec()), 16_000).unwrap();
        let audio: Vec<f32> = at16.samples.iter().map(|s| f32::from(*s) / 32768.0).collect();
        let t = stt
            .submit(TranscriptionRequest::new(audio).with_deadline(Instant::now() + Duration::from_secs(20)))
            .unwrap()
            .wait()
            .unwrap();
        text.push(t.text.trim().to_string());
    }
    text.join(" ")
}

/// The bot registers at Kamailio with digest authentication; baresip calls the bot's
/// AOR through Kamailio, which routes the INVITE to the registered contact; the bot
/// answers and its greeting reaches baresip; on shutdown the bot unregisters.
#[test]
fn heavy_e2e_registration_through_kamailio_then_a_routed_call() {
    let Some(model) = callbot_testkit::whisper_model_and(&["kamailio", "baresip"]) else {
        return;
    };
    let dir = callbot_testkit::temp_dir("callbot-e2e");
    let (user, password) = ("callbot", "s3cret-pw");
    let kam = Kamailio::start(&KamailioConfig::new(user, password)).unwrap();
    let mut s = settings(dir.path(), model);
    s.dialogue.greeting = "Hello, this is the call bot.".into();
    s.sip.registration = Some(RegistrationSettings {
        server: kam.addr().to_string(),
        user: user.into(),
        password: password.into(),
        expires: 120,
    });
    let registering = Instant::now();
    let mut bot = Bot::start(s).unwrap();
    let reg = kam.wait_event(Duration::from_secs(10), |e| {
        matches!(e, RegistrarEvent::RegOk { .. })
    });
    println!("registered after {:?}: {reg:?}", registering.elapsed());
    let Some(RegistrarEvent::RegOk { aor, contact, .. }) = reg else {
        panic!("the bot did not register: {}", kam.log());
    };
    assert!(aor.contains(user), "{aor}");
    assert!(contact.contains(&bot.sip_addr().port().to_string()), "{contact}");
    assert!(
        kam.count(|e| matches!(e, RegistrarEvent::Challenge { .. })) >= 1,
        "digest challenge expected first"
    );

    // baresip dials the AOR at Kamailio, not the bot.
    let wav = dir.path().join("caller.wav");
    write_8k(&wav, silence_8k(1.0));
    let out = dir.path().join("heard.wav");
    let result = BaresipCall::new(kam.addr(), &wav)
        .callee_user(user)
        .record_to(&out)
        .hold(Duration::from_secs(4))
        .run()
        .unwrap();
    println!(
        "routed call: answered {} setup {:?} ended {:?} codec {:?} received {:.2} s",
        result.answered, result.setup_time, result.ended_by, result.codec, result.received_seconds
    );
    assert!(result.answered, "{}", result.log);
    assert!(
        kam.count(|e| matches!(e, RegistrarEvent::Routed { method, .. } if method == "INVITE")) >= 1,
        "the INVITE went through Kamailio: {:?}",
        kam.events()
    );
    assert!(result.rtp_received);
    assert_eq!(result.ended_by, CallEnd::LocalHangup);
    let heard = callbot_audio::wav::read_wav(&out).unwrap();
    let loud = heard.samples.iter().filter(|s| s.unsigned_abs() > 1000).count();
    assert!(
        loud > 800,
        "the greeting reached the caller ({loud} loud samples)"
    );
    assert!(
        turns(dir.path()).iter().any(|l| l["kind"] == "greeting"),
        "the call has a transcript"
    );

    let report = bot.shutdown(Instant::now() + Duration::from_secs(3));
    println!("{report:#?}");
    let sip = report.sip.expect("SIP shut down");
    assert_eq!(sip.unregistered, Some(true), "{sip}");
    assert!(
        kam.wait_event(Duration::from_secs(3), |e| matches!(
            e,
            RegistrarEvent::Unregistered { .. }
        ))
        .is_some(),
        "Kamailio saw the unregistration: {:?}",
        kam.events()
    );
    kam.stop();
}

/// baresip calls the bot (echo mode, real Whisper tiny.en and espeak-ng) and says two
/// espeak-ng sentences over G.711; the transcript file holds the caller's words (WER at
/// most 35 % on 8 kHz speech, as the issue asks), and what baresip recorded, read back
/// by Whisper, matches what the transcript says the bot said (same 35 % bound: it is the
/// same channel, espeak-ng speech through 8 kHz G.711 read by tiny.en).
#[test]
fn heavy_e2e_baresip_speech_transcript_and_recorded_reply_match() {
    let Some(model) = callbot_testkit::whisper_model_and(&["baresip"]) else {
        return;
    };
    let dir = callbot_testkit::temp_dir("callbot-e2e");
    // Two short sentences (about 2.5 s each): the bot gives Whisper 10 s per utterance
    // and on this shared 2-core machine (load 8-9) tiny.en needs 3.5-4.5 s for 2.5 s of
    // speech, so 4 s sentences time out and, as the bot is now, leave no turn at all.
    let said = [speech::SENTENCES[3], speech::SENTENCES[6]];
    let mut caller = silence_8k(4.0);
    let mut starts = Vec::new();
    for s in said {
        let Some(pcm) = speech::espeak(s.text, s.voice) else {
            return;
        };
        starts.push(caller.len() as f64 / 8000.0);
        caller.extend(speech::telephone_8k(&pcm, None));
        caller.extend(silence_8k(11.0));
    }
    let hold = Duration::from_secs_f64(caller.len() as f64 / 8000.0 + 1.0);
    let wav = dir.path().join("caller.wav");
    write_8k(&wav, caller);

    let mut s = settings(dir.path(), model.clone());
    s.dialogue.greeting = "Hello, this is the call bot.".into();
    s.dialogue.silence_prompt_after_secs = 50.0;
    s.dialogue.silence_hangup_after_secs = 60.0;
    let mut bot = Bot::start(s).unwrap();
    assert!(bot.echo_mode());
    let out = dir.path().join("heard.wav");
    let started = Instant::now();
    let result = BaresipCall::new(bot.sip_addr(), &wav)
        .record_to(&out)
        .hold(hold)
        .run()
        .unwrap();
    println!(
        "call: answered {} setup {:?} ended {:?} after {:?}, received {:.1} s (speech starts {starts:?})",
        result.answered,
        result.setup_time,
        result.ended_by,
        started.elapsed(),
        result.received_seconds
    );
    assert!(result.answered, "{}", result.log);
    assert_eq!(result.ended_by, CallEnd::LocalHangup);
    wait_for(Duration::from_secs(3), "the call reaped", || {
        bot.live_calls() == 0
    });
    common::shut_down_clean(&mut bot, Duration::from_secs(3));

    // What the bot heard, from the transcript file.
    let lines = turns(dir.path());
    let convo: Vec<&serde_json::Value> = lines.iter().filter(|l| l["kind"] == "conversation").collect();
    for l in &lines {
        println!("transcript: {l}");
    }
    assert_eq!(
        convo.len(),
        said.len(),
        "one conversation turn per sentence: {lines:?}"
    );
    let reference: Vec<&str> = said.iter().map(|s| s.text).collect();
    let heard: Vec<&str> = convo.iter().map(|l| l["user"].as_str().unwrap()).collect();
    let (errors, words) = speech::wer(&reference.join(" "), &heard.join(" "));
    let caller_wer = errors as f64 / words as f64;
    println!(
        "caller side: WER {:.1} % ({errors}/{words}): heard {heard:?}",
        caller_wer * 100.0
    );
    assert!(caller_wer <= 0.35, "caller WER {caller_wer:.3}");

    // What the bot said (transcript) against what baresip recorded, read back by Whisper.
    let bot_said: Vec<&str> = lines
        .iter()
        .filter(|l| l.get("bot").is_some_and(|b| b.is_string()))
        .map(|l| l["bot"].as_str().unwrap())
        .collect();
    assert!(bot_said.iter().any(|b| b.starts_with("You said")), "{bot_said:?}");
    let recorded = callbot_audio::wav::read_wav(result.received_audio.as_ref().expect("recording")).unwrap();
    assert_eq!(recorded.sample_rate, 8000);
    let mut stt = WhisperTranscriber::new(WhisperConfig::new(&model)).unwrap();
    let read_back = transcribe_8k(&mut stt, &recorded.samples);
    stt.shutdown(Instant::now() + Duration::from_secs(2));
    let (errors, words) = speech::wer(&bot_said.join(" "), &read_back);
    let bot_wer = errors as f64 / words as f64;
    println!(
        "bot side: WER {:.1} % ({errors}/{words}); said {bot_said:?}; recording read back: {read_back:?}",
        bot_wer * 100.0
    );
    assert!(bot_wer <= 0.35, "bot-side WER {bot_wer:.3}");
}

/// Silence timeout against baresip: the caller says nothing; the bot greets, prompts
/// after 2 s of silence, says goodbye after 5 s and hangs up: baresip sees the bot's
/// BYE, and the last thing it recorded, read back by Whisper, is the whole goodbye
/// sentence (the BYE comes after the goodbye finished playing, not in the middle).
#[test]
fn heavy_e2e_silence_timeout_prompts_then_says_goodbye_and_hangs_up() {
    let Some(model) = callbot_testkit::whisper_model_and(&["baresip"]) else {
        return;
    };
    let dir = callbot_testkit::temp_dir("callbot-e2e");
    let wav = dir.path().join("caller.wav");
    write_8k(&wav, silence_8k(1.0));
    let goodbye = "Thank you for calling the call bot, goodbye.";
    let mut s = settings(dir.path(), model.clone());
    s.dialogue.greeting = "Hello.".into();
    s.dialogue.silence_prompt = "Are you still there?".into();
    s.dialogue.silence_prompt_after_secs = 2.0;
    s.dialogue.silence_hangup_after_secs = 5.0;
    s.dialogue.goodbye = goodbye.into();
    let mut bot = Bot::start(s).unwrap();
    let out = dir.path().join("heard.wav");
    let result = BaresipCall::new(bot.sip_addr(), &wav)
        .record_to(&out)
        .hold(Duration::from_secs(25))
        .run()
        .unwrap();
    println!(
        "call: answered {} ended {:?} after {:?}, received {:.1} s",
        result.answered, result.ended_by, result.duration, result.received_seconds
    );
    assert!(result.answered, "{}", result.log);
    assert_eq!(result.ended_by, CallEnd::RemoteBye, "{}", result.log);
    let lasted = result.duration.expect("established");
    assert!(
        lasted > Duration::from_secs(5) && lasted < Duration::from_secs(15),
        "hung up after {lasted:?} (silence timeout 5 s + goodbye)"
    );
    wait_for(Duration::from_secs(2), "the call reaped", || {
        bot.live_calls() == 0
    });
    common::shut_down_clean(&mut bot, Duration::from_secs(3));

    let lines = turns(dir.path());
    for l in &lines {
        println!("transcript: {l}");
    }
    let kinds: Vec<&str> = lines.iter().filter_map(|l| l["kind"].as_str()).collect();
    assert_eq!(kinds, ["greeting", "silence_prompt", "goodbye"], "{lines:?}");
    let summary = lines.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["goodbye_completed"], true, "{summary}");

    // The recording's last utterance is the whole goodbye.
    let recorded = callbot_audio::wav::read_wav(result.received_audio.as_ref().expect("recording")).unwrap();
    let parts = utterances(&recorded.samples);
    assert!(
        parts.len() >= 3,
        "greeting, prompt, goodbye: {} utterances",
        parts.len()
    );
    let mut stt = WhisperTranscriber::new(WhisperConfig::new(&model)).unwrap();
    let last = transcribe_8k(&mut stt, parts.last().unwrap());
    stt.shutdown(Instant::now() + Duration::from_secs(2));
    let (errors, words) = speech::wer(goodbye, &last);
    println!(
        "last utterance read back: {last:?}: WER {:.1} % ({errors}/{words})",
        100.0 * errors as f64 / words as f64
    );
    assert!(
        errors as f64 / words as f64 <= 0.35,
        "the goodbye was cut: heard {last:?}"
    );
}

/// The caller (baresip) hangs up while the bot is in each stage: playing its greeting,
/// transcribing the caller's sentence, and playing a long reply (from an
/// Ollama-protocol server). Each time the bot ends the call at once (reaped within 1 s
/// of baresip's BYE being answered with 200) and records `caller_hung_up`, and the
/// stage is checked: the greeting still audible at the hang-up, no reply turn, the
/// reply turn cut short. The threads are back to the idle count after the three calls.
#[test]
fn heavy_e2e_caller_hangs_up_during_greeting_transcription_and_reply() {
    let Some((model, dir, spoken)) = sentence_for_baresip() else {
        return;
    };
    // The end of the voice in the WAV (espeak-ng's clip ends with 0.35 s of quiet).
    let voiced = spoken
        .iter()
        .rposition(|s| s.unsigned_abs() > 300)
        .unwrap_or(spoken.len());
    let speech_end = 0.5 + voiced as f64 / 8000.0;
    let mut talk = silence_8k(0.5);
    talk.extend(spoken);
    talk.extend(silence_8k(30.0));
    let talk_wav = dir.path().join("talk.wav");
    write_8k(&talk_wav, talk);
    let quiet_wav = dir.path().join("quiet.wav");
    write_8k(&quiet_wav, silence_8k(1.0));

    let reply = "Certainly. The billing department is open from nine in the morning until five in the afternoon, Monday to Friday, and I will put you through to them right away, so please stay on the line while I connect you.";
    let mut llm =
        callbot_testkit::ollama::OllamaServer::start(callbot_testkit::ollama::Script::reply(reply)).unwrap();
    let mut base = settings(dir.path(), model);
    base.llm.url = llm.url();
    base.llm.model = "test-model".into();
    base.dialogue.greeting = "Hello, this is the call bot. I can answer questions about opening hours, bookings and deliveries, so please tell me what you need.".into();
    let mut bot = Bot::start(base.clone()).unwrap();
    assert!(!bot.echo_mode());
    let threads = || std::fs::read_dir("/proc/self/task").unwrap().count();
    let threads_idle = threads();

    let out_wav = dir.path().join("heard.wav");
    let mut call_no = 0;
    let mut run = |bot: &Bot, wav: &Path, hold: Duration, stage: &str| -> Vec<serde_json::Value> {
        call_no += 1;
        let result = BaresipCall::new(bot.sip_addr(), wav)
            .hold(hold)
            .record_to(&out_wav)
            .run()
            .unwrap();
        assert!(result.answered, "{stage}: {}", result.log);
        assert_eq!(result.ended_by, CallEnd::LocalHangup, "{stage}");
        assert!(
            result.bye_response.as_deref().is_some_and(|r| r.contains("200")),
            "{stage}: BYE answered: {:?}",
            result.bye_response
        );
        let t0 = Instant::now();
        wait_for(
            Duration::from_secs(1),
            &format!("{stage}: the call to end"),
            || bot.live_calls() == 0,
        );
        let reaped = t0.elapsed();
        // This call's transcript: the file whose call line is the newest.
        let lines: Vec<serde_json::Value> = turns(dir.path());
        let starts: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l["type"] == "call")
            .map(|(i, _)| i)
            .collect();
        assert_eq!(starts.len(), call_no, "{stage}: one transcript per call");
        let newest = starts
            .iter()
            .max_by_key(|i| lines[**i]["started_unix_ms"].as_u64())
            .copied()
            .unwrap();
        let end = starts
            .iter()
            .find(|i| **i > newest)
            .copied()
            .unwrap_or(lines.len());
        let t = lines[newest..end].to_vec();
        println!(
            "{stage}: baresip hung up after {:?}; call gone {reaped:?} after baresip exited; transcript {t:?}",
            result.duration
        );
        assert_eq!(t.last().unwrap()["type"], "summary", "{stage}");
        assert_eq!(t.last().unwrap()["reason"], "caller_hung_up", "{stage}");
        t
    };

    // 1. During the greeting (about 8 s long): hang up after 1.5 s.
    // The greeting was still playing: the last 300 ms baresip recorded are loud, and the
    // transcript records the greeting as far as it was played (interrupted).
    let t = run(&bot, &quiet_wav, Duration::from_millis(1500), "greeting");
    let heard = callbot_audio::wav::read_wav(&out_wav).unwrap();
    let tail = &heard.samples[heard.samples.len().saturating_sub(2400)..];
    assert!(
        tail.iter().filter(|s| s.unsigned_abs() > 1000).count() > 100,
        "the greeting was playing when the caller hung up ({} samples recorded)",
        heard.samples.len()
    );
    assert_eq!(t.last().unwrap()["replies"], 0);
    let greeting = t
        .iter()
        .find(|l| l["kind"] == "greeting")
        .expect("the partly played greeting is recorded");
    assert_eq!(greeting["interrupted"], true, "{greeting}");
    let said = greeting["bot"].as_str().unwrap();
    let full = base.dialogue.greeting.as_str();
    println!("greeting as heard before the hang-up: {said:?}");
    assert!(
        full.starts_with(said) && !said.is_empty() && said.len() < full.len() / 2,
        "about 1.5 s of an 8 s greeting: {said:?}"
    );

    // No greeting from now on (applies to new calls).
    let mut next = base.clone();
    next.dialogue.greeting = String::new();
    // Transcription starts at the endpoint (not speculatively during the hangover), on
    // one thread, so the hang-up 150 ms after the endpoint lands while it runs.
    next.dialogue.speculative_stt = false;
    next.stt.threads = 1;
    bot.reconfigure(next).unwrap();

    // 2. During transcription: hang up 150 ms after the endpoint (0.64 s after the
    // speech). tiny.en on one thread takes 0.2 s (quiet) to 4 s (loaded) for this
    // sentence here, and baresip's BYE leaves 0-0.3 s after the hold it is given, so a
    // call whose hang-up missed the transcription is placed again with the hold moved
    // by what its transcript shows (at most 4 calls). The summary's
    // `transcriptions_cancelled` says the hang-up landed while whisper ran; such a call
    // must have no reply turn.
    let mut offset = 0.15;
    let mut tries = Vec::new();
    for _ in 0..4 {
        let hold = Duration::from_secs_f64((speech_end + 0.64 + offset).max(0.5));
        let t = run(&bot, &talk_wav, hold, "transcription");
        let summary = t.last().unwrap();
        let reply_turn = t.iter().find(|l| l["kind"] == "conversation");
        if summary["transcriptions_cancelled"] == 1 {
            assert!(
                reply_turn.is_none(),
                "no reply turn when the caller left during transcription: {t:?}"
            );
            tries.push(format!("{offset:+.2} s: during the transcription"));
            break;
        }
        match reply_turn {
            // Too late: the transcription had finished. The turn is dated at the end of
            // the voice, its endpoint came `timings.endpoint` later; aim at the middle of
            // the transcription.
            Some(turn) => {
                let ms = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0) / 1000.0;
                let late = ms(&summary["duration"]) - ms(&turn["at"]) - ms(&turn["timings"]["endpoint"]);
                let stt = ms(&turn["timings"]["stt"]);
                tries.push(format!(
                    "{offset:+.2} s: {late:.2} s after the endpoint, the transcription took {stt:.2} s"
                ));
                offset -= (late - stt / 2.0).max(0.05);
            }
            // Too early: before the endpoint, nothing was transcribed.
            None => {
                tries.push(format!("{offset:+.2} s: before the endpoint"));
                offset += 0.2;
            }
        }
    }
    println!("transcription stage, hang-up offsets tried: {tries:?}");
    assert!(
        tries
            .last()
            .is_some_and(|t| t.ends_with("during the transcription")),
        "no hang-up landed during the transcription: {tries:?}"
    );

    // 3. During the reply (about 13 s of speech): hang up 7 s after the endpoint.
    let hold = Duration::from_secs_f64(speech_end + 0.64 + 7.0);
    let t = run(&bot, &talk_wav, hold, "reply");
    let turn = t
        .iter()
        .find(|l| l["kind"] == "conversation")
        .expect("reply turn");
    let said = turn["bot"].as_str().unwrap();
    assert!(
        turn["interrupted"] == true || said.len() < reply.len(),
        "the reply was cut by the hang-up: {turn}"
    );

    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(threads(), threads_idle, "threads back to idle");
    common::shut_down_clean(&mut bot, Duration::from_secs(3));
    llm.shutdown(Instant::now() + Duration::from_secs(1));
}

/// Barge-in against baresip: the caller talks over a long greeting; the greeting stops
/// (the transcript marks it interrupted) and what baresip recorded goes quiet soon
/// after the caller's speech onset, until the reply to what the caller said.
#[test]
fn heavy_e2e_barge_in_over_the_greeting() {
    let Some((model, dir, spoken)) = sentence_for_baresip() else {
        return;
    };
    let lead = 2.0;
    let onset = lead + spoken.iter().position(|s| s.unsigned_abs() > 1000).unwrap_or(0) as f64 / 8000.0;
    let speech_end = lead + spoken.len() as f64 / 8000.0;
    let mut talk = silence_8k(lead);
    talk.extend(spoken);
    talk.extend(silence_8k(30.0));
    let wav = dir.path().join("talk.wav");
    write_8k(&wav, talk);

    let mut s = settings(dir.path(), model);
    s.dialogue.greeting = "Hello, this is the call bot. I can answer questions about opening hours, bookings and deliveries, so please tell me what you need and I will do my best to help you.".into();
    let mut bot = Bot::start(s).unwrap();
    let out = dir.path().join("heard.wav");
    let result = BaresipCall::new(bot.sip_addr(), &wav)
        .record_to(&out)
        .hold(Duration::from_secs_f64(speech_end + 1.0))
        .run()
        .unwrap();
    assert!(result.answered, "{}", result.log);
    common::shut_down_clean(&mut bot, Duration::from_secs(3));

    let heard = callbot_audio::wav::read_wav(&out).unwrap();
    let at = |t: f64| ((t * 8000.0) as usize).min(heard.samples.len());
    let loud_before = heard.samples[at(0.3)..at(onset)]
        .iter()
        .filter(|s| s.unsigned_abs() > 1000)
        .count();
    assert!(loud_before > 2000, "the greeting played before the caller spoke");
    // The last loud sample between the onset and the end of the caller's sentence
    // (the reply cannot start before the endpoint, 0.64 s after the speech).
    let window = &heard.samples[at(onset)..at(speech_end)];
    let last_loud = window
        .iter()
        .rposition(|s| s.unsigned_abs() > 1000)
        .map_or(0.0, |i| i as f64 / 8000.0);
    println!(
        "barge-in heard by baresip: greeting audible until {last_loud:.3} s after the caller's speech onset (includes baresip's jitter buffer)"
    );
    assert!(
        last_loud < 1.0,
        "the greeting went on {last_loud:.3} s into the caller's speech"
    );
    common::assert_greeting_interrupted(&turns(dir.path()));
}

/// The caller says "Goodbye." (espeak-ng through baresip): the bot answers with its
/// goodbye, plays it to the end and then hangs up: baresip sees the bot's BYE.
#[test]
fn heavy_e2e_caller_goodbye_ends_the_call_politely() {
    let Some(model) = callbot_testkit::whisper_model_and(&["baresip"]) else {
        return;
    };
    let dir = callbot_testkit::temp_dir("callbot-e2e");
    let Some(pcm) = speech::espeak("Goodbye.", "en-us") else {
        return;
    };
    let mut talk = silence_8k(1.0);
    talk.extend(speech::telephone_8k(&pcm, None));
    talk.extend(silence_8k(30.0));
    let wav = dir.path().join("talk.wav");
    write_8k(&wav, talk);
    let mut s = settings(dir.path(), model);
    s.dialogue.greeting = String::new();
    s.dialogue.goodbye = "Thank you for calling, goodbye.".into();
    let mut bot = Bot::start(s).unwrap();
    let result = BaresipCall::new(bot.sip_addr(), &wav)
        .hold(Duration::from_secs(25))
        .run()
        .unwrap();
    println!(
        "caller goodbye: ended {:?} after {:?}",
        result.ended_by, result.duration
    );
    assert!(result.answered, "{}", result.log);
    assert_eq!(result.ended_by, CallEnd::RemoteBye, "{}", result.log);
    common::shut_down_clean(&mut bot, Duration::from_secs(3));
    let lines = turns(dir.path());
    println!("{lines:?}");
    let summary = lines.last().unwrap();
    assert_eq!(summary["reason"], "caller_goodbye", "{summary}");
    assert_eq!(summary["goodbye_completed"], true, "{summary}");
    assert!(
        lines
            .iter()
            .any(|l| l["kind"] == "goodbye" && l["bot"] == "Thank you for calling, goodbye."),
        "{lines:?}"
    );
}
