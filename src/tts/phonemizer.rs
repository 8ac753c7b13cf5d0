//! Text to IPA phonemes with espeak-ng, run as ONE long-lived child process
//! per [`EspeakPhonemizer`] (espeak-ng is GPL: it is only ever a separate
//! program talking over pipes, never linked).
//!
//! # The pipe protocol
//!
//! `espeak-ng -q --ipa -v <voice>` with no text argument reads stdin in *line
//! mode*: it `fgets` one line (at most 999 bytes), synthesizes it as a whole
//! text (end of input included, so nothing is held back for the next line),
//! writes one line of IPA per clause it found (`fprintf("%s\n")`, an empty
//! line for a clause without phonemes: an empty or punctuation-only input
//! line gives exactly one empty line) and flushes stdout. The number of
//! output lines per input line is therefore not known in advance (a line with
//! "Hello, world." gives two), so every request line is followed by a
//! *sentinel* line, `§¶§`, whose IPA (`sˈɛkʃənpˈæɹəɡɹˌæfsˈɛkʃən` for en-us,
//! a single space-less "word" no English sentence produces) is learnt when
//! the process starts; the output of a request is every line up to the
//! sentinel's. Request text is sanitized first so it cannot break the
//! framing: control characters (newlines included) become spaces, the
//! sentinel's characters `§` and `¶` are removed, `[[` (espeak's inline
//! phoneme syntax) is defused, and text is cut into lines of at most
//! [`MAX_LINE_BYTES`] bytes at word boundaries (espeak would otherwise split a
//! longer line mid-word). A dedicated thread drains stdout into a channel, so
//! a large request can never deadlock on full pipes, and every read has a
//! timeout: a hung espeak-ng is killed and the next call starts a fresh one.
//! A process that died (stdin/stdout closed) is restarted transparently and
//! the request retried once. Measured round trip: ~2-5 ms per clause.
//!
//! # Punctuation, the way Piper does it
//!
//! Piper's own phonemizer (piper-phonemize, on libespeak-ng) reads clause by
//! clause and appends the clause's punctuation to the phonemes (`.` `?` `!`
//! for sentence ends, `, ` `: ` `; ` inside sentences), starting a new
//! sentence after `.`/`?`/`!`; sentences are phonemized separately and the
//! phonemes decomposed to NFD. The command line does not report the clause
//! terminators, so [`EspeakPhonemizer::phonemize_sentences`] splits the text
//! into clauses itself with espeak's rules (a run of `. ? ! , : ; …`
//! followed by a space or the end; a `.` followed by a lower-case word is not
//! a break), sends each clause with its punctuation, and appends the marker
//! Piper would. [`EspeakPhonemizer::phonemize`] joins the sentences with a
//! space.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

/// The program [`EspeakPhonemizer::start`] runs.
pub const ESPEAK_PROGRAM: &str = "espeak-ng";

/// The line written after every request; see the module docs.
const SENTINEL: &str = "§¶§";

/// Longest request line sent to espeak-ng (its line buffer holds 999 bytes).
pub const MAX_LINE_BYTES: usize = 900;

/// How long one output line may take before espeak-ng is declared hung.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// stderr lines kept to explain a failure.
const STDERR_TAIL: usize = 20;

/// A clause terminator, as espeak-ng classifies it and Piper marks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Terminator {
    Period,
    Question,
    Exclamation,
    Comma,
    Colon,
    Semicolon,
}

impl Terminator {
    /// What Piper appends after the clause's phonemes.
    fn marker(self) -> &'static str {
        match self {
            Terminator::Period => ".",
            Terminator::Question => "?",
            Terminator::Exclamation => "!",
            Terminator::Comma => ", ",
            Terminator::Colon => ": ",
            Terminator::Semicolon => "; ",
        }
    }

    fn ends_sentence(self) -> bool {
        matches!(
            self,
            Terminator::Period | Terminator::Question | Terminator::Exclamation
        )
    }
}

/// One clause of input: its text (punctuation included) and terminator.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Clause {
    text: String,
    terminator: Option<Terminator>,
}

/// The running espeak-ng process.
struct EspeakChild {
    process: Child,
    stdin: ChildStdin,
    /// Output lines, from the stdout reader thread; disconnected at EOF.
    lines: Receiver<String>,
    stderr: Option<JoinHandle<VecDeque<String>>>,
}

