//! "Does this recording contain that reference audio?" (a Rust port of
//! `../shared/peers/wavcompare.py`): both signals are cut to their active part (first
//! to last sample above -40 dBFS), aligned coarsely on 10 ms energy envelopes and then
//! to the sample, and compared by normalised correlation at the best lag.

/// The result of [`compare`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// Normalised correlation at the best alignment (1.0 = identical shape).
    pub correlation: f64,
    /// How far the recording lags the reference, in seconds (active parts).
    pub lag_seconds: f64,
    /// Active duration of the recording minus that of the reference, in seconds.
    pub duration_diff_seconds: f64,
    /// Active duration of the reference, in seconds.
    pub reference_active_seconds: f64,
    /// Active duration of the recording, in seconds.
    pub recorded_active_seconds: f64,
}

const THRESHOLD: i32 = 328; // about -40 dBFS

fn active(x: &[i16]) -> &[i16] {
    let loud = |s: &&i16| i32::from(**s).abs() > THRESHOLD;
    let Some(first) = x.iter().position(|s| loud(&s)) else {
        return &[];
    };
    let last = x.len() - x.iter().rev().position(|s| loud(&s)).unwrap_or(0);
    &x[first..last]
}

fn envelope(x: &[f64], n: usize) -> Vec<f64> {
    x.chunks_exact(n)
        .map(|c| (c.iter().map(|v| v * v).sum::<f64>() / n as f64).sqrt())
        .collect()
}

/// Normalised correlation of a[i] with b[i + lag] over the overlap.
fn ncorr(a: &[f64], b: &[f64], lag: i64) -> f64 {
    let (a2, b2) = if lag >= 0 {
        let l = lag as usize;
        if l >= b.len() {
            return 0.0;
        }
        (a, &b[l..])
    } else {
        let l = (-lag) as usize;
        if l >= a.len() {
            return 0.0;
        }
        (&a[l..], b)
    };
    let n = a2.len().min(b2.len());
    if n < 8 {
        return 0.0;
    }
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (x, y) in a2[..n].iter().zip(&b2[..n]) {
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    let den = (aa * bb).sqrt();
    if den > 0.0 { ab / den } else { 0.0 }
}

/// Compares `recorded` with `reference` (same sample rate `rate`). Returns `None` when
/// either is silent.
pub fn compare(reference: &[i16], recorded: &[i16], rate: u32) -> Option<Comparison> {
    let ra = active(reference);
    let rb = active(recorded);
    if ra.is_empty() || rb.is_empty() {
        return None;
    }
    let fa: Vec<f64> = ra.iter().map(|&v| f64::from(v)).collect();
    let fb: Vec<f64> = rb.iter().map(|&v| f64::from(v)).collect();
    let n = (rate / 100).max(1) as usize;
    let (ea, eb) = (envelope(&fa, n), envelope(&fb, n));
    let span = ea.len().max(eb.len()) as i64;
    let best = (-span / 4..=span / 4)
        .max_by(|&x, &y| ncorr(&ea, &eb, x).total_cmp(&ncorr(&ea, &eb, y)))
        .unwrap_or(0);
    let lag0 = best * n as i64;
    let (corr, lag) = (lag0 - n as i64..=lag0 + n as i64)
        .map(|l| (ncorr(&fa, &fb, l), l))
        .max_by(|x, y| x.0.total_cmp(&y.0))
        .unwrap_or((0.0, 0));
    let rate = f64::from(rate);
    Some(Comparison {
        correlation: corr,
        lag_seconds: lag as f64 / rate,
        duration_diff_seconds: (rb.len() as f64 - ra.len() as f64) / rate,
        reference_active_seconds: ra.len() as f64 / rate,
        recorded_active_seconds: rb.len() as f64 / rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(n: usize, seed: u64) -> Vec<i16> {
        let mut x = seed;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let env = ((i as f64 / 900.0).sin().abs() * 8000.0) as i64;
                (((x % 2001) as i64 - 1000) * env / 1000) as i16
            })
            .collect()
    }

    #[test]
    fn finds_a_delayed_copy_and_rejects_other_audio() {
        let reference = signal(16000, 7);
        let mut rec = vec![0i16; 3000];
        rec.extend(reference.iter().map(|&s| s / 2));
        rec.extend(vec![0i16; 4000]);
        let c = compare(&reference, &rec, 8000).unwrap();
        assert!(c.correlation > 0.999, "{c:?}");
        assert!(c.lag_seconds.abs() < 0.01, "{c:?}"); // active parts line up
        let other = signal(16000, 99);
        let c = compare(&reference, &other, 8000).unwrap();
        assert!(c.correlation < 0.5, "{c:?}");
        assert!(compare(&reference, &[0; 100], 8000).is_none());
    }
}
