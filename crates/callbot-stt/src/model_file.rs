//! Checks a whisper.cpp ggml model file before whisper.cpp sees it.
//!
//! whisper.cpp trusts its input: a garbage header makes it allocate whatever the header
//! says (a `std::bad_alloc` aborts the process), and a truncated file is read short without
//! an error. So the whole layout is walked here first: magic, hyper-parameters, mel
//! filters, vocabulary and every tensor header, checking each size against the file length.
//! This reads the headers only (about 170 tensors for tiny), so it costs a few milliseconds.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use crate::error::SttError;

/// `ggml` in the legacy whisper.cpp file format (little-endian u32).
const GGML_MAGIC: u32 = 0x6767_6d6c;
/// Upper bound for any single hyper-parameter (vocabulary, widths, contexts).
const MAX_HPARAM: i32 = 1 << 20;
/// Longest vocabulary entry accepted (real ones are under 130 bytes).
const MAX_TOKEN_BYTES: u32 = 4096;
/// Longest tensor name accepted (real ones are under 60 bytes).
const MAX_TENSOR_NAME: i32 = 1024;
/// Largest tensor dimension accepted.
const MAX_DIM: i64 = 1 << 24;

/// What the header of a valid model file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// Vocabulary size (51864 for English-only models, 51865/51866 for multilingual).
    pub n_vocab: i32,
    /// Encoder context in 20 ms frames (1500 = 30 s).
    pub n_audio_ctx: i32,
    /// Encoder layers (4 = tiny, 6 = base, 12 = small, 24 = medium, 32 = large).
    pub n_audio_layer: i32,
    /// Mel bands (80, or 128 for large-v3).
    pub n_mels: i32,
    /// Weight type code (0 = f32, 1 = f16, others quantised).
    pub ftype: i32,
    /// Number of tensors in the file.
    pub n_tensors: usize,
    /// File size in bytes.
    pub file_len: u64,
}

/// Block size and bytes per block of the ggml tensor types whisper models use.
fn type_layout(ttype: i32) -> Option<(u64, u64)> {
    Some(match ttype {
        0 => (1, 4),      // f32
        1 => (1, 2),      // f16
        2 => (32, 18),    // q4_0
        3 => (32, 20),    // q4_1
        6 => (32, 22),    // q5_0
        7 => (32, 24),    // q5_1
        8 => (32, 34),    // q8_0
        9 => (32, 36),    // q8_1
        10 => (256, 84),  // q2_K
        11 => (256, 110), // q3_K
        12 => (256, 144), // q4_K
        13 => (256, 176), // q5_K
        14 => (256, 210), // q6_K
        15 => (256, 292), // q8_K
        30 => (1, 2),     // bf16
        _ => return None,
    })
}

struct Walker<'p> {
    reader: BufReader<File>,
    pos: u64,
    len: u64,
    path: &'p Path,
}

impl Walker<'_> {
    fn truncated(&self, needed: u64) -> SttError {
        SttError::TruncatedModel {
            path: self.path.to_path_buf(),
            needed,
            actual: self.len,
        }
    }

    fn not_a_model(&self, reason: impl Into<String>) -> SttError {
        SttError::NotAModel {
            path: self.path.to_path_buf(),
            reason: reason.into(),
        }
    }

    fn io(&self, source: std::io::Error) -> SttError {
        SttError::ModelIo {
            path: self.path.to_path_buf(),
            source,
        }
    }

    fn need(&self, n: u64) -> Result<(), SttError> {
        let end = self.pos.saturating_add(n);
        if end > self.len {
            return Err(self.truncated(end));
        }
        Ok(())
    }

    fn read_u32(&mut self) -> Result<u32, SttError> {
        self.need(4)?;
        let mut b = [0u8; 4];
        self.reader.read_exact(&mut b).map_err(|e| self.io(e))?;
        self.pos += 4;
        Ok(u32::from_le_bytes(b))
    }

    fn read_i32(&mut self) -> Result<i32, SttError> {
        Ok(i32::from_le_bytes(self.read_u32()?.to_le_bytes()))
    }

    fn skip(&mut self, n: u64) -> Result<(), SttError> {
        self.need(n)?;
        let delta = i64::try_from(n).map_err(|_| self.truncated(u64::MAX))?;
        self.reader.seek_relative(delta).map_err(|e| self.io(e))?;
        self.pos += n;
        Ok(())
    }

    fn hparam(&mut self, name: &str, min: i32) -> Result<i32, SttError> {
        let v = self.read_i32()?;
        if v < min || v > MAX_HPARAM {
            return Err(self.not_a_model(format!("hyper-parameter {name} = {v} is out of range")));
        }
        Ok(v)
    }
}

