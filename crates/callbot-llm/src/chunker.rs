//! Sentence chunker: turns a stream of token deltas into speakable pieces.
//!
//! Speech can start as soon as the first sentence is complete instead of waiting for the
//! whole reply. A piece ends:
//! - after `.` `!` `?` (and runs like `?!`), optionally followed by closing quotes or
//!   brackets, **when whitespace follows**: `3.5`, `example.com` and `e.g.` in the middle
//!   of a word never end a piece;
//! - not after a known abbreviation (`Dr.`, `Mr.`, `e.g.`, `i.e.`, `vs.`, ...), a single
//!   capital initial (`J. Smith`), a list number at the start of a line (`1. `), or an
//!   ellipsis (`...`, `…`), which is a pause, not an end;
//! - after a CJK full stop (`。` `！` `？`), which needs no whitespace;
//! - after a line break (lists, paragraphs);
//! - or, when no such end comes, before [`ChunkerConfig::max_chars`] characters: at the
//!   last whitespace, or hard at the limit in a text without any.
//!
//! Pieces are exact slices of the input: concatenated, they give the input back (spaces
//! included; trim them before speaking). The result does not depend on how the text was
//! split into deltas, because a decision is only taken once the characters it needs
//! have arrived.
//!
//! ```
//! use callbot_llm::{ChunkerConfig, SentenceChunker};
//! let mut c = SentenceChunker::new(ChunkerConfig::default());
//! let mut pieces: Vec<String> = Vec::new();
//! for delta in ["Dr. Smith has 3", ".5 cats. They", " purr... loudly! Bye"] {
//!     pieces.extend(c.push(delta));
//! }
//! pieces.extend(c.finish());
//! assert_eq!(pieces, ["Dr. Smith has 3.5 cats. ", "They purr... loudly! ", "Bye"]);
//! ```

use std::collections::VecDeque;

/// Chunker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkerConfig {
    /// Longest piece in characters (at least 1). A sentence longer than this is split
    /// at its last whitespace before the limit.
    pub max_chars: usize,
}

impl Default for ChunkerConfig {
    /// 160 characters: about 10 seconds of speech.
    fn default() -> Self {
        ChunkerConfig { max_chars: 160 }
    }
}

/// Splits streamed text into speakable pieces. Sans-IO: feed deltas with
/// [`SentenceChunker::push`], end with [`SentenceChunker::finish`].
#[derive(Debug, Clone)]
pub struct SentenceChunker {
    max_chars: usize,
    /// Text not yet handed out; the current piece starts at 0.
    buf: String,
    /// Byte offset of the next character to decide on; `buf[..scan]` holds no end.
    scan: usize,
    /// Characters in `buf[..scan]`.
    chars: usize,
    ready: VecDeque<String>,
}

/// Abbreviations (lower case, without the final dot) that do not end a sentence.
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "mt", "ft", "approx", "dept", "est", "inc",
    "ltd", "co", "corp", "gen", "gov", "sgt", "capt", "lt", "col", "rev", "hon", "jan", "feb", "mar", "apr",
    "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "cf", "fig", "vol", "ch", "sec", "ave", "blvd",
    "rd", "tel", "ext", "ca", "nr",
];

const CLOSERS: &[char] = &['"', '\'', '”', '’', '»', ')', ']', '}', '*'];
const OPENERS: &[char] = &['"', '\'', '“', '‘', '«', '(', '[', '{', '*'];

enum Decision {
    /// The piece ends at this byte offset.
    End(usize),
    /// The character at `scan` is not an end.
    No,
    /// More text is needed to decide.
    NeedMore,
}

impl SentenceChunker {
    /// A new chunker.
    pub fn new(config: ChunkerConfig) -> SentenceChunker {
        SentenceChunker {
            max_chars: config.max_chars.max(1),
            buf: String::new(),
            scan: 0,
            chars: 0,
            ready: VecDeque::new(),
        }
    }

