//! `cargo xtask deps`: install the system packages the build and the tests need.

use std::process::Command;

/// Debian packages, each with why it is needed.
pub(crate) const PACKAGES: &[(&str, &str)] = &[
    ("cmake", "builds whisper.cpp (whisper-rs-sys)"),
    ("clang", "bindgen for whisper-rs-sys and espeakng-sys"),
    ("libclang-dev", "bindgen for whisper-rs-sys and espeakng-sys"),
    ("pkg-config", "finds system libraries"),
    ("g++", "compiles whisper.cpp"),
    ("libespeak-ng-dev", "the espeak-ng TTS backend (GPL-3)"),
    ("espeak-ng", "test speech"),
    ("sox", "audio conversion in tests"),
    ("libsox-fmt-all", "sox formats (mu-law, raw)"),
    (
        "libspeechd-dev",
        "the optional `tts` crate (local-speaker feature)",
    ),
    ("sip-tester", "SIPp: load tests and scenarios"),
    ("baresip-core", "a real softphone peer"),
    ("kamailio", "registrar with digest auth, proxy"),
    ("sipsak", "SIP probe"),
    ("valgrind", "leak checks"),
    ("iproute2", "`ss` for port checks"),
    ("procps", "`ps` for RSS and thread checks"),
];

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

pub(crate) fn run() -> Result<(), String> {
    if Command::new("dpkg-query").arg("--version").output().is_err() {
        return Err(
            "this is not a Debian-like system (no dpkg-query); install by hand: ".to_string()
                + &PACKAGES.iter().map(|p| p.0).collect::<Vec<_>>().join(" "),
        );
    }
    let missing: Vec<&str> = PACKAGES.iter().map(|p| p.0).filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        println!("xtask deps: all {} system packages present", PACKAGES.len());
        return Ok(());
    }
    println!("xtask deps: missing: {}", missing.join(" "));
    for (p, why) in PACKAGES.iter().filter(|p| missing.contains(&p.0)) {
        println!("  {p}: {why}");
    }
    if !is_root() {
        return Err(format!(
            "not root: run `sudo apt-get install -y --no-install-recommends {}` and try again",
            missing.join(" ")
        ));
    }
    let env = [("DEBIAN_FRONTEND", "noninteractive")];
    crate::run_cmd("apt-get", &["update", "-qq"], &env)?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(missing.iter().copied());
    crate::run_cmd("apt-get", &args, &env)?;
    let still: Vec<&str> = missing.into_iter().filter(|p| !installed(p)).collect();
    if still.is_empty() {
        println!("xtask deps: done");
        Ok(())
    } else {
        Err(format!("still missing after apt-get: {}", still.join(" ")))
    }
}
