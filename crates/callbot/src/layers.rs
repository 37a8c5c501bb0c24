//! The real layers as bot components: Whisper STT, Ollama (or echo) LLM, espeak-ng TTS.
//!
//! [`LayerFactory`] is the [`ComponentFactory`] the bot uses. Each component wraps the
//! layer's own handle and implements both [`Managed`] (shutdown with a deadline, for
//! [`crate::components::Components`]) and the layer's trait, so a call holds it as
//! `Arc<dyn Transcriber>` / `Arc<dyn ChatModel>` / `Arc<dyn Synthesizer>`.
//!
//! - STT: a [`WhisperTranscriber`], rebuilt when `stt.model`, `stt.threads` or
//!   `stt.workers` change (language, beam and prompt are per request).
//! - LLM: an [`OllamaChat`], probed at build time. When the server does not answer and
//!   `llm.echo_when_unreachable` is on, the bot logs it and uses [`EchoChat`], which
//!   answers with what it heard, so the whole pipeline works without Ollama. Rebuilt
//!   when any `llm.*` setting changes, and on every reconfiguration while in echo mode
//!   (the server is probed again: a server that became reachable ends echo mode).
//! - TTS: one [`EspeakSynthesizer`] per process (libespeak-ng has global state). Voice,
//!   rate, pitch and volume are per request ([`voice_options`]), so the engine is built
//!   once and never rebuilt by a reconfiguration.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use callbot_llm::{
    ChatModel, ChatOptions, History, HistoryBudget, LlmError, LlmShutdownReport, OllamaChat, OllamaConfig,
    Reply, ReplyEvent, ReplyStats,
};
use callbot_stt::{
    Decoding, SttError, SttShutdownReport, TranscribeOptions, Transcriber, TranscriptionJob,
    TranscriptionRequest, WhisperConfig, WhisperTranscriber,
};
use callbot_tts::{EspeakConfig, EspeakSynthesizer, SynthesisJob, Synthesizer, TtsError, VoiceOptions};

use crate::components::{ComponentFactory, ComponentReport, Managed};
use crate::settings::{Settings, SettingsError};

fn report(clean: bool, detail: String) -> ComponentReport {
    ComponentReport {
        component: "",
        generation: 0,
        clean,
        detail,
        elapsed: Duration::ZERO,
    }
}

/// The Whisper speech-to-text component.
#[derive(Debug)]
pub struct SttComponent(pub WhisperTranscriber);

impl Managed for SttComponent {
    fn shutdown(&mut self, deadline: Instant) -> ComponentReport {
        let r = Transcriber::shutdown(&mut self.0, deadline);
        report(r.model_freed && r.workers_not_joined == 0, format!("{r:?}"))
    }
}

impl Transcriber for SttComponent {
    fn submit(&self, request: TranscriptionRequest) -> Result<TranscriptionJob, SttError> {
        self.0.submit(request)
    }
    fn shutdown(&mut self, deadline: Instant) -> SttShutdownReport {
        Transcriber::shutdown(&mut self.0, deadline)
    }
}

/// Answers with what the caller said: the LLM of echo mode (no server needed).
#[derive(Debug)]
pub struct EchoChat {
    system_prompt: String,
    budget: HistoryBudget,
    replies: AtomicUsize,
}

impl EchoChat {
    /// An echo model using `system_prompt` for its histories.
    pub fn new(system_prompt: &str, budget: HistoryBudget) -> Self {
        Self {
            system_prompt: system_prompt.to_string(),
            budget,
            replies: AtomicUsize::new(0),
        }
    }

    /// Replies given so far.
    pub fn replies(&self) -> usize {
        self.replies.load(Ordering::Relaxed)
    }
}

impl ChatModel for EchoChat {
    fn new_history(&self) -> History {
        History::new(Some(&self.system_prompt), self.budget)
    }

    fn start_reply(&self, history: &History) -> Result<Reply, LlmError> {
        self.replies.fetch_add(1, Ordering::Relaxed);
        let heard = history.pending_user().unwrap_or_default().trim().to_string();
        let text = if heard.is_empty() {
            "I did not catch that.".to_string()
        } else {
            let end = if heard.ends_with(['.', '!', '?']) { "" } else { "." };
            format!("You said: {heard}{end}")
        };
        let (tx, reply) = Reply::channel(2);
        tx.send(ReplyEvent::Delta(text), Duration::ZERO)?;
        tx.send(ReplyEvent::Done(ReplyStats::default()), Duration::ZERO)?;
        Ok(reply)
    }

    fn shutdown(&mut self, _deadline: Instant) -> LlmShutdownReport {
        LlmShutdownReport::default()
    }
}

