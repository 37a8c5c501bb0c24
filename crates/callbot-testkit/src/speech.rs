//! Test speech: espeak-ng utterances, telephone-band simulation, labelled audio for VAD
//! tests, and word error rate.
//!
//! - [`espeak`] / [`espeak_with`]: run the `espeak-ng` CLI (`-v VOICE -s WPM -w out.wav`)
//!   and return mono 16-bit PCM at [`ESPEAK_RATE`] (22,050 Hz). `None` (with a SKIP line)
//!   when espeak-ng is not installed, a panic under `CALLBOT_REQUIRE_PEERS=1`.
//! - [`to_16k`]: 22,050 Hz i16 -> 16 kHz f32 (what Whisper wants), through
//!   `callbot_audio::resample`.
//! - [`voip_16k`]: speech as a VoIP call carries it: 8 kHz, G.711, back to 16 kHz.
//! - [`telephone_8k`] / [`telephone_16k`]: the same speech as an analogue phone line carries it:
//!   resampled to 8 kHz, band-limited to 300-3400 Hz (4th-order Butterworth high-pass and
//!   low-pass), optionally through G.711, and for `telephone_16k` back up to 16 kHz f32.
//! - [`SENTENCES`]: a fixed list of 12 phone-bot sentences over five espeak voices.
//! - [`accuracy_set`]: every sentence by every voice of [`ACCURACY_VOICES`], spoken at
//!   [`ACCURACY_WPM`] (a natural phone rate), for word error rates.
//! - [`held_out_set`]: the IEEE "Harvard" sentences ([`HARVARD_SENTENCES`], lists 1-4) by the
//!   same voices: a held-out set that no decision was tuned on.
//! - [`REFERENCE_SENTENCES`]: the six sentences behind the Whisper model's reference word
//!   error rate (`../shared/models/README.md`), to check the pipeline against it.
//! - [`wer`]: word errors (Levenshtein over words) after [`normalize`]: Whisper's English
//!   normaliser rules (case, punctuation, contractions, fillers, spelling), numbers spelled out.
//! - [`labelled_in_noise`]: utterances placed at known offsets in white noise, with the
//!   true speech intervals, for measuring VAD edge errors.

use std::ops::Range;
use std::process::Command;
use std::time::Duration;

use callbot_audio::g711::Law;
use callbot_audio::resample::resample;
use callbot_audio::{AudioFrame, frame};

/// espeak-ng's output rate (Hz) for its built-in voices.
pub const ESPEAK_RATE: u32 = 22_050;

/// The speaking rate [`espeak`] uses (words per minute; espeak-ng's default is 175).
pub const DEFAULT_WPM: u32 = 160;

/// One test utterance and the espeak-ng voice that speaks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestSentence {
    /// espeak-ng voice name (`espeak-ng --voices=en`).
    pub voice: &'static str,
    /// What is said.
    pub text: &'static str,
}

/// Twelve things callers say to a phone bot, spoken by five different voices.
pub const SENTENCES: &[TestSentence] = &[
    TestSentence {
        voice: "en-us",
        text: "Hello, I would like to book a table for two people tonight.",
    },
    TestSentence {
        voice: "en",
        text: "Can you tell me the opening hours of the pharmacy on Main Street?",
    },
    TestSentence {
        voice: "en-gb-x-rp",
        text: "My account number is four five six seven eight.",
    },
    TestSentence {
        voice: "en-us",
        text: "Please transfer me to the billing department.",
    },
    TestSentence {
        voice: "en-gb-scotland",
        text: "The weather in Edinburgh is cold and rainy today.",
    },
    TestSentence {
        voice: "en",
        text: "I need to cancel my appointment on Friday morning.",
    },
    TestSentence {
        voice: "en-us",
        text: "What time does the last train leave for Boston?",
    },
    TestSentence {
        voice: "en-gb-x-rp",
        text: "Thank you very much, that is all I needed.",
    },
    TestSentence {
        voice: "en-029",
        text: "My parcel was delivered to the wrong house yesterday.",
    },
    TestSentence {
        voice: "en",
        text: "Could you repeat the address more slowly, please?",
    },
    TestSentence {
        voice: "en-us",
        text: "I would like to speak to a human operator.",
    },
    TestSentence {
        voice: "en-gb-scotland",
        text: "Is there a doctor available on Saturday afternoon?",
    },
];

/// espeak-ng's own default speaking rate (`-s`, words per minute), which the model README's
/// reference measurement used.
pub const ESPEAK_DEFAULT_WPM: u32 = 175;

