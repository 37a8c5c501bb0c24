//! `cargo xtask demo`: the bot end to end on loopback.
//!
//! 1. `cargo xtask deps` installs what is missing (as root) or says what to install.
//! 2. The Whisper model: `$CALLBOT_WHISPER_MODEL`, `../shared/models/ggml-tiny.en.bin`,
//!    else `cargo xtask model` (finds or downloads `ggml-tiny.en.bin`).
//! 3. Runs the `demo_call` example (release): `callbot::Bot` on 127.0.0.1, a real SIP
//!    call to it from callbot's own UAC that asks a spoken question (espeak-ng), the
//!    bot's answer recorded and transcribed back; both sides of the conversation and
//!    the stage timings are printed; the bot shuts down; exit 0. With no Ollama on
//!    `http://127.0.0.1:11434` the bot runs in echo mode.

use std::path::PathBuf;

fn model() -> Result<PathBuf, String> {
    let env_set = std::env::var_os("CALLBOT_WHISPER_MODEL").is_some_and(|p| !p.is_empty());
    let shared = crate::root()
        .join("..")
        .join("shared")
        .join("models")
        .join("ggml-tiny.en.bin");
    if !env_set && shared.is_file() {
        return Ok(shared);
    }
    crate::model::find_or_download("tiny.en")
}

pub(crate) fn run() -> Result<(), String> {
    crate::deps::run()?;
    let model = model()?;
    println!("demo: Whisper model {}", model.display());
    let model = model.to_string_lossy().to_string();
    let mut args = vec![
        "run",
        "--quiet",
        "--release",
        "-p",
        "callbot-examples",
        "--example",
        "demo_call",
        "--",
        "--model",
        &model,
    ];
    let url = std::env::var("OLLAMA_HOST")
        .ok()
        .filter(|u| u.starts_with("http"));
    if let Some(u) = url.as_deref() {
        args.extend(["--ollama-url", u]);
    }
    crate::run_cmd("cargo", &args, &[])
}
