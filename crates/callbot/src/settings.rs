//! Bot settings: one TOML file, parsed with serde and validated field by field.
//!
//! Every section has defaults, so an empty file is a valid configuration (a bot on
//! `0.0.0.0:5060` without registration, Ollama on localhost, espeak-ng `en-us+f2` at 140 wpm).
//! Unknown keys are rejected, so a typo does not silently fall back to a default.
//! [`Settings::validate`] returns the first problem as a [`SettingsError`] naming the
//! field (`"llm.url"`) and the reason.
//!
//! The annotated example is `examples/callbot.toml` in the repository.
//!
//! ```
//! let settings = callbot::Settings::from_toml_str(r#"
//!     [llm]
//!     model = "llama3.2:1b"
//!     [dialogue]
//!     greeting = "Hello, how can I help?"
//! "#).unwrap();
//! assert_eq!(settings.llm.model, "llama3.2:1b");
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Largest `dialogue.max_calls` accepted.
pub const MAX_CALLS_LIMIT: usize = 10_000;

/// Largest settings file read, in bytes.
pub const MAX_SETTINGS_FILE_BYTES: u64 = 1 << 20;

/// A setting that is not acceptable: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting `{field}`: {reason}")]
pub struct SettingsError {
    /// The dotted path of the field, e.g. `"llm.url"` or `"dialogue.dtmf.0"`.
    pub field: String,
    /// Why the value is not acceptable.
    pub reason: String,
}

impl SettingsError {
    /// A new error for `field` with `reason`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Why a settings file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read settings file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_SETTINGS_FILE_BYTES`].
    #[error("settings file {path} is larger than {MAX_SETTINGS_FILE_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("settings are not valid TOML: {message}")]
    Parse {
        /// The parser's message (it names the key and the line).
        message: String,
    },
    /// The file parsed but a value is not acceptable.
    #[error(transparent)]
    Invalid(#[from] SettingsError),
}

/// Everything the bot needs to run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// SIP signalling.
    pub sip: SipSettings,
    /// RTP media.
    pub media: MediaSettings,
    /// Speech to text (Whisper).
    pub stt: SttSettings,
    /// Language model (Ollama).
    pub llm: LlmSettings,
    /// Speech synthesis (espeak-ng).
    pub tts: TtsSettings,
    /// The conversation rules.
    pub dialogue: DialogueSettings,
    /// Per-call transcript files.
    pub transcripts: TranscriptSettings,
}

/// `[sip]`: where the bot listens and whether it registers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SipSettings {
    /// UDP address the SIP user agent binds, e.g. `"0.0.0.0:5060"`.
    pub listen: SocketAddr,
    /// Optional registration with a registrar.
    pub registration: Option<RegistrationSettings>,
}

impl Default for SipSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 5060)),
            registration: None,
        }
    }
}

/// `[sip.registration]`: REGISTER with digest authentication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationSettings {
    /// Registrar as `host[:port]`, e.g. `"127.0.0.1:5070"` or `"sip.example.com"`.
    pub server: String,
    /// User part of the address of record.
    pub user: String,
    /// Digest password (may be empty for registrars without authentication).
    #[serde(default)]
    pub password: String,
    /// Requested registration lifetime in seconds (60 to 86400).
    #[serde(default = "default_expires")]
    pub expires: u32,
}

fn default_expires() -> u32 {
    3600
}

/// `[media]`: RTP ports, codecs and recordings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaSettings {
    /// First RTP port (even) the bot may use.
    pub rtp_port_min: u16,
    /// Last RTP port the bot may use.
    pub rtp_port_max: u16,
    /// Codecs offered/accepted, in order of preference: `"PCMU"`, `"PCMA"`.
    pub codecs: Vec<String>,
    /// When set, each call's audio is recorded as WAV files in this directory.
    pub record_dir: Option<PathBuf>,
    /// Caller audio buffered against network jitter before the VAD sees it, in ms
    /// (20 to 500): the most the adaptive jitter buffer grows to. Every millisecond
    /// here delays barge-in and the endpoint.
    pub jitter_buffer_ms: u32,
    /// The jitter buffer's delay on a clean path, in ms (0 to `jitter_buffer_ms`;
    /// default 10). It grows from there when packets come late (and with four times
    /// the measured RFC 3550 jitter) up to `jitter_buffer_ms`, and sheds the growth
    /// again in the caller's pauses. Equal to `jitter_buffer_ms`: a fixed buffer.
    pub jitter_buffer_min_ms: u32,
}

impl Default for MediaSettings {
    fn default() -> Self {
        Self {
            rtp_port_min: 20000,
            rtp_port_max: 20999,
            codecs: vec!["PCMU".into(), "PCMA".into()],
            record_dir: None,
            jitter_buffer_ms: 40,
            jitter_buffer_min_ms: 10,
        }
    }
}

/// The codecs the media layer supports.
pub const SUPPORTED_CODECS: &[&str] = &["PCMU", "PCMA"];

/// `[stt]`: the Whisper model and its worker pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SttSettings {
    /// Path of the ggml Whisper model (`cargo xtask model` prints one).
    pub model: PathBuf,
    /// Threads per transcription (1 to 64).
    pub threads: u32,
    /// Concurrent transcriptions (worker threads, 1 to 64).
    pub workers: u32,
    /// Spoken language code, e.g. `"en"`.
    pub language: String,
    /// Beam size; 1 means greedy decoding (1 to 8).
    pub beam_size: u32,
    /// Text given to Whisper as the previous context (names, jargon).
    pub initial_prompt: String,
    /// Longest a transcription may take, from its start (0.5 to 300 s). A transcription
    /// that fails or times out is recorded in the transcript (a `transcription_failed`
    /// turn with the error) and the bot says `dialogue.stt_failed_phrase`.
    pub timeout_secs: f64,
}