    /// Adds a delta; returns the pieces it completed, in order.
    pub fn push(&mut self, delta: &str) -> std::collections::vec_deque::Drain<'_, String> {
        self.buf.push_str(delta);
        self.run(false);
        self.ready.drain(..)
    }

    /// Ends the text: returns the remaining pieces (none if nothing is pending) and
    /// resets the chunker for the next reply.
    pub fn finish(&mut self) -> std::collections::vec_deque::Drain<'_, String> {
        self.run(true);
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            self.ready.push_back(rest);
        }
        self.scan = 0;
        self.chars = 0;
        self.ready.drain(..)
    }

    /// Forgets pending text (after a cancelled reply).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.ready.clear();
        self.scan = 0;
        self.chars = 0;
    }

    /// Text received but not yet handed out.
    pub fn pending(&self) -> &str {
        &self.buf
    }

    fn emit(&mut self, end: usize) {
        let rest = self.buf.split_off(end);
        let piece = std::mem::replace(&mut self.buf, rest);
        self.ready.push_back(piece);
        self.scan = 0;
        self.chars = 0;
    }

    fn run(&mut self, at_end: bool) {
        loop {
            let Some(c) = self.buf.get(self.scan..).and_then(|r| r.chars().next()) else {
                return;
            };
            if self.chars >= self.max_chars {
                let split = self.length_split();
                let tail_chars = self.buf.get(split..self.scan).map_or(0, |t| t.chars().count());
                let rest = self.buf.split_off(split);
                let piece = std::mem::replace(&mut self.buf, rest);
                self.ready.push_back(piece);
                self.scan -= split;
                self.chars = tail_chars;
                continue;
            }
            match self.decide(c, at_end) {
                Decision::End(end) if self.fits(end) => self.emit(end),
                Decision::End(_) | Decision::No => {
                    self.scan += c.len_utf8();
                    self.chars += 1;
                }
                Decision::NeedMore => return,
            }
        }
    }

    /// True when the piece `buf[..end]` stays within the length limit.
    fn fits(&self, end: usize) -> bool {
        let extra = self.buf.get(self.scan..end).map_or(0, |t| t.chars().count());
        self.chars + extra <= self.max_chars
    }

    /// Where to cut a piece that reached the length limit: after its last whitespace,
    /// or at the limit when it has none.
    fn length_split(&self) -> usize {
        let head = self.buf.get(..self.scan).unwrap_or("");
        head.char_indices()
            .rev()
            .find(|&(_, ch)| ch.is_whitespace())
            .map(|(i, ch)| i + ch.len_utf8())
            .filter(|&end| end > 0 && head.get(..end).is_some_and(|p| !p.trim().is_empty()))
            .unwrap_or(self.scan)
    }

    fn decide(&self, c: char, at_end: bool) -> Decision {
        let i = self.scan;
        let after = i + c.len_utf8();
        match c {
            '\n' => {
                if self.buf.get(..i).is_some_and(|p| !p.trim().is_empty()) {
                    Decision::End(after)
                } else {
                    Decision::No
                }
            }
            '。' | '！' | '？' => match self.skip_closers(after) {
                Some(k) if k < self.buf.len() => Decision::End(k),
                _ if at_end => Decision::End(self.buf.len()),
                _ => Decision::NeedMore,
            },
            '.' | '!' | '?' | '…' => {
                let next = self.buf.get(after..).and_then(|r| r.chars().next());
                match next {
                    None if !at_end => return Decision::NeedMore,
                    // A run of terminators ("?!", "...") is decided at its last character.
                    Some('.' | '!' | '?' | '…') => return Decision::No,
                    _ => {}
                }
                let prev = self.buf.get(..i).and_then(|p| p.chars().next_back());
                if c == '…' || (c == '.' && prev == Some('.')) || (c == '.' && prev == Some('…')) {
                    return Decision::No; // an ellipsis is a pause, not an end
                }
                let k = match self.skip_closers(after) {
                    Some(k) => k,
                    None => return Decision::No,
                };
                match self.buf.get(k..).and_then(|r| r.chars().next()) {
                    None if at_end => Decision::End(self.buf.len()),
                    None => Decision::NeedMore,
                    Some(n) if n.is_whitespace() => {
                        if c == '.' && self.dot_is_not_an_end(i) {
                            Decision::No
                        } else {
                            Decision::End(k + n.len_utf8())
                        }
                    }
                    Some(_) => Decision::No,
                }
            }
            _ => Decision::No,
        }
    }

    /// Offset after any closing quotes or brackets from `from`.
    fn skip_closers(&self, from: usize) -> Option<usize> {
        let rest = self.buf.get(from..)?;
        let skipped: usize = rest
            .chars()
            .take_while(|ch| CLOSERS.contains(ch))
            .map(char::len_utf8)
            .sum();
        Some(from + skipped)
    }

    /// True when the dot at `dot` closes an abbreviation, an initial or a list number.
    fn dot_is_not_an_end(&self, dot: usize) -> bool {
        let head = self.buf.get(..dot).unwrap_or("");
        let word_start = head
            .char_indices()
            .rev()
            .find(|&(_, ch)| ch.is_whitespace())
            .map_or(0, |(i, ch)| i + ch.len_utf8());
        let raw = head.get(word_start..).unwrap_or("");
        let word = raw.trim_start_matches(OPENERS);
        if word.is_empty() {
            return false;
        }
        // "e.g", "i.e", "U.S": a dot inside the word marks an abbreviation.
        if word.contains('.') {
            return true;
        }
        let mut letters = word.chars();
        if let (Some(first), None) = (letters.next(), letters.next())
            && first.is_uppercase()
        {
            return true; // an initial: "J. Smith"
        }
        if word.len() <= 3 && word.bytes().all(|b| b.is_ascii_digit()) {
            // "1. " at the start of a line is a list marker.
            let before = head.get(..word_start).unwrap_or("");
            let line_start = before.rfind('\n').map_or(0, |n| n + 1);
            if before.get(line_start..).is_some_and(|s| s.trim().is_empty()) {
                return true;
            }
        }
        let lower = word.to_lowercase();
        ABBREVIATIONS.contains(&lower.as_str())
    }
}

