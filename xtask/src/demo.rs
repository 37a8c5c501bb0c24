//! `cargo xtask demo`: the bot end to end on loopback.
//!
//! Until the composition crate (`callbot`) has its bot and `callbot` example, this runs
//! the parts that exist and says which are missing.

use std::path::Path;

/// Examples the full demo uses, in order, and what each shows.
const PARTS: &[(&str, &str)] = &[
    ("speak", "text to speech with espeak-ng (callbot-tts)"),
    ("transcribe", "Whisper transcription (callbot-stt)"),
    (
        "answer_play",
        "answer a SIP call and play audio (callbot-sip + callbot-rtp)",
    ),
    ("callbot", "the voice bot (callbot)"),
];

fn has_example(name: &str) -> bool {
    let manifest =
        std::fs::read_to_string(crate::root().join("examples").join("Cargo.toml")).unwrap_or_default();
    manifest.contains(&format!("name = \"{name}\""))
        && crate::root()
            .join("examples")
            .join(format!("{name}.rs"))
            .is_file()
}

pub(crate) fn run() -> Result<(), String> {
    crate::deps::run()?;
    let missing: Vec<&(&str, &str)> = PARTS.iter().filter(|p| !has_example(p.0)).collect();
    for (name, what) in PARTS {
        println!(
            "demo: {name:12} {}: {what}",
            if has_example(name) { "present" } else { "MISSING" }
        );
    }
    if has_example("speak") && has_example("transcribe") {
        round_trip()?;
    }
    if missing.is_empty() {
        Ok(())
    } else {
        println!(
            "demo: not complete yet: {} still missing; see the open issues",
            missing.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
        );
        Ok(())
    }
}

/// TTS -> WAV -> Whisper, with the parts that exist.
fn round_trip() -> Result<(), String> {
    let tmp = std::env::temp_dir().join(format!("callbot-demo-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("temp dir: {e}"))?;
    let result = round_trip_in(&tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn round_trip_in(tmp: &Path) -> Result<(), String> {
    let wav = tmp.join("hello.wav");
    let wav_s = wav.to_string_lossy().to_string();
    let text = "Hello, I would like to book a table for two tomorrow at seven.";
    crate::run_cmd(
        "cargo",
        &[
            "run",
            "--quiet",
            "--release",
            "-p",
            "callbot-examples",
            "--example",
            "speak",
            "--",
            "--out",
            &wav_s,
            text,
        ],
        &[],
    )?;
    let model = std::env::var("CALLBOT_WHISPER_MODEL")
        .ok()
        .filter(|m| !m.is_empty());
    let model = match model {
        Some(m) => m,
        None => {
            let shared = crate::root()
                .join("..")
                .join("shared")
                .join("models")
                .join("ggml-tiny.en.bin");
            shared.to_string_lossy().to_string()
        }
    };
    crate::run_cmd(
        "cargo",
        &[
            "run",
            "--quiet",
            "--release",
            "-p",
            "callbot-examples",
            "--example",
            "transcribe",
            "--",
            "--model",
            &model,
            &wav_s,
        ],
        &[],
    )
}