/// The six sentences of the Whisper model's reference measurement
/// (`../shared/models/README.md`, "Verification"): spoken by espeak-ng `-v en-us` at
/// [`ESPEAK_DEFAULT_WPM`], tiny.en (greedy, language en, full 30 s window) scores 4/73 words
/// wrong on them (5.5 % with the README's normaliser: lowercase, no punctuation, digits as
/// words; 5/73 with [`wer`], which reads "you're" as "you are") and 20/73 (27.4 %) through
/// the telephone band. Same audio, same figure: a check of the pipeline, not of the test set.
pub const REFERENCE_SENTENCES: &[&str] = &[
    "Hello, I would like to book a table for two tomorrow at seven.",
    "Could you please tell me your opening hours on Sunday?",
    "My name is John Smith and I need to cancel my reservation for Friday evening.",
    "The quick brown fox jumps over the lazy dog.",
    "Yes, that works for me. Thank you very much, goodbye.",
    "Hello, I would like to book a table for two people tomorrow evening at seven, please.",
];

/// The espeak-ng voices of the accuracy set ([`accuracy_set`]): American, British
/// (default and received pronunciation), Scottish and Caribbean English.
pub const ACCURACY_VOICES: &[&str] = &["en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029"];

/// The espeak-ng rate of the accuracy set (`-s`, words per minute). espeak-ng's rate is
/// not the rate one hears: over the speech of the accuracy set (first to last sound of
/// each clip, pauses between words included) `-s 120` gives 151 words a minute, about the
/// rate of conversational phone speech (~150); [`DEFAULT_WPM`]'s 160 gives 203, a fast talker.
pub const ACCURACY_WPM: u32 = 120;

/// The accuracy set for speech recognition: every sentence of [`SENTENCES`] spoken by every
/// voice of [`ACCURACY_VOICES`] (60 utterances, 555 words), sentence by sentence. Speak
/// them with [`espeak_with`] at [`ACCURACY_WPM`]. A larger set than [`SENTENCES`] alone
/// (111 words, one word = 0.9 points of WER) gives a steadier figure, per voice as well.
pub fn accuracy_set() -> impl Iterator<Item = TestSentence> {
    by_every_voice(SENTENCES.iter().map(|s| s.text))
}

/// Every text of `texts` spoken by every voice of [`ACCURACY_VOICES`], text by text.
fn by_every_voice(texts: impl Iterator<Item = &'static str>) -> impl Iterator<Item = TestSentence> {
    texts.flat_map(|text| {
        ACCURACY_VOICES
            .iter()
            .map(move |&voice| TestSentence { voice, text })
    })
}

/// The IEEE "Harvard" sentences, lists 1 to 4 (IEEE Recommended Practice for Speech Quality
/// Measurements, 1969; public domain): the standard test sentences of telephony (the Open
/// Speech Repository's VoIP test recordings `OSR_us_000_0010` to `0013` are these four lists).
/// Written by neither this project nor the model's authors, phonetically balanced, and with
/// 315 words (as [`normalize`] counts them) 2.8 times the size of [`SENTENCES`]: the held-out
/// set of [`held_out_set`].
pub const HARVARD_SENTENCES: &[&str] = &[
    // List 1
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    // List 2
    "The boy was there when the sun rose.",
    "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.",
    "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.",
    "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.",
    "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.",
    "The girl at the booth sold fifty bonds.",
    // List 3
    "The small pup gnawed a hole in the sock.",
    "The fish twisted and turned on the bent hook.",
    "Press the pants and sew a button on the vest.",
    "The swan dive was far short of perfect.",
    "The beauty of the view stunned the young boy.",
    "Two blue fish swam in the tank.",
    "Her purse was full of useless trash.",
    "The colt reared and threw the tall rider.",
    "It snowed, rained, and hailed the same morning.",
    "Read verse out loud for pleasure.",
    // List 4
    "Hoist the load to your left shoulder.",
    "Take the winding path to reach the lake.",
    "Note closely the size of the gas tank.",
    "Wipe the grease off his dirty face.",
    "Mend the coat before you go out.",
    "The wrist was badly strained and hung limp.",
    "The stray cat gave birth to kittens.",
    "The young girl gave no clear response.",
    "The meal was cooked before the bell rang.",
    "What joy there is in living.",
];

/// The held-out accuracy set: every sentence of [`HARVARD_SENTENCES`] spoken by every voice
/// of [`ACCURACY_VOICES`] (200 utterances, 1,575 words), sentence by sentence, to be spoken with
/// [`espeak_with`] at [`ACCURACY_WPM`] like [`accuracy_set`].
///
/// Why it exists, and how it is used (fixed in the commit that added it, before any
/// transcription of it): every decision about callbot-stt's decoding and about the speech
/// pipeline was taken while looking at [`accuracy_set`]'s figures (and at the model README's
/// reference sentences), so their WER is no longer an unbiased estimate of what the pipeline
/// does on speech it has not seen. This set is scored once per configuration, with the same
/// voices, rate, resampler and normaliser, and nothing is tuned on it: its first figures
/// become the bounds of its test (measured plus a margin), whatever they are. The primary
/// figure is clean 16 kHz speech through `WhisperTranscriber` with its default options
/// (greedy decoding, automatic window), the configuration issue 5's "<= 15 % on clean
/// audio" is read against; beam search 5, the full 30 s window and 8 kHz G.711 µ-law are
/// reported beside it.
pub fn held_out_set() -> impl Iterator<Item = TestSentence> {
    by_every_voice(HARVARD_SENTENCES.iter().copied())
}

