//! The voice bot program.
//!
//! ```sh
//! cargo run --release -p callbot-examples --example callbot -- --config examples/callbot.toml
//! ```
//!
//! Flags (each overrides the file; without `--config` the defaults are used):
//! - `--config FILE`: settings file (see `examples/callbot.toml`);
//! - `--listen ADDR`: SIP address, e.g. `127.0.0.1:5060`;
//! - `--model PATH`: Whisper model file (`cargo xtask model` prints one);
//! - `--ollama-url URL`, `--llm-model NAME`: the LLM (echo mode when unreachable);
//! - `--register USER:PASSWORD@SERVER`: register at a registrar;
//! - `--transcripts DIR`: per-call transcript files;
//! - `--check`: validate the settings and exit.
//!
//! Signals: SIGHUP reloads the file through `Bot::reconfigure` (a bad file is refused
//! and the bot keeps running on the old settings); SIGINT and SIGTERM shut the bot down
//! gracefully (live calls hear the shutdown phrase and get BYE) and exit 0.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use callbot::Settings;
use callbot::settings::RegistrationSettings;
use callbot_examples::{Args, run_main};

const KNOWN: &[&str] = &[
    "config",
    "listen",
    "model",
    "ollama-url",
    "llm-model",
    "register",
    "transcripts",
    "check",
    "help",
];

const USAGE: &str = "usage: callbot [--config FILE] [--listen ADDR] [--model PATH] [--ollama-url URL] \
[--llm-model NAME] [--register USER:PASSWORD@SERVER] [--transcripts DIR] [--check]";

/// The settings: the file (if any) with the command-line overrides applied, validated.
fn load(args: &Args) -> Result<Settings, String> {
    let mut s = match args.get("config") {
        Some(path) => Settings::load(path.as_ref()).map_err(|e| e.to_string())?,
        None => Settings::default(),
    };
    if let Some(listen) = args.get("listen") {
        s.sip.listen = listen
            .parse()
            .map_err(|_| format!("--listen: `{listen}` is not an address such as 127.0.0.1:5060"))?;
    }
    if let Some(m) = args.get("model") {
        s.stt.model = m.into();
    }
    if let Some(u) = args.get("ollama-url") {
        s.llm.url = u.to_string();
    }
    if let Some(m) = args.get("llm-model") {
        s.llm.model = m.to_string();
    }
    if let Some(r) = args.get("register") {
        let (cred, server) = r
            .rsplit_once('@')
            .ok_or("--register: expected USER:PASSWORD@SERVER")?;
        let (user, password) = cred.split_once(':').unwrap_or((cred, ""));
        s.sip.registration = Some(RegistrationSettings {
            server: server.to_string(),
            user: user.to_string(),
            password: password.to_string(),
            expires: s.sip.registration.as_ref().map_or(3600, |r| r.expires),
        });
    }
    if let Some(d) = args.get("transcripts") {
        s.transcripts.dir = Some(d.into());
    }
    s.validate().map_err(|e| e.to_string())?;
    Ok(s)
}

fn run() -> Result<(), String> {
    let args = Args::parse(&["check", "help"])?;
    if args.switch("help") {
        println!("{USAGE}");
        return Ok(());
    }
    args.reject_unknown(KNOWN).map_err(|e| format!("{e}\n{USAGE}"))?;
    let settings = load(&args)?;
    if args.switch("check") {
        println!("settings are valid");
        return Ok(());
    }

    let hup = callbot_examples::signal_flag(&[signal_hook::consts::SIGHUP])?;
    let stop = callbot_examples::signal_flag(&[signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;

    let mut bot = callbot::Bot::start(settings).map_err(|e| e.to_string())?;
    println!(
        "callbot listening on sip:{} ({}); SIGHUP reloads, SIGINT/SIGTERM stop",
        bot.sip_addr(),
        if bot.echo_mode() {
            "echo mode: no LLM reachable"
        } else {
            "LLM connected"
        }
    );
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        if hup.swap(false, Ordering::SeqCst) {
            match load(&args).and_then(|s| bot.reconfigure(s).map_err(|e| e.to_string())) {
                Ok(r) => println!(
                    "reloaded in {:?}: replaced {:?}, kept {:?}, registration {:?}, echo mode {}",
                    r.elapsed,
                    r.replaced,
                    r.kept,
                    r.registration,
                    bot.echo_mode()
                ),
                Err(e) => println!("reload refused, old settings kept: {e}"),
            }
        }
    }
    println!("shutting down ({} live calls)", bot.live_calls());
    let report = bot.shutdown(Instant::now() + Duration::from_secs(2));
    // One line: time, calls ended/abandoned, BYEs sent/answered, the goodbye,
    // whether the registration was removed, threads joined, components clean.
    println!("shut down: {report}");
    Ok(())
}

fn main() -> ExitCode {
    run_main("callbot", run)
}
