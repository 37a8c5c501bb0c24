//! `cargo xtask ci`: what CI checks, in order, ending with the test runner's summary.

use std::time::Instant;

pub(crate) fn run() -> Result<(), String> {
    let started = Instant::now();
    crate::deps::run()?;
    let model = std::env::var("CALLBOT_WHISPER_MODEL").unwrap_or_default();
    if model.is_empty() {
        println!("xtask ci: CALLBOT_WHISPER_MODEL is not set; tests look for ../shared/models");
    }
    let step = |name: &str, program: &str, args: &[&str], envs: &[(&str, &str)]| -> Result<(), String> {
        let t = Instant::now();
        println!("xtask ci: == {name}");
        let r = crate::run_cmd(program, args, envs);
        println!(
            "xtask ci: == {name}: {} in {:.1}s",
            if r.is_ok() { "ok" } else { "FAILED" },
            t.elapsed().as_secs_f64()
        );
        r
    };
    step("format", "cargo", &["fmt", "--all", "--check"], &[])?;
    step(
        "clippy",
        "cargo",
        &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"],
        &[],
    )?;
    step(
        "clippy (callbot-tts with local-speaker)",
        "cargo",
        &[
            "clippy",
            "-p",
            "callbot-tts",
            "--features",
            "local-speaker",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    // Only the criterion targets (`--bench '*'`, not every lib and bin in bench mode),
    // built with the dev profile: CI only proves the benchmarks compile, and this shares
    // every dependency with the test build instead of compiling whisper.cpp and the rest a
    // second time with the release profile. `cargo bench` (release) is for measuring.
    step(
        "benches build",
        "cargo",
        &[
            "bench",
            "--no-run",
            "--workspace",
            "--bench",
            "*",
            "--profile",
            "dev",
        ],
        &[],
    )?;
    step(
        "docs",
        "cargo",
        &["doc", "--workspace", "--no-deps"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    println!("xtask ci: {:.0}s before tests", started.elapsed().as_secs_f64());
    // Last, so the run ends with nextest's own summary line.
    step(
        "tests",
        "cargo",
        &["nextest", "run", "--workspace", "--no-fail-fast"],
        &[("CALLBOT_REQUIRE_PEERS", "1")],
    )
}