/// Speaks `text` with espeak-ng `voice` at [`DEFAULT_WPM`]: mono i16 at 22,050 Hz.
/// `None` when espeak-ng is missing (see [`crate::tools::require`]).
pub fn espeak(text: &str, voice: &str) -> Option<Vec<i16>> {
    espeak_with(text, voice, DEFAULT_WPM)
}

/// [`espeak`] with an explicit speaking rate (words per minute, 80..=450).
///
/// Panics when espeak-ng fails (unknown voice, no output) or runs over 30 s.
pub fn espeak_with(text: &str, voice: &str, wpm: u32) -> Option<Vec<i16>> {
    let program = crate::tools::require("espeak-ng")?;
    let dir = crate::temp_dir("callbot-espeak");
    let wav = dir.path().join("speech.wav");
    let log = dir.path().join("espeak.log");
    let mut cmd = Command::new(program);
    cmd.arg("-v")
        .arg(voice)
        .arg("-s")
        .arg(wpm.clamp(80, 450).to_string())
        .arg("-w")
        .arg(&wav)
        .arg("--")
        .arg(text);
    let mut child = crate::process::Child::spawn("espeak-ng", cmd, &log).expect("spawn espeak-ng");
    let status = child
        .wait_timeout(Duration::from_secs(30))
        .expect("wait for espeak-ng")
        .unwrap_or_else(|| panic!("espeak-ng did not finish within 30 s"));
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.success(),
        "espeak-ng -v {voice} failed ({status}): {log_text}"
    );
    let frame = callbot_audio::wav::read_wav(&wav).expect("read espeak-ng output");
    assert!(
        !frame.is_empty(),
        "espeak-ng -v {voice} produced no audio: {log_text}"
    );
    let pcm = if frame.sample_rate == ESPEAK_RATE {
        frame.samples
    } else {
        callbot_audio::resample::resample_frame(&frame, ESPEAK_RATE)
            .expect("resample espeak output")
            .samples
    };
    Some(pcm)
}

/// 22,050 Hz i16 speech -> 16 kHz f32 in `[-1, 1)` (for Whisper).
pub fn to_16k(pcm_22050: &[i16]) -> Vec<f32> {
    resample(&frame::i16_to_f32(pcm_22050), ESPEAK_RATE, 16_000).expect("resample to 16 kHz")
}

/// 22,050 Hz i16 speech as a phone line carries it: 8 kHz, band-limited to 300-3400 Hz,
/// and through G.711 `law` when given (encode + decode). Mono i16 at 8 kHz.
pub fn telephone_8k(pcm_22050: &[i16], law: Option<Law>) -> Vec<i16> {
    let at8k = resample(&frame::i16_to_f32(pcm_22050), ESPEAK_RATE, 8_000).expect("resample");
    let band = telephone_band_8k(&at8k);
    let pcm = frame::f32_to_i16(&band);
    match law {
        None => pcm,
        Some(law) => {
            let mut coded = Vec::with_capacity(pcm.len());
            law.encode_into(&pcm, &mut coded);
            let mut back = Vec::with_capacity(pcm.len());
            law.decode_into(&coded, &mut back);
            back
        }
    }
}

/// [`telephone_8k`] resampled back to 16 kHz f32: what speech recognition hears in a call.
pub fn telephone_16k(pcm_22050: &[i16], law: Option<Law>) -> Vec<f32> {
    let pcm8 = telephone_8k(pcm_22050, law);
    resample(&frame::i16_to_f32(&pcm8), 8_000, 16_000).expect("resample to 16 kHz")
}

/// `pcm` (mono f32 at `rate`) as a VoIP call carries it: resampled to 8 kHz (the
/// resampler's anti-alias filter is the only band limit), through G.711 `law` (encode +
/// decode) and back up to 16 kHz f32 for speech recognition. [`telephone_16k`] adds the
/// analogue PSTN's 300-3400 Hz band-pass on top.
pub fn voip_16k(pcm: &[f32], rate: u32, law: Law) -> Vec<f32> {
    let at8k = frame::f32_to_i16(&resample(pcm, rate, 8_000).expect("resample to 8 kHz"));
    let mut coded = Vec::with_capacity(at8k.len());
    law.encode_into(&at8k, &mut coded);
    let mut back = Vec::with_capacity(at8k.len());
    law.decode_into(&coded, &mut back);
    resample(&frame::i16_to_f32(&back), 8_000, 16_000).expect("resample to 16 kHz")
}

