//! End-of-turn scoring with the frozen LLM: how likely the user has finished,
//! read from the model's own next-token probabilities right after the words
//! in the chat template: that the user message ends there (`<|im_end|>`) or
//! that the sentence does (a full stop, question or exclamation mark).
//!
//! An instruct model almost never ends a user message on bare words, so
//! `<|im_end|>` alone says little; whether a closing mark comes next is
//! where it tells "I drew the seven of" (0.0001) from "7 of clubs" (0.08).
//! Whether the user goes on after a finished sentence is left to the
//! silence window: the model's guess at that (`<|im_end|>` after the mark)
//! was as low for short whole answers as for fragments.
//!
//! The words are read as the answer to what the user last heard the
//! assistant say, when there is such a thing: "Seven of clubs" is a whole
//! turn after "Which card did you draw?", not out of the blue.
//!
//! The scorer keeps its own KV cache: the system prompt and the assistant's
//! words stay cached, and so do the user's words recognized while they
//! speak ([`EndOfTurnScorer::prepare`]), so a pause costs a prefill of just
//! the words heard since.

use anyhow::{Context, Result};

use crate::asr::strip_closing_full_stop;
use crate::llm::local::{LocalModel, LocalSession, common_prefix};
use crate::llm::{ChatMessage, Role};

/// A pause's score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// The probability (0..=1) that the user's message or sentence is
    /// complete.
    pub score: f32,
    /// Prompt tokens computed for it (the rest were cached).
    pub prefilled: usize,
}

/// Scores pauses of one session.
pub struct EndOfTurnScorer {
    session: LocalSession,
    end_of_turn: u32,
    /// The tokens of ".", "?" and "!" (each a single token).
    sentence_ends: Vec<u32>,
}

impl EndOfTurnScorer {
    pub fn new(model: &LocalModel) -> Result<Self> {
        let mut sentence_ends = Vec::new();
        for mark in [".", "?", "!"] {
            if let [token] = model.tokenize(mark)?.as_slice() {
                sentence_ends.push(*token);
            }
        }
        Ok(EndOfTurnScorer {
            session: model.session(),
            end_of_turn: model.end_of_turn_token(),
            sentence_ends,
        })
    }

    /// The probability (0..=1) that the user's message or sentence is
    /// complete after `user_text`, said in answer to `assistant` (what the
    /// user last heard the assistant say, if anything). Blocks for one
    /// prefill of the words not already cached (see [`Self::prepare`]).
    pub fn score(&mut self, assistant: Option<&str>, user_text: &str) -> Result<Scored> {
        if for_scoring(user_text).is_empty() {
            return Ok(Scored {
                score: 0.0,
                prefilled: 0,
            });
        }
        let tokens = self.prompt(assistant, user_text)?;
        let (logits, prefilled) = self.session.next_token_logits(&tokens)?;
        let p_end: f32 = std::iter::once(self.end_of_turn)
            .chain(self.sentence_ends.iter().copied())
            .map(|token| probability_of(&logits, token as usize))
            .sum();
        Ok(Scored {
            score: p_end.clamp(0.0, 1.0),
            prefilled,
        })
    }

    /// Caches the prompt up to `user_words` (what the user has said so far
    /// of a turn still going on; none yet when the user starts speaking),
    /// so that a later [`Self::score`] of words that start with them
    /// prefills only the rest: at a pause, just the last words heard
    /// instead of the whole utterance and the prompt before it.
    pub fn prepare(&mut self, assistant: Option<&str>, user_words: &str) -> Result<()> {
        let tokens = self.prompt(assistant, user_words)?;
        if common_prefix(self.session.cached_tokens(), &tokens) < tokens.len() {
            self.session.next_token_logits(&tokens)?;
        }
        Ok(())
    }

    /// Computes the last of the cached words again (one token) so that the
    /// model's weights are back in memory when the pause is scored. On the
    /// machine measured, memory left alone for a few hundred ms is slow to
    /// read again: one-token scores in a loop cost 16-20 ms back to back,
    /// 95-107 ms after 300 ms asleep, 216-256 ms after a second.
    pub fn warm(&mut self, assistant: Option<&str>, user_words: &str) -> Result<()> {
        let tokens = self.prompt(assistant, user_words)?;
        self.session.next_token_logits(&tokens)?;
        Ok(())
    }

    /// How many prompt tokens the scorer holds in its cache.
    #[cfg(test)]
    pub(crate) fn cached_tokens(&self) -> usize {
        self.session.cached_tokens().len()
    }

    /// The chat-template tokens up to the end of `user_text` (up to the
    /// start of the user's message when there are no words).
    fn prompt(&self, assistant: Option<&str>, user_text: &str) -> Result<Vec<u32>> {
        let text = for_scoring(user_text);
        let model = self.session.model();
        let mut messages = Vec::new();
        if let Some(said) = assistant.map(str::trim).filter(|s| !s.is_empty()) {
            messages.push(ChatMessage::new(Role::Assistant, said.to_string()));
        }
        messages.push(ChatMessage::new(Role::User, text));
        let mut tokens = model.prompt_tokens(&messages)?;
        // Cut the rendered prompt right after the user's words: before the
        // `<|im_end|>` that closes the user message.
        let close = tokens
            .iter()
            .rposition(|&t| t == self.end_of_turn)
            .context("the chat template has no end-of-turn token")?;
        tokens.truncate(close);
        Ok(tokens)
    }
}

/// The transcript as the scorer reads it: trimmed, starting with a capital
/// letter, and without a closing full stop.
///
/// Whisper writes an utterance's first word in lower case until it has
/// heard enough to know a sentence starts there ("and Mr. John"), and with
/// a capital in the final ("And Mr. John"): one spelling keeps the words
/// cached while the user spoke ([`EndOfTurnScorer::prepare`]) a prefix of
/// the final's.
///
/// Whisper ends whatever audio it is given with a full stop, so at a pause
/// mid-sentence it writes "He was not." as readily as at the end of a
/// sentence, and the model took that for a finished turn; whether a full
/// stop belongs there is the model's to judge. What whisper writes only
/// when it hears it stays: a question mark, an exclamation mark, a trailing
/// comma or ellipsis.
fn for_scoring(text: &str) -> String {
    let text = text.trim();
    let text = strip_closing_full_stop(text).map_or(text, str::trim_end);
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Softmax probability of `index` among `logits`.
fn probability_of(logits: &[f32], index: usize) -> f32 {
    let Some(&target) = logits.get(index) else {
        return 0.0;
    };
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    if sum <= 0.0 || !sum.is_finite() {
        return 0.0;
    }
    (target - max).exp() / sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probability_is_a_softmax_entry() {
        let p = probability_of(&[0.0, 0.0, (2.0f32).ln()], 2);
        assert!((p - 0.5).abs() < 1e-6);
        assert_eq!(probability_of(&[1.0], 3), 0.0);
    }

    #[test]
    fn the_words_are_trimmed_and_lose_only_a_closing_full_stop() {
        assert_eq!(for_scoring(" I want a table for, "), "I want a table for,");
        assert_eq!(for_scoring("Is it open?"), "Is it open?");
        assert_eq!(for_scoring("He was not. "), "He was not");
        assert_eq!(for_scoring("Mr. Dashwood left."), "Mr. Dashwood left");
        assert_eq!(for_scoring("Well..."), "Well...");
        assert_eq!(for_scoring("and Mr. John"), "And Mr. John");
        assert_eq!(for_scoring(" "), "");
    }
}