impl EspeakChild {
    /// Kills the process and returns what it wrote to stderr.
    fn kill(mut self) -> String {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let tail = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        tail.into_iter().collect::<Vec<_>>().join(" / ")
    }
}

impl Drop for EspeakChild {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// How reading one response ended badly.
enum Failure {
    /// The process is gone (write error or EOF): restart and retry.
    Died(String),
    /// No output within the timeout (the process was killed).
    TimedOut,
}

/// Text -> IPA through one long-lived `espeak-ng -q --ipa -v <voice>`.
/// Blocking; `Send`, so it can live on a blocking thread. Not `Sync`: one
/// caller at a time (`&mut self`).
pub struct EspeakPhonemizer {
    program: OsString,
    voice: String,
    timeout: Duration,
    child: Option<EspeakChild>,
    /// The sentinel's IPA in this voice.
    sentinel_ipa: String,
    restarts: u64,
}

impl std::fmt::Debug for EspeakPhonemizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EspeakPhonemizer")
            .field("program", &self.program)
            .field("voice", &self.voice)
            .field("pid", &self.pid())
            .field("restarts", &self.restarts)
            .finish_non_exhaustive()
    }
}

impl EspeakPhonemizer {
    /// Starts `espeak-ng` (from `PATH`) for espeak voice `voice` (e.g.
    /// `en-us`, the voice json's `espeak.voice`). Fails with "espeak-ng not
    /// found: apt-get install espeak-ng" when the program is missing, and
    /// with espeak's own message when the voice does not exist.
    pub fn start(voice: &str) -> Result<EspeakPhonemizer> {
        EspeakPhonemizer::start_program(ESPEAK_PROGRAM, voice)
    }

    /// [`start`](Self::start) with an explicit program path.
    pub fn start_program(program: impl AsRef<OsStr>, voice: &str) -> Result<EspeakPhonemizer> {
        check_voice_name(voice)?;
        let mut phonemizer = EspeakPhonemizer {
            program: program.as_ref().to_os_string(),
            voice: voice.to_string(),
            timeout: DEFAULT_TIMEOUT,
            child: None,
            sentinel_ipa: String::new(),
            restarts: 0,
        };
        phonemizer.spawn()?;
        Ok(phonemizer)
    }

    /// The espeak voice.
    pub fn voice(&self) -> &str {
        &self.voice
    }