/// Walks the whole layout of a whisper.cpp ggml model file and returns what its header says.
///
/// Errors: [`SttError::ModelNotFound`], [`SttError::ModelIo`], [`SttError::NotAModel`]
/// (bad magic, impossible header values, unknown tensor types) and
/// [`SttError::TruncatedModel`] (any structure or tensor running past the end of the file).
pub fn validate_model_file(path: &Path) -> Result<ModelInfo, SttError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SttError::ModelNotFound {
                path: path.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(SttError::ModelIo {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let meta = file.metadata().map_err(|source| SttError::ModelIo {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(SttError::NotAModel {
            path: path.to_path_buf(),
            reason: "not a regular file".into(),
        });
    }
    let mut w = Walker {
        reader: BufReader::with_capacity(64 * 1024, file),
        pos: 0,
        len: meta.len(),
        path,
    };
    if w.len < 4 {
        return Err(w.not_a_model(format!("only {} bytes long", w.len)));
    }
    let magic = w.read_u32()?;
    if magic != GGML_MAGIC {
        return Err(w.not_a_model(format!(
            "bad magic {magic:#010x} (a whisper.cpp ggml model starts with {GGML_MAGIC:#010x})"
        )));
    }

    let n_vocab = w.hparam("n_vocab", 1)?;
    let n_audio_ctx = w.hparam("n_audio_ctx", 1)?;
    let n_audio_state = w.hparam("n_audio_state", 1)?;
    let _n_audio_head = w.hparam("n_audio_head", 1)?;
    let n_audio_layer = w.hparam("n_audio_layer", 1)?;
    let _n_text_ctx = w.hparam("n_text_ctx", 1)?;
    let n_text_state = w.hparam("n_text_state", 1)?;
    let _n_text_head = w.hparam("n_text_head", 1)?;
    let n_text_layer = w.hparam("n_text_layer", 1)?;
    let n_mels = w.hparam("n_mels", 1)?;
    let ftype = w.hparam("ftype", 0)?;
    if n_text_state != n_audio_state {
        return Err(w.not_a_model(format!(
            "n_text_state {n_text_state} differs from n_audio_state {n_audio_state}"
        )));
    }
    // whisper.cpp: ftype % 1000, mapped through ggml_ftype_to_ggml_type.
    if !matches!(ftype % 1000, 0..=4 | 7..=14) {
        return Err(w.not_a_model(format!("unknown weight type (ftype {ftype})")));
    }

    // Mel filters: n_mel, n_fft, then n_mel * n_fft f32.
    let filt_mel = w.hparam("filters.n_mel", 1)?;
    let filt_fft = w.hparam("filters.n_fft", 1)?;
    let filt_bytes = u64::try_from(filt_mel)
        .unwrap_or(0)
        .saturating_mul(u64::try_from(filt_fft).unwrap_or(0))
        .saturating_mul(4);
    w.skip(filt_bytes)?;

    // Vocabulary: count, then (u32 length, bytes) per token.
    let vocab_count = w.hparam("vocab count", 0)?;
    for i in 0..vocab_count {
        let len = w.read_u32()?;
        if len > MAX_TOKEN_BYTES {
            return Err(w.not_a_model(format!("vocabulary entry {i} is {len} bytes long")));
        }
        w.skip(u64::from(len))?;
    }

    // Tensors until the end of the file.
    let mut n_tensors = 0usize;
    while w.pos < w.len {
        let n_dims = w.read_i32()?;
        let name_len = w.read_i32()?;
        let ttype = w.read_i32()?;
        if !(1..=4).contains(&n_dims) {
            return Err(w.not_a_model(format!("tensor {n_tensors} has {n_dims} dimensions")));
        }
        if !(1..=MAX_TENSOR_NAME).contains(&name_len) {
            return Err(w.not_a_model(format!("tensor {n_tensors} name is {name_len} bytes")));
        }
        let Some((block, block_bytes)) = type_layout(ttype) else {
            return Err(w.not_a_model(format!("tensor {n_tensors} has unknown type {ttype}")));
        };
        let mut elements: u64 = 1;
        let mut first_dim: i64 = 1;
        for d in 0..n_dims {
            let ne = i64::from(w.read_i32()?);
            if !(1..=MAX_DIM).contains(&ne) {
                return Err(w.not_a_model(format!("tensor {n_tensors} dimension {d} is {ne}")));
            }
            if d == 0 {
                first_dim = ne;
            }
            elements = elements.saturating_mul(ne.unsigned_abs());
        }
        if !first_dim.unsigned_abs().is_multiple_of(block) {
            return Err(w.not_a_model(format!(
                "tensor {n_tensors} row of {first_dim} is not a multiple of its block {block}"
            )));
        }
        w.skip(name_len.unsigned_abs().into())?;
        let data = (elements / block).saturating_mul(block_bytes);
        w.skip(data)?;
        n_tensors += 1;
    }
    // Encoder: 7 + 15 per layer; decoder: 4 + 24 per layer (whisper.cpp loads exactly these).
    let expected = 11
        + 15 * usize::try_from(n_audio_layer).unwrap_or(0)
        + 24 * usize::try_from(n_text_layer).unwrap_or(0);
    if n_tensors < expected {
        // The file ends at a tensor boundary: it was cut there.
        return Err(SttError::TruncatedModel {
            path: path.to_path_buf(),
            needed: w.len.saturating_add(1),
            actual: w.len,
        });
    }
    if n_tensors > expected {
        return Err(w.not_a_model(format!(
            "{n_tensors} tensors where a whisper model with these layers has {expected}"
        )));
    }
    Ok(ModelInfo {
        n_vocab,
        n_audio_ctx,
        n_audio_layer,
        n_mels,
        ftype,
        n_tensors,
        file_len: w.len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Tensors of a whisper model with one encoder and one decoder layer.
    const SYNTH_TENSORS: usize = 11 + 15 + 24;

    /// A structurally valid model file (1+1 layers): header, filters, vocab, `tensors` tensors.
    fn synthetic_model(tensors: usize) -> Vec<u8> {
        let mut b = Vec::new();
        let put = |v: i32, b: &mut Vec<u8>| b.extend_from_slice(&v.to_le_bytes());
        b.extend_from_slice(&GGML_MAGIC.to_le_bytes());
        for v in [10, 1500, 8, 2, 1, 448, 8, 2, 1, 4, 1] {
            put(v, &mut b);
        }
        put(4, &mut b); // filters n_mel
        put(3, &mut b); // n_fft
        b.extend(std::iter::repeat_n(0u8, 4 * 3 * 4));
        put(2, &mut b); // vocab
        for tok in [&b"a"[..], &b"bc"[..]] {
            b.extend_from_slice(&u32::try_from(tok.len()).unwrap().to_le_bytes());
            b.extend_from_slice(tok);
        }
        for t in 0..tensors {
            put(2, &mut b); // dims
            let name = format!("t{t}");
            put(i32::try_from(name.len()).unwrap(), &mut b);
            put(0, &mut b); // f32
            put(3, &mut b);
            put(2, &mut b);
            b.extend_from_slice(name.as_bytes());
            b.extend(std::iter::repeat_n(0u8, 3 * 2 * 4));
        }
        b
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        let mut f = File::create(&p).unwrap();
        f.write_all(bytes).unwrap();
        p
    }

    #[test]
    fn accepts_a_well_formed_file() {
        let dir = callbot_testkit::temp_dir("stt-model");
        let p = write(dir.path(), "ok.bin", &synthetic_model(SYNTH_TENSORS));
        let info = validate_model_file(&p).unwrap();
        assert_eq!(info.n_tensors, SYNTH_TENSORS);
        assert_eq!(info.n_vocab, 10);
        assert_eq!(info.n_mels, 4);
    }

    #[test]
    fn missing_file_is_model_not_found() {
        let dir = callbot_testkit::temp_dir("stt-model");
        let err = validate_model_file(&dir.path().join("nope.bin")).unwrap_err();
        assert!(matches!(err, SttError::ModelNotFound { .. }), "{err}");
    }

    #[test]
    fn a_directory_or_text_file_is_not_a_model() {
        let dir = callbot_testkit::temp_dir("stt-model");
        let err = validate_model_file(dir.path()).unwrap_err();
        assert!(matches!(err, SttError::NotAModel { .. }), "{err}");
        let p = write(dir.path(), "t.txt", b"hello, this is not a model at all\n");
        let err = validate_model_file(&p).unwrap_err();
        assert!(matches!(err, SttError::NotAModel { .. }), "{err}");
        let p = write(dir.path(), "e.bin", b"");
        let err = validate_model_file(&p).unwrap_err();
        assert!(matches!(err, SttError::NotAModel { .. }), "{err}");
    }

    #[test]
    fn every_truncation_of_a_valid_file_is_rejected() {
        let dir = callbot_testkit::temp_dir("stt-model");
        let full = synthetic_model(SYNTH_TENSORS);
        for cut in 4..full.len() {
            let p = write(dir.path(), "cut.bin", &full[..cut]);
            let err = validate_model_file(&p).unwrap_err();
            assert!(
                matches!(err, SttError::TruncatedModel { .. }),
                "cut at {cut}: {err}"
            );
        }
    }

    #[test]
    fn extra_tensors_are_not_a_model() {
        let dir = callbot_testkit::temp_dir("stt-model");
        let p = write(dir.path(), "x.bin", &synthetic_model(SYNTH_TENSORS + 1));
        let err = validate_model_file(&p).unwrap_err();
        assert!(matches!(err, SttError::NotAModel { .. }), "{err}");
    }

    #[test]
    fn absurd_header_values_are_rejected_not_allocated() {
        let dir = callbot_testkit::temp_dir("stt-model");
        // n_vocab (offset 4), filters n_mel (offset 48), first vocab length (offset 56 + 48 + 4).
        for (offset, value) in [
            (4usize, -1i32),
            (4, i32::MAX),
            (40, 0),
            (44, 77),
            (48, i32::MAX),
            (56 + 48 + 4, i32::MAX),
        ] {
            let mut bytes = synthetic_model(SYNTH_TENSORS);
            bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
            let p = write(dir.path(), "bad.bin", &bytes);
            let err = validate_model_file(&p).unwrap_err();
            assert!(
                matches!(err, SttError::NotAModel { .. } | SttError::TruncatedModel { .. }),
                "offset {offset}: {err}"
            );
        }
    }

    #[test]
    fn the_real_model_passes() {
        let Some(model) = callbot_testkit::whisper_model() else {
            return;
        };
        let info = validate_model_file(&model).unwrap();
        assert_eq!(info.n_audio_layer, 4);
        assert_eq!(info.n_mels, 80);
        assert_eq!(info.n_tensors, 167);
        // Cutting the real file anywhere in its tensors is a truncation.
        let dir = callbot_testkit::temp_dir("stt-model");
        let bytes = std::fs::read(&model).unwrap();
        for cut in [bytes.len() - 1, bytes.len() / 2, 300_000] {
            let p = write(dir.path(), "cut.bin", &bytes[..cut]);
            let err = validate_model_file(&p).unwrap_err();
            assert!(matches!(err, SttError::TruncatedModel { .. }), "{err}");
        }
    }
}
