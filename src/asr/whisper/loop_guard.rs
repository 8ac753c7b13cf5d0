//! Stopping a Whisper decoding loop as it starts.
//!
//! On short windows tiny.en's greedy decoding sometimes repeats itself
//! until the token cap ("5 5 5 5 ...", "10 of clubs 10 of clubs ..."): a
//! wasted 300-400 ms. [`LoopGuard`] is installed as whisper.cpp's logits
//! filter: before each token it looks at the tokens decoded so far, and once
//! they end in a loop it leaves end-of-text the only choice and notes that
//! the decode looped, so the caller can cut the text or decode again on
//! another window.

use std::ffi::{c_int, c_void};

use whisper_rs::{WhisperSysContext, WhisperSysState, WhisperTokenData};

/// A run of up to this many tokens said three times in a row is a loop.
const SHORT_RUN_MAX_TOKENS: usize = 8;

/// A run longer than [`SHORT_RUN_MAX_TOKENS`] (up to this many) is a loop
/// already when said twice in a row: people do not repeat whole phrases back
/// to back.
const LONG_RUN_MAX_TOKENS: usize = 32;

/// Whether the text tokens `tokens` end in a decoding loop (see the
/// constants above).
pub fn ends_in_loop(tokens: &[i32]) -> bool {
    let repeated = |n: usize, times: usize| {
        let Some(start) = tokens.len().checked_sub(n * times) else {
            return false;
        };
        let tail = &tokens[start..];
        let run = &tail[..n];
        tail.chunks(n).all(|chunk| chunk == run)
    };
    (1..=SHORT_RUN_MAX_TOKENS).any(|n| repeated(n, 3))
        || (SHORT_RUN_MAX_TOKENS + 1..=LONG_RUN_MAX_TOKENS).any(|n| repeated(n, 2))
}

/// The state of one decode's logits filter.
#[derive(Debug)]
pub struct LoopGuard {
    /// The end-of-text token; ids from here on are special.
    eot: i32,
    /// Size of the vocabulary (length of the logits).
    n_vocab: usize,
    /// Text tokens of the current decode (scratch).
    text: Vec<i32>,
    /// The current decode was stopped in a loop.
    pub looped: bool,
}

impl LoopGuard {
    pub fn new(eot: i32, n_vocab: usize) -> LoopGuard {
        LoopGuard {
            eot,
            n_vocab,
            text: Vec::new(),
            looped: false,
        }
    }

    /// Called before each token with the tokens so far; returns whether the
    /// next token must be end-of-text. No tokens yet is a new decode (such as
    /// whisper.cpp's retry at a higher temperature).
    fn must_end(&mut self, tokens: impl Iterator<Item = i32>) -> bool {
        self.text.clear();
        self.text.extend(tokens.filter(|&t| t < self.eot));
        if self.text.is_empty() {
            self.looped = false;
        } else if ends_in_loop(&self.text) {
            self.looped = true;
        }
        self.looped
    }
}

/// whisper.cpp's logits filter: `user_data` points at the decode's
/// [`LoopGuard`].
///
/// # Safety
/// `user_data` must point at a `LoopGuard` that nothing else touches while
/// whisper.cpp runs; `tokens` and `logits` are whisper.cpp's (`n_tokens`
/// tokens, one logit per vocabulary entry).
pub unsafe extern "C" fn stop_loops(
    _ctx: *mut WhisperSysContext,
    _state: *mut WhisperSysState,
    tokens: *const WhisperTokenData,
    n_tokens: c_int,
    logits: *mut f32,
    user_data: *mut c_void,
) {
    if user_data.is_null() || logits.is_null() {
        return;
    }
    // SAFETY: see the function's contract.
    let guard = unsafe { &mut *(user_data as *mut LoopGuard) };
    let tokens = if tokens.is_null() || n_tokens <= 0 {
        &[][..]
    } else {
        // SAFETY: whisper.cpp passes `n_tokens` valid entries.
        unsafe { std::slice::from_raw_parts(tokens, n_tokens as usize) }
    };
    if !guard.must_end(tokens.iter().map(|t| t.id)) {
        return;
    }
    // SAFETY: whisper.cpp's logits hold one float per vocabulary entry.
    let logits = unsafe { std::slice::from_raw_parts_mut(logits, guard.n_vocab) };
    logits.fill(f32::NEG_INFINITY);
    if let Some(eot) = logits.get_mut(guard.eot as usize) {
        *eot = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_said_three_times_is_a_loop_twice_is_not() {
        assert!(!ends_in_loop(&[7, 5, 5]));
        assert!(ends_in_loop(&[7, 5, 5, 5]));
    }

    #[test]
    fn a_short_phrase_loops_on_its_third_time() {
        let phrase = [10, 11, 12, 13];
        let twice: Vec<i32> = phrase.iter().chain(&phrase).copied().collect();
        assert!(!ends_in_loop(&twice));
        let thrice: Vec<i32> = twice.iter().chain(&phrase).copied().collect();
        assert!(ends_in_loop(&thrice));
    }

    #[test]
    fn a_long_phrase_loops_on_its_second_time() {
        let phrase: Vec<i32> = (100..112).collect();
        let mut tokens = vec![1, 2];
        tokens.extend(&phrase);
        assert!(!ends_in_loop(&tokens));
        tokens.extend(&phrase);
        assert!(ends_in_loop(&tokens));
    }

    #[test]
    fn ordinary_speech_is_not_a_loop() {
        assert!(!ends_in_loop(&[]));
        assert!(!ends_in_loop(&[1, 2, 3, 1, 2, 4, 1, 2, 3]));
    }

    #[test]
    fn once_looped_only_end_of_text_is_left() {
        let mut guard = LoopGuard::new(50, 60);
        let data = |id: i32| WhisperTokenData {
            id,
            tid: 0,
            p: 1.0,
            plog: 0.0,
            pt: 0.0,
            ptsum: 0.0,
            t0: 0,
            t1: 0,
            t_dtw: 0,
            vlen: 0.0,
        };
        let mut logits = vec![1.0f32; 60];
        let call = |tokens: &[WhisperTokenData], logits: &mut Vec<f32>, guard: &mut LoopGuard| unsafe {
            stop_loops(
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                tokens.as_ptr(),
                tokens.len() as c_int,
                logits.as_mut_ptr(),
                guard as *mut LoopGuard as *mut c_void,
            )
        };
        // Special tokens (>= 50) between the repeats do not hide the loop.
        let two = [data(3), data(3), data(55)];
        call(&two, &mut logits, &mut guard);
        assert!(!guard.looped);
        assert!(logits.iter().all(|&l| l == 1.0));
        let three = [data(3), data(3), data(55), data(3)];
        call(&three, &mut logits, &mut guard);
        assert!(guard.looped);
        assert_eq!(logits[50], 0.0);
        assert_eq!(
            logits.iter().filter(|l| l.is_finite()).count(),
            1,
            "only end-of-text may follow"
        );
    }
}
