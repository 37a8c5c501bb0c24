//! Helpers shared by the callbot examples: a tiny flag parser and logging set-up.
//!
//! Examples take `--flag VALUE` pairs and positional arguments; [`Args`] parses them
//! without panicking and reports unknown or missing flags as errors.

use std::collections::HashMap;

/// Parsed command line: `--name value` flags, `--name` switches and positionals.
#[derive(Debug, Default)]
pub struct Args {
    flags: HashMap<String, String>,
    switches: Vec<String>,
    /// Positional arguments, in order.
    pub positional: Vec<String>,
}

impl Args {
    /// Parses `std::env::args()`. `switches` are the flags that take no value.
    pub fn parse(switches: &[&str]) -> Result<Args, String> {
        Self::parse_from(std::env::args().skip(1), switches)
    }

    /// Parses the given arguments (program name excluded).
    pub fn parse_from(args: impl IntoIterator<Item = String>, switches: &[&str]) -> Result<Args, String> {
        let mut out = Args::default();
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            if a == "--" {
                out.positional.extend(it.by_ref());
                break;
            }
            if let Some(name) = a.strip_prefix("--") {
                if let Some((n, v)) = name.split_once('=') {
                    out.flags.insert(n.to_string(), v.to_string());
                } else if switches.contains(&name) {
                    out.switches.push(name.to_string());
                } else {
                    let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                    out.flags.insert(name.to_string(), v);
                }
            } else {
                out.positional.push(a);
            }
        }
        Ok(out)
    }

    /// A flag's value, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.flags.get(name).map(String::as_str)
    }

    /// A required flag's value.
    pub fn required(&self, name: &str) -> Result<&str, String> {
        self.get(name).ok_or_else(|| format!("missing --{name}"))
    }

    /// A required flag parsed as `T` (the error names the flag and says why it did not
    /// parse).
    pub fn required_parsed<T>(&self, name: &str) -> Result<T, String>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        self.required(name)?.parse().map_err(|e| format!("--{name}: {e}"))
    }

    /// A flag parsed as `T`, or `default` when absent.
    pub fn parsed_or<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("--{name}: invalid value {v:?}")),
        }
    }

    /// True when the switch was given.
    pub fn switch(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }

    /// Errors on any flag not in `known` (catches typos in scripts).
    pub fn reject_unknown(&self, known: &[&str]) -> Result<(), String> {
        for k in self.flags.keys().chain(self.switches.iter()) {
            if !known.contains(&k.as_str()) {
                return Err(format!("unknown flag --{k}"));
            }
        }
        Ok(())
    }
}

/// Logs to stderr with `RUST_LOG` (default `info`), so stdout stays for the example's
/// own output lines.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// A flag that is set when any of `signals` (e.g. `signal_hook::consts::SIGINT`)
/// arrives, so an example can stop cleanly.
pub fn signal_flag(signals: &[i32]) -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>, String> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for &sig in signals {
        signal_hook::flag::register(sig, flag.clone()).map_err(|e| format!("signal handler: {e}"))?;
    }
    Ok(flag)
}

/// An example's `main`: sets up logging ([`init_logging`]), runs `run`, and on an error
/// prints `NAME: ERROR` to stderr and exits with status 1.
pub fn run_main(name: &str, run: impl FnOnce() -> Result<(), String>) -> std::process::ExitCode {
    init_logging();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Args;

    #[test]
    fn parses_flags_switches_and_positionals() {
        let a = Args::parse_from(
            [
                "--listen",
                "127.0.0.1:5060",
                "--hold=3",
                "--verbose",
                "a.wav",
                "--",
                "--x",
            ]
            .map(String::from),
            &["verbose"],
        )
        .unwrap();
        assert_eq!(a.get("listen"), Some("127.0.0.1:5060"));
        assert_eq!(a.parsed_or("hold", 0u32).unwrap(), 3);
        assert!(a.switch("verbose"));
        assert_eq!(a.positional, vec!["a.wav", "--x"]);
        assert!(a.reject_unknown(&["listen", "hold", "verbose"]).is_ok());
        assert!(a.reject_unknown(&["listen"]).is_err());
        assert!(Args::parse_from(["--listen".to_string()], &[]).is_err());
        assert!(a.parsed_or::<u32>("listen", 0).is_err());
        let listen: std::net::SocketAddr = a.required_parsed("listen").unwrap();
        assert_eq!(listen.port(), 5060);
        assert_eq!(
            a.required_parsed::<u32>("listen"),
            Err("--listen: invalid digit found in string".to_string())
        );
        assert_eq!(
            a.required_parsed::<u32>("port"),
            Err("missing --port".to_string())
        );
    }
}
