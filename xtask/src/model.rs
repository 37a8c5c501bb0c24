//! `cargo xtask model [NAME]`: find the Whisper model, or download the official file.
//!
//! Search order: `$CALLBOT_WHISPER_MODEL`, `models/ggml-NAME.bin` in the repository,
//! then the user's cache dir (`$XDG_CACHE_HOME/callbot` or `~/.cache/callbot`). If none
//! has it, the official whisper.cpp file is downloaded into the cache dir with a
//! progress bar, into a `.part` file that is checked (size, sha256) and renamed.

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BASE_URL: &str = "https://huggingface.co/ggerganov/whisper.cpp/resolve/main";

/// sha256 of the official whisper.cpp files we know.
const KNOWN: &[(&str, &str)] = &[
    (
        "tiny.en",
        "921e4cf8686fdd993dcd081a5da5b6c365bfde1162e72b08d75ac75289920b1f",
    ),
    (
        "tiny",
        "be07e048e1e599ad46341c8d2a135645097a538221678b7acdd1b1919c6e1b21",
    ),
    (
        "base",
        "60ed5bc3dd14eea856493d334349b405782ddcaf0028d4b5df4088345fba2efe",
    ),
    (
        "small",
        "1be3a9b2063867b937e64e2ec7483364a79917e157fa98c5d94b5c1fffea987b",
    ),
];

/// Largest file we accept (large-v3 is about 3.1 GB).
const MAX_BYTES: u64 = 4 << 30;

pub(crate) fn run(name: Option<&str>) -> Result<(), String> {
    let name = name.unwrap_or("tiny.en");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(format!(
            "bad model name {name:?} (expected e.g. tiny.en, base, small.en-q5_1)"
        ));
    }
    let path = find_or_download(name)?;
    println!("{}", path.display());
    Ok(())
}

fn cache_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return Some(PathBuf::from(x).join("callbot"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("callbot"))
}

/// The path of `ggml-NAME.bin`, found or downloaded (see the module docs).
pub(crate) fn find_or_download(name: &str) -> Result<PathBuf, String> {
    let file = format!("ggml-{name}.bin");
    if let Some(p) = std::env::var_os("CALLBOT_WHISPER_MODEL").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("CALLBOT_WHISPER_MODEL={} is not a file", p.display()))
        };
    }
    let repo = crate::root().join("models").join(&file);
    if repo.is_file() {
        return Ok(repo);
    }
    let cache = cache_dir().ok_or("no cache dir: set HOME or XDG_CACHE_HOME, or CALLBOT_WHISPER_MODEL")?;
    let cached = cache.join(&file);
    if cached.is_file() {
        return Ok(cached);
    }
    std::fs::create_dir_all(&cache).map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
    download(&format!("{BASE_URL}/{file}"), &cached, name)?;
    Ok(cached)
}

/// Removes the partial file on every path out of [`download`] unless disarmed.
struct PartFile(Option<PathBuf>);
impl Drop for PartFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn download(url: &str, dest: &Path, name: &str) -> Result<(), String> {
    let offline = || {
        format!(
            "cannot download the Whisper model {name} (offline?): set CALLBOT_WHISPER_MODEL=/path/to/ggml-{name}.bin"
        )
    };
    eprintln!("xtask model: downloading {url}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_recv_body(Some(Duration::from_secs(60)))
        .build()
        .into();
    let resp = agent
        .get(url)
        .call()
        .map_err(|e| format!("{} ({e})", offline()))?;
    let total = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if total.is_some_and(|t| t > MAX_BYTES) {
        return Err(format!(
            "{url}: {} bytes is larger than any Whisper model",
            total.unwrap_or(0)
        ));
    }
    let part = dest.with_extension("bin.part");
    let mut guard = PartFile(Some(part.clone()));
    let mut out =
        std::fs::File::create(&part).map_err(|e| format!("cannot create {}: {e}", part.display()))?;
    let mut reader = resp.into_body().into_with_config().limit(MAX_BYTES).reader();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut done: u64 = 0;
    let started = Instant::now();
    let mut last_draw = Instant::now() - Duration::from_secs(1);
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| format!("download interrupted: {e}"))?;
        if n == 0 {
            break;
        }
        let chunk = buf.get(..n).unwrap_or_default();
        hasher.update(chunk);
        out.write_all(chunk)
            .map_err(|e| format!("write {}: {e}", part.display()))?;
        done += n as u64;
        if last_draw.elapsed() >= Duration::from_millis(200) {
            draw_progress(done, total, started.elapsed());
            last_draw = Instant::now();
        }
    }
    draw_progress(done, total, started.elapsed());
    eprintln!();
    out.sync_all()
        .map_err(|e| format!("sync {}: {e}", part.display()))?;
    if let Some(t) = total
        && t != done
    {
        return Err(format!("download truncated: {done} of {t} bytes"));
    }
    let digest = hex::encode(hasher.finalize());
    match KNOWN.iter().find(|k| k.0 == name) {
        Some((_, want)) if *want != digest => {
            return Err(format!(
                "sha256 mismatch for ggml-{name}.bin: got {digest}, expected {want}"
            ));
        }
        Some(_) => eprintln!("xtask model: sha256 ok ({digest})"),
        None => eprintln!("xtask model: sha256 {digest} (no reference checksum known for {name})"),
    }
    std::fs::rename(&part, dest).map_err(|e| format!("rename to {}: {e}", dest.display()))?;
    guard.0 = None;
    Ok(())
}

fn draw_progress(done: u64, total: Option<u64>, elapsed: Duration) {
    let mb = |b: u64| b as f64 / 1_048_576.0;
    let rate = mb(done) / elapsed.as_secs_f64().max(0.001);
    match total {
        Some(t) if t > 0 => {
            let frac = (done as f64 / t as f64).clamp(0.0, 1.0);
            let width = 40;
            let filled = (frac * width as f64) as usize;
            eprint!(
                "\r[{}{}] {:5.1}% {:.1}/{:.1} MiB {:.1} MiB/s",
                "#".repeat(filled),
                "-".repeat(width - filled),
                frac * 100.0,
                mb(done),
                mb(t),
                rate
            );
        }
        _ => eprint!("\r{:.1} MiB {:.1} MiB/s", mb(done), rate),
    }
}
