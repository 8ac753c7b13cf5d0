//! From an end-of-turn score to the silence to wait for: semantic VAD's
//! `eagerness` (low, medium, high, auto as in the Realtime API).
//!
//! A pause whose words read as finished gets a short window, one that reads
//! as mid-sentence ("I want to book a table for") a long one; in between,
//! the window falls with the logarithm of the score. A pause that was never
//! scored waits for the eagerness' fallback window.

use serde::Deserialize;

/// How eagerly semantic VAD ends the user's turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Eagerness {
    Low,
    Medium,
    High,
    #[default]
    Auto,
}

/// The windows of one eagerness: `short_ms` at or above score `sure`,
/// `long_ms` at or below score `unsure`.
struct Windows {
    short_ms: u64,
    long_ms: u64,
    sure: f32,
    unsure: f32,
}

impl Eagerness {
    pub fn as_str(self) -> &'static str {
        match self {
            Eagerness::Low => "low",
            Eagerness::Medium => "medium",
            Eagerness::High => "high",
            Eagerness::Auto => "auto",
        }
    }

    /// Silence that ends a turn whose pause was never scored.
    pub fn fallback_ms(self) -> u64 {
        match self {
            Eagerness::Low => 1500,
            Eagerness::Medium | Eagerness::Auto => 800,
            Eagerness::High => 400,
        }
    }

    fn windows(self) -> Windows {
        match self {
            Eagerness::High => Windows {
                short_ms: 150,
                long_ms: 800,
                sure: 0.03,
                unsure: 0.002,
            },
            Eagerness::Medium | Eagerness::Auto => Windows {
                short_ms: 200,
                long_ms: 1500,
                sure: 0.05,
                unsure: 0.005,
            },
            Eagerness::Low => Windows {
                short_ms: 400,
                long_ms: 2500,
                sure: 0.1,
                unsure: 0.01,
            },
        }
    }

    /// The silence (ms after the end of speech) that ends a turn whose
    /// words scored `score` (the probability that the user has finished).
    pub fn window_ms(self, score: f32) -> u64 {
        let w = self.windows();
        let score = if score.is_finite() { score } else { 0.0 };
        if score >= w.sure {
            return w.short_ms;
        }
        if score <= w.unsure {
            return w.long_ms;
        }
        // 0 at `unsure`, 1 at `sure`, on a log scale.
        let t = (score.ln() - w.unsure.ln()) / (w.sure.ln() - w.unsure.ln());
        let span = (w.long_ms - w.short_ms) as f32;
        w.long_ms - (t * span).round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sure_ends_short_unsure_waits_long_and_between_falls() {
        for e in [
            Eagerness::Low,
            Eagerness::Medium,
            Eagerness::High,
            Eagerness::Auto,
        ] {
            let w = e.windows();
            assert_eq!(e.window_ms(0.9), w.short_ms);
            assert_eq!(e.window_ms(0.0), w.long_ms);
            assert_eq!(e.window_ms(f32::NAN), w.long_ms);
            let mid = e.window_ms((w.sure * w.unsure).sqrt());
            assert!(mid > w.short_ms && mid < w.long_ms, "{e:?}: {mid}");
            let mut last = u64::MAX;
            for k in 0..=20 {
                let score = w.unsure * (w.sure / w.unsure).powf(k as f32 / 20.0);
                let window = e.window_ms(score);
                assert!(window <= last, "{e:?}: not falling at {score}");
                last = window;
            }
        }
        // Higher eagerness never waits longer.
        for score in [0.0, 0.001, 0.01, 0.5] {
            assert!(Eagerness::High.window_ms(score) <= Eagerness::Medium.window_ms(score));
            assert!(Eagerness::Medium.window_ms(score) <= Eagerness::Low.window_ms(score));
        }
    }
}
