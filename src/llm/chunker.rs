//! The clause chunker: cuts streamed LLM text at clause and sentence
//! boundaries, so each chunk can go to speech synthesis the moment it closes
//! (speech starts after the first clause, not after the whole answer).
//!
//! Text arrives in arbitrary pieces (tokens). The chunker works in two
//! streaming stages, each deciding only once it has seen enough of what
//! follows, so the chunks never depend on how the text was split:
//!
//! 1. **Clean-up**: markdown that would be spoken is dropped (`**`, `*`
//!    emphasis, backticks, `#` heading markers, `- ` / `* ` / `+ ` / `• `
//!    bullets, `> ` quotes and `---` rules at line start), and whitespace runs
//!    collapse to one gap: a space, a newline, or a hard break (a blank line,
//!    or the end of a heading or bullet line).
//! 2. **Cutting**, only ever at a gap, so that `chunks.join(" ")` is the
//!    cleaned text with every whitespace run turned into one space:
//!    - sentence ends: `.` `!` `?` `…` (plus closing quotes or brackets) before
//!      whitespace. A `.` or an ellipsis followed by a lowercase word on the
//!      same line is not a sentence end ("wait... what", "approx. three");
//!    - clause ends: `,` `;` `:` before whitespace, a spaced dash (` - `,
//!      ` – `, ` — `, or `—` before whitespace) and newlines, once the chunk
//!      has at least [`ChunkerOptions::min_clause_words`] words;
//!    - hard breaks, always;
//!    - any gap once the chunk has [`ChunkerOptions::max_words`] words.
//!
//!    Never inside numbers ("3.14", "1,000,000"), URLs and e-mail addresses
//!    (their punctuation is not followed by whitespace), after abbreviations
//!    ("Dr.", "Mrs.", "e.g.", "vs.", "U.S.", initials such as "J. R. R."), or
//!    after list markers at line start ("1. first", "2) second").
//!
//! A boundary needs the first character after the whitespace, so a chunk
//! closes when the next word starts arriving; [`ClauseChunker::finish`] closes
//! the last one.

use std::cmp::max;

/// How eagerly to cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkerOptions {
    /// A clause boundary (`,` `;` `:` dash, newline) cuts only when the chunk
    /// so far has at least this many words, so speech is not choppy.
    /// Sentence ends and hard breaks always cut.
    pub min_clause_words: usize,
    /// A run without any boundary is cut at the first gap once the chunk has
    /// this many words.
    pub max_words: usize,
}

impl Default for ChunkerOptions {
    fn default() -> Self {
        ChunkerOptions {
            min_clause_words: 3,
            max_words: 25,
        }
    }
}

/// One collapsed whitespace run of the cleaned text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Gap {
    Space,
    Newline,
    /// A blank line, or the end of a heading / bullet line: always a cut.
    Break,
}

/// Abbreviations after which a `.` never ends a sentence (lowercase, without
/// the final dot).
const NEVER_ENDS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "st", "prof", "mt", "rev", "hon", "gen", "col", "capt", "lt", "sgt",
    "gov", "sen", "e.g", "i.e", "vs", "cf", "viz", "approx", "fig", "figs", "vol",
];

/// Closing quotes and brackets that may follow sentence punctuation.
const CLOSERS: &[char] = &['"', '\'', '”', '’', ')', ']', '}', '»'];
/// Opening quotes and brackets that may precede a word.
const OPENERS: &[char] = &['"', '\'', '“', '‘', '(', '[', '{', '«'];

/// Cuts streamed text into speakable chunks. See the module docs.
#[derive(Debug, Clone)]
pub struct ClauseChunker {
    options: ChunkerOptions,
    // Stage 1 (clean-up).
    /// Raw text not decided yet (waiting for lookahead).
    raw: Vec<char>,
    /// The whitespace run seen since the last kept character.
    gap: Option<Gap>,
    /// `\n` characters in `gap` (two make a blank line).
    gap_lfs: u8,
    /// Any character kept yet (leading whitespace is dropped).
    emitted_any: bool,
    /// Only whitespace or dropped markup since the last newline.
    line_start: bool,
    /// This line began with a heading marker or a bullet.
    line_is_block: bool,
    /// The previous raw character, kept or dropped (`\n` at the start).
    prev_raw: char,
    // Stage 2 (cutting).
    /// The open chunk, words separated by single spaces.
    cur: String,
    /// Byte offset in `cur` of its last word.
    last_word_start: usize,
    /// That word began a line.
    word_at_line_start: bool,
    /// Chunks closed and not yet returned.
    out: Vec<String>,
}