    /// Process id of the running espeak-ng (`None` after it was killed for a
    /// timeout, until the next call starts a new one).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.process.id())
    }

    /// How many times the process was restarted after dying or hanging.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// How long one output line may take (default [`DEFAULT_TIMEOUT`]).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout.max(Duration::from_millis(1));
    }

    /// IPA of `text`, Piper style: each sentence's clauses with their
    /// punctuation markers, sentences joined with a space. Empty for text
    /// with nothing to say.
    pub fn phonemize(&mut self, text: &str) -> Result<String> {
        Ok(self.phonemize_sentences(text)?.join(" "))
    }

    /// IPA of `text`, one string per sentence (Piper synthesizes sentence by
    /// sentence). Sentences without phonemes are left out.
    pub fn phonemize_sentences(&mut self, text: &str) -> Result<Vec<String>> {
        let clauses = split_clauses(&sanitize(text));
        if clauses.is_empty() {
            return Ok(Vec::new());
        }
        // Each clause becomes one or more request lines.
        let mut requests = Vec::new();
        let mut owners = Vec::new();
        for (i, clause) in clauses.iter().enumerate() {
            for piece in split_long(&clause.text, MAX_LINE_BYTES) {
                requests.push(piece);
                owners.push(i);
            }
        }
        let responses = self.exchange(&requests)?;

        let mut phonemes = vec![String::new(); clauses.len()];
        for (owner, lines) in owners.into_iter().zip(responses) {
            for line in lines.iter().filter(|l| !l.is_empty()) {
                let p = &mut phonemes[owner];
                if !p.is_empty() {
                    p.push(' ');
                }
                p.push_str(line);
            }
        }

        let mut sentences = Vec::new();
        let mut current = String::new();
        fn finish(current: &mut String, sentences: &mut Vec<String>) {
            let s = current.trim_end();
            if !s.is_empty() {
                sentences.push(decompose_ipa(s));
            }
            current.clear();
        }
        for (clause, p) in clauses.iter().zip(&phonemes) {
            if !p.is_empty() {
                if !current.is_empty() && !current.ends_with(' ') {
                    current.push(' ');
                }
                current.push_str(p);
                if let Some(t) = clause.terminator {
                    current.push_str(t.marker());
                }
            }
            if clause.terminator.is_some_and(Terminator::ends_sentence) {
                finish(&mut current, &mut sentences);
            }
        }
        finish(&mut current, &mut sentences);
        Ok(sentences)
    }

    /// espeak-ng's raw output for `text` sent as one request (after
    /// sanitizing; cut into several lines only when over
    /// [`MAX_LINE_BYTES`]): one entry per clause espeak found, trimmed,
    /// without punctuation, exactly as `espeak-ng -q --ipa -v <voice> TEXT`
    /// prints it.
    pub fn espeak_lines(&mut self, text: &str) -> Result<Vec<String>> {
        let clean = sanitize(text);
        let requests = split_long(&clean, MAX_LINE_BYTES);
        Ok(self.exchange(&requests)?.into_iter().flatten().collect())
    }

    /// Sends each request line (sanitized, short) followed by the sentinel
    /// and returns each one's output lines. Restarts a dead process and
    /// retries once.
    fn exchange(&mut self, requests: &[String]) -> Result<Vec<Vec<String>>> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let mut payload = String::new();
        for r in requests {
            payload.push_str(r);
            payload.push('\n');
            payload.push_str(SENTINEL);
            payload.push('\n');
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            if self.child.is_none() {
                self.restarts += 1;
                self.spawn()?;
            }
            match self.try_exchange(&payload, requests.len()) {
                Ok(out) => return Ok(out),
                Err(Failure::Died(why)) => {
                    let stderr = self.child.take().map(EspeakChild::kill).unwrap_or_default();
                    tracing::warn!(%why, %stderr, "espeak-ng died; restarting it");
                    if attempt >= 2 {
                        bail!("espeak-ng keeps dying ({why}) {stderr}");
                    }
                }
                Err(Failure::TimedOut) => {
                    if let Some(child) = self.child.take() {
                        child.kill();
                    }
                    bail!(
                        "espeak-ng gave no output within {:?}; killed it (the next call starts a new one)",
                        self.timeout
                    );
                }
            }
        }
    }

    fn try_exchange(&mut self, payload: &str, count: usize) -> Result<Vec<Vec<String>>, Failure> {
        let timeout = self.timeout;
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| Failure::Died("not running".into()))?;
        child
            .stdin
            .write_all(payload.as_bytes())
            .and_then(|()| child.stdin.flush())
            .map_err(|e| Failure::Died(format!("writing to it: {e}")))?;
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let mut lines = Vec::new();
            loop {
                let line = match child.lines.recv_timeout(timeout) {
                    Ok(line) => line,
                    Err(RecvTimeoutError::Timeout) => return Err(Failure::TimedOut),
                    Err(RecvTimeoutError::Disconnected) => {
                        return Err(Failure::Died("its output ended".into()));
                    }
                };
                if line == self.sentinel_ipa {
                    break;
                }
                lines.push(line);
            }
            out.push(lines);
        }
        Ok(out)
    }

    /// Starts the process and learns the sentinel's IPA.
    fn spawn(&mut self) -> Result<()> {
        let program = self.program.clone();
        let shown = program.to_string_lossy().into_owned();
        let mut process = Command::new(&program)
            .args(["-q", "--ipa", "-v", &self.voice])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                if e.kind() == ErrorKind::NotFound {
                    anyhow!("espeak-ng not found: apt-get install espeak-ng (no program `{shown}`)")
                } else {
                    anyhow!("cannot run {shown}: {e}")
                }
            })?;
        let (Some(stdin), Some(stdout), Some(stderr)) = (
            process.stdin.take(),
            process.stdout.take(),
            process.stderr.take(),
        ) else {
            let _ = process.kill();
            let _ = process.wait();
            bail!("cannot open pipes to {shown}");
        };

        let (tx, lines) = mpsc::channel();
        std::thread::Builder::new()
            .name("espeak-stdout".into())
            .spawn(move || {
                let mut reader = BufReader::new(stdout);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match reader.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let line = String::from_utf8_lossy(&buf).trim().to_string();
                            if tx.send(line).is_err() {
                                break;
                            }
                        }
                    }
                }
            })
            .context("starting the espeak-ng reader thread")?;
        let stderr = std::thread::Builder::new()
            .name("espeak-stderr".into())
            .spawn(move || {
                let mut tail = VecDeque::new();
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    tracing::debug!(target: "espeak_ng", "{line}");
                    if tail.len() == STDERR_TAIL {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
                tail
            })
            .context("starting the espeak-ng stderr thread")?;
        let mut child = EspeakChild {
            process,
            stdin,
            lines,
            stderr: Some(stderr),
        };

        let calibration = calibrate(&mut child, self.timeout);
        match calibration {
            Ok(ipa) => {
                tracing::debug!(pid = child.process.id(), voice = %self.voice, sentinel = %ipa, "espeak-ng started");
                self.sentinel_ipa = ipa;
                self.child = Some(child);
                Ok(())
            }
            Err(why) => {
                let stderr = child.kill();
                bail!(
                    "espeak-ng ({shown} -q --ipa -v {}) failed at start-up: {why}{}{stderr}",
                    self.voice,
                    if stderr.is_empty() { "" } else { ": " }
                )
            }
        }
    }
}

