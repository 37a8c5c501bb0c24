//! Per-call cost of `callbot-rtp`: N sessions on loopback, each sending 50 packets/s
//! (a looped 1 s tone, re-queued when it finishes) to its own port and receiving them
//! (source latching, jitter buffer, G.711 decode, 20 ms frames), with an application
//! thread running the callbot-audio VAD/endpointer on every received frame.
//!
//! Prints, per N: CPU per call (process CPU time / wall time / N), the calls one core
//! could carry at that rate, resident memory per call (RSS growth / N), and whether the
//! sessions kept up (frames, loss, late, clock skips, channel overflow).
//!
//! `cargo bench -p callbot-benches --bench rtp` (env: `CALLBOT_RTP_BENCH_CALLS=300`,
//! `CALLBOT_RTP_BENCH_SECONDS=5`; with several N, only the first one's memory figure is
//! meaningful: later runs reuse memory the allocator kept). Linux only (reads `/proc/self`). Not criterion: the
//! figure wanted is a steady-state cost across many threads, not a micro-benchmark.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use callbot_audio::AudioFrame;
use callbot_audio::g711::Law;
use callbot_audio::vad::{Endpointer, VadConfig};
use callbot_rtp::{RtpEvent, RtpSession, RtpSessionConfig, RtpStats};

fn proc_cpu_seconds() -> f64 {
    // utime and stime (fields 14 and 15) in clock ticks of 1/100 s (USER_HZ on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn rss_kb() -> f64 {
    callbot_testkit::resources::rss_kib() as f64
}

fn run(n: usize, seconds: u64) {
    let tone: Vec<i16> = (0..8000)
        .map(|i| ((i as f64 * 0.2).sin() * 6000.0 * ((i / 2000) % 2) as f64) as i16)
        .collect();
    let rss0 = rss_kb();
    let mut calls = Vec::with_capacity(n);
    for _ in 0..n {
        let mut cfg = RtpSessionConfig::new(IpAddr::V4(Ipv4Addr::LOCALHOST), Law::Ulaw, None);
        cfg.ports = 30000..=39999;
        let s = match RtpSession::start(cfg) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("rtp bench: session start failed: {e}");
                return;
            }
        };
        // Send to itself: every session is both ends of one media stream.
        let _ = s.retarget(Some(s.local_addr()), Law::Ulaw, 0, Some(101));
        let _ = s.play(AudioFrame::new(8000, tone.clone()));
        let vad = Endpointer::new(8000, VadConfig::default()).ok();
        calls.push((s, vad));
    }
    let run_for = |calls: &mut Vec<(RtpSession, Option<Endpointer>)>, d: Duration| {
        let end = Instant::now() + d;
        let mut events = Vec::new();
        let mut frames = 0u64;
        while Instant::now() < end {
            for (s, vad) in calls.iter_mut() {
                for f in s.frames().try_iter() {
                    frames += 1;
                    if let Some(v) = vad.as_mut() {
                        v.process_i16(&f.audio.samples, &mut events);
                        events.clear();
                    }
                }
                for ev in s.events().try_iter() {
                    if let RtpEvent::PlaybackFinished(_) = ev {
                        let _ = s.play(AudioFrame::new(8000, tone.clone()));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        frames
    };
    run_for(&mut calls, Duration::from_secs(1)); // warm-up: buffers, latching
    let rss1 = rss_kb();
    let cpu0 = proc_cpu_seconds();
    let t0 = Instant::now();
    let frames = run_for(&mut calls, Duration::from_secs(seconds));
    let wall = t0.elapsed().as_secs_f64();
    let cpu = proc_cpu_seconds() - cpu0;
    let mut total = RtpStats::default();
    for (mut s, _) in calls.drain(..) {
        let r = s.shutdown(Instant::now() + Duration::from_secs(2));
        let st = r.stats;
        total.packets_received += st.packets_received;
        total.packets_sent += st.packets_sent;
        total.packets_lost += st.packets_lost;
        total.late += st.late;
        total.concealed += st.concealed;
        total.clock_skips += st.clock_skips;
        total.overflow_drops += st.overflow_drops;
    }
    let per_call_cpu = cpu / wall / n as f64;
    println!(
        "rtp bench: {n} calls, {wall:.1} s: CPU per call {:.3} % of a core -> {:.0} calls per core; \
         memory per call {:.0} KB (RSS {:.1} MB -> {:.1} MB); frames/s per call {:.1}; \
         totals: sent {} received {} lost {} late {} concealed {} clock skips {} overflow {}",
        per_call_cpu * 100.0,
        if per_call_cpu > 0.0 {
            1.0 / per_call_cpu
        } else {
            f64::INFINITY
        },
        (rss1 - rss0) / n as f64,
        rss0 / 1024.0,
        rss1 / 1024.0,
        frames as f64 / wall / n as f64,
        total.packets_sent,
        total.packets_received,
        total.packets_lost,
        total.late,
        total.concealed,
        total.clock_skips,
        total.overflow_drops,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run a tiny case.
    let is_bench = std::env::args().any(|a| a == "--bench");
    let ns: Vec<usize> = std::env::var("CALLBOT_RTP_BENCH_CALLS")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| if is_bench { vec![300] } else { vec![5] });
    let seconds = std::env::var("CALLBOT_RTP_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if is_bench { 5 } else { 1 });
    for n in ns {
        run(n, seconds);
    }
}
