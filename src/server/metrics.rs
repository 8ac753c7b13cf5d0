//! Process-wide metrics in the Prometheus text format (`GET /metrics`):
//! sessions, turns, errors, and per-stage latency histograms fed by each
//! turn's waterfall.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Histogram bucket upper bounds, in ms.
const BUCKETS_MS: [u64; 12] = [
    50, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS_MS.len()],
    total: u64,
    sum_ms: u64,
}

impl Histogram {
    fn observe(&mut self, ms: u64) {
        for (i, bound) in BUCKETS_MS.iter().enumerate() {
            if ms <= *bound {
                self.counts[i] += 1;
            }
        }
        self.total += 1;
        self.sum_ms += ms;
    }
}

#[derive(Default)]
pub struct Metrics {
    pub sessions_total: AtomicU64,
    pub sessions_active: AtomicU64,
    pub sessions_refused: AtomicU64,
    pub turns_total: AtomicU64,
    pub errors_total: AtomicU64,
    pub client_errors_total: AtomicU64,
    pub video_frames_total: AtomicU64,
    /// Per stage name: latency since the end of the user's speech.
    stages: Mutex<Vec<(String, Histogram)>>,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a `duplex.turn.latency` event's stages.
    pub fn observe_turn(&self, since_speech_end: &serde_json::Value) {
        Metrics::inc(&self.turns_total);
        let Some(stages) = since_speech_end.as_object() else {
            return;
        };
        let mut all = match self.stages.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        for (name, ms) in stages {
            let Some(ms) = ms.as_u64() else { continue };
            let stage = name.trim_end_matches("_ms");
            match all.iter_mut().find(|(n, _)| n == stage) {
                Some((_, h)) => h.observe(ms),
                None => {
                    let mut h = Histogram::default();
                    h.observe(ms);
                    all.push((stage.to_string(), h));
                }
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters = [
            (
                "duplex_sessions_total",
                "Sessions opened.",
                &self.sessions_total,
                "counter",
            ),
            (
                "duplex_sessions_active",
                "Sessions open now.",
                &self.sessions_active,
                "gauge",
            ),
            (
                "duplex_sessions_refused_total",
                "Connections refused (auth, limits).",
                &self.sessions_refused,
                "counter",
            ),
            (
                "duplex_turns_total",
                "Turns answered with audio or text.",
                &self.turns_total,
                "counter",
            ),
            (
                "duplex_errors_total",
                "Error events sent to clients.",
                &self.errors_total,
                "counter",
            ),
            (
                "duplex_client_errors_total",
                "Client events refused as invalid.",
                &self.client_errors_total,
                "counter",
            ),
            (
                "duplex_video_frames_total",
                "Camera frames received (duplex.input_video.append).",
                &self.video_frames_total,
                "counter",
            ),
        ];
        for (name, help, value, kind) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let stages = match self.stages.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let name = "duplex_turn_stage_latency_ms";
        let _ = writeln!(
            out,
            "# HELP {name} Time from the end of the user's speech to each stage of the turn.\n# TYPE {name} histogram"
        );
        for (stage, h) in stages.iter() {
            for (bound, count) in BUCKETS_MS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{stage=\"{stage}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{stage=\"{stage}\",le=\"+Inf\"}} {}",
                h.total
            );
            let _ = writeln!(out, "{name}_sum{{stage=\"{stage}\"}} {}", h.sum_ms);
            let _ = writeln!(out, "{name}_count{{stage=\"{stage}\"}} {}", h.total);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_histograms() {
        let m = Metrics::new();
        Metrics::inc(&m.sessions_total);
        m.observe_turn(&serde_json::json!({"asr_final_ms": 120, "first_audio_out_ms": 900}));
        m.observe_turn(&serde_json::json!({"asr_final_ms": 80}));
        let text = m.render();
        assert!(text.contains("duplex_sessions_total 1"), "{text}");
        assert!(text.contains("duplex_turns_total 2"), "{text}");
        assert!(
            text.contains("duplex_turn_stage_latency_ms_bucket{stage=\"asr_final\",le=\"100\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("duplex_turn_stage_latency_ms_bucket{stage=\"asr_final\",le=\"150\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("duplex_turn_stage_latency_ms_count{stage=\"first_audio_out\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("duplex_turn_stage_latency_ms_sum{stage=\"asr_final\"} 200"),
            "{text}"
        );
    }
}
