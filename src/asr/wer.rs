//! Word error rate and the text normalization it is computed on: lower case,
//! punctuation removed, numbers spelled out as words, "mr." as "mister".

/// Splits normalized text into words.
pub fn normalize(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    for raw in text.split_whitespace() {
        let lower = raw.to_lowercase();
        let lower = match lower.trim_matches(|c: char| !c.is_alphanumeric()) {
            "mr" => "mister".to_string(),
            "mrs" => "missus".to_string(),
            "dr" => "doctor".to_string(),
            _ => lower,
        };
        // Digits become words; other punctuation splits or vanishes.
        let mut current = String::new();
        let mut digits = String::new();
        let flush_digits = |digits: &mut String, words: &mut Vec<String>| {
            if !digits.is_empty() {
                match digits.parse::<u64>() {
                    Ok(n) => words.extend(number_words(n).split(' ').map(String::from)),
                    Err(_) => words.extend(digits.chars().map(|d| digit_word(d).to_string())),
                }
                digits.clear();
            }
        };
        for c in lower.chars() {
            if c.is_ascii_digit() {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
                digits.push(c);
            } else if c.is_alphabetic() || c == '\'' {
                flush_digits(&mut digits, &mut words);
                if c != '\'' {
                    current.push(c);
                }
            } else if c == ',' && !digits.is_empty() {
                // thousands separator inside a number: "1,000"
            } else {
                flush_digits(&mut digits, &mut words);
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
        }
        flush_digits(&mut digits, &mut words);
        if !current.is_empty() {
            words.push(current);
        }
    }
    words
}

fn digit_word(d: char) -> &'static str {
    const DIGITS: [&str; 10] = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ];
    d.to_digit(10).map(|i| DIGITS[i as usize]).unwrap_or("")
}

/// English words for `n` ("one hundred twenty three"); from a thousand
/// trillion up, digit by digit (such numbers are codes, not amounts).
pub fn number_words(n: u64) -> String {
    if n >= 1_000 * 1_000_000_000_000 {
        return n
            .to_string()
            .chars()
            .map(digit_word)
            .collect::<Vec<_>>()
            .join(" ");
    }
    const SMALL: [&str; 20] = [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
    ];
    const TENS: [&str; 10] = [
        "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
    ];
    fn below_thousand(n: u64, out: &mut Vec<String>) {
        if n >= 100 {
            out.push(SMALL[(n / 100) as usize].into());
            out.push("hundred".into());
        }
        let rest = n % 100;
        if rest == 0 {
            return;
        }
        if rest < 20 {
            out.push(SMALL[rest as usize].into());
        } else {
            out.push(TENS[(rest / 10) as usize].into());
            if !rest.is_multiple_of(10) {
                out.push(SMALL[(rest % 10) as usize].into());
            }
        }
    }
    if n == 0 {
        return "zero".into();
    }
    let mut out = Vec::new();
    let scales = [
        (1_000_000_000_000, "trillion"),
        (1_000_000_000, "billion"),
        (1_000_000, "million"),
        (1_000, "thousand"),
    ];
    let mut rest = n;
    for (scale, name) in scales {
        if rest >= scale {
            below_thousand(rest / scale, &mut out);
            out.push(name.into());
            rest %= scale;
        }
    }
    below_thousand(rest, &mut out);
    out.join(" ")
}

/// Word-level edit distance between two word lists.
pub fn edit_distance(reference: &[String], hypothesis: &[String]) -> usize {
    let mut row: Vec<usize> = (0..=hypothesis.len()).collect();
    for (i, r) in reference.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, h) in hypothesis.iter().enumerate() {
            let substitution = diagonal + usize::from(r != h);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[hypothesis.len()]
}

/// Accumulates errors over many utterances; `rate()` is total errors over
/// total reference words.
#[derive(Debug, Default, Clone, Copy)]
pub struct WerTally {
    pub errors: usize,
    pub words: usize,
}

impl WerTally {
    /// Adds one utterance and returns its own WER.
    pub fn add(&mut self, reference: &str, hypothesis: &str) -> f64 {
        let r = normalize(reference);
        let h = normalize(hypothesis);
        let e = edit_distance(&r, &h);
        self.errors += e;
        self.words += r.len();
        e as f64 / r.len().max(1) as f64
    }

    pub fn rate(&self) -> f64 {
        self.errors as f64 / self.words.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_case_punctuation_numbers_and_titles() {
        assert_eq!(
            normalize("Mr. Dashwood paid $1,250 in 2 days, didn't he?"),
            [
                "mister", "dashwood", "paid", "one", "thousand", "two", "hundred", "fifty", "in",
                "two", "days", "didnt", "he"
            ]
        );
        assert_eq!(normalize("3.14"), ["three", "fourteen"]);
        assert_eq!(normalize("  "), Vec::<String>::new());
    }

    #[test]
    fn number_words_cover_scales() {
        assert_eq!(
            number_words(999_999_999_999_999),
            "nine hundred ninety nine trillion nine hundred ninety nine billion \
             nine hundred ninety nine million nine hundred ninety nine thousand \
             nine hundred ninety nine"
        );
        assert_eq!(
            number_words(43_900_000_000_000_001),
            "four three nine zero zero zero zero zero zero zero zero zero zero zero zero zero one"
        );
        assert_eq!(normalize("18446744073709551615").len(), 20);
        assert_eq!(number_words(0), "zero");
        assert_eq!(number_words(19), "nineteen");
        assert_eq!(number_words(40), "forty");
        assert_eq!(number_words(101), "one hundred one");
        assert_eq!(number_words(2_000_017), "two million seventeen");
    }

    #[test]
    fn edit_distance_counts_substitutions_insertions_deletions() {
        let w = |s: &str| normalize(s);
        assert_eq!(edit_distance(&w("a b c"), &w("a b c")), 0);
        assert_eq!(edit_distance(&w("a b c"), &w("a x c")), 1);
        assert_eq!(edit_distance(&w("a b c"), &w("a c")), 1);
        assert_eq!(edit_distance(&w("a b c"), &w("a b c d")), 1);
        assert_eq!(edit_distance(&w("a b c"), &w("")), 3);
    }

    #[test]
    fn tally_is_total_errors_over_total_words() {
        let mut t = WerTally::default();
        assert_eq!(t.add("one two three four", "one two three four"), 0.0);
        assert_eq!(t.add("a b", "a c"), 0.5);
        assert!((t.rate() - 1.0 / 6.0).abs() < 1e-9);
    }
}