impl Default for ClauseChunker {
    fn default() -> Self {
        ClauseChunker::new(ChunkerOptions::default())
    }
}

impl ClauseChunker {
    pub fn new(options: ChunkerOptions) -> Self {
        ClauseChunker {
            options,
            raw: Vec::new(),
            gap: None,
            gap_lfs: 0,
            emitted_any: false,
            line_start: true,
            line_is_block: false,
            prev_raw: '\n',
            cur: String::new(),
            last_word_start: 0,
            word_at_line_start: true,
            out: Vec::new(),
        }
    }

    pub fn options(&self) -> ChunkerOptions {
        self.options
    }

    /// Feeds one piece of text; returns the chunks it closed (trimmed, never
    /// empty), in order.
    pub fn push(&mut self, piece: &str) -> Vec<String> {
        self.raw.extend(piece.chars());
        self.scan(false);
        std::mem::take(&mut self.out)
    }

    /// Ends the stream: returns the rest as the last chunk (`None` when there
    /// is nothing left to say), and resets the chunker for a new stream.
    pub fn finish(&mut self) -> Option<String> {
        self.scan(true);
        // At the end of the stream every construct waiting for lookahead
        // resolves to dropped markup, so nothing new can close here; keep the
        // text anyway should that ever change.
        let mut rest = std::mem::take(&mut self.out);
        debug_assert!(rest.is_empty(), "finish closed chunks: {rest:?}");
        if !self.cur.is_empty() {
            rest.push(std::mem::take(&mut self.cur));
        }
        *self = ClauseChunker::new(self.options);
        if rest.is_empty() {
            None
        } else {
            Some(rest.join(" "))
        }
    }

    // ---- stage 1: clean-up ----

    fn scan(&mut self, finished: bool) {
        let raw = std::mem::take(&mut self.raw);
        let mut i = 0;
        while i < raw.len() {
            let c = raw[i];
            let next = raw.get(i + 1).copied();
            let need_more = next.is_none() && !finished;
            if c.is_whitespace() {
                self.whitespace(c);
                i += 1;
                continue;
            }
            match c {
                '`' => {
                    self.prev_raw = c;
                    i += 1;
                }
                '*' => {
                    if need_more {
                        break;
                    }
                    let next_ws = next.is_some_and(char::is_whitespace);
                    let prev = self.prev_raw;
                    if self.line_start && (next_ws || next.is_none()) {
                        self.block_marker();
                    } else if (!self.line_start && prev.is_whitespace() && next_ws)
                        || (prev.is_alphanumeric() && next.is_some_and(char::is_alphanumeric))
                    {
                        // "2 * 3", "5*3": arithmetic, not markup.
                        self.keep('*');
                    }
                    // Otherwise emphasis ("**bold**", "*word*"): dropped.
                    self.prev_raw = '*';
                    i += 1;
                }
                '#' | '-' if self.line_start => {
                    let mut j = i;
                    while j < raw.len() && raw[j] == c {
                        j += 1;
                    }
                    if j == raw.len() && !finished {
                        break;
                    }
                    let run = j - i;
                    let spaced = j == raw.len() || raw[j].is_whitespace();
                    let markup = spaced && (c == '#' || run == 1 || run >= 3);
                    if markup {
                        // "# Heading", "- bullet", "---" rule.
                        self.block_marker();
                    } else {
                        // "#1", "-5 degrees", "--".
                        for _ in 0..run {
                            self.keep(c);
                        }
                    }
                    self.prev_raw = c;
                    i = j;
                }
                '+' | '>' if self.line_start => {
                    if need_more {
                        break;
                    }
                    if next.is_none_or(char::is_whitespace) {
                        self.block_marker();
                    } else {
                        self.keep(c);
                    }
                    self.prev_raw = c;
                    i += 1;
                }
                '•' if self.line_start => {
                    self.block_marker();
                    self.prev_raw = c;
                    i += 1;
                }
                _ => {
                    self.keep(c);
                    i += 1;
                }
            }
        }
        self.raw = raw[i..].to_vec();
    }

