//! What the user has actually heard of the response being played.
//!
//! The output stage registers each clause as its audio starts and reports
//! the playback position; on an interruption the orchestrator asks which
//! words were heard and keeps only those in the conversation. Within a clause
//! the words are placed on its audio by their share of its characters (a
//! good proxy for speaking time), and only fully played words count.

use std::sync::Mutex;

use crate::graph::ResponseId;

#[derive(Debug, Clone)]
struct ClauseAudio {
    text: String,
    start_ms: u64,
    duration_ms: u64,
}

#[derive(Debug, Default)]
struct State {
    response_id: ResponseId,
    clauses: Vec<ClauseAudio>,
    played_ms: u64,
}

/// Responses remembered, so a client may truncate one after the next began.
const KEPT: usize = 8;

#[derive(Debug, Default)]
struct All {
    /// The most recent responses, oldest first.
    responses: std::collections::VecDeque<State>,
    /// The highest response id that has finished playing (or was stopped).
    finished_upto: ResponseId,
}

/// Shared by a session's output stage (writer) and orchestrator (reader).
#[derive(Debug, Default)]
pub struct Heard {
    state: Mutex<All>,
}

impl Heard {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut All) -> R) -> R {
        let mut guard = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// A clause of `response_id` starts playing at `start_ms` of the
    /// response's audio and lasts `duration_ms`.
    pub fn clause(&self, response_id: ResponseId, text: &str, start_ms: u64, duration_ms: u64) {
        self.with(|all| {
            if !all.responses.iter().any(|s| s.response_id == response_id) {
                if all.responses.len() == KEPT {
                    all.responses.pop_front();
                }
                all.responses.push_back(State {
                    response_id,
                    ..State::default()
                });
            }
            if let Some(s) = all
                .responses
                .iter_mut()
                .find(|s| s.response_id == response_id)
            {
                s.clauses.push(ClauseAudio {
                    text: text.to_string(),
                    start_ms,
                    duration_ms,
                });
            }
        });
    }

    fn of<R>(&self, response_id: ResponseId, f: impl FnOnce(&mut State) -> R) -> Option<R> {
        self.with(|all| {
            all.responses
                .iter_mut()
                .find(|s| s.response_id == response_id)
                .map(f)
        })
    }

    /// `played_ms` of `response_id`'s audio has been played.
    pub fn played(&self, response_id: ResponseId, played_ms: u64) {
        self.of(response_id, |s| s.played_ms = s.played_ms.max(played_ms));
    }

    /// Sets the position from a client's report (`conversation.item.truncate`).
    pub fn set_played(&self, response_id: ResponseId, played_ms: u64) {
        self.of(response_id, |s| s.played_ms = played_ms);
    }

    /// `response_id` has been played out, or stopped for good.
    pub fn finish(&self, response_id: ResponseId) {
        self.with(|all| all.finished_upto = all.finished_upto.max(response_id));
    }

    /// Whether the user may still be hearing `response_id`.
    pub fn is_finished(&self, response_id: ResponseId) -> bool {
        self.with(|all| response_id <= all.finished_upto)
    }

    pub fn played_ms(&self, response_id: ResponseId) -> u64 {
        self.of(response_id, |s| s.played_ms).unwrap_or(0)
    }

    /// The words of `response_id` fully played so far.
    pub fn heard_text(&self, response_id: ResponseId) -> String {
        self.of(response_id, |s| s.heard_text()).unwrap_or_default()
    }

    /// What the user last heard the assistant say: the played words of the
    /// most recent response they heard any of.
    pub fn last_heard(&self) -> Option<String> {
        self.with(|all| {
            all.responses
                .iter()
                .rev()
                .map(State::heard_text)
                .find(|text| !text.is_empty())
        })
    }
}

impl State {
    /// The words fully played so far.
    fn heard_text(&self) -> String {
        let mut words: Vec<&str> = Vec::new();
        for clause in &self.clauses {
            if self.played_ms >= clause.start_ms + clause.duration_ms {
                words.extend(clause.text.split_whitespace());
                continue;
            }
            if self.played_ms <= clause.start_ms || clause.duration_ms == 0 {
                break;
            }
            let total = clause.text.chars().count().max(1) as u64;
            let budget = (self.played_ms - clause.start_ms) * total / clause.duration_ms;
            let mut offset = 0u64;
            for word in clause.text.split_whitespace() {
                let end = offset + word.chars().count() as u64;
                if end > budget {
                    break;
                }
                words.push(word);
                offset = end + 1;
            }
            break;
        }
        words.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_fully_played_words_are_heard() {
        let h = Heard::new();
        h.clause(3, "Once upon a time,", 0, 1000);
        h.clause(3, "there was a fox.", 1000, 1000);
        assert_eq!(h.heard_text(3), "");
        h.played(3, 500);
        assert_eq!(h.heard_text(3), "Once", "\"upon\" is only half played");
        h.played(3, 600);
        assert_eq!(h.heard_text(3), "Once upon");
        h.played(3, 1000);
        assert_eq!(h.heard_text(3), "Once upon a time,");
        h.played(3, 1400);
        assert_eq!(h.heard_text(3), "Once upon a time, there");
        h.played(3, 5000);
        assert_eq!(h.heard_text(3), "Once upon a time, there was a fox.");
        assert_eq!(h.heard_text(2), "", "another response heard nothing");
    }

    #[test]
    fn an_earlier_response_can_still_be_truncated() {
        let h = Heard::new();
        h.clause(1, "First answer is long.", 0, 1000);
        h.played(1, 1000);
        h.clause(2, "Second.", 0, 500);
        h.set_played(1, 300);
        assert_eq!(h.heard_text(1), "First");
        assert_eq!(h.heard_text(2), "");
    }

    #[test]
    fn the_last_heard_words_are_of_the_latest_response_heard_at_all() {
        let h = Heard::new();
        assert_eq!(h.last_heard(), None);
        h.clause(1, "Which card did you draw?", 0, 1000);
        h.played(1, 1000);
        // The next answer has not been heard yet.
        h.clause(2, "Nice.", 0, 500);
        assert_eq!(h.last_heard().as_deref(), Some("Which card did you draw?"));
        h.played(2, 500);
        assert_eq!(h.last_heard().as_deref(), Some("Nice."));
    }

    #[test]
    fn a_new_response_starts_from_scratch_and_client_reports_win() {
        let h = Heard::new();
        h.clause(1, "Hello there.", 0, 800);
        h.played(1, 800);
        h.clause(2, "Second answer here.", 0, 900);
        assert_eq!(h.played_ms(2), 0);
        h.played(2, 900);
        h.set_played(2, 300);
        assert_eq!(h.heard_text(2), "Second");
    }
}