/// A 300-3400 Hz band-pass at 8 kHz: 4th-order Butterworth high-pass at 300 Hz and
/// 4th-order Butterworth low-pass at 3400 Hz (cascaded biquads, RBJ cookbook).
pub fn telephone_band_8k(x: &[f32]) -> Vec<f32> {
    // Q of the two sections of a 4th-order Butterworth filter.
    const Q4: [f64; 2] = [0.541_196_1, 1.306_563];
    let mut sections: Vec<Biquad> = Q4
        .iter()
        .map(|&q| Biquad::high_pass(8000.0, 300.0, q))
        .chain(Q4.iter().map(|&q| Biquad::low_pass(8000.0, 3400.0, q)))
        .collect();
    x.iter()
        .map(|&v| {
            let mut y = f64::from(v);
            for s in &mut sections {
                y = s.run(y);
            }
            y as f32
        })
        .collect()
}

/// A direct-form-I biquad.
#[derive(Debug, Clone)]
struct Biquad {
    b: [f64; 3],
    a: [f64; 2],
    x: [f64; 2],
    y: [f64; 2],
}

impl Biquad {
    fn new(b: [f64; 3], a0: f64, a: [f64; 2]) -> Self {
        Self {
            b: [b[0] / a0, b[1] / a0, b[2] / a0],
            a: [a[0] / a0, a[1] / a0],
            x: [0.0; 2],
            y: [0.0; 2],
        }
    }

    fn coeffs(rate: f64, f0: f64, q: f64) -> (f64, f64) {
        let w0 = 2.0 * std::f64::consts::PI * f0 / rate;
        (w0.cos(), w0.sin() / (2.0 * q))
    }

    fn low_pass(rate: f64, f0: f64, q: f64) -> Self {
        let (c, alpha) = Self::coeffs(rate, f0, q);
        Self::new(
            [(1.0 - c) / 2.0, 1.0 - c, (1.0 - c) / 2.0],
            1.0 + alpha,
            [-2.0 * c, 1.0 - alpha],
        )
    }

    fn high_pass(rate: f64, f0: f64, q: f64) -> Self {
        let (c, alpha) = Self::coeffs(rate, f0, q);
        Self::new(
            [(1.0 + c) / 2.0, -(1.0 + c), (1.0 + c) / 2.0],
            1.0 + alpha,
            [-2.0 * c, 1.0 - alpha],
        )
    }

    fn run(&mut self, x: f64) -> f64 {
        let y = self.b[0] * x + self.b[1] * self.x[0] + self.b[2] * self.x[1]
            - self.a[0] * self.y[0]
            - self.a[1] * self.y[1];
        self.x = [x, self.x[0]];
        self.y = [y, self.y[0]];
        y
    }
}

/// The part of `pcm` that is speech: from the first to the last sample whose magnitude
/// reaches 2 % of the clip's peak (espeak-ng pads its output with silence).
pub fn speech_bounds(pcm: &[i16]) -> Range<usize> {
    let peak = pcm.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
    let threshold = (u32::from(peak) * 2 / 100) as u16;
    let start = pcm.iter().position(|s| s.unsigned_abs() > threshold);
    let end = pcm.iter().rposition(|s| s.unsigned_abs() > threshold);
    match (start, end) {
        (Some(s), Some(e)) => s..e + 1,
        _ => 0..0,
    }
}

/// Audio with speech at known places, for VAD tests.
#[derive(Debug, Clone)]
pub struct Labelled {
    /// The mixture (speech + noise).
    pub audio: AudioFrame,
    /// Where each utterance's speech really is (sample ranges of `audio`, sorted).
    pub speech: Vec<Range<usize>>,
}

/// Places each `(offset, utterance)` (utterances at `rate`) into `total` of white noise
/// whose level is `snr_db` below the utterances' average speech RMS (deterministic noise
/// from `seed`). The labels are [`speech_bounds`] of each utterance, shifted by its
/// offset. Utterances must not overlap and must fit.
pub fn labelled_in_noise(
    rate: u32,
    total: Duration,
    utterances: &[(Duration, Vec<i16>)],
    snr_db: f64,
    seed: u64,
) -> Labelled {
    let n = frame::samples_for(rate, total);
    let mut mix = vec![0.0f64; n];
    let mut speech = Vec::new();
    let mut power = 0.0;
    let mut count = 0usize;
    for (offset, pcm) in utterances {
        let at = frame::samples_for(rate, *offset);
        assert!(at + pcm.len() <= n, "utterance at {offset:?} does not fit");
        let bounds = speech_bounds(pcm);
        for (i, &s) in pcm.iter().enumerate() {
            mix[at + i] += f64::from(s);
        }
        for &s in &pcm[bounds.clone()] {
            power += f64::from(s) * f64::from(s);
        }
        count += bounds.len();
        speech.push(at + bounds.start..at + bounds.end);
    }
    speech.sort_by_key(|r| r.start);
    for w in speech.windows(2) {
        assert!(w[0].end <= w[1].start, "utterances overlap");
    }
    let speech_rms = (power / count.max(1) as f64).sqrt();
    let noise_rms = speech_rms / 10f64.powf(snr_db / 20.0);
    // Uniform white noise in [-a, a] has RMS a / sqrt(3).
    let amp = noise_rms * 3f64.sqrt();
    let mut state = seed | 1;
    for v in &mut mix {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        let u = r as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
        *v += amp * u;
    }
    let samples = mix
        .iter()
        .map(|&v| v.round().clamp(-32768.0, 32767.0) as i16)
        .collect();
    Labelled {
        audio: AudioFrame::new(rate, samples),
        speech,
    }
}

