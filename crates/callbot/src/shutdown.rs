//! The bot's shutdown goodbye: synthesized once, fitted to the deadline, shared by
//! every live call.
//!
//! [`crate::Bot::shutdown`] has a deadline (500 ms is a usual one) and every live call
//! must hear the short goodbye and get its BYE within it. Synthesizing the phrase once
//! per call would queue 50 jobs on the one espeak-ng worker and play each at its own
//! time; instead [`prepare_goodbye`] synthesizes it once, trims the engine's leading and
//! trailing silence (about 300 ms with espeak-ng), and fits it into
//! [`GOODBYE_SHARE`] of the time left: first by speaking faster (up to
//! [`MAX_SPEEDUP`] times the configured rate and the engine's maximum), then, if it
//! still does not fit, by cutting it with a short fade-out. The [`GoodbyeReport`] says
//! which happened. Every call then plays the same PCM at once
//! ([`crate::call::CallControl::Shutdown`]'s `audio`), so all of them finish speaking
//! and hang up together, leaving the rest of the deadline for the BYE answers, the
//! joins, unregistration and the components.

use std::time::{Duration, Instant};

use callbot_audio::AudioFrame;
use callbot_tts::{Synthesizer, VoiceOptions};

/// Share of the time left (after synthesis) the goodbye audio may take; the rest is
/// for the BYEs, their answers, the joins, unregistration and the components.
pub const GOODBYE_SHARE: f64 = 0.5;
/// Share of the time left the synthesis may take (the espeak-ng worker may be busy).
pub const SYNTHESIS_SHARE: f64 = 0.2;
/// The goodbye is spoken at most this many times faster than the configured rate.
pub const MAX_SPEEDUP: f64 = 2.5;
/// Syntheses at a faster rate tried before the goodbye is cut to fit.
const FIT_ATTEMPTS: usize = 2;
/// A sample at or below this magnitude counts as silence when trimming (1 % of full
/// scale, about -40 dBFS).
const SILENCE_LEVEL: u16 = 328;
/// Kept before the first and after the last loud sample when trimming.
const TRIM_PAD: Duration = Duration::from_millis(15);
/// Fade-out applied where the goodbye is cut.
const FADE: Duration = Duration::from_millis(10);

/// What the shutdown goodbye was (part of [`crate::BotShutdownReport`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GoodbyeReport {
    /// The phrase.
    pub phrase: String,
    /// The rate it was spoken at (words per minute): the configured one, or faster so
    /// that it fits.
    pub rate_wpm: u16,
    /// The audio every call was given (silence trimmed, fitted to the deadline).
    pub audio: Duration,
    /// The whole phrase's audio at `rate_wpm` (equal to `audio` unless `cut`).
    pub full: Duration,
    /// Whether the audio was cut to fit (the end of the phrase is missing).
    pub cut: bool,
    /// Time spent synthesizing (once for all calls, both attempts).
    pub synthesis: Duration,
    /// Why there is no goodbye audio (the calls hang up without one), if so.
    pub error: Option<String>,
}

/// Synthesizes `phrase` once with `voice` and fits it into the time left before
/// `deadline` (see the [module docs](self)). Returns the audio at `rate` Hz (`None` when
/// synthesis failed or there is no time: the report says why) and the report.
pub fn prepare_goodbye(
    tts: &dyn Synthesizer,
    phrase: &str,
    voice: &VoiceOptions,
    rate: u32,
    deadline: Instant,
) -> (Option<AudioFrame>, GoodbyeReport) {
    let started = Instant::now();
    let synth_deadline = started
        + deadline
            .saturating_duration_since(started)
            .mul_f64(SYNTHESIS_SHARE);
    let mut report = GoodbyeReport {
        phrase: phrase.to_string(),
        rate_wpm: voice.rate_wpm,
        ..GoodbyeReport::default()
    };
    let mut audio = match synthesize(tts, phrase, voice, rate, synth_deadline) {
        Ok(a) => a,
        Err(e) => {
            report.synthesis = started.elapsed();
            tracing::warn!(error = %e, "shutdown goodbye: synthesis failed, calls hang up without it");
            report.error = Some(e);
            return (None, report);
        }
    };
    let budget = |now: Instant| deadline.saturating_duration_since(now).mul_f64(GOODBYE_SHARE);
    // Faster until it fits (the duration is not exactly inverse to the rate: a second
    // attempt corrects the first), within the synthesis share of the time.
    for _ in 0..FIT_ATTEMPTS {
        let Some(faster) = faster_rate(
            voice.rate_wpm,
            report.rate_wpm,
            audio.duration(),
            budget(Instant::now()),
        ) else {
            break;
        };
        let voice = VoiceOptions {
            rate_wpm: faster,
            ..voice.clone()
        };
        match synthesize(tts, phrase, &voice, rate, synth_deadline) {
            Ok(a) => {
                audio = a;
                report.rate_wpm = faster;
            }
            Err(e) => {
                tracing::debug!(error = %e, "shutdown goodbye: faster synthesis failed, cutting");
                break;
            }
        }
    }
    report.synthesis = started.elapsed();
    report.full = audio.duration();
    let budget = budget(Instant::now());
    if audio.duration() > budget {
        cut_with_fade(&mut audio, budget);
        report.cut = true;
    }
    report.audio = audio.duration();
    if audio.is_empty() {
        report.error = Some("no time left for a goodbye".into());
        return (None, report);
    }
    (Some(audio), report)
}