impl Default for SttSettings {
    fn default() -> Self {
        Self {
            model: PathBuf::from("models/ggml-tiny.en.bin"),
            threads: 2,
            workers: 1,
            language: "en".into(),
            beam_size: 1,
            initial_prompt: String::new(),
            timeout_secs: 10.0,
        }
    }
}

/// `[llm]`: the Ollama server and the model's parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmSettings {
    /// Base URL of the Ollama server, `http://host:port`.
    pub url: String,
    /// Model name as Ollama knows it.
    pub model: String,
    /// System prompt sent first in every conversation.
    pub system_prompt: String,
    /// Sampling temperature (0 to 2).
    pub temperature: f32,
    /// Maximum tokens per reply (1 to 4096).
    pub num_predict: u32,
    /// Context window in tokens (256 to 131072).
    pub num_ctx: u32,
    /// Seconds to wait for the connection to the server.
    pub connect_timeout_secs: f64,
    /// Seconds to wait for the first token of a reply.
    pub first_token_timeout_secs: f64,
    /// Seconds a whole reply may take.
    pub reply_timeout_secs: f64,
    /// Characters of conversation history kept (oldest turns are dropped first).
    pub history_max_chars: usize,
    /// When the server is unreachable at start, answer with what the caller said.
    pub echo_when_unreachable: bool,
}

impl Default for LlmSettings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:11434".into(),
            model: "llama3.2:1b".into(),
            system_prompt: "You are a helpful voice assistant on a phone call. Answer in one or two short spoken sentences, without lists or markup.".into(),
            temperature: 0.7,
            num_predict: 128,
            num_ctx: 2048,
            connect_timeout_secs: 2.0,
            first_token_timeout_secs: 10.0,
            reply_timeout_secs: 30.0,
            history_max_chars: 4000,
            echo_when_unreachable: true,
        }
    }
}

/// `[tts]`: the espeak-ng voice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TtsSettings {
    /// espeak-ng voice name, e.g. `"en-us+f2"` (the default) or `"en-us"`.
    pub voice: String,
    /// Words per minute (80 to 450).
    pub rate: u32,
    /// Pitch (0 to 100).
    pub pitch: u32,
    /// Volume (0 to 200).
    pub volume: u32,
}

/// The phone voice of `callbot-tts` (`VoiceOptions::default()`: `en-us+f2` at 140 wpm, the
/// clearest espeak-ng voice through G.711 and Whisper in its round-trip measurements).
impl Default for TtsSettings {
    fn default() -> Self {
        let v = callbot_tts::VoiceOptions::default();
        Self {
            voice: v.voice,
            rate: u32::from(v.rate_wpm),
            pitch: u32::from(v.pitch),
            volume: u32::from(v.volume),
        }
    }
}

/// What happens after a DTMF action's phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DtmfThen {
    /// Keep the conversation going.
    Continue,
    /// Hang up once the phrase is spoken.
    Hangup,
}

/// One `[dialogue.dtmf]` entry: `0 = { say = "...", then = "hangup" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DtmfAction {
    /// Phrase to say (may be empty to say nothing).
    #[serde(default)]
    pub say: String,
    /// What to do next.
    #[serde(default = "default_then")]
    pub then: DtmfThen,
}

fn default_then() -> DtmfThen {
    DtmfThen::Continue
}

/// `[dialogue.noise_guard]`: transcripts that must not trigger a reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NoiseGuardSettings {
    /// Transcripts whose no-speech probability is above this are ignored (0 to 1).
    pub max_no_speech_prob: f32,
    /// Transcripts with fewer words than this are ignored (at least 1).
    pub min_words: usize,
}

impl Default for NoiseGuardSettings {
    fn default() -> Self {
        Self {
            max_no_speech_prob: 0.6,
            min_words: 1,
        }
    }
}

/// `[dialogue.vad]`: voice activity detection and end of utterance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VadSettings {
    /// Speech score (0 to 1) at which a frame counts as speech.
    pub threshold: f32,
    /// Speech shorter than this is ignored (clicks, coughs); it also delays barge-in.
    pub min_speech_secs: f64,
    /// Silence that ends an utterance (the endpoint hangover).
    pub hangover_secs: f64,
    /// While the bot speaks, speech this long is enough to interrupt it (barge-in);
    /// shorter than `min_speech_secs` so playback stops sooner (at most `min_speech_secs`;
    /// the VAD counts 16 ms frames, rounded up). Default 32 ms: with the adaptive jitter
    /// buffer (10 ms on a clean path), speech onset to the last bot packet measured
    /// 107-111 ms on loopback (127-131 ms with a fixed 40 ms buffer); a longer value
    /// resists clicks and line echo better (48 ms: about 16 ms more).
    pub barge_in_min_speech_secs: f64,
}

impl Default for VadSettings {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            min_speech_secs: 0.12,
            hangover_secs: 0.6,
            barge_in_min_speech_secs: 0.032,
        }
    }
}

