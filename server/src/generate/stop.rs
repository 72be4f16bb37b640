//! Incremental detokenisation and stop strings: turns a sequence's generated token ids, one at a
//! time, into the new text each adds, and ends the stream at the first stop string.
//!
//! Decoding each token alone is wrong for two reasons: a byte-level token may carry only part
//! of a UTF-8 character, and some tokenizers render a token differently after another one (a
//! sentencepiece word start loses its space at the start of a decode). So each step decodes a
//! short window, the tokens of the last emission for context plus the unread ones, and emits
//! what the window adds beyond its context (the method of TGI's `decode_token`).
//!
//! Text is held back while it ends in an incomplete character (the decode ends in U+FFFD) or
//! while its tail could be the start of a stop string; a stop string split over several tokens
//! is therefore found, and never streamed before it is recognised.

use super::Decode;

/// What a decode ends with while a character is incomplete.
const REPLACEMENT: char = '\u{FFFD}';

/// The text a token releases, and whether the stream has ended at a stop string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Emit {
    /// New text, possibly empty while text is held back. Never contains a stop string.
    pub text: String,
    /// A stop string was found: the stream is over and the stop string and all after it are
    /// dropped (OpenAI semantics).
    pub stopped: bool,
}

/// One sequence's text stream.
#[derive(Debug, Clone)]
pub struct TextStream {
    stop: Vec<String>,
    /// The decode window: `context` tokens already emitted, then the unread ones.
    window: Vec<u32>,
    context: usize,
    /// Decoded text not yet emitted: a possible start of a stop string.
    held: String,
    stopped: bool,
}

impl TextStream {
    /// A stream that ends at the first of `stop` (empty strings are ignored).
    pub fn new(stop: &[String]) -> Self {
        Self {
            stop: stop.iter().filter(|s| !s.is_empty()).cloned().collect(),
            window: Vec::new(),
            context: 0,
            held: String::new(),
            stopped: false,
        }
    }

    /// Whether a stop string ended the stream.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Adds the next generated token and returns the text it releases. After a stop, nothing.
    pub fn push(&mut self, decode: &dyn Decode, id: u32) -> Emit {
        if self.stopped {
            return self.stopped_emit();
        }
        self.window.push(id);
        if let Some(new) = self.decode_unread(decode, false) {
            self.held.push_str(&new);
        }
        self.release(false)
    }

    /// Ends the stream (end of sequence, length, or cancellation): releases all held-back text
    /// that did not become a stop string, an incomplete last character as U+FFFD.
    pub fn finish(&mut self, decode: &dyn Decode) -> Emit {
        if self.stopped {
            return self.stopped_emit();
        }
        if let Some(new) = self.decode_unread(decode, true) {
            self.held.push_str(&new);
        }
        self.window.clear();
        self.context = 0;
        self.release(true)
    }

    fn stopped_emit(&self) -> Emit {
        Emit {
            text: String::new(),
            stopped: true,
        }
    }

    /// The text the unread tokens add to their context, or `None` while they add nothing
    /// complete yet. On success the unread tokens become the next context.
    fn decode_unread(&mut self, decode: &dyn Decode, at_end: bool) -> Option<String> {
        if self.window.len() == self.context {
            return None;
        }
        let before = decode.decode(&self.window[..self.context]);
        let after = decode.decode(&self.window);
        if !at_end && after.ends_with(REPLACEMENT) {
            return None;
        }
        // A decoder may tidy earlier text once more follows; then cut at the byte offset.
        let new = match after.strip_prefix(before.as_str()) {
            Some(new) => new,
            None => after.get(before.len()..)?,
        };
        if new.is_empty() {
            // A token with no text yet (a special token): keep it in the window.
            return None;
        }
        let new = new.to_owned();
        self.window.drain(..self.context);
        self.context = self.window.len();
        Some(new)
    }