/// The language model component: Ollama, or echo mode.
#[derive(Debug)]
pub enum LlmComponent {
    /// An Ollama server.
    Ollama(Box<OllamaChat>),
    /// Echo mode (no server reachable at start).
    Echo(EchoChat),
}

impl LlmComponent {
    /// Whether this is echo mode.
    pub fn is_echo(&self) -> bool {
        matches!(self, LlmComponent::Echo(_))
    }
}

impl Managed for LlmComponent {
    fn shutdown(&mut self, deadline: Instant) -> ComponentReport {
        let r = ChatModel::shutdown(self, deadline);
        report(r.abandoned_replies == 0, format!("{r:?}"))
    }
}

impl ChatModel for LlmComponent {
    fn new_history(&self) -> History {
        match self {
            LlmComponent::Ollama(c) => c.new_history(),
            LlmComponent::Echo(c) => c.new_history(),
        }
    }
    fn start_reply(&self, history: &History) -> Result<Reply, LlmError> {
        match self {
            LlmComponent::Ollama(c) => c.start_reply(history),
            LlmComponent::Echo(c) => c.start_reply(history),
        }
    }
    fn shutdown(&mut self, deadline: Instant) -> LlmShutdownReport {
        match self {
            LlmComponent::Ollama(c) => ChatModel::shutdown(c.as_mut(), deadline),
            LlmComponent::Echo(c) => ChatModel::shutdown(c, deadline),
        }
    }
}

/// The espeak-ng speech synthesis component.
#[derive(Debug)]
pub struct TtsComponent {
    engine: EspeakSynthesizer,
    client: callbot_tts::EspeakClient,
}

impl Managed for TtsComponent {
    fn shutdown(&mut self, deadline: Instant) -> ComponentReport {
        let r = self.engine.shutdown(deadline);
        report(r.worker_joined, format!("{r:?}"))
    }
}

impl Synthesizer for TtsComponent {
    fn sample_rate(&self) -> u32 {
        self.client.sample_rate()
    }
    fn synthesize(&self, text: &str, options: &VoiceOptions) -> Result<SynthesisJob, TtsError> {
        self.client.synthesize(text, options)
    }
}

/// The voice options of `settings.tts`.
pub fn voice_options(settings: &Settings) -> VoiceOptions {
    let t = &settings.tts;
    VoiceOptions {
        voice: t.voice.clone(),
        rate_wpm: u16::try_from(t.rate).unwrap_or(u16::MAX),
        pitch: u8::try_from(t.pitch).unwrap_or(u8::MAX),
        volume: u8::try_from(t.volume).unwrap_or(u8::MAX),
    }
}

/// The per-request transcription options of `settings.stt`.
pub fn transcribe_options(settings: &Settings) -> TranscribeOptions {
    let s = &settings.stt;
    TranscribeOptions {
        language: s.language.clone(),
        decoding: if s.beam_size <= 1 {
            Decoding::default()
        } else {
            Decoding::BeamSearch {
                beam_size: u8::try_from(s.beam_size).unwrap_or(8),
            }
        },
        initial_prompt: (!s.initial_prompt.trim().is_empty()).then(|| s.initial_prompt.clone()),
        threads: Some(s.threads as usize),
        ..TranscribeOptions::default()
    }
}

/// The history budget of `settings.llm` (about 4 characters per token).
pub fn history_budget(settings: &Settings) -> HistoryBudget {
    HistoryBudget {
        max_tokens: (settings.llm.history_max_chars / 4).max(64),
        ..HistoryBudget::default()
    }
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::from_secs(1))
}

/// Builds the real layers from settings (see the [module docs](self)).
#[derive(Debug, Default, Clone, Copy)]
pub struct LayerFactory;

impl ComponentFactory for LayerFactory {
    type Stt = SttComponent;
    type Llm = LlmComponent;
    type Tts = TtsComponent;
    type SttKey = (std::path::PathBuf, u32, u32);
    type LlmKey = crate::settings::LlmSettings;
    type TtsKey = ();

    fn stt_key(&self, s: &Settings) -> Self::SttKey {
        (s.stt.model.clone(), s.stt.threads, s.stt.workers)
    }
    fn llm_key(&self, s: &Settings) -> Self::LlmKey {
        s.llm.clone()
    }
    fn tts_key(&self, _s: &Settings) -> Self::TtsKey {}

    /// Echo mode is re-evaluated on every reconfiguration: the server is probed again.
    fn llm_needs_refresh(&self, current: &LlmComponent) -> bool {
        current.is_echo()
    }

    fn build_stt(&self, s: &Settings) -> Result<SttComponent, SettingsError> {
        let mut config = WhisperConfig::new(&s.stt.model);
        config.workers = s.stt.workers as usize;
        config.threads_per_job = s.stt.threads as usize;
        WhisperTranscriber::new(config)
            .map(SttComponent)
            .map_err(|e| SettingsError::new("stt.model", e.to_string()))
    }