/// `[dialogue]`: what the bot says and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DialogueSettings {
    /// Said when the call is answered (empty: say nothing, listen).
    pub greeting: String,
    /// Said before the bot hangs up (silence, maximum duration, caller's goodbye).
    pub goodbye: String,
    /// When the caller's whole utterance is one of these (case and punctuation
    /// ignored), the bot says `goodbye` and hangs up.
    pub caller_goodbye_phrases: Vec<String>,
    /// Said after `silence_prompt_after_secs` of caller silence.
    pub silence_prompt: String,
    /// Seconds of caller silence before the prompt.
    pub silence_prompt_after_secs: f64,
    /// Seconds of caller silence before goodbye and hang-up (more than the prompt's).
    pub silence_hangup_after_secs: f64,
    /// Maximum call duration in seconds; then goodbye and hang-up.
    pub max_call_duration_secs: f64,
    /// Concurrent calls; more are rejected with 486 Busy Here.
    pub max_calls: usize,
    /// Said when the language model fails.
    pub error_phrase: String,
    /// Said when the transcription of the caller's utterance fails or times out
    /// (`stt.timeout_secs`): a re-prompt. Empty: say nothing and listen.
    pub stt_failed_phrase: String,
    /// Said to live calls when the bot shuts down. Keep it short: it is synthesized once
    /// and fitted into half of the shutdown's time left, spoken up to 2.5 times faster,
    /// then cut (see `callbot::shutdown`).
    pub shutdown_phrase: String,
    /// When true, the caller's speech stops the bot's playback (barge-in).
    pub barge_in: bool,
    /// When true, the transcription of an utterance starts as soon as the caller's
    /// voice stops (during the endpoint hangover) and is dropped if the caller goes on.
    pub speculative_stt: bool,
    /// Seconds of silence after the caller's voice stops before the speculative
    /// transcription starts (0: at once). Longer spares the transcriber the short
    /// pauses inside sentences but adds to every reply's latency.
    pub speculation_delay_secs: f64,
    /// When true (and `speculative_stt`), the turn ends as soon as the speculative
    /// transcript reads as a finished utterance (final `.`/`?`/`!`, at least
    /// `early_end_min_words` words, not ending with "and", "the", "um"...) and the
    /// caller has been silent for `early_end_min_silence_secs`; otherwise the bot waits
    /// for the full `vad.hangover_secs`.
    pub early_end_of_turn: bool,
    /// Seconds of caller silence before an early end of turn (at most `vad.hangover_secs`).
    pub early_end_min_silence_secs: f64,
    /// Words a transcript needs for an early end of turn.
    pub early_end_min_words: usize,
    /// Which transcripts are treated as noise.
    pub noise_guard: NoiseGuardSettings,
    /// Voice activity detection.
    pub vad: VadSettings,
    /// DTMF digit (`0`-`9`, `*`, `#`, `A`-`D`) to action.
    pub dtmf: BTreeMap<String, DtmfAction>,
}

impl Default for DialogueSettings {
    fn default() -> Self {
        Self {
            greeting: "Hello, this is the call bot. How can I help you?".into(),
            goodbye: "Goodbye!".into(),
            caller_goodbye_phrases: vec!["goodbye".into(), "bye".into(), "bye bye".into()],
            silence_prompt: "Are you still there?".into(),
            silence_prompt_after_secs: 8.0,
            silence_hangup_after_secs: 20.0,
            max_call_duration_secs: 600.0,
            max_calls: 20,
            error_phrase: "Sorry, I cannot answer that right now.".into(),
            stt_failed_phrase: "Sorry, I did not catch that. Could you say it again?".into(),
            shutdown_phrase: "Goodbye.".into(),
            barge_in: true,
            speculative_stt: true,
            speculation_delay_secs: 0.0,
            early_end_of_turn: true,
            early_end_min_silence_secs: 0.25,
            early_end_min_words: 2,
            noise_guard: NoiseGuardSettings::default(),
            vad: VadSettings::default(),
            dtmf: BTreeMap::new(),
        }
    }
}

/// `[transcripts]`: where per-call transcript files go.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TranscriptSettings {
    /// Directory for `<call>.jsonl` files; none: no transcript files.
    pub dir: Option<PathBuf>,
}

/// Largest phrase (greeting, prompt...) in bytes.
const MAX_PHRASE_BYTES: usize = 2000;

