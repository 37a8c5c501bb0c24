//! Finding peer programs (sipp, baresip, kamailio, sipsak, espeak-ng, sox, valgrind).

use std::path::PathBuf;

/// True when tests must not skip for a missing tool (`CALLBOT_REQUIRE_PEERS=1`, set by
/// `cargo xtask ci`).
pub fn peers_required() -> bool {
    std::env::var("CALLBOT_REQUIRE_PEERS").is_ok_and(|v| v == "1")
}

/// Reports a missing prerequisite: panics when peers are required, else prints a skip line.
pub fn missing(what: &str) {
    if peers_required() {
        panic!("required test prerequisite missing: {what} (run `cargo xtask deps`)");
    }
    eprintln!("SKIP: {what} not available (run `cargo xtask deps`)");
}

/// Looks a program up on `PATH` (and `/usr/sbin`, where Debian puts kamailio).
pub fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = [PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")];
    std::env::split_paths(&path)
        .chain(extra)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Looks a program up; reports it as missing (see [`missing`]) when absent.
pub fn require(program: &str) -> Option<PathBuf> {
    let found = find(program);
    if found.is_none() {
        missing(program);
    }
    found
}