impl Default for SentenceChunker {
    fn default() -> Self {
        SentenceChunker::new(ChunkerConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunk_with(text: &str, max_chars: usize, deltas: &[usize]) -> Vec<String> {
        let mut c = SentenceChunker::new(ChunkerConfig { max_chars });
        let mut out = Vec::new();
        let mut rest = text;
        for &n in deltas {
            let mut cut = n.min(rest.len());
            while !rest.is_char_boundary(cut) {
                cut += 1;
            }
            let (head, tail) = rest.split_at(cut);
            out.extend(c.push(head));
            rest = tail;
        }
        out.extend(c.push(rest));
        out.extend(c.finish());
        out
    }

    fn chunk(text: &str) -> Vec<String> {
        chunk_with(text, 160, &[])
    }

    #[test]
    fn splits_at_sentence_ends() {
        assert_eq!(
            chunk("Hello there. How are you? Fine!"),
            ["Hello there. ", "How are you? ", "Fine!"]
        );
    }

    #[test]
    fn keeps_numbers_abbreviations_initials_and_ellipses() {
        assert_eq!(
            chunk(
                "It costs 3.5 euros, e.g. at Dr. Who's shop. J. R. R. Tolkien wrote it. Well... maybe. Or… not."
            ),
            [
                "It costs 3.5 euros, e.g. at Dr. Who's shop. ",
                "J. R. R. Tolkien wrote it. ",
                "Well... maybe. ",
                "Or… not."
            ]
        );
        assert_eq!(
            chunk("Visit example.com today. Ok"),
            ["Visit example.com today. ", "Ok"]
        );
        assert_eq!(chunk("I am 25. You are 30."), ["I am 25. ", "You are 30."]);
    }

    #[test]
    fn closing_quotes_and_runs_stay_with_their_sentence() {
        assert_eq!(
            chunk("He said \"stop.\" Then what?! Nothing."),
            ["He said \"stop.\" ", "Then what?! ", "Nothing."]
        );
    }

    #[test]
    fn lines_and_list_numbers() {
        assert_eq!(
            chunk("Steps:\n1. Open it\n2. Close it\n\nDone."),
            ["Steps:\n", "1. Open it\n", "2. Close it\n", "\nDone."]
        );
    }

    #[test]
    fn cjk_full_stop_needs_no_space() {
        assert_eq!(chunk("你好。再见！"), ["你好。", "再见！"]);
    }

    #[test]
    fn undecided_end_waits_for_the_next_delta() {
        let mut c = SentenceChunker::default();
        assert_eq!(c.push("It is 3.").count(), 0);
        assert_eq!(c.push("5 degrees. ").collect::<Vec<_>>(), ["It is 3.5 degrees. "]);
        assert_eq!(c.push("Dr.").count(), 0);
        assert_eq!(c.push(" No").count(), 0);
        assert_eq!(c.finish().collect::<Vec<_>>(), ["Dr. No"]);
        assert_eq!(c.pending(), "");
    }

    #[test]
    fn long_text_is_split_at_whitespace_before_the_limit() {
        let text = "one two three four five six seven eight nine ten";
        let pieces = chunk_with(text, 12, &[]);
        assert!(pieces.iter().all(|p| p.chars().count() <= 12), "{pieces:?}");
        assert_eq!(pieces[0], "one two ");
        assert_eq!(pieces.concat(), text);
        let nospace = "x".repeat(25);
        assert_eq!(
            chunk_with(&nospace, 10, &[]),
            ["x".repeat(10), "x".repeat(10), "x".repeat(5)]
        );
    }

    #[test]
    fn finish_resets() {
        let mut c = SentenceChunker::default();
        let _ = c.push("Half a sen");
        assert_eq!(c.finish().collect::<Vec<_>>(), ["Half a sen"]);
        assert_eq!(c.finish().count(), 0);
        let _ = c.push("Again. x");
        c.reset();
        assert_eq!(c.finish().count(), 0);
    }

    fn fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("Hello".to_string()),
            Just(" ".to_string()),
            Just(". ".to_string()),
            Just(".".to_string()),
            Just("3.5".to_string()),
            Just("Dr. ".to_string()),
            Just("e.g. ".to_string()),
            Just("...".to_string()),
            Just("…".to_string()),
            Just("?!".to_string()),
            Just("\"".to_string()),
            Just("\n".to_string()),
            Just("1. ".to_string()),
            Just("Grüß ".to_string()),
            Just("。".to_string()),
            Just("😀".to_string()),
            "[a-zA-Z0-9 ,.!?éü\n]{0,12}",
            any::<String>(),
        ]
    }

    proptest! {
        #[test]
        fn concatenated_pieces_equal_the_input_whatever_the_deltas(
            parts in prop::collection::vec(fragment(), 0..40),
            deltas in prop::collection::vec(0usize..20, 0..30),
            max_chars in 1usize..80,
        ) {
            let text = parts.concat();
            let streamed = chunk_with(&text, max_chars, &deltas);
            prop_assert_eq!(streamed.concat(), text.clone());
            prop_assert!(streamed.iter().all(|p| !p.is_empty()));
            prop_assert!(streamed.iter().all(|p| p.chars().count() <= max_chars), "{:?}", streamed);
            // Same pieces as when the text arrives in one delta.
            let whole = chunk_with(&text, max_chars, &[]);
            prop_assert_eq!(streamed, whole);
        }
    }
}
