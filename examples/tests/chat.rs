//! The `chat` example against the local Ollama-protocol server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use callbot_testkit::harness::example_bin;
use callbot_testkit::ollama::{OllamaServer, Script};
use callbot_testkit::process::Child;

/// Runs `cmd` (the chat example, its log in `dir`) until it exits, within `timeout`:
/// (exit status, stdout, log).
fn run_chat(cmd: Command, dir: &std::path::Path, timeout: Duration) -> (ExitStatus, String, String) {
    let log_path = dir.join("chat.log");
    let (mut child, mut stdout) = Child::spawn_piped("chat", cmd, &log_path).unwrap();
    let status = child.wait_timeout(timeout).unwrap().expect("chat exits");
    let mut out = String::new();
    stdout.read_to_string(&mut out).unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    (status, out, log)
}

#[test]
fn chat_streams_replies_and_keeps_history() {
    let Some(chat) = example_bin("chat") else { return };
    let server = OllamaServer::start(Script {
        split_multibyte: true,
        ..Script::default()
    })
    .unwrap();
    let dir = callbot_testkit::temp_dir("chat-example");
    let input = dir.path().join("input.txt");
    std::fs::write(&input, "Hello there.\n\nGrüß Gott, wie geht's?\n").unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"exec "$0" --url "$1" --model test-model --system "Be brief." < "$2""#)
        .arg(&chat)
        .arg(server.url())
        .arg(&input);
    let (status, out, log) = run_chat(cmd, dir.path(), Duration::from_secs(20));
    assert!(status.success(), "{status:?}\n{out}\n{log}");
    assert_eq!(out, "Hello there.\nGrüß Gott, wie geht's?\n", "{log}");
    let last = server.last_chat().unwrap().request;
    let roles: Vec<&str> = last["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    assert_eq!(last["messages"][2]["content"], "Hello there.");
}

#[test]
fn chat_reports_a_bad_url_without_panicking() {
    let Some(chat) = example_bin("chat") else { return };
    let dir = callbot_testkit::temp_dir("chat-example");
    let mut cmd = Command::new(chat);
    cmd.args(["--url", "localhost:11434", "--model", "m"]);
    let (status, _, log) = run_chat(cmd, dir.path(), Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    assert!(log.contains("invalid Ollama URL"), "{log}");
}