/// The faster rate at which `full` (spoken at `rate`) shrinks into `budget`, if it does
/// not fit and a faster one is allowed (at most [`MAX_SPEEDUP`] times the configured
/// `base` rate and the engine's maximum).
fn faster_rate(base: u16, rate: u16, full: Duration, budget: Duration) -> Option<u16> {
    if full <= budget || budget.is_zero() {
        return None;
    }
    let max = (f64::from(base) * MAX_SPEEDUP).min(f64::from(VoiceOptions::MAX_RATE_WPM));
    // espeak-ng's pauses do not shrink in proportion: aim 10 % faster than the ratio.
    let wanted = f64::from(rate) * full.as_secs_f64() / budget.as_secs_f64() * 1.1;
    let r = wanted.min(max).ceil();
    (r > f64::from(rate)).then_some(r as u16)
}

fn synthesize(
    tts: &dyn Synthesizer,
    phrase: &str,
    voice: &VoiceOptions,
    rate: u32,
    deadline: Instant,
) -> Result<AudioFrame, String> {
    let job = tts.synthesize(phrase, voice).map_err(|e| e.to_string())?;
    let audio = job.collect(deadline).map_err(|e| e.to_string())?;
    let frame = trim_silence(AudioFrame::new(audio.sample_rate, audio.samples));
    if frame.sample_rate == rate {
        Ok(frame)
    } else {
        callbot_audio::resample::resample_frame(&frame, rate).map_err(|e| e.to_string())
    }
}

/// Drops the leading and trailing silence, keeping [`TRIM_PAD`] around the sound (an
/// all-silent phrase becomes empty).
fn trim_silence(mut frame: AudioFrame) -> AudioFrame {
    if !frame.samples.iter().any(|s| s.unsigned_abs() > SILENCE_LEVEL) {
        return AudioFrame::new(frame.sample_rate, Vec::new());
    }
    frame.trim_leading_silence(SILENCE_LEVEL, TRIM_PAD);
    frame.trim_trailing_silence(SILENCE_LEVEL, TRIM_PAD);
    frame
}

/// Cuts `frame` to `max` and fades its last [`FADE`] out (no click where it stops).
fn cut_with_fade(frame: &mut AudioFrame, max: Duration) {
    let keep = callbot_audio::frame::samples_for(frame.sample_rate, max).min(frame.samples.len());
    frame.samples.truncate(keep);
    let fade = callbot_audio::frame::samples_for(frame.sample_rate, FADE).min(keep);
    let from = keep - fade;
    for (i, s) in frame.samples.iter_mut().skip(from).enumerate() {
        let gain = 1.0 - (i as f32 + 1.0) / fade.max(1) as f32;
        *s = (f32::from(*s) * gain) as i16;
    }
}