/// Word errors between `reference` and `hypothesis`: `(errors, reference_words)`, where
/// errors are substitutions + insertions + deletions (word-level Levenshtein) after
/// [`normalize`]. WER is `errors / reference_words`.
pub fn wer(reference: &str, hypothesis: &str) -> (usize, usize) {
    let r = normalize(reference);
    (word_errors(&r, &normalize(hypothesis)), r.len())
}

/// Substitutions + insertions + deletions that turn the words `reference` into `hypothesis`
/// (word-level Levenshtein distance), for word error rates with another normaliser than
/// [`normalize`].
pub fn word_errors<W: PartialEq>(reference: &[W], hypothesis: &[W]) -> usize {
    let mut prev: Vec<usize> = (0..=hypothesis.len()).collect();
    let mut cur = vec![0; hypothesis.len() + 1];
    for (i, rw) in reference.iter().enumerate() {
        cur[0] = i + 1;
        for (j, hw) in hypothesis.iter().enumerate() {
            let sub = prev[j] + usize::from(rw != hw);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[hypothesis.len()]
}

/// The words of `text` as [`wer`] compares them, following the rules of Whisper's
/// `EnglishTextNormalizer` where they apply to English speech: lowercase; text in
/// brackets or parentheses dropped (`[BLANK_AUDIO]`, `(laughs)`); fillers dropped (hmm,
/// mm, mhm, mmm, uh, um); contractions and titles expanded ("won't" -> "will not",
/// "that's" -> "that is", "I'd" -> "I would", "Mr" -> "mister"); any other apostrophe
/// removed; other punctuation and hyphens a word break; and, where Whisper turns number
/// words into digits, the other way round: digits spelled out ("42" -> "forty two",
/// "3.5" -> "three point five", "10:30" -> "ten thirty", "1,250" -> "one thousand two
/// hundred fifty"), but identifiers of five digits or more without a separator digit by digit
/// ("45678" -> "four five six seven eight", see [`IDENTIFIER_DIGITS`]); and, like Whisper's British to
/// American spelling table, common British spellings in American form ("cancelled" ->
/// "canceled", "colour" -> "color"; a short list of our own, see [`american_spelling`]).
pub fn normalize(text: &str) -> Vec<String> {
    let lower = without_brackets(&text.to_lowercase().replace('\u{2019}', "'"));
    let chars: Vec<char> = lower.chars().collect();
    let mut cleaned = String::with_capacity(lower.len());
    for (i, &c) in chars.iter().enumerate() {
        let digit_before = i > 0 && chars[i - 1].is_ascii_digit();
        let digit_after = chars.get(i + 1).is_some_and(|c| c.is_ascii_digit());
        let letter_before = i > 0 && chars[i - 1].is_alphabetic();
        let letter_after = chars.get(i + 1).is_some_and(|c| c.is_alphabetic());
        match c {
            // Kept inside words for the contraction rules ("don't", "y'all").
            '\'' if letter_before && letter_after => cleaned.push('\''),
            '\'' => {}
            '.' if digit_before && digit_after => cleaned.push_str(" point "),
            // 1,000: kept inside the number, which is then read as an amount.
            ',' if digit_before && digit_after => cleaned.push(','),
            c if c.is_alphanumeric() => {
                // Split letters from digits: "2nd" stays one token only if all digits.
                if let Some(p) = cleaned.chars().last()
                    && p.is_ascii_digit() != c.is_ascii_digit()
                    && p.is_alphanumeric()
                {
                    cleaned.push(' ');
                }
                cleaned.push(c);
            }
            _ => cleaned.push(' '),
        }
    }
    let tokens: Vec<&str> = cleaned.split_whitespace().collect();
    let mut words = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        if token.starts_with(|c: char| c.is_ascii_digit())
            && token.bytes().all(|b| b.is_ascii_digit() || b == b',')
        {
            let grouped = token.contains(',');
            let digits = token.replace(',', "");
            match digits.parse::<u64>() {
                Ok(n)
                    if digits.len() <= 12
                        && !(digits.len() > 1 && digits.starts_with('0'))
                        && (grouped || digits.len() < IDENTIFIER_DIGITS) =>
                {
                    words.extend(number_words(n).split(' ').map(str::to_string));
                }
                // Identifiers, and long or zero-led digit strings, are read digit by digit.
                _ => words.extend(digits.bytes().map(|b| number_words(u64::from(b - b'0')))),
            }
        } else if !FILLERS.contains(token) {
            let next = tokens.get(i + 1).copied().unwrap_or("");
            words.extend(
                expand_word(token, next)
                    .split([' ', '\''])
                    .filter(|w| !w.is_empty())
                    .map(|w| american_spelling(w).to_string()),
            );
        }
    }
    words
}

/// The American spelling of a few British words a phone bot's sentences use (Whisper
/// writes American spelling; its normaliser maps about 1,700 such pairs).
pub fn american_spelling(word: &str) -> &str {
    const PAIRS: &[(&str, &str)] = &[
        ("cancelled", "canceled"),
        ("cancelling", "canceling"),
        ("travelled", "traveled"),
        ("travelling", "traveling"),
        ("labelled", "labeled"),
        ("colour", "color"),
        ("colours", "colors"),
        ("favour", "favor"),
        ("favourite", "favorite"),
        ("honour", "honor"),
        ("neighbour", "neighbor"),
        ("behaviour", "behavior"),
        ("centre", "center"),
        ("centres", "centers"),
        ("metre", "meter"),
        ("metres", "meters"),
        ("theatre", "theater"),
        ("programme", "program"),
        ("catalogue", "catalog"),
        ("cheque", "check"),
        ("organise", "organize"),
        ("organised", "organized"),
        ("realise", "realize"),
        ("recognise", "recognize"),
        ("apologise", "apologize"),
        ("authorise", "authorize"),
        ("authorised", "authorized"),
        ("licence", "license"),
        ("defence", "defense"),
        ("grey", "gray"),
        ("tyre", "tire"),
        ("tyres", "tires"),
    ];
    PAIRS
        .iter()
        .find(|(british, _)| *british == word)
        .map_or(word, |(_, american)| american)
}

/// A digit string of this many digits or more without a thousands separator ("45678", not
/// "45,678") is an identifier (account, order or phone number) and is read digit by digit:
/// "My account number is four five six seven eight" is transcribed "... is 45678", which is
/// what was said, not "forty five thousand six hundred seventy eight". (Whisper's own
/// normaliser gets there the other way: it joins spelled single digits into "45678".)
pub const IDENTIFIER_DIGITS: usize = 5;

/// Words Whisper's normaliser drops.
const FILLERS: &[&str] = &["hmm", "mm", "mhm", "mmm", "uh", "um"];

/// `text` without `[...]` and `(...)` spans (Whisper's normaliser drops them).
fn without_brackets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut close: Option<char> = None;
    for c in text.chars() {
        match (close, c) {
            (None, '[') => close = Some(']'),
            (None, '(') => close = Some(')'),
            (None, c) => out.push(c),
            (Some(end), c) if c == end => {
                close = None;
                out.push(' ');
            }
            (Some(_), _) => {}
        }
    }
    out
}