/// Learns the sentinel's IPA: the sentinel sent twice must give the same
/// single, non-empty line twice (a sentinel giving two lines would fail).
fn calibrate(child: &mut EspeakChild, timeout: Duration) -> Result<String, String> {
    child
        .stdin
        .write_all(format!("{SENTINEL}\n{SENTINEL}\n").as_bytes())
        .and_then(|()| child.stdin.flush())
        .map_err(|e| format!("writing to it: {e}"))?;
    let mut got = Vec::new();
    for _ in 0..2 {
        match child.lines.recv_timeout(timeout) {
            Ok(line) => got.push(line),
            Err(RecvTimeoutError::Timeout) => return Err(format!("no output within {timeout:?}")),
            Err(RecvTimeoutError::Disconnected) => return Err("it exited".into()),
        }
    }
    if got[0].is_empty() || got[0] != got[1] {
        return Err(format!("unusable sentinel output {got:?}"));
    }
    Ok(got.swap_remove(0))
}

/// Voice names go on the command line: keep them to espeak's alphabet.
fn check_voice_name(voice: &str) -> Result<()> {
    let ok = !voice.is_empty()
        && !voice.starts_with('-')
        && voice
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_+/.".contains(c));
    if !ok {
        bail!("invalid espeak voice name {voice:?}");
    }
    Ok(())
}

/// Makes text safe for the line protocol: control characters (newlines,
/// tabs, NUL...) and Unicode line/paragraph separators become spaces, runs
/// of whitespace one space, the sentinel's characters are removed, and `[[`
/// (espeak's inline phoneme input) is defused.
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut prev_space = true;
    let mut prev_bracket = false;
    for c in text.chars() {
        let c = if c.is_control() || c.is_whitespace() || c == '\u{2028}' || c == '\u{2029}' {
            ' '
        } else {
            c
        };
        if c == '§' || c == '¶' || c == '\u{feff}' {
            continue;
        }
        if c == ' ' {
            if !prev_space {
                out.push(' ');
            }
            prev_space = true;
            prev_bracket = false;
            continue;
        }
        if c == '[' && prev_bracket {
            // "[[" would switch espeak to phoneme input.
            continue;
        }
        prev_bracket = c == '[';
        prev_space = false;
        out.push(c);
    }
    out.trim_end().to_string()
}

/// Clause punctuation (espeak's terminators that Piper marks).
fn is_clause_punct(c: char) -> bool {
    matches!(c, '.' | '?' | '!' | ',' | ':' | ';' | '…')
}

/// Closing characters that may follow clause punctuation inside the run.
fn is_closer(c: char) -> bool {
    matches!(c, '"' | '\'' | ')' | ']' | '}' | '”' | '’' | '»')
}