impl std::fmt::Display for crate::BotShutdownReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ms: calls {} (ended {}, abandoned {}), BYE sent {} answered {}, goodbye ",
            self.elapsed.as_millis(),
            self.live_calls,
            self.calls_ended,
            self.calls_abandoned,
            self.byes_sent,
            self.byes_answered,
        )?;
        match &self.goodbye {
            None => write!(f, "none")?,
            Some(g) => match &g.error {
                Some(e) => write!(f, "failed ({e})")?,
                None => write!(
                    f,
                    "{} ms at {} wpm{} (completed on {})",
                    g.audio.as_millis(),
                    g.rate_wpm,
                    if g.cut { ", cut" } else { "" },
                    self.goodbyes_completed
                )?,
            },
        }
        let unregistered = match &self.sip {
            None => "unknown (SIP not shut down)",
            Some(s) => match (s.unregistered, s.timed_out) {
                (None, _) => "n/a",
                (Some(true), _) => "yes",
                (Some(false), true) => "no (timed out)",
                (Some(false), false) => "no (refused)",
            },
        };
        let sip_joined = self.sip.as_ref().is_some_and(|s| s.thread_joined);
        write!(
            f,
            ", unregistered: {unregistered}, threads joined: bot-sip {} sip-ua {}, components clean {}",
            self.event_thread_joined,
            sip_joined,
            self.components.all_clean()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_keeps_the_sound_and_a_short_pad() {
        let mut samples = vec![0i16; 8000];
        samples.extend(std::iter::repeat_n(5000i16, 800));
        samples.extend(vec![10i16; 4000]);
        let t = trim_silence(AudioFrame::new(8000, samples));
        // 100 ms of sound plus 15 ms of pad on each side
        assert_eq!(t.samples.len(), 800 + 2 * 120);
        assert_eq!(t.samples[120], 5000);
        assert!(trim_silence(AudioFrame::new(8000, vec![0; 100])).is_empty());
    }

    #[test]
    fn cut_fades_out_to_silence() {
        let mut f = AudioFrame::new(8000, vec![10_000i16; 8000]);
        cut_with_fade(&mut f, Duration::from_millis(250));
        assert_eq!(f.samples.len(), 2000);
        assert_eq!(f.samples[1900], 10_000);
        assert!(f.samples[1999].abs() < 200, "{}", f.samples[1999]);
        assert!(f.samples[1960] < f.samples[1930]);
    }

    #[test]
    fn faster_rate_only_when_needed_and_within_limits() {
        let ms = Duration::from_millis;
        assert_eq!(faster_rate(175, 175, ms(200), ms(250)), None);
        let r = faster_rate(175, 175, ms(500), ms(250)).unwrap();
        assert!((380..=390).contains(&r), "{r}");
        assert_eq!(faster_rate(175, 175, ms(5000), ms(250)), Some(438));
        assert_eq!(faster_rate(300, 300, ms(5000), ms(250)), Some(450));
        assert_eq!(faster_rate(450, 450, ms(5000), ms(250)), None);
        assert_eq!(faster_rate(175, 175, ms(500), Duration::ZERO), None);
        // a second attempt from the first one's rate, still capped by the base rate
        assert_eq!(faster_rate(175, 300, ms(392), ms(242)), Some(438));
        assert_eq!(faster_rate(175, 438, ms(300), ms(242)), None);
    }

    /// The real espeak-ng engine: "Goodbye." spoken faster to fit 250 ms, a long phrase
    /// cut to the budget, and an idle engine answers well inside the synthesis share.
    #[test]
    fn goodbye_fits_the_deadline_with_espeak() {
        let Ok(mut engine) = callbot_tts::EspeakSynthesizer::start(callbot_tts::EspeakConfig::default())
        else {
            return;
        };
        let client = engine.client();
        // The bot's default rate (`tts.rate`).
        let voice = VoiceOptions {
            rate_wpm: 175,
            ..VoiceOptions::default()
        };
        let deadline = Instant::now() + Duration::from_millis(500);
        let (audio, r) = prepare_goodbye(&client, "Goodbye.", &voice, 8000, deadline);
        println!("{r:?}");
        let audio = audio.unwrap();
        assert_eq!(audio.sample_rate, 8000);
        assert!(r.rate_wpm > 175, "{r:?}");
        assert!(!r.cut, "{r:?}");
        assert!(
            r.audio <= Duration::from_millis(250) && r.audio >= Duration::from_millis(120),
            "{r:?}"
        );
        assert_eq!(r.audio, audio.duration());
        let long = "Sorry, I have to go now, we are closing for the night. Goodbye.";
        let (audio, r) = prepare_goodbye(
            &client,
            long,
            &voice,
            8000,
            Instant::now() + Duration::from_millis(500),
        );
        println!("{r:?}");
        assert!(r.cut && r.full > r.audio, "{r:?}");
        assert!(audio.unwrap().duration() <= Duration::from_millis(250));
        // No time at all: no audio, and the report says so.
        let (audio, r) = prepare_goodbye(&client, "Goodbye.", &voice, 8000, Instant::now());
        assert!(audio.is_none() && r.error.is_some(), "{r:?}");
        engine.shutdown(Instant::now() + Duration::from_secs(1));
    }
}