/// Whisper's contraction and title rules for one lowercase word (`next` is the word after
/// it, for "'s been" -> "has been").
fn expand_word(word: &str, next: &str) -> String {
    const WHOLE: &[(&str, &str)] = &[
        ("won't", "will not"),
        ("can't", "can not"),
        ("let's", "let us"),
        ("ain't", "aint"),
        ("y'all", "you all"),
        ("wanna", "want to"),
        ("gotta", "got to"),
        ("gonna", "going to"),
        ("i'ma", "i am going to"),
        ("imma", "i am going to"),
        ("woulda", "would have"),
        ("coulda", "could have"),
        ("shoulda", "should have"),
        ("ma'am", "madam"),
        ("mr", "mister"),
        ("mrs", "missus"),
        ("st", "saint"),
        ("dr", "doctor"),
        ("prof", "professor"),
        ("capt", "captain"),
        ("gov", "governor"),
        ("ald", "alderman"),
        ("gen", "general"),
        ("sen", "senator"),
        ("rep", "representative"),
        ("pres", "president"),
        ("rev", "reverend"),
        ("hon", "honorable"),
        ("asst", "assistant"),
        ("assoc", "associate"),
        ("lt", "lieutenant"),
        ("col", "colonel"),
        ("jr", "junior"),
        ("sr", "senior"),
        ("esq", "esquire"),
    ];
    // Perfect tenses first ("he'd been" is "he had been", not "he would been").
    const PERFECT: &[(&str, &str, &str)] = &[
        ("'d", "been", " had"),
        ("'s", "been", " has"),
        ("'d", "gone", " had"),
        ("'s", "gone", " has"),
        ("'d", "done", " had"),
        ("'s", "got", " has"),
    ];
    const SUFFIX: &[(&str, &str)] = &[
        ("n't", " not"),
        ("'re", " are"),
        ("'s", " is"),
        ("'d", " would"),
        ("'ll", " will"),
        ("'t", " not"),
        ("'ve", " have"),
        ("'m", " am"),
    ];
    if let Some((_, to)) = WHOLE.iter().find(|(from, _)| *from == word) {
        return (*to).to_string();
    }
    for (suffix, after, to) in PERFECT {
        if next == *after
            && let Some(stem) = word.strip_suffix(suffix)
        {
            return format!("{stem}{to}");
        }
    }
    for (suffix, to) in SUFFIX {
        if let Some(stem) = word.strip_suffix(suffix) {
            return format!("{stem}{to}");
        }
    }
    word.to_string()
}