    fn whitespace(&mut self, c: char) {
        let g = match c {
            '\n' => {
                self.gap_lfs = self.gap_lfs.saturating_add(1);
                if self.gap_lfs >= 2 {
                    Gap::Break
                } else {
                    Gap::Newline
                }
            }
            '\u{2029}' => Gap::Break,
            '\r' | '\u{2028}' | '\u{0B}' | '\u{0C}' | '\u{85}' => Gap::Newline,
            _ => Gap::Space,
        };
        let g = if g == Gap::Newline && self.line_is_block {
            Gap::Break
        } else {
            g
        };
        if g != Gap::Space {
            self.line_start = true;
            self.line_is_block = false;
        }
        self.gap = Some(self.gap.map_or(g, |old| max(old, g)));
        self.prev_raw = c;
    }

    /// A heading marker, bullet, quote or rule was dropped at line start.
    fn block_marker(&mut self) {
        self.line_is_block = true;
        // The line before a bullet ends for good.
        if self.gap == Some(Gap::Newline) {
            self.gap = Some(Gap::Break);
        }
    }

    fn keep(&mut self, c: char) {
        if let Some(g) = self.gap.take()
            && self.emitted_any
        {
            self.on_gap(g, c);
        }
        self.gap_lfs = 0;
        self.cur.push(c);
        self.emitted_any = true;
        self.line_start = false;
        self.prev_raw = c;
    }

    // ---- stage 2: cutting ----

    /// A gap between the open chunk and the word starting with `next`.
    fn on_gap(&mut self, gap: Gap, next: char) {
        let cut = match gap {
            Gap::Break => true,
            Gap::Space => self.cut_here(false, next),
            Gap::Newline => self.cut_here(true, next),
        };
        if cut {
            let chunk = std::mem::take(&mut self.cur);
            self.out.push(chunk);
        } else {
            self.cur.push(' ');
        }
        self.last_word_start = self.cur.len();
        self.word_at_line_start = gap != Gap::Space;
    }

    fn cut_here(&self, newline: bool, next: char) -> bool {
        let word = &self.cur[self.last_word_start..];
        if let Some(cut) = sentence_end(word, self.word_at_line_start, newline, next) {
            return cut;
        }
        let words = count_words(&self.cur);
        if words >= self.options.min_clause_words && (newline || ends_clause(word) || is_dash(word))
        {
            return true;
        }
        words >= self.options.max_words.max(1)
    }
}

/// Whether a `.` `!` `?` `…` ending `word` (the last word of the chunk, at a
/// gap before `next`) ends a sentence; `None` when `word` does not end with
/// one.
fn sentence_end(word: &str, at_line_start: bool, newline: bool, next: char) -> Option<bool> {
    let core = word.trim_end_matches(CLOSERS);
    let stem = core.trim_end_matches(['.', '!', '?', '…']);
    let term = &core[stem.len()..];
    if term.is_empty() {
        return None;
    }
    if term.contains(['!', '?']) {
        return Some(true);
    }
    // A lowercase word after a dot on the same line continues the sentence
    // ("wait... what", "at 10 a.m. on", an abbreviation we do not know).
    let free = newline || !next.is_lowercase();
    if term != "." {
        return Some(free); // an ellipsis
    }
    let stem = stem.trim_start_matches(OPENERS);
    if stem.is_empty() {
        return Some(true);
    }
    if at_line_start && core.len() == word.len() && is_list_marker(stem) {
        return Some(false);
    }
    if is_abbreviation(stem) {
        return Some(false);
    }
    Some(free)
}

/// "1", "12", "a": what precedes the dot of a list marker.
fn is_list_marker(stem: &str) -> bool {
    (stem.len() <= 3 && stem.chars().all(|c| c.is_ascii_digit()))
        || (stem.len() == 1 && stem.chars().all(|c| c.is_ascii_alphabetic()))
}

/// `stem` (a word without its final dot) is an abbreviation after which a
/// sentence never ends.
fn is_abbreviation(stem: &str) -> bool {
    let lower = stem.to_lowercase();
    if NEVER_ENDS.contains(&lower.as_str()) {
        return true;
    }
    let mut chars = stem.chars();
    if let (Some(c), None) = (chars.next(), chars.next()) {
        // An initial ("J. R. R. Tolkien"), but not the pronoun "I".
        return c.is_uppercase() && c != 'I';
    }
    // Dotted capitals: "U.S", "U.K", "Ph.D".
    stem.contains('.')
        && stem.chars().any(char::is_uppercase)
        && stem.split('.').all(|seg| {
            (1..=2).contains(&seg.chars().count()) && seg.chars().all(char::is_alphabetic)
        })
}

/// `,` `;` `:` or a dash glued to the word's end ("word—").
fn ends_clause(word: &str) -> bool {
    word.trim_end_matches(CLOSERS)
        .ends_with([',', ';', ':', '—', '–'])
}