impl Settings {
    /// Parses and validates settings from TOML text.
    pub fn from_toml_str(text: &str) -> Result<Settings, LoadError> {
        let settings: Settings = toml::from_str(text).map_err(|e| LoadError::Parse {
            message: e.to_string(),
        })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Reads, parses and validates a settings file (at most [`MAX_SETTINGS_FILE_BYTES`]).
    pub fn load(path: &Path) -> Result<Settings, LoadError> {
        let io = |source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_SETTINGS_FILE_BYTES {
            return Err(LoadError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::from_toml_str(&text)
    }

    /// Checks every value; the error names the first field that is not acceptable.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.validate_sip()?;
        self.validate_media()?;
        self.validate_stt()?;
        self.validate_llm()?;
        self.validate_tts()?;
        self.validate_dialogue()?;
        Ok(())
    }

    fn validate_sip(&self) -> Result<(), SettingsError> {
        if let Some(reg) = &self.sip.registration {
            let server = reg.server.trim();
            if server.is_empty() {
                return Err(SettingsError::new("sip.registration.server", "must not be empty"));
            }
            if server.contains(|c: char| c.is_whitespace() || c == '@' || c == '/') {
                return Err(SettingsError::new(
                    "sip.registration.server",
                    format!("`{server}` is not host[:port]"),
                ));
            }
            if let Some((_, port)) = server.rsplit_once(':')
                && !server.starts_with('[')
                && port.parse::<u16>().map_or(true, |p| p == 0)
            {
                return Err(SettingsError::new(
                    "sip.registration.server",
                    format!("port `{port}` is not a number from 1 to 65535"),
                ));
            }
            if reg.user.is_empty()
                || !reg
                    .user
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.!~*'()&=+$,;?/".contains(c))
            {
                return Err(SettingsError::new(
                    "sip.registration.user",
                    "must be a non-empty SIP user part (letters, digits, -_.!~*'()&=+$,;?/)",
                ));
            }
            if !(60..=86400).contains(&reg.expires) {
                return Err(SettingsError::new(
                    "sip.registration.expires",
                    format!("{} is outside 60..=86400 seconds", reg.expires),
                ));
            }
        }
        Ok(())
    }

    fn validate_media(&self) -> Result<(), SettingsError> {
        let m = &self.media;
        if m.rtp_port_min < 1024 {
            return Err(SettingsError::new(
                "media.rtp_port_min",
                format!("{} is a privileged port (below 1024)", m.rtp_port_min),
            ));
        }
        if m.rtp_port_max < m.rtp_port_min.saturating_add(1) {
            return Err(SettingsError::new(
                "media.rtp_port_max",
                format!(
                    "{} leaves no RTP/RTCP port pair above rtp_port_min {}",
                    m.rtp_port_max, m.rtp_port_min
                ),
            ));
        }
        let ports = usize::from(m.rtp_port_max) - usize::from(m.rtp_port_min) + 1;
        let pairs = ports / 2;
        if pairs < self.dialogue.max_calls {
            return Err(SettingsError::new(
                "media.rtp_port_max",
                format!(
                    "the range has {pairs} port pairs, fewer than dialogue.max_calls = {}",
                    self.dialogue.max_calls
                ),
            ));
        }
        if m.codecs.is_empty() {
            return Err(SettingsError::new("media.codecs", "must name at least one codec"));
        }
        for (i, c) in m.codecs.iter().enumerate() {
            if !SUPPORTED_CODECS.contains(&c.as_str()) {
                return Err(SettingsError::new(
                    format!("media.codecs[{i}]"),
                    format!("`{c}` is not supported (supported: PCMU, PCMA)"),
                ));
            }
            if m.codecs.iter().take(i).any(|o| o == c) {
                return Err(SettingsError::new(
                    format!("media.codecs[{i}]"),
                    format!("`{c}` is listed twice"),
                ));
            }
        }
        range_u32("media.jitter_buffer_ms", m.jitter_buffer_ms, 20, 500)?;
        range_u32(
            "media.jitter_buffer_min_ms",
            m.jitter_buffer_min_ms,
            0,
            m.jitter_buffer_ms,
        )?;
        if let Some(dir) = &m.record_dir
            && dir.as_os_str().is_empty()
        {
            return Err(SettingsError::new("media.record_dir", "must not be empty"));
        }
        Ok(())
    }

    fn validate_stt(&self) -> Result<(), SettingsError> {
        let s = &self.stt;
        if s.model.as_os_str().is_empty() {
            return Err(SettingsError::new("stt.model", "must name a model file"));
        }
        range_u32("stt.threads", s.threads, 1, 64)?;
        range_u32("stt.workers", s.workers, 1, 64)?;
        range_u32("stt.beam_size", s.beam_size, 1, 8)?;
        if s.language.is_empty()
            || s.language.len() > 8
            || !s.language.chars().all(|c| c.is_ascii_lowercase())
        {
            return Err(SettingsError::new(
                "stt.language",
                format!("`{}` is not a language code such as `en`", s.language),
            ));
        }
        phrase("stt.initial_prompt", &s.initial_prompt)?;
        seconds("stt.timeout_secs", s.timeout_secs, 0.5, 300.0)?;
        Ok(())
    }

    fn validate_llm(&self) -> Result<(), SettingsError> {
        let l = &self.llm;
        validate_http_url("llm.url", &l.url)?;
        if l.model.trim().is_empty() || l.model.len() > 200 {
            return Err(SettingsError::new("llm.model", "must name a model"));
        }
        if l.system_prompt.len() > 20_000 {
            return Err(SettingsError::new(
                "llm.system_prompt",
                "is longer than 20000 bytes",
            ));
        }
        if !(l.temperature.is_finite() && (0.0..=2.0).contains(&l.temperature)) {
            return Err(SettingsError::new(
                "llm.temperature",
                format!("{} is outside 0..=2", l.temperature),
            ));
        }
        range_u32("llm.num_predict", l.num_predict, 1, 4096)?;
        range_u32("llm.num_ctx", l.num_ctx, 256, 131_072)?;
        seconds("llm.connect_timeout_secs", l.connect_timeout_secs, 0.01, 60.0)?;
        seconds(
            "llm.first_token_timeout_secs",
            l.first_token_timeout_secs,
            0.01,
            600.0,
        )?;
        seconds("llm.reply_timeout_secs", l.reply_timeout_secs, 0.01, 3600.0)?;
        if l.reply_timeout_secs < l.first_token_timeout_secs {
            return Err(SettingsError::new(
                "llm.reply_timeout_secs",
                "must not be shorter than llm.first_token_timeout_secs",
            ));
        }
        if l.history_max_chars > 1_000_000 {
            return Err(SettingsError::new(
                "llm.history_max_chars",
                "is more than 1000000",
            ));
        }
        Ok(())
    }

    fn validate_tts(&self) -> Result<(), SettingsError> {
        let t = &self.tts;
        if t.voice.is_empty()
            || t.voice.len() > 64
            || !t
                .voice
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_+/".contains(c))
        {
            return Err(SettingsError::new(
                "tts.voice",
                format!("`{}` is not an espeak-ng voice name", t.voice),
            ));
        }
        range_u32("tts.rate", t.rate, 80, 450)?;
        range_u32("tts.pitch", t.pitch, 0, 100)?;
        range_u32("tts.volume", t.volume, 0, 200)?;
        Ok(())
    }

    fn validate_dialogue(&self) -> Result<(), SettingsError> {
        let d = &self.dialogue;
        phrase("dialogue.greeting", &d.greeting)?;
        phrase("dialogue.goodbye", &d.goodbye)?;
        phrase("dialogue.silence_prompt", &d.silence_prompt)?;
        phrase("dialogue.error_phrase", &d.error_phrase)?;
        phrase("dialogue.stt_failed_phrase", &d.stt_failed_phrase)?;
        phrase("dialogue.shutdown_phrase", &d.shutdown_phrase)?;
        for (i, p) in d.caller_goodbye_phrases.iter().enumerate() {
            if crate::dialogue::normalize_words(p).is_empty() {
                return Err(SettingsError::new(
                    format!("dialogue.caller_goodbye_phrases[{i}]"),
                    "has no words",
                ));
            }
        }
        seconds(
            "dialogue.silence_prompt_after_secs",
            d.silence_prompt_after_secs,
            0.5,
            3600.0,
        )?;
        seconds(
            "dialogue.silence_hangup_after_secs",
            d.silence_hangup_after_secs,
            0.5,
            3600.0,
        )?;
        if d.silence_hangup_after_secs <= d.silence_prompt_after_secs {
            return Err(SettingsError::new(
                "dialogue.silence_hangup_after_secs",
                format!(
                    "{} must be more than dialogue.silence_prompt_after_secs ({})",
                    d.silence_hangup_after_secs, d.silence_prompt_after_secs
                ),
            ));
        }
        seconds(
            "dialogue.max_call_duration_secs",
            d.max_call_duration_secs,
            1.0,
            86_400.0,
        )?;
        if d.max_calls == 0 || d.max_calls > MAX_CALLS_LIMIT {
            return Err(SettingsError::new(
                "dialogue.max_calls",
                format!("{} is outside 1..={MAX_CALLS_LIMIT}", d.max_calls),
            ));
        }
        let g = &d.noise_guard;
        if !(g.max_no_speech_prob.is_finite() && (0.0..=1.0).contains(&g.max_no_speech_prob)) {
            return Err(SettingsError::new(
                "dialogue.noise_guard.max_no_speech_prob",
                format!("{} is outside 0..=1", g.max_no_speech_prob),
            ));
        }
        if g.min_words == 0 || g.min_words > 100 {
            return Err(SettingsError::new(
                "dialogue.noise_guard.min_words",
                format!("{} is outside 1..=100", g.min_words),
            ));
        }
        let v = &d.vad;
        if !(v.threshold.is_finite() && (0.05..=0.95).contains(&v.threshold)) {
            return Err(SettingsError::new(
                "dialogue.vad.threshold",
                format!("{} is outside 0.05..=0.95", v.threshold),
            ));
        }
        seconds("dialogue.vad.min_speech_secs", v.min_speech_secs, 0.02, 2.0)?;
        seconds("dialogue.vad.hangover_secs", v.hangover_secs, 0.1, 5.0)?;
        seconds(
            "dialogue.vad.barge_in_min_speech_secs",
            v.barge_in_min_speech_secs,
            0.02,
            2.0,
        )?;
        for (field, value) in [
            ("dialogue.speculation_delay_secs", d.speculation_delay_secs),
            (
                "dialogue.early_end_min_silence_secs",
                d.early_end_min_silence_secs,
            ),
        ] {
            seconds(field, value, 0.0, 5.0)?;
            if value >= v.hangover_secs {
                return Err(SettingsError::new(
                    field,
                    format!(
                        "{value} must be below dialogue.vad.hangover_secs ({})",
                        v.hangover_secs
                    ),
                ));
            }
        }
        if !(1..=50).contains(&d.early_end_min_words) {
            return Err(SettingsError::new(
                "dialogue.early_end_min_words",
                format!("{} is outside 1..=50", d.early_end_min_words),
            ));
        }
        if v.barge_in_min_speech_secs > v.min_speech_secs {
            return Err(SettingsError::new(
                "dialogue.vad.barge_in_min_speech_secs",
                format!(
                    "{} must not exceed dialogue.vad.min_speech_secs ({})",
                    v.barge_in_min_speech_secs, v.min_speech_secs
                ),
            ));
        }
        for (key, action) in &d.dtmf {
            let field = format!("dialogue.dtmf.{key}");
            if dtmf_digit(key).is_none() {
                return Err(SettingsError::new(field, "is not a DTMF digit (0-9, *, #, A-D)"));
            }
            phrase(&format!("{field}.say"), &action.say)?;
            if action.say.trim().is_empty() && action.then == DtmfThen::Continue {
                return Err(SettingsError::new(field, "says nothing and does nothing"));
            }
        }
        Ok(())
    }

    /// The VAD configuration derived from `dialogue.vad`.
    pub fn vad_config(&self) -> callbot_audio::vad::VadConfig {
        let v = &self.dialogue.vad;
        let base = callbot_audio::vad::VadConfig::default();
        callbot_audio::vad::VadConfig {
            threshold: v.threshold,
            release_threshold: base.release_threshold.min(v.threshold),
            min_speech: secs(v.min_speech_secs),
            hangover: secs(v.hangover_secs),
            ..base
        }
    }

    /// The depth of each call's RTP jitter buffer (`media.jitter_buffer_ms`).
    pub fn jitter_depth(&self) -> Duration {
        Duration::from_millis(u64::from(self.media.jitter_buffer_ms))
    }

    /// Each call's RTP jitter buffer: adaptive from `media.jitter_buffer_min_ms` up to
    /// `media.jitter_buffer_ms` (fixed when they are equal).
    pub fn jitter_config(&self) -> callbot_rtp::JitterConfig {
        let min = Duration::from_millis(u64::from(self.media.jitter_buffer_min_ms));
        let depth = self.jitter_depth();
        callbot_rtp::JitterConfig {
            depth,
            adaptive: (min < depth).then(|| callbot_rtp::AdaptiveDepth {
                min_depth: min,
                ..callbot_rtp::AdaptiveDepth::default()
            }),
            ..callbot_rtp::JitterConfig::default()
        }
    }

    /// The deadline of each transcription (`stt.timeout_secs`).
    pub fn stt_timeout(&self) -> Duration {
        secs(self.stt.timeout_secs)
    }

    /// The VAD's `min_speech` while the bot speaks (`dialogue.vad.barge_in_min_speech_secs`).
    pub fn barge_in_min_speech(&self) -> Duration {
        secs(self.dialogue.vad.barge_in_min_speech_secs)
    }

    /// The dialogue engine's configuration derived from these settings.
    pub fn dialogue_config(&self) -> crate::dialogue::DialogueConfig {
        let d = &self.dialogue;
        crate::dialogue::DialogueConfig {
            greeting: d.greeting.clone(),
            goodbye: d.goodbye.clone(),
            caller_goodbye_phrases: d
                .caller_goodbye_phrases
                .iter()
                .map(|p| crate::dialogue::normalize_words(p))
                .collect(),
            silence_prompt: d.silence_prompt.clone(),
            silence_prompt_after: secs(d.silence_prompt_after_secs),
            silence_hangup_after: secs(d.silence_hangup_after_secs),
            max_call_duration: secs(d.max_call_duration_secs),
            error_phrase: d.error_phrase.clone(),
            stt_failed_phrase: d.stt_failed_phrase.clone(),
            barge_in: d.barge_in,
            speculative_stt: d.speculative_stt,
            speculation_delay: secs(d.speculation_delay_secs),
            early_end_of_turn: d.early_end_of_turn,
            early_end_min_silence: secs(d.early_end_min_silence_secs),
            early_end_min_words: d.early_end_min_words,
            max_no_speech_prob: d.noise_guard.max_no_speech_prob,
            min_words: d.noise_guard.min_words,
            dtmf: d
                .dtmf
                .iter()
                .filter_map(|(k, v)| dtmf_digit(k).map(|c| (c, v.clone())))
                .collect(),
            ..crate::dialogue::DialogueConfig::default()
        }
    }
}

/// The DTMF digit a `[dialogue.dtmf]` key names (`"0"`-`"9"`, `"*"`, `"#"`, `"A"`-`"D"`).
pub fn dtmf_digit(key: &str) -> Option<char> {
    let mut chars = key.chars();
    let c = chars.next()?.to_ascii_uppercase();
    if chars.next().is_some() {
        return None;
    }
    (c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D')).then_some(c)
}

/// Seconds (validated finite and non-negative) as a [`Duration`].
fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::ZERO)
}

fn range_u32(field: &str, v: u32, min: u32, max: u32) -> Result<(), SettingsError> {
    if (min..=max).contains(&v) {
        Ok(())
    } else {
        Err(SettingsError::new(field, format!("{v} is outside {min}..={max}")))
    }
}

fn seconds(field: &str, v: f64, min: f64, max: f64) -> Result<(), SettingsError> {
    if v.is_finite() && (min..=max).contains(&v) {
        Ok(())
    } else {
        Err(SettingsError::new(
            field,
            format!("{v} is outside {min}..={max} seconds"),
        ))
    }
}

fn phrase(field: &str, v: &str) -> Result<(), SettingsError> {
    if v.len() > MAX_PHRASE_BYTES {
        return Err(SettingsError::new(
            field,
            format!("is longer than {MAX_PHRASE_BYTES} bytes"),
        ));
    }
    if v.chars().any(|c| c.is_control() && c != '\n') {
        return Err(SettingsError::new(field, "contains control characters"));
    }
    Ok(())
}

/// Checks `http://host[:port][/path]` without pulling in a URL parser.
fn validate_http_url(field: &str, url: &str) -> Result<(), SettingsError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| SettingsError::new(field, format!("`{url}` must start with http:// or https://")))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains(|c: char| c.is_whitespace() || c == '@') {
        return Err(SettingsError::new(field, format!("`{url}` has no valid host")));
    }
    let host_end = if authority.starts_with('[') {
        authority
            .find(']')
            .map(|i| i + 1)
            .ok_or_else(|| SettingsError::new(field, format!("`{url}` has an unclosed IPv6 bracket")))?
    } else {
        authority.find(':').unwrap_or(authority.len())
    };
    let (host, port) = authority.split_at(host_end);
    if host.is_empty() || host == "[]" {
        return Err(SettingsError::new(field, format!("`{url}` has no host")));
    }
    if let Some(port) = port.strip_prefix(':')
        && port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(SettingsError::new(
            field,
            format!("port `{port}` is not a number from 1 to 65535"),
        ));
    } else if !port.is_empty() && !port.starts_with(':') {
        return Err(SettingsError::new(field, format!("`{url}` has no valid host")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> SettingsError {
        match Settings::from_toml_str(text) {
            Err(LoadError::Invalid(e)) => e,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn empty_file_is_the_defaults_and_valid() {
        let s = Settings::from_toml_str("").unwrap();
        assert_eq!(s, Settings::default());
        s.validate().unwrap();
    }

    #[test]
    fn example_config_in_repo_parses_and_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/callbot.toml");
        let s = Settings::load(&path).unwrap();
        assert_eq!(s.sip.listen.port(), 5060);
        let reg = s.sip.registration.as_ref().unwrap();
        assert_eq!(reg.user, "bot");
        let action = s.dialogue.dtmf.get("0").unwrap();
        assert_eq!(action.then, DtmfThen::Hangup);
        assert!(!action.say.is_empty());
    }

    #[test]
    fn full_file_round_trips_through_toml() {
        let mut s = Settings::default();
        s.sip.registration = Some(RegistrationSettings {
            server: "127.0.0.1:5070".into(),
            user: "bot".into(),
            password: "pw".into(),
            expires: 300,
        });
        s.dialogue.dtmf.insert(
            "#".into(),
            DtmfAction {
                say: "Bye".into(),
                then: DtmfThen::Hangup,
            },
        );
        let text = toml::to_string(&s).unwrap();
        assert_eq!(Settings::from_toml_str(&text).unwrap(), s);
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_parse_errors_naming_the_key() {
        match Settings::from_toml_str("[llm]\nmodle = \"x\"\n") {
            Err(LoadError::Parse { message }) => assert!(message.contains("modle"), "{message}"),
            other => panic!("{other:?}"),
        }
        match Settings::from_toml_str("[tts]\nrate = \"fast\"\n") {
            Err(LoadError::Parse { message }) => assert!(message.contains("rate"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Settings::from_toml_str("[sip]\nlisten = \"nowhere\"\n"),
            Err(LoadError::Parse { .. })
        ));
    }

    #[test]
    fn bad_llm_urls_name_llm_url() {
        for url in [
            "ftp://x",
            "localhost:11434",
            "http://",
            "http://host:0",
            "http://host:99999",
            "http://host:abc/",
            "http://a b",
            "http://[::1",
        ] {
            let e = err(&format!("[llm]\nurl = \"{url}\"\n"));
            assert_eq!(e.field, "llm.url", "{url}: {e}");
            assert!(!e.reason.is_empty());
        }
        for url in [
            "http://127.0.0.1:11434",
            "https://ollama.example.com/",
            "http://[::1]:11434/api",
            "http://localhost",
        ] {
            Settings::from_toml_str(&format!("[llm]\nurl = \"{url}\"\n")).unwrap();
        }
    }

    #[test]
    fn each_range_check_names_its_field() {
        let cases = [
            ("[stt]\nthreads = 0", "stt.threads"),
            ("[stt]\nworkers = 65", "stt.workers"),
            ("[stt]\nbeam_size = 0", "stt.beam_size"),
            ("[stt]\nlanguage = \"EN!\"", "stt.language"),
            ("[stt]\nmodel = \"\"", "stt.model"),
            ("[stt]\ntimeout_secs = 0.1", "stt.timeout_secs"),
            ("[stt]\ntimeout_secs = nan", "stt.timeout_secs"),
            ("[llm]\ntemperature = 3.0", "llm.temperature"),
            ("[llm]\ntemperature = nan", "llm.temperature"),
            ("[llm]\nnum_predict = 0", "llm.num_predict"),
            ("[llm]\nnum_ctx = 10", "llm.num_ctx"),
            ("[llm]\nmodel = \" \"", "llm.model"),
            ("[llm]\nconnect_timeout_secs = -1.0", "llm.connect_timeout_secs"),
            (
                "[llm]\nfirst_token_timeout_secs = 20.0\nreply_timeout_secs = 10.0",
                "llm.reply_timeout_secs",
            ),
            ("[tts]\nrate = 10", "tts.rate"),
            ("[tts]\npitch = 101", "tts.pitch"),
            ("[tts]\nvolume = 201", "tts.volume"),
            ("[tts]\nvoice = \"en us\"", "tts.voice"),
            ("[media]\nrtp_port_min = 80", "media.rtp_port_min"),
            (
                "[media]\nrtp_port_min = 30000\nrtp_port_max = 20000",
                "media.rtp_port_max",
            ),
            (
                "[media]\nrtp_port_min = 20000\nrtp_port_max = 20010",
                "media.rtp_port_max",
            ),
            ("[media]\ncodecs = []", "media.codecs"),
            ("[media]\njitter_buffer_ms = 5", "media.jitter_buffer_ms"),
            (
                "[media]\njitter_buffer_ms = 40\njitter_buffer_min_ms = 60",
                "media.jitter_buffer_min_ms",
            ),
            ("[media]\ncodecs = [\"PCMU\", \"opus\"]", "media.codecs[1]"),
            ("[media]\ncodecs = [\"PCMU\", \"PCMU\"]", "media.codecs[1]"),
            ("[dialogue]\nmax_calls = 0", "dialogue.max_calls"),
            (
                "[dialogue]\nsilence_prompt_after_secs = 10.0\nsilence_hangup_after_secs = 5.0",
                "dialogue.silence_hangup_after_secs",
            ),
            (
                "[dialogue]\nmax_call_duration_secs = inf",
                "dialogue.max_call_duration_secs",
            ),
            ("[dialogue]\ngreeting = \"a\\u0007b\"", "dialogue.greeting"),
            (
                "[dialogue]\ncaller_goodbye_phrases = [\"!!\"]",
                "dialogue.caller_goodbye_phrases[0]",
            ),
            (
                "[dialogue.noise_guard]\nmax_no_speech_prob = 1.5",
                "dialogue.noise_guard.max_no_speech_prob",
            ),
            (
                "[dialogue.noise_guard]\nmin_words = 0",
                "dialogue.noise_guard.min_words",
            ),
            ("[dialogue.vad]\nthreshold = 1.0", "dialogue.vad.threshold"),
            (
                "[dialogue.vad]\nmin_speech_secs = 0.0",
                "dialogue.vad.min_speech_secs",
            ),
            (
                "[dialogue.vad]\nhangover_secs = 9.0",
                "dialogue.vad.hangover_secs",
            ),
            (
                "[dialogue.vad]\nbarge_in_min_speech_secs = 0.001",
                "dialogue.vad.barge_in_min_speech_secs",
            ),
            (
                "[dialogue.vad]\nmin_speech_secs = 0.1\nbarge_in_min_speech_secs = 0.2",
                "dialogue.vad.barge_in_min_speech_secs",
            ),
            ("[dialogue.dtmf]\n11 = { say = \"x\" }", "dialogue.dtmf.11"),
            ("[dialogue.dtmf]\n5 = { say = \"\" }", "dialogue.dtmf.5"),
            (
                "[dialogue]\nspeculation_delay_secs = -1.0",
                "dialogue.speculation_delay_secs",
            ),
            (
                "[dialogue]\nspeculation_delay_secs = 0.6",
                "dialogue.speculation_delay_secs",
            ),
            (
                "[dialogue]\nearly_end_min_silence_secs = 0.7",
                "dialogue.early_end_min_silence_secs",
            ),
            (
                "[dialogue]\nearly_end_min_words = 0",
                "dialogue.early_end_min_words",
            ),
            (
                "[sip.registration]\nserver = \"\"\nuser = \"bot\"",
                "sip.registration.server",
            ),
            (
                "[sip.registration]\nserver = \"host:0\"\nuser = \"bot\"",
                "sip.registration.server",
            ),
            (
                "[sip.registration]\nserver = \"host\"\nuser = \"a b\"",
                "sip.registration.user",
            ),
            (
                "[sip.registration]\nserver = \"host\"\nuser = \"bot\"\nexpires = 5",
                "sip.registration.expires",
            ),
        ];
        for (text, field) in cases {
            let e = err(text);
            assert_eq!(e.field, field, "{text}: {e}");
            assert!(e.to_string().contains(field));
        }
    }

    #[test]
    fn too_long_phrase_is_rejected() {
        let long = "a".repeat(MAX_PHRASE_BYTES + 1);
        let e = err(&format!("[dialogue]\ngoodbye = \"{long}\"\n"));
        assert_eq!(e.field, "dialogue.goodbye");
    }

    #[test]
    fn dtmf_keys_map_to_digits_in_dialogue_config() {
        let s = Settings::from_toml_str(
            "[dialogue.dtmf]\n0 = { say = \"Bye\", then = \"hangup\" }\n\"*\" = { say = \"Menu\" }\nb = { say = \"B\" }\n",
        )
        .unwrap();
        let cfg = s.dialogue_config();
        assert_eq!(cfg.dtmf.get(&'0').unwrap().then, DtmfThen::Hangup);
        assert_eq!(cfg.dtmf.get(&'*').unwrap().then, DtmfThen::Continue);
        assert!(cfg.dtmf.contains_key(&'B'));
        assert_eq!(cfg.silence_prompt_after, Duration::from_secs(8));
        assert!(cfg.speculative_stt, "speculative transcription is on by default");
        let s = Settings::from_toml_str("[dialogue]\nspeculative_stt = false\n").unwrap();
        assert!(!s.dialogue_config().speculative_stt);
        let s = Settings::from_toml_str(
            "[dialogue]\nspeculation_delay_secs = 0.2\nearly_end_of_turn = false\nearly_end_min_silence_secs = 0.3\nearly_end_min_words = 3\n",
        )
        .unwrap();
        let c = s.dialogue_config();
        assert_eq!(c.speculation_delay, Duration::from_millis(200));
        assert!(!c.early_end_of_turn);
        assert_eq!(c.early_end_min_silence, Duration::from_millis(300));
        assert_eq!(c.early_end_min_words, 3);
        assert_eq!(s.barge_in_min_speech(), Duration::from_millis(32));
    }

    #[test]
    fn load_reports_missing_and_oversized_files() {
        let dir = callbot_testkit::temp_dir("callbot-settings");
        let missing = dir.path().join("nope.toml");
        assert!(matches!(Settings::load(&missing), Err(LoadError::Io { .. })));
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; (MAX_SETTINGS_FILE_BYTES + 1) as usize]).unwrap();
        assert!(matches!(Settings::load(&big), Err(LoadError::TooLarge { .. })));
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[tts]\nrate = 5\n").unwrap();
        match Settings::load(&bad) {
            Err(LoadError::Invalid(e)) => assert_eq!(e.field, "tts.rate"),
            other => panic!("{other:?}"),
        }
    }
}
