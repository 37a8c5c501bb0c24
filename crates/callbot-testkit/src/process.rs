//! Peer processes owned by a test and stopped by their PID.

use std::io;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A child process that is stopped by PID when dropped (SIGTERM, wait 2 s, SIGTERM
/// again, wait 1 s, SIGKILL, reap). Output goes to the files given at spawn.
pub struct Child {
    name: String,
    child: Option<std::process::Child>,
}

impl Child {
    /// Spawns `cmd` with stdin closed and stdout/stderr appended to `log` (created).
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> io::Result<Child> {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn()?;
        Ok(Child {
            name: name.to_string(),
            child: Some(child),
        })
    }

    /// Spawns `cmd` with piped stdout (for line-by-line reading) and stderr to `log`.
    pub fn spawn_piped(
        name: &str,
        mut cmd: Command,
        log: &Path,
    ) -> io::Result<(Child, std::process::ChildStdout)> {
        let err = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(err);
        let mut child = cmd.spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout pipe"))?;
        Ok((
            Child {
                name: name.to_string(),
                child: Some(child),
            },
            stdout,
        ))
    }

    /// The PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Waits for the process to exit on its own, at most `timeout`. `None` on timeout.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            return Err(io::Error::other("already reaped"));
        };
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait()? {
                self.child = None;
                return Ok(Some(st));
            }
            if Instant::now() >= end {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` to the process (by PID).
    pub fn signal(&self, signal: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) takes plain integers; the PID is our own child, not yet reaped.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(c.id() as libc::pid_t, signal);
            }
        }
    }

    /// Stops the process: SIGTERM, then SIGTERM again, then SIGKILL; always reaps it.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.child.as_ref()?;
        for (sig, wait) in [
            (libc::SIGTERM, Duration::from_secs(2)),
            (libc::SIGTERM, Duration::from_secs(1)),
            (libc::SIGKILL, Duration::from_secs(5)),
        ] {
            self.signal(sig);
            if let Ok(Some(st)) = self.wait_timeout(wait) {
                return Some(st);
            }
        }
        eprintln!(
            "testkit: {} (pid {}) did not exit after SIGKILL",
            self.name,
            self.pid()
        );
        None
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop();
    }
}
