//! LocalAgreement: turns a sequence of changing hypotheses for a growing
//! utterance into a stable, growing prefix of committed words.
//!
//! A word is committed when two consecutive passes agree on it (after the
//! words already committed), and a committed word is never retracted: the
//! committed list only ever grows.
//!
//! Passes re-decode the whole utterance, so a later pass may insert, drop
//! or change a word before the end of what is committed ("and Mr. Dashwood"
//! becomes "and Mr. John Dashwood"). Each pass is therefore aligned to the
//! committed words (the prefix of the pass closest to them by word edit
//! distance), and only what follows that prefix competes for commitment:
//! no word is committed twice.
//!
//! A pass's last word is not committed while it ends with a full stop:
//! whisper closes whatever audio it is given with one, so two passes that
//! end on "he was not." agree on a full stop nobody said ("he was not an
//! ill-disposed young man"). The word is committed by a later pass that
//! heard what follows it.

use super::strip_closing_full_stop;

/// Committed words of the current utterance and the previous pass.
#[derive(Debug, Default, Clone)]
pub struct LocalAgreement {
    committed: Vec<String>,
    previous: Option<Vec<String>>,
}

/// Compares words as a listener would: case, punctuation and how numbers
/// are written do not matter ("Eight" = "8").
fn key(word: &str) -> String {
    crate::asr::wer::normalize(word).concat()
}

impl LocalAgreement {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the hypothesis of a new pass over the whole utterance so far and
    /// returns the words it newly commits (possibly none).
    pub fn update(&mut self, hypothesis: &str) -> Vec<String> {
        let words: Vec<String> = hypothesis.split_whitespace().map(String::from).collect();
        let mut fresh = Vec::new();
        if let Some(previous) = &self.previous {
            let start = aligned_end(&self.committed, &words);
            let tail_before = previous.iter().skip(aligned_end(&self.committed, previous));
            for ((i, now), before) in words.iter().enumerate().skip(start).zip(tail_before) {
                let closes_pass = i + 1 == words.len() && strip_closing_full_stop(now).is_some();
                if key(now).is_empty() || key(now) != key(before) || closes_pass {
                    break;
                }
                fresh.push(now.clone());
            }
        }
        self.committed.extend(fresh.iter().cloned());
        self.previous = Some(words);
        fresh
    }

    /// Every word committed so far, in order.
    pub fn committed(&self) -> &[String] {
        &self.committed
    }
}

/// How many leading words of `words` correspond to `committed`: the prefix
/// length with the smallest word edit distance to `committed` (ties: the
/// shorter, so that a pass that dropped a committed word does not lose the
/// word after it).
fn aligned_end(committed: &[String], words: &[String]) -> usize {
    if committed.is_empty() {
        return 0;
    }
    let keys: Vec<String> = words.iter().map(|w| key(w)).collect();
    // row[k]: edit distance between committed[..i] and words[..k].
    let mut row: Vec<usize> = (0..=words.len()).collect();
    for (i, c) in committed.iter().enumerate() {
        let c = key(c);
        let mut next = vec![i + 1; words.len() + 1];
        for k in 1..=words.len() {
            let substitute = row[k - 1] + usize::from(keys[k - 1] != c);
            next[k] = substitute.min(row[k] + 1).min(next[k - 1] + 1);
        }
        row = next;
    }
    (0..=words.len()).min_by_key(|&k| (row[k], k)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_what_two_passes_agree_on() {
        let mut a = LocalAgreement::new();
        assert!(a.update("and").is_empty(), "one pass commits nothing");
        assert_eq!(a.update("and mister"), ["and"]);
        assert_eq!(a.update("And Mister John,"), ["Mister"]);
        assert_eq!(a.update("and mister john dash"), ["john"]);
        assert!(a.update("and mister john dashwood").is_empty());
        assert_eq!(a.update("and mister john dashwood had"), ["dashwood"]);
        assert_eq!(a.committed(), ["and", "Mister", "john", "dashwood"]);
    }

    #[test]
    fn a_word_inserted_before_the_end_is_not_committed_twice() {
        // Seen on LibriVox 0870: a later pass inserts "John".
        let mut a = LocalAgreement::new();
        a.update("and Mr. Dashwood had then leisure to consider how.");
        a.update("and Mr. Dashwood had then leisure to consider how much");
        assert_eq!(a.committed().len(), 9);
        assert_eq!(
            a.update("And Mr. John Dashwood had then leisure to consider how much there"),
            ["much"]
        );
        assert_eq!(
            a.update("And Mr. John Dashwood had then leisure to consider how much there might"),
            ["there"]
        );
    }

    #[test]
    fn a_misheard_committed_word_does_not_swallow_the_next() {
        // Seen on LibriVox 0890: "as" committed where the speaker said
        // "selfish"; the words after it are neither skipped nor doubled.
        let mut a = LocalAgreement::new();
        a.update("unless to be rather cold and rather as soon");
        a.update("unless to be rather cold and rather as self");
        assert_eq!(
            a.committed().join(" "),
            "unless to be rather cold and rather as"
        );
        a.update("unless to be rather cold and rather selfish is to");
        assert_eq!(
            a.update("unless to be rather cold and rather selfish is to be"),
            ["selfish", "is", "to"]
        );
    }

    #[test]
    fn a_pass_that_drops_a_committed_word_keeps_the_next_one() {
        // Seen on LibriVox 0870: "and" committed, then passes say "Mr. John".
        let mut a = LocalAgreement::new();
        a.update("and");
        assert_eq!(a.update("and Mr."), ["and"]);
        assert_eq!(a.update("Mr. John."), ["Mr."]);
        assert_eq!(a.update("Mr. John Dagg"), ["John"]);
        assert_eq!(a.committed(), ["and", "Mr.", "John"]);
    }

    #[test]
    fn a_full_stop_that_closes_a_pass_is_not_committed() {
        // Seen on LibriVox 0880: two passes closed on "not.", where the
        // speaker went on "an ill-disposed young man".
        let mut a = LocalAgreement::new();
        a.update("He was not.");
        assert_eq!(a.update("He was not."), ["He", "was"]);
        assert_eq!(a.update("He was not an old"), ["not"]);
        assert_eq!(a.update("He was not an old-sposed young man."), ["an"]);
        assert_eq!(a.committed().join(" "), "He was not an");
        // Inside a pass a full stop was heard, and is committed.
        let mut a = LocalAgreement::new();
        a.update("Wait. Then");
        assert_eq!(a.update("Wait. Then go"), ["Wait.", "Then"]);
    }

    #[test]
    fn numbers_agree_however_they_are_written() {
        let mut a = LocalAgreement::new();
        a.update("Eight of");
        assert_eq!(a.update("8th space"), Vec::<String>::new());
        let mut a = LocalAgreement::new();
        a.update("Eight of");
        assert_eq!(a.update("8 of spades"), ["8", "of"]);
    }

    #[test]
    fn never_retracts_when_a_pass_changes_its_mind() {
        let mut a = LocalAgreement::new();
        let mut history: Vec<Vec<String>> = Vec::new();
        for hypothesis in [
            "he was",
            "he was not",
            "she was not an",
            "he was not an ill",
            "",
            "he was not an ill disposed",
            "he was not an ill disposed young man",
            "he was not an ill disposed young man",
        ] {
            a.update(hypothesis);
            let now = a.committed().to_vec();
            if let Some(before) = history.last() {
                assert!(now.starts_with(before), "{before:?} retracted in {now:?}");
            }
            history.push(now);
        }
        assert_eq!(
            a.committed().join(" "),
            "he was not an ill disposed young man"
        );
    }
}
