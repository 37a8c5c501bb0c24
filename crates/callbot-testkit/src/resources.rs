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
        let t = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(200)));
        assert!(super::threads() >= 2);
        t.join().unwrap();
    }
}