/// English words for `n` ("one hundred twenty three"; no "and").
pub fn number_words(n: u64) -> String {
    const ONES: [&str; 20] = [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
    ];
    const TENS: [&str; 10] = [
        "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
    ];
    fn below_thousand(n: u64, out: &mut Vec<String>) {
        let (h, rest) = (n / 100, n % 100);
        if h > 0 {
            out.push(ONES[h as usize].to_string());
            out.push("hundred".into());
        }
        if rest >= 20 {
            out.push(TENS[(rest / 10) as usize].to_string());
            if rest % 10 > 0 {
                out.push(ONES[(rest % 10) as usize].to_string());
            }
        } else if rest > 0 || h == 0 {
            out.push(ONES[rest as usize].to_string());
        }
    }
    if n == 0 {
        return "zero".into();
    }
    let mut out = Vec::new();
    let scales = [
        (1_000_000_000_000, "trillion"),
        (1_000_000_000, "billion"),
        (1_000_000, "million"),
        (1_000, "thousand"),
    ];
    let mut rest = n;
    for (size, name) in scales {
        if rest >= size {
            below_thousand(rest / size % 1000, &mut out);
            if rest / size >= 1000 {
                // Beyond trillions: fall back to digits.
                return n.to_string();
            }
            out.push(name.into());
            rest %= size;
        }
    }
    if rest > 0 {
        below_thousand(rest, &mut out);
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wer_counts_substitutions_insertions_deletions() {
        assert_eq!(wer("the cat sat", "the cat sat"), (0, 3));
        assert_eq!(wer("the cat sat", "the dog sat"), (1, 3));
        assert_eq!(wer("the cat sat", "the cat"), (1, 3));
        assert_eq!(wer("the cat sat", "the big cat sat down"), (2, 3));
        assert_eq!(wer("", "hello"), (1, 0));
        assert_eq!(wer("a b c d", ""), (4, 4));
    }

    #[test]
    fn normalization_ignores_case_punctuation_and_digits() {
        assert_eq!(
            wer(
                "My account number is four five six seven eight.",
                "my account number is 4 5 6 7 8"
            ),
            (0, 9)
        );
        assert_eq!(
            wer("Table for two, at 7:30.", "table for 2 at seven thirty"),
            (0, 6)
        );
        assert_eq!(wer("I do not know!", "I don't know"), (0, 4));
        assert_eq!(
            wer("That is all, he has been there.", "That's all, he's been there."),
            (0, 7)
        );
        assert_eq!(wer("I will not, Doctor Smith", "I won't, Dr. Smith"), (0, 5));
        assert_eq!(wer("Yes please", "Um, yes [BLANK_AUDIO] please (laughs)"), (0, 2));
        assert_eq!(
            wer("It was cancelled, colour grey", "It was canceled, color gray"),
            (0, 5)
        );
        assert_eq!(
            normalize("Rock 'n' roll, the 'quotes'"),
            ["rock", "n", "roll", "the", "quotes"]
        );
        assert_eq!(wer("forty-two", "42"), (0, 2));
        assert_eq!(
            normalize("It costs 3.5 or 1,250 and code 007"),
            [
                "it", "costs", "three", "point", "five", "or", "one", "thousand", "two", "hundred", "fifty",
                "and", "code", "zero", "zero", "seven"
            ]
        );
        assert_eq!(normalize("the 2nd"), ["the", "two", "nd"]);
        assert_eq!(
            wer(
                "My account number is four five six seven eight.",
                "My account number is 45678."
            ),
            (0, 9)
        );
        assert_eq!(
            normalize("45,678 or 2024"),
            [
                "forty", "five", "thousand", "six", "hundred", "seventy", "eight", "or", "two", "thousand",
                "twenty", "four"
            ]
        );
        assert_eq!(number_words(1_000_001), "one million one");
        assert_eq!(number_words(115), "one hundred fifteen");
    }

    #[test]
    fn accuracy_set_is_every_sentence_by_every_voice() {
        let set: Vec<TestSentence> = accuracy_set().collect();
        assert_eq!(set.len(), SENTENCES.len() * ACCURACY_VOICES.len());
        let distinct: std::collections::BTreeSet<_> = set.iter().map(|s| (s.text, s.voice)).collect();
        assert_eq!(distinct.len(), set.len());
        let words: usize = SENTENCES.iter().map(|s| normalize(s.text).len()).sum();
        assert_eq!(words * ACCURACY_VOICES.len(), 555);
    }

    #[test]
    fn held_out_set_is_every_harvard_sentence_by_every_voice() {
        let set: Vec<_> = held_out_set().collect();
        assert_eq!(set.len(), 40 * ACCURACY_VOICES.len());
        let distinct: std::collections::BTreeSet<_> = set.iter().map(|s| (s.text, s.voice)).collect();
        assert_eq!(distinct.len(), set.len());
        // No sentence of the held-out set is one the pipeline was tuned on.
        assert!(
            HARVARD_SENTENCES
                .iter()
                .all(|h| SENTENCES.iter().all(|s| s.text != *h) && !REFERENCE_SENTENCES.contains(h))
        );
        let words: usize = HARVARD_SENTENCES.iter().map(|s| normalize(s).len()).sum();
        assert_eq!(words, 315);
    }

    #[test]
    fn telephone_band_filter_passes_voice_band_only() {
        let tone = |f: f64| -> Vec<f32> {
            (0..8000)
                .map(|i| (0.5 * (2.0 * std::f64::consts::PI * f * i as f64 / 8000.0).sin()) as f32)
                .collect()
        };
        let gain_db = |f: f64| {
            let x = tone(f);
            let y = telephone_band_8k(&x);
            let rms = |v: &[f32]| {
                (v.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / v.len() as f64).sqrt()
            };
            20.0 * (rms(&y[2000..]) / rms(&x[2000..])).log10()
        };
        assert!(gain_db(1000.0).abs() < 0.5);
        assert!((gain_db(300.0) + 3.0).abs() < 0.5, "-3 dB at the corner");
        assert!(gain_db(100.0) < -30.0);
        assert!(gain_db(3900.0) < -20.0);
    }

    #[test]
    fn espeak_makes_speech_and_the_telephone_versions_have_the_right_lengths() {
        let s = SENTENCES[0];
        let Some(pcm) = espeak(s.text, s.voice) else {
            return;
        };
        let secs = pcm.len() as f64 / f64::from(ESPEAK_RATE);
        assert!((1.5..8.0).contains(&secs), "{secs} s");
        let bounds = speech_bounds(&pcm);
        assert!(bounds.len() as f64 > 0.8 * f64::from(ESPEAK_RATE));
        let w16 = to_16k(&pcm);
        assert_eq!(w16.len(), (pcm.len() * 16000 + 11025) / 22050);
        let t8 = telephone_8k(&pcm, Some(Law::Ulaw));
        assert_eq!(t8.len(), (pcm.len() * 8000 + 11025) / 22050);
        let t16 = telephone_16k(&pcm, Some(Law::Alaw));
        assert_eq!(t16.len(), 2 * t8.len());
        // All voices of the list exist.
        let voices: std::collections::BTreeSet<_> = SENTENCES
            .iter()
            .map(|s| s.voice)
            .chain(ACCURACY_VOICES.iter().copied())
            .collect();
        assert!(voices.len() >= 4);
        for v in voices {
            let p = espeak("yes", v).unwrap();
            assert!(!speech_bounds(&p).is_empty(), "voice {v}");
        }
    }

    #[test]
    fn labelled_mix_places_speech_and_sets_noise_level() {
        let burst: Vec<i16> = (0..8000)
            .map(|i| {
                if (1000..7000).contains(&i) {
                    ((i % 50) as i16 - 25) * 400
                } else {
                    0
                }
            })
            .collect();
        let l = labelled_in_noise(
            16000,
            Duration::from_secs(3),
            &[
                (Duration::from_millis(500), burst.clone()),
                (Duration::from_secs(2), burst),
            ],
            20.0,
            7,
        );
        assert_eq!(l.audio.len(), 48000);
        assert_eq!(l.speech, vec![9000..15000, 33000..39000]);
        let noise: f64 = (l.audio.samples[..8000]
            .iter()
            .map(|&s| f64::from(s).powi(2))
            .sum::<f64>()
            / 8000.0)
            .sqrt();
        let speech_rms = (burst_rms() * 10f64.powf(-20.0 / 20.0), noise);
        assert!((speech_rms.0 / speech_rms.1 - 1.0).abs() < 0.05, "{speech_rms:?}");
    }

    fn burst_rms() -> f64 {
        let v: Vec<f64> = (1000..7000)
            .map(|i| f64::from(((i % 50) as i16 - 25) * 400))
            .collect();
        (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt()
    }
}