/// Splits sanitized text into clauses the way espeak-ng reads them.
fn split_clauses(text: &str) -> Vec<Clause> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut clauses = Vec::new();
    let mut start = 0usize;
    let mut i = 0usize;
    while i < chars.len() {
        let (_, c) = chars[i];
        if !is_clause_punct(c) {
            i += 1;
            continue;
        }
        // The punctuation run and any closing quotes/brackets after it.
        let mut j = i;
        while j < chars.len() && is_clause_punct(chars[j].1) {
            j += 1;
        }
        while j < chars.len() && is_closer(chars[j].1) {
            j += 1;
        }
        let at_end = j == chars.len();
        if !at_end && chars[j].1 != ' ' {
            i = j;
            continue;
        }
        let run: Vec<char> = chars[i..j].iter().map(|&(_, c)| c).collect();
        let terminator = if run.contains(&'?') {
            Terminator::Question
        } else if run.contains(&'!') {
            Terminator::Exclamation
        } else {
            match run[0] {
                ',' => Terminator::Comma,
                ':' => Terminator::Colon,
                ';' => Terminator::Semicolon,
                _ => Terminator::Period,
            }
        };
        // espeak: a period followed by a lower-case word is no sentence end
        // ("Mr. smith", "e.g. this").
        if terminator == Terminator::Period && !at_end {
            let next = chars[j..].iter().map(|&(_, c)| c).find(|c| *c != ' ');
            if next.is_some_and(char::is_lowercase) {
                i = j;
                continue;
            }
        }
        let end = if at_end { text.len() } else { chars[j].0 };
        let clause = text[start..end].trim();
        if !clause.is_empty() {
            clauses.push(Clause {
                text: clause.to_string(),
                terminator: Some(terminator),
            });
        }
        start = end;
        i = j;
    }
    let rest = text[start..].trim();
    if !rest.is_empty() {
        clauses.push(Clause {
            text: rest.to_string(),
            terminator: None,
        });
    }
    clauses
}

/// Cuts `text` into pieces of at most `max` bytes, at spaces where possible
/// (at a character boundary otherwise). Always at least one piece.
fn split_long(text: &str, max: usize) -> Vec<String> {
    let max = max.max(4);
    let mut pieces = Vec::new();
    let mut rest = text.trim();
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let at = match rest[..cut].rfind(' ') {
            Some(space) if space > 0 => space,
            _ => cut,
        };
        pieces.push(rest[..at].trim().to_string());
        rest = rest[at..].trim_start();
    }
    pieces.push(rest.to_string());
    pieces
}

