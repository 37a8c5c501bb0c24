//! What a process holds, read from `/proc`: resident memory, threads, open file
//! descriptors. Tests compare these before and after calls and reconfigurations to
//! prove everything returns to baseline. Linux only; a missing `/proc` entry panics
//! (a test must not pass on a reading that was never taken).

/// Resident set size (`VmRSS`) of process `pid` in KiB.
pub fn rss_kib_of(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS line in {path}"))
}

/// Resident set size (`VmRSS`) of this process in KiB.
pub fn rss_kib() -> u64 {
    rss_kib_of(std::process::id())
}

/// Threads of this process (`/proc/self/task`).
pub fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("read /proc/self/task")
        .count()
}

/// Open file descriptors of this process (`/proc/self/fd`).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}

/// What each open file descriptor of this process points at (for failure messages).
pub fn fd_targets() -> String {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .flatten()
        .map(|e| format!("{:?}", std::fs::read_link(e.path()).unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Open sockets of this process (each bound UDP port is one).
pub fn open_sockets() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:")))
        .count()
}

// FFI to glibc, declared here so tests need no unsafe code of their own.
#[allow(unsafe_code)]
unsafe extern "C" {
    /// glibc: returns free heap memory to the system.
    fn malloc_trim(pad: usize) -> i32;
}

/// [`rss_kib`] after glibc gave its free heap pages back. Without this, RSS after a
/// Whisper model was freed stays tens of MB above the baseline (glibc keeps the pages),
/// which would hide a real leak in noise.
#[allow(unsafe_code)]
pub fn trimmed_rss_kib() -> u64 {
    // SAFETY: malloc_trim has no preconditions; it only walks glibc's own arenas under
    // their locks and may be called from any thread at any time.
    let _ = unsafe { malloc_trim(0) };
    rss_kib()
}

#[cfg(test)]
mod tests {
    #[test]
    fn readings_are_plausible() {
        assert!(super::rss_kib() > 100);
        assert!(super::threads() >= 1);
        let before = super::open_fds();
        let f = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(super::open_fds(), before + 1);
        drop(f);
        assert!(super::fd_targets().contains("/dev") || super::open_fds() > 0);
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let n = super::open_sockets();
        drop(sock);
        assert_eq!(super::open_sockets(), n - 1);
        assert!(super::trimmed_rss_kib() > 100);
        let t = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(200)));
        assert!(super::threads() >= 2);
        t.join().unwrap();
    }
}
