//! `cargo xtask`: how callbot installs, builds, tests and demonstrates itself.
//!
//! - `deps`: installs the system packages the build and the tests need (only the missing
//!   ones, with apt-get, non-interactively).
//! - `model [NAME]`: finds (or downloads) the Whisper model and prints its path.
//! - `ci`: everything CI checks, ending with the test runner's summary line.
//! - `demo`: runs the bot end to end on loopback with a real call.

mod ci;
mod demo;
mod deps;
mod model;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask <deps | model [NAME] | ci | demo>";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("deps") => deps::run(),
        Some("model") => model::run(args.get(1).map(String::as_str)),
        Some("ci") => ci::run(),
        Some("demo") => demo::run(),
        Some("-h" | "--help") | None => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => Err(format!("unknown command {other:?}\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the parent of `xtask/`).
pub(crate) fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Runs a command in the workspace root, echoing it; error on non-zero exit.
pub(crate) fn run_cmd(program: &str, args: &[&str], envs: &[(&str, &str)]) -> Result<(), String> {
    println!("xtask: $ {program} {}", args.join(" "));
    let status = std::process::Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(root())
        .status()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{program} {}` failed ({status})", args.join(" ")))
    }
}