/// Piper decomposes espeak's phonemes to NFD ("ç" -> "c" + U+0327) before
/// looking them up. The precomposed letters espeak's IPA can contain.
fn decompose_ipa(ipa: &str) -> String {
    let mut out = String::with_capacity(ipa.len());
    for c in ipa.chars() {
        let (base, mark) = match c {
            'ç' => ('c', '\u{327}'),
            'à' => ('a', '\u{300}'),
            'á' => ('a', '\u{301}'),
            'â' => ('a', '\u{302}'),
            'ã' => ('a', '\u{303}'),
            'è' => ('e', '\u{300}'),
            'é' => ('e', '\u{301}'),
            'ê' => ('e', '\u{302}'),
            'ẽ' => ('e', '\u{303}'),
            'ì' => ('i', '\u{300}'),
            'í' => ('i', '\u{301}'),
            'ĩ' => ('i', '\u{303}'),
            'ñ' => ('n', '\u{303}'),
            'ò' => ('o', '\u{300}'),
            'ó' => ('o', '\u{301}'),
            'ô' => ('o', '\u{302}'),
            'õ' => ('o', '\u{303}'),
            'ù' => ('u', '\u{300}'),
            'ú' => ('u', '\u{301}'),
            'ũ' => ('u', '\u{303}'),
            'ỹ' => ('y', '\u{303}'),
            _ => {
                out.push(c);
                continue;
            }
        };
        out.push(base);
        out.push(mark);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn clause(text: &str, t: Option<Terminator>) -> Clause {
        Clause {
            text: text.into(),
            terminator: t,
        }
    }

    #[test]
    fn sanitize_removes_what_could_desync_the_protocol() {
        assert_eq!(sanitize("a\nb\r\nc\td\0e"), "a b c d e");
        assert_eq!(sanitize("  x\u{2028}y  "), "x y");
        assert_eq!(sanitize("§¶§ pay§ment"), "payment");
        assert_eq!(sanitize("[[h@loU]]"), "[h@loU]]");
        assert_eq!(sanitize("\n\n"), "");
    }

    #[test]
    fn clauses_follow_espeak_rules() {
        use Terminator::*;
        assert_eq!(
            split_clauses("Hello there, how are you? Fine."),
            [
                clause("Hello there,", Some(Comma)),
                clause("how are you?", Some(Question)),
                clause("Fine.", Some(Period)),
            ]
        );
        // Decimal points, thousands, times and lower-case after a period.
        assert_eq!(
            split_clauses("Pi is 3.14, 1,000 at 12:30 e.g. now"),
            [
                clause("Pi is 3.14,", Some(Comma)),
                clause("1,000 at 12:30 e.g. now", None),
            ]
        );
        assert_eq!(
            split_clauses("Dr. Smith said \"wait...\" Then: go!?"),
            [
                clause("Dr.", Some(Period)),
                clause("Smith said \"wait...\"", Some(Period)),
                clause("Then:", Some(Colon)),
                clause("go!?", Some(Question)),
            ]
        );
        assert_eq!(
            split_clauses("... , ?"),
            [
                clause("...", Some(Period)),
                clause(",", Some(Comma)),
                clause("?", Some(Question)),
            ]
        );
        assert!(split_clauses("").is_empty());
    }

    #[test]
    fn long_text_is_cut_at_spaces_within_the_limit() {
        let text = "word ".repeat(500);
        let pieces = split_long(&text, MAX_LINE_BYTES);
        assert!(pieces.len() >= 3);
        assert!(
            pieces
                .iter()
                .all(|p| p.len() <= MAX_LINE_BYTES && !p.contains("  "))
        );
        assert_eq!(pieces.join(" "), text.trim());
        // No spaces at all: cut at a character boundary.
        let pieces = split_long(&"é".repeat(1000), 901);
        assert!(pieces.iter().all(|p| p.len() <= 901));
        assert_eq!(pieces.concat(), "é".repeat(1000));
    }

    #[test]
    fn nfd_like_piper() {
        assert_eq!(decompose_ipa("çə"), "c\u{327}ə");
    }

    #[test]
    fn voice_names_are_checked() {
        assert!(check_voice_name("en-us").is_ok());
        assert!(check_voice_name("--help").is_err());
        assert!(check_voice_name("en us").is_err());
    }

    // The tests below run the real espeak-ng (Debian package `espeak-ng`).

    /// `espeak-ng -q --ipa -v en-us TEXT`, one process per call: the reference.
    fn one_shot(text: &str) -> Vec<String> {
        let out = Command::new(ESPEAK_PROGRAM)
            .args(["-q", "--ipa", "-v", "en-us", "--", text])
            .output()
            .expect("run espeak-ng");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .collect()
    }

    const VARIED: [&str; 14] = [
        "Hello there, how are you doing today?",
        "I have 42 apples and 3.5 oranges.",
        "Dr. Smith lives at 221B Baker Street in London.",
        "Is it 7:45 already?",
        "NASA and the FBI met on Jan. 3rd, 2024!",
        "Mr. smith and e.g. this",
        "Siobhan, Nguyen and Giuseppe walked to Reykjavik; it was cold: very cold.",
        "The price is $19.99 (plus tax), or about €18.",
        "Wait... what?! Really?",
        "Can you call me at 555-0123 tomorrow",
        "I can't, won't, and shouldn't do it.",
        "The year 1984 was 40 years ago",
        "Don't panic",
        "Read the README.md file, then run cargo test --release.",
    ];

    #[test]
    fn one_process_matches_one_shot_espeak() {
        let mut p = EspeakPhonemizer::start("en-us").expect("espeak-ng installed");
        let pid = p.pid();
        assert!(pid.is_some());
        let mut times = Vec::new();
        for round in 0..3 {
            for text in VARIED {
                let t0 = Instant::now();
                let lines = p.espeak_lines(text).unwrap();
                times.push(t0.elapsed());
                if round == 0 {
                    assert_eq!(lines, one_shot(text), "{text}");
                }
            }
        }
        assert_eq!(p.pid(), pid, "same process for every call");
        assert_eq!(p.restarts(), 0);
        times.sort();
        eprintln!(
            "espeak_lines latency over {} calls: median {:?}, max {:?}",
            times.len(),
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }

    #[test]
    fn phonemize_keeps_espeak_phonemes_and_adds_piper_punctuation() {
        let mut p = EspeakPhonemizer::start("en-us").unwrap();
        let mut times = Vec::new();
        for text in VARIED {
            let t0 = Instant::now();
            let ipa = p.phonemize(text).unwrap();
            times.push(t0.elapsed());
            // Without the markers it is espeak's own output, clause by clause.
            let bare: Vec<String> = ipa
                .split(|c: char| c == ' ' || ".,?!:;".contains(c))
                .filter(|w| !w.is_empty())
                .map(String::from)
                .collect();
            let reference: Vec<String> = one_shot(text)
                .join(" ")
                .split(' ')
                .filter(|w| !w.is_empty())
                .map(decompose_ipa)
                .collect();
            assert_eq!(bare, reference, "{text}: {ipa}");
        }
        times.sort();
        eprintln!(
            "phonemize latency over {} texts: median {:?}, max {:?}",
            times.len(),
            times[times.len() / 2],
            times[times.len() - 1]
        );
        assert_eq!(
            p.phonemize("Hello, world. How are you?").unwrap(),
            "həlˈoʊ, wˈɜːld. hˈaʊ ɑːɹ juː?"
        );
        assert_eq!(
            p.phonemize_sentences("Hello, world. How are you?").unwrap(),
            ["həlˈoʊ, wˈɜːld.", "hˈaʊ ɑːɹ juː?"]
        );
        assert_eq!(
            p.phonemize("Yes: no; maybe").unwrap(),
            "jˈɛs: nˈoʊ; mˈeɪbiː"
        );
    }

    #[test]
    fn tricky_input_does_not_desync_the_next_clause() {
        let mut p = EspeakPhonemizer::start("en-us").unwrap();
        let pid = p.pid();
        let hello = p.phonemize("Hello.").unwrap();
        assert_eq!(hello, "həlˈoʊ.");
        let long = "and the quick brown fox jumps over the lazy dog ".repeat(60);
        let tricky = [
            "",
            "   ",
            "\n",
            "line one\nline two\r\nline three",
            "...",
            "?!,;:",
            "§¶§",
            "§¶§\n§¶§",
            "\0\u{7}\u{1b}[0m",
            "[[h@loU]]",
            long.as_str(),
            "tab\tseparated\u{2028}words",
        ];
        for text in tricky {
            let ipa = p.phonemize(text).unwrap();
            if text.trim_matches(|c: char| !c.is_alphanumeric()).is_empty() {
                assert_eq!(ipa, "", "{text:?}");
            }
            assert_eq!(p.phonemize("Hello.").unwrap(), hello, "after {text:?}");
        }
        let lines = p.phonemize("line one\nline two").unwrap();
        assert_eq!(lines, p.phonemize("line one line two").unwrap());
        let long_ipa = p.phonemize(&long).unwrap();
        assert_eq!(
            long_ipa.matches("fˈɑːks").count(),
            60,
            "no word lost or split"
        );
        assert_eq!(p.pid(), pid);
        assert_eq!(p.restarts(), 0);
    }

    #[test]
    fn a_dead_process_is_restarted() {
        let mut p = EspeakPhonemizer::start("en-us").unwrap();
        let before = p.phonemize("Good morning.").unwrap();
        let pid = p.pid().unwrap();
        let status = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(p.phonemize("Good morning.").unwrap(), before);
        assert_ne!(p.pid(), Some(pid));
        assert_eq!(p.restarts(), 1);
    }

    #[test]
    fn missing_program_and_voice_are_clear_errors() {
        let err = EspeakPhonemizer::start_program("/nonexistent/espeak-ng", "en-us").unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("espeak-ng not found: apt-get install espeak-ng"),
            "{msg}"
        );
        let err = EspeakPhonemizer::start("xx-nope").unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("failed at start-up") && msg.contains("voice"),
            "{msg}"
        );
    }

    #[test]
    fn phonemizer_is_send() {
        fn send<T: Send>() {}
        send::<EspeakPhonemizer>();
    }
}
