//! Chat with an Ollama model from the terminal, streaming the replies.
//!
//! ```sh
//! cargo run --release -p callbot-examples --example chat -- \
//!     --url http://127.0.0.1:11434 --model llama3.2:1b [--system "Be brief."]
//! ```
//!
//! Reads one user message per line from stdin, prints each reply as it streams (flushed
//! token by token), keeps the conversation history (trimmed to its budget), and stops at
//! the end of input. Errors (server down, unknown model, timeouts) are printed and the
//! conversation goes on.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use callbot_examples::{Args, run_main};
use callbot_llm::{ChatModel, OllamaChat, OllamaConfig, ReplyEvent};

fn main() -> ExitCode {
    run_main("chat", run)
}

fn run() -> Result<(), String> {
    let args = Args::parse(&[])?;
    args.reject_unknown(&["url", "model", "system"])?;
    let mut config = OllamaConfig::new(args.required("url")?, args.required("model")?);
    config.system_prompt = args.get("system").map(str::to_string);
    let mut chat = OllamaChat::new(config).map_err(|e| e.to_string())?;
    match chat.probe(Duration::from_secs(2)) {
        Ok(probe) if !probe.model_available => eprintln!(
            "warning: the server has no model {:?} (it has: {})",
            chat.config().model,
            probe.models.join(", ")
        ),
        Ok(_) => {}
        Err(e) => eprintln!("warning: {e}"),
    }
    let mut history = chat.new_history();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line.map_err(|e| format!("stdin: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        history.push_user(&line);
        let mut reply = match chat.start_reply(&history) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                continue;
            }
        };
        let mut said = String::new();
        while let Some(event) = reply.recv() {
            match event {
                ReplyEvent::Delta(d) => {
                    said.push_str(&d);
                    let _ = out.write_all(d.as_bytes());
                    let _ = out.flush();
                }
                ReplyEvent::Done(_) => break,
                ReplyEvent::Failed(e) => {
                    eprintln!("\nerror: {e}");
                    break;
                }
            }
        }
        let _ = writeln!(out);
        let _ = out.flush();
        // What was printed is what the "caller" got, even when the reply failed midway.
        history.commit_assistant(&said);
    }
    let report = chat.shutdown(Instant::now() + Duration::from_secs(2));
    tracing::debug!(?report, "chat finished");
    Ok(())
}