    /// Emits the held text up to the first stop string (then stops), or all but a tail that
    /// could still become one (`at_end`: no tail is kept).
    fn release(&mut self, at_end: bool) -> Emit {
        if let Some(at) = self.first_stop() {
            self.held.truncate(at);
            self.stopped = true;
            self.window.clear();
            return Emit {
                text: std::mem::take(&mut self.held),
                stopped: true,
            };
        }
        let keep = if at_end { 0 } else { self.stop_prefix_len() };
        let rest = self.held.split_off(self.held.len() - keep);
        Emit {
            text: std::mem::replace(&mut self.held, rest),
            stopped: false,
        }
    }

    /// Byte offset in the held text of the earliest stop string. The held text starts no later
    /// than any stop string could (see `stop_prefix_len`), so none is missed.
    fn first_stop(&self) -> Option<usize> {
        self.stop.iter().filter_map(|s| self.held.find(s.as_str())).min()
    }

    /// Length of the longest tail of the held text that is a proper prefix of a stop string.
    fn stop_prefix_len(&self) -> usize {
        let longest = self.stop.iter().map(String::len).max().unwrap_or(0);
        let len = self.held.len();
        let earliest = len.saturating_sub(longest.saturating_sub(1));
        (earliest..len)
            .filter(|&start| self.held.is_char_boundary(start))
            .find(|&start| {
                let tail = &self.held[start..];
                self.stop.iter().any(|s| s.starts_with(tail))
            })
            .map_or(0, |start| len - start)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A byte-level tokenizer: each id is a byte string; a decode is the lossy UTF-8 of their
    /// concatenation (so a split character decodes to U+FFFD at the end).
    struct ByteTokens(Vec<Vec<u8>>);

    impl ByteTokens {
        fn of(pieces: &[&[u8]]) -> Self {
            Self(pieces.iter().map(|p| p.to_vec()).collect())
        }
    }

    impl Decode for ByteTokens {
        fn decode(&self, ids: &[u32]) -> String {
            let bytes: Vec<u8> = ids.iter().flat_map(|&id| self.0[id as usize].clone()).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }

    /// A sentencepiece-like tokenizer: `▁` marks a word start and is a space, except at the
    /// start of a decode.
    struct WordPieces(Vec<&'static str>);

    impl Decode for WordPieces {
        fn decode(&self, ids: &[u32]) -> String {
            let text: String = ids.iter().map(|&id| self.0[id as usize]).collect();
            let text = text.replace('▁', " ");
            text.strip_prefix(' ').map(str::to_owned).unwrap_or(text)
        }
    }

    fn stops(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Pushes ids 0..n in order; returns each emission, then the finish.
    fn run(decode: &dyn Decode, n: u32, stop: &[&str]) -> (Vec<Emit>, Emit) {
        let mut stream = TextStream::new(&stops(stop));
        let emits = (0..n).map(|id| stream.push(decode, id)).collect();
        (emits, stream.finish(decode))
    }

    fn texts(emits: &[Emit]) -> Vec<&str> {
        emits.iter().map(|e| e.text.as_str()).collect()
    }

    fn emit(text: &str, stopped: bool) -> Emit {
        Emit {
            text: text.into(),
            stopped,
        }
    }

    #[test]
    fn plain_text_streams_token_by_token() {
        let decode = ByteTokens::of(&[b"Hel", b"lo", b", ", b"world"]);
        let (emits, end) = run(&decode, 4, &[]);
        assert_eq!(texts(&emits), ["Hel", "lo", ", ", "world"]);
        assert_eq!(end, Emit::default());
    }

    #[test]
    fn a_stop_string_split_across_tokens_ends_the_stream_unemitted() {
        let decode = ByteTokens::of(&[b"Hel", b"lo wo", b"rld!", b"more"]);
        let (emits, end) = run(&decode, 4, &["world"]);
        assert_eq!(texts(&emits), ["Hel", "lo ", "", ""]);
        assert!(emits[2].stopped && emits[3].stopped && end.stopped);
        assert_eq!(end.text, "");
    }

    #[test]
    fn text_before_a_stop_string_in_the_same_token_is_emitted() {
        let decode = ByteTokens::of(&[b"ab<EN", b"D>cd"]);
        let (emits, _) = run(&decode, 2, &["<END>"]);
        assert_eq!(emits, [emit("ab", false), emit("", true)]);
    }

    #[test]
    fn a_held_prefix_that_does_not_become_a_stop_is_released() {
        let decode = ByteTokens::of(&[b"xa", b"c", b"xa"]);
        let (emits, end) = run(&decode, 3, &["ab"]);
        assert_eq!(texts(&emits), ["x", "ac", "x"]);
        assert_eq!(end, emit("a", false), "finish flushes the held tail");
    }

    #[test]
    fn the_earliest_stop_string_wins() {
        let decode = ByteTokens::of(&[b"one two three"]);
        let (emits, _) = run(&decode, 1, &["three", "two", "zzz"]);
        assert_eq!(emits, [emit("one ", true)]);
    }

    #[test]
    fn a_character_split_across_tokens_is_held_until_complete() {
        // "é" is C3 A9; "😀" is F0 9F 98 80.
        let decode = ByteTokens::of(&[b"caf\xC3", b"\xA9 ", b"\xF0\x9F", b"\x98", b"\x80!"]);
        let (emits, end) = run(&decode, 5, &[]);
        assert_eq!(texts(&emits), ["", "café ", "", "", "😀!"]);
        assert_eq!(end, Emit::default());
    }

    #[test]
    fn finish_flushes_an_incomplete_character_as_a_replacement() {
        let decode = ByteTokens::of(&[b"ok", b"\xE2\x82"]);
        let (emits, end) = run(&decode, 2, &[]);
        assert_eq!(texts(&emits), ["ok", ""]);
        assert_eq!(end.text, "\u{FFFD}");
    }

    #[test]
    fn a_stop_string_with_a_multibyte_character_is_found_across_a_split() {
        // The first token's text waits whole for its last character.
        let decode = ByteTokens::of(&[b"la caf\xC3", b"\xA9!"]);
        let (emits, _) = run(&decode, 2, &["café"]);
        assert_eq!(emits, [emit("", false), emit("la ", true)]);
    }

    #[test]
    fn a_tokenizer_that_renders_word_starts_in_context_streams_its_spaces() {
        let decode = WordPieces(vec!["▁Hello", "▁wor", "ld", "▁again"]);
        let (emits, _) = run(&decode, 4, &[]);
        assert_eq!(texts(&emits), ["Hello", " wor", "ld", " again"]);
    }

    #[test]
    fn tokens_with_no_text_wait_in_the_window() {
        let decode = ByteTokens::of(&[b"a", b"", b"b"]);
        let (emits, _) = run(&decode, 3, &[]);
        assert_eq!(texts(&emits), ["a", "", "b"]);
    }

    #[test]
    fn empty_stop_strings_are_ignored() {
        let decode = ByteTokens::of(&[b"abc"]);
        let (emits, _) = run(&decode, 1, &[""]);
        assert_eq!(emits, [emit("abc", false)]);
    }

    /// Bytes that make ASCII, split characters and stray continuation bytes.
    fn piece() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop::sample::select(vec![b'a', b'b', b' ', 0xC3, 0xA9, 0xF0, 0x9F, 0x98, 0x80]),
            0..4,
        )
    }

    proptest! {
        #[test]
        fn the_stream_is_the_whole_decode_cut_at_the_first_stop(
            pieces in prop::collection::vec(piece(), 0..12),
            stop in prop::sample::select(vec!["", "a", "ab", "b a", "é", "aé", "😀b"]),
        ) {
            let decode = ByteTokens(pieces.clone());
            let (emits, end) = run(&decode, pieces.len() as u32, &[stop]);
            let streamed: String = emits.iter().chain([&end]).map(|e| e.text.as_str()).collect();
            let whole = String::from_utf8_lossy(&pieces.concat()).into_owned();
            let cut = if stop.is_empty() { None } else { whole.find(stop) };
            prop_assert_eq!(streamed.as_str(), &whole[..cut.unwrap_or(whole.len())]);
            prop_assert_eq!(end.stopped, cut.is_some());
        }
    }
}