    fn build_llm(&self, s: &Settings) -> Result<LlmComponent, SettingsError> {
        let l = &s.llm;
        let mut config = OllamaConfig::new(&l.url, &l.model);
        config.system_prompt = (!l.system_prompt.trim().is_empty()).then(|| l.system_prompt.clone());
        config.options = ChatOptions {
            temperature: Some(l.temperature),
            num_predict: i32::try_from(l.num_predict).ok(),
            num_ctx: Some(u64::from(l.num_ctx)),
        };
        config.history_budget = history_budget(s);
        config.connect_timeout = secs(l.connect_timeout_secs);
        config.first_token_timeout = secs(l.first_token_timeout_secs);
        config.total_timeout = secs(l.reply_timeout_secs);
        let mut chat = OllamaChat::new(config).map_err(|e| SettingsError::new("llm.url", e.to_string()))?;
        match chat.probe(secs(l.connect_timeout_secs)) {
            Ok(p) if p.model_available => Ok(LlmComponent::Ollama(Box::new(chat))),
            Ok(p) => {
                let _ = ChatModel::shutdown(&mut chat, Instant::now() + Duration::from_secs(1));
                Err(SettingsError::new(
                    "llm.model",
                    format!(
                        "the server at {} has no model `{}` (it has: {})",
                        l.url,
                        l.model,
                        p.models.join(", ")
                    ),
                ))
            }
            Err(e) => {
                let _ = ChatModel::shutdown(&mut chat, Instant::now() + Duration::from_secs(1));
                if l.echo_when_unreachable {
                    tracing::warn!(url = %l.url, error = %e, "no LLM reachable: echo mode (the bot repeats what it heard)");
                    Ok(LlmComponent::Echo(EchoChat::new(
                        &l.system_prompt,
                        history_budget(s),
                    )))
                } else {
                    Err(SettingsError::new("llm.url", format!("unreachable: {e}")))
                }
            }
        }
    }

    fn build_tts(&self, s: &Settings) -> Result<TtsComponent, SettingsError> {
        let options = voice_options(s);
        options
            .validate()
            .map_err(|e| SettingsError::new("tts.voice", e.to_string()))?;
        let engine = EspeakSynthesizer::start(EspeakConfig {
            default_options: options,
            ..EspeakConfig::default()
        })
        .map_err(|e| SettingsError::new("tts", e.to_string()))?;
        let client = engine.client();
        Ok(TtsComponent { engine, client })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_chat_repeats_the_caller() {
        let chat = EchoChat::new("sys", HistoryBudget::default());
        let mut h = chat.new_history();
        h.push_user("what time is it");
        let (text, _) = chat.start_reply(&h).unwrap().collect_text().unwrap();
        assert_eq!(text, "You said: what time is it.");
        let h = chat.new_history();
        let (text, _) = chat.start_reply(&h).unwrap().collect_text().unwrap();
        assert_eq!(text, "I did not catch that.");
        assert_eq!(chat.replies(), 2);
    }

    #[test]
    fn options_follow_the_settings() {
        let mut s = Settings::default();
        s.stt.beam_size = 4;
        s.stt.initial_prompt = "callbot".into();
        s.tts.rate = 200;
        let o = transcribe_options(&s);
        assert_eq!(o.decoding, Decoding::BeamSearch { beam_size: 4 });
        assert_eq!(o.initial_prompt.as_deref(), Some("callbot"));
        assert_eq!(voice_options(&s).rate_wpm, 200);
        assert_eq!(history_budget(&s).max_tokens, 1000);
    }

    #[test]
    fn missing_whisper_model_names_stt_model() {
        let mut s = Settings::default();
        s.stt.model = "/nonexistent/ggml-none.bin".into();
        let e = LayerFactory.build_stt(&s).unwrap_err();
        assert_eq!(e.field, "stt.model");
    }

    #[test]
    fn unreachable_ollama_gives_echo_mode_or_an_error_naming_llm_url() {
        let port = callbot_testkit::ports::free_udp_port();
        let mut s = Settings::default();
        s.llm.url = format!("http://127.0.0.1:{port}");
        s.llm.connect_timeout_secs = 0.5;
        let mut llm = LayerFactory.build_llm(&s).unwrap();
        assert!(llm.is_echo());
        Managed::shutdown(&mut llm, Instant::now() + Duration::from_secs(1));
        s.llm.echo_when_unreachable = false;
        let e = LayerFactory.build_llm(&s).unwrap_err();
        assert_eq!(e.field, "llm.url");
    }
}
