//! LocalAgreement: turns a sequence of changing hypotheses for a growing
//! utterance into a stable, growing prefix of committed words.
//!
//! A word is committed when two consecutive passes agree on it (after the
//! words already committed), and a committed word is never retracted: the
//! committed list only ever grows.

/// Committed words of the current utterance and the previous pass.
#[derive(Debug, Default, Clone)]
pub struct LocalAgreement {
    committed: Vec<String>,
    previous: Option<Vec<String>>,
}

/// Compares words as a listener would: case and punctuation do not matter.
fn key(word: &str) -> String {
    word.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

impl LocalAgreement {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the hypothesis of a new pass over the whole utterance so far and
    /// returns the words it newly commits (possibly none).
    pub fn update(&mut self, hypothesis: &str) -> Vec<String> {
        let words: Vec<String> = hypothesis.split_whitespace().map(String::from).collect();
        let done = self.committed.len();
        let mut fresh = Vec::new();
        if let Some(previous) = &self.previous {
            let tail_now = words.iter().skip(done);
            let tail_before = previous.iter().skip(done);
            for (now, before) in tail_now.zip(tail_before) {
                if key(now).is_empty() || key(now) != key(before) {
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