/// A spaced dash standing as its own word.
fn is_dash(word: &str) -> bool {
    matches!(word, "-" | "--" | "–" | "—")
}

fn count_words(text: &str) -> usize {
    text.split(' ')
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks_with(options: ChunkerOptions, pieces: &[&str]) -> Vec<String> {
        let mut c = ClauseChunker::new(options);
        let mut out = Vec::new();
        for p in pieces {
            out.extend(c.push(p));
        }
        out.extend(c.finish());
        out
    }

    /// Chunks of `text` pushed whole.
    fn chunks(text: &str) -> Vec<String> {
        chunks_with(ChunkerOptions::default(), &[text])
    }

    /// Chunks of `text` pushed one character at a time.
    fn chunks_by_char(text: &str) -> Vec<String> {
        let pieces: Vec<String> = text.chars().map(String::from).collect();
        let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
        chunks_with(ChunkerOptions::default(), &refs)
    }

    fn check(text: &str, expected: &[&str]) {
        assert_eq!(chunks(text), expected, "whole: {text:?}");
        assert_eq!(chunks_by_char(text), expected, "by char: {text:?}");
    }

    #[test]
    fn sentences() {
        check(
            "Hello there. How are you? I am fine! Good.",
            &["Hello there.", "How are you?", "I am fine!", "Good."],
        );
        check(
            "He said \"stop.\" Then he left.",
            &["He said \"stop.\"", "Then he left."],
        );
        check(
            "Really?! Yes (I think.) Fine…",
            &["Really?!", "Yes (I think.)", "Fine…"],
        );
        check("So did I. Then we left.", &["So did I.", "Then we left."]);
    }

    #[test]
    fn a_sentence_end_is_held_until_the_next_character() {
        let mut c = ClauseChunker::default();
        assert!(c.push("Hello there").is_empty());
        assert!(c.push(".").is_empty(), "'.' alone could be 'there.com'");
        assert!(
            c.push(" ").is_empty(),
            "'. ' could precede a lowercase word"
        );
        assert_eq!(c.push("How"), vec!["Hello there."]);
        assert!(c.push(" are you?").is_empty());
        assert_eq!(c.finish().as_deref(), Some("How are you?"));
        assert_eq!(c.finish(), None);
        // finish() reset it.
        assert_eq!(c.push("Again. A"), vec!["Again."]);
    }

    #[test]
    fn clauses_need_min_words() {
        check(
            "Well, I think that we should go, but only if it is dry; otherwise: we stay.",
            &[
                "Well, I think that we should go,",
                "but only if it is dry;",
                "otherwise: we stay.",
            ],
        );
        check(
            "It was late - the shops had closed — and we went home.",
            &[
                "It was late -",
                "the shops had closed —",
                "and we went home.",
            ],
        );
        check(
            "We waited for hours— then it came.",
            &["We waited for hours—", "then it came."],
        );
        // Short clauses stay together.
        check("Yes, sir, right away.", &["Yes, sir, right away."]);
        let opts = ChunkerOptions {
            min_clause_words: 1,
            ..Default::default()
        };
        assert_eq!(
            chunks_with(opts, &["Yes, sir, right away."]),
            ["Yes,", "sir,", "right away."]
        );
    }

    #[test]
    fn newlines() {
        check(
            "The first line is here\nand the second one\nis\nshort",
            &["The first line is here", "and the second one", "is short"],
        );
        check("Hi\nthere\n\nNew paragraph", &["Hi there", "New paragraph"]);
        check("Line one.\r\nLine two.", &["Line one.", "Line two."]);
        // A sentence end before a newline, even before a lowercase word.
        check("Done.\nthen more", &["Done.", "then more"]);
    }

    #[test]
    fn long_runs_are_cut_at_max_words() {
        let text = (1..=60)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let got = chunks(&text);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got.iter().all(|c| c.split(' ').count() <= 25), "{got:?}");
        assert_eq!(got.join(" "), text);
        let opts = ChunkerOptions {
            max_words: 4,
            ..Default::default()
        };
        assert_eq!(
            chunks_with(opts, &["one two three four five six seven eight nine"]),
            ["one two three four", "five six seven eight", "nine"]
        );
    }

    #[test]
    fn numbers_are_never_cut() {
        check(
            "Pi is about 3.14 and a million is 1,000,000 or 2.5 times 400,000 at 10:30 today.",
            &["Pi is about 3.14 and a million is 1,000,000 or 2.5 times 400,000 at 10:30 today."],
        );
        check(
            "It costs $3. That is 2.5% more, roughly 1,000 coins.",
            &["It costs $3.", "That is 2.5% more,", "roughly 1,000 coins."],
        );
        check(
            "We use version 2.0. It works.",
            &["We use version 2.0.", "It works."],
        );
    }

    #[test]
    fn abbreviations_are_never_cut() {
        check(
            "Dr. Smith met Mr. and Mrs. Jones and Ms. Lee on St. Mark's Square.",
            &["Dr. Smith met Mr. and Mrs. Jones and Ms. Lee on St. Mark's Square."],
        );
        check(
            "Bring fruit, e.g. apples, i.e. red ones. Cats vs. dogs is old.",
            &[
                "Bring fruit, e.g. apples,",
                "i.e. red ones.",
                "Cats vs. dogs is old.",
            ],
        );
        check(
            "We met at 10 a.m. on Monday and left at 5 p.m. The U.S. Army came too.",
            &[
                "We met at 10 a.m. on Monday and left at 5 p.m.",
                "The U.S. Army came too.",
            ],
        );
        check(
            "J. R. R. Tolkien wrote it. Apples, pears, etc. are fruit, etc. Then stop.",
            &[
                "J. R. R. Tolkien wrote it.",
                "Apples, pears, etc. are fruit,",
                "etc.",
                "Then stop.",
            ],
        );
        check(
            "She has a Ph.D. in (Dr. Who) studies.",
            &["She has a Ph.D. in (Dr. Who) studies."],
        );
    }

    #[test]
    fn urls_and_emails_are_never_cut() {
        check(
            "See https://example.com/a.b?c=1 and www.rust-lang.org, or mail ada@example.org today.",
            &[
                "See https://example.com/a.b?c=1 and www.rust-lang.org,",
                "or mail ada@example.org today.",
            ],
        );
        check(
            "Visit www.rust-lang.org. Then mail ada@example.org. Thanks!",
            &[
                "Visit www.rust-lang.org.",
                "Then mail ada@example.org.",
                "Thanks!",
            ],
        );
    }

    #[test]
    fn ellipses() {
        check(
            "Wait... what? Well… maybe.",
            &["Wait... what?", "Well… maybe."],
        );
        check("Hmm... Let me think.", &["Hmm...", "Let me think."]);
        check("And then…", &["And then…"]);
    }

    #[test]
    fn list_markers_are_not_sentence_ends() {
        check(
            "Steps to take:\n1. first open it\n2. then close it\n3) done\na. also b",
            &[
                "Steps to take:",
                "1. first open it",
                "2. then close it",
                "3) done a. also b",
            ],
        );
        // Not at line start: a sentence end.
        check(
            "We are at step 2. Next comes more.",
            &["We are at step 2.", "Next comes more."],
        );
    }

    #[test]
    fn markdown_is_stripped() {
        check(
            "# Title\n\n**Bold** text with `code` here.\n- first item\n* second item\n+ third\n\n## Part *two*\n> quoted line\n---\n1. numbered one\n2) numbered two",
            &[
                "Title",
                "Bold text with code here.",
                "first item",
                "second item",
                "third",
                "Part two",
                "quoted line",
                "1. numbered one",
                "2) numbered two",
            ],
        );
        check(
            "*Note* that 5*3 is **15**, not x**2.",
            &["Note that 5*3 is 15,", "not x2."],
        );
        check(
            "C# and #1 stay, 2 * 3 is 6, -5 degrees, a-b and -- dashes.",
            &[
                "C# and #1 stay,",
                "2 * 3 is 6,",
                "-5 degrees, a-b and --",
                "dashes.",
            ],
        );
        // A dropped fence line leaves a blank line.
        check(
            "```rust\nlet x = 1;\n```\nDone.",
            &["rust let x = 1;", "Done."],
        );
        check("**", &[]);
        check("  \n ", &[]);
        check("", &[]);
        check("- ", &[]);
    }

    // ---- property: the split never changes the chunks ----

    /// xorshift64*: deterministic randomness without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// `text` cut at random character positions into pieces of 0 to 8
    /// characters (empty pieces included).
    fn random_split(text: &str, rng: &mut Rng) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        let mut pieces = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let n = rng.below(9).min(chars.len() - i);
            pieces.push(chars[i..i + n].iter().collect());
            i += n;
        }
        pieces
    }

    fn assert_split_invariant(text: &str, normalized: &str, rng: &mut Rng) {
        let whole = chunks(text);
        assert!(
            whole.iter().all(|c| !c.is_empty() && c.trim() == c),
            "{whole:?}"
        );
        assert_eq!(whole.join(" "), normalized, "text: {text:?}");
        assert_eq!(chunks_by_char(text), whole, "by char: {text:?}");
        for _ in 0..200 {
            let pieces = random_split(text, rng);
            let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
            let got = chunks_with(ChunkerOptions::default(), &refs);
            assert_eq!(got, whole, "pieces: {pieces:?}");
        }
    }

    const TRICKY: &str = "Dr. Smith met Mr. and Mrs. Jones at 10 a.m. on St. Patrick's day.  Pi is \
        about 3.14, and a million is 1,000,000; the U.S. team won 2.5 points, e.g. in the final, \
        i.e. the last game, etc. Then J. R. R. Tolkien wrote... wait... what? Visit \
        https://example.com/a.b?c=1 or www.rust-lang.org, or mail ada@example.org. It costs $3. \
        Really! The\tlong part goes on and on without any punctuation at all because the model \
        felt like rambling for a while longer than the chunker allows in one piece\nSteps:\n1. first \
        step here\n2) second — step… done";

    #[test]
    fn random_splits_of_tricky_text_give_the_same_chunks() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let normalized = TRICKY.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_split_invariant(TRICKY, &normalized, &mut rng);
        // Spot-check where it cut.
        let got = chunks(TRICKY);
        assert_eq!(
            got[0],
            "Dr. Smith met Mr. and Mrs. Jones at 10 a.m. on St. Patrick's day."
        );
        assert!(got.contains(&"Pi is about 3.14,".to_string()), "{got:?}");
        assert!(
            got.contains(&"and a million is 1,000,000;".to_string()),
            "{got:?}"
        );
        assert!(
            got.contains(&"Then J. R. R. Tolkien wrote... wait... what?".to_string()),
            "{got:?}"
        );
        assert!(got.contains(&"It costs $3.".to_string()), "{got:?}");
    }

    #[test]
    fn random_splits_of_markdown_give_the_same_chunks() {
        let mut rng = Rng(42);
        let text = "## The plan\n\nHere is **what** we do, step by step:\n\n- Buy `milk` at the \
            *corner* shop.\n- Call Dr. Jones at 9 a.m.\n* Pay 1,000.50 dollars\n\n> Note: it's 3.5% \
            more.\n---\nThat's all... really.";
        let normalized = "The plan Here is what we do, step by step: Buy milk at the corner shop. \
            Call Dr. Jones at 9 a.m. Pay 1,000.50 dollars Note: it's 3.5% more. That's all... really.";
        assert_split_invariant(text, normalized, &mut rng);
        assert_eq!(
            chunks(text),
            [
                "The plan",
                "Here is what we do,",
                "step by step:",
                "Buy milk at the corner shop.",
                "Call Dr. Jones at 9 a.m.",
                "Pay 1,000.50 dollars",
                "Note: it's 3.5% more.",
                "That's all... really.",
            ]
        );
    }

    #[test]
    fn random_texts_random_splits() {
        let words = [
            "Dr.",
            "Smith",
            "said",
            "3.14",
            "1,000,000",
            "e.g.",
            "U.S.",
            "J.",
            "R.",
            "wait...",
            "what?",
            "yes!",
            "no.",
            "Hi.",
            "the",
            "cat,",
            "sat;",
            "on:",
            "it",
            "www.rust-lang.org",
            "ada@example.org.",
            "https://example.com/a.b?c=1",
            "2.5",
            "etc.",
            "vs.",
            "a.m.",
            "…",
            "Well…",
            "\"quoted.\"",
            "(aside.)",
            "I.",
            "1.",
            "2)",
            "—",
            "word—",
            "Ok",
        ];
        let gaps = [" ", " ", " ", " ", "  ", "\n", "\t", " \n ", "\n\n"];
        let mut rng = Rng(7);
        for _ in 0..100 {
            let n = 5 + rng.below(60);
            let mut text = String::new();
            for k in 0..n {
                if k > 0 {
                    text.push_str(gaps[rng.below(gaps.len())]);
                }
                text.push_str(words[rng.below(words.len())]);
            }
            let normalized = text.split_whitespace().collect::<Vec<_>>().join(" ");
            assert_split_invariant(&text, &normalized, &mut rng);
        }
    }
}
