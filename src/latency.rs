//! The per-turn latency waterfall: when the user stopped speaking, when the
//! VAD decided so (endpointing), the ASR final, the LLM's first token, the
//! first clause, its first synthesized audio, and the first audio sent out.
//!
//! A turn answered from a speculative answer (started during the user's
//! pause, held until the turn was committed) marks its LLM stages when the
//! held answer was released, and notes how much of it was ready then
//! (`speculation` in the waterfall).
//!
//! Each stage marks its moment on the session's [`Latency`]; the output stage
//! closes the turn and emits it as a `duplex.turn.latency` event (and a log
//! line), in milliseconds since the end of speech.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The stages of a turn, in the order they normally happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The VAD's silence window closed: the turn is committed.
    SpeechStopped,
    AsrFinal,
    LlmFirstToken,
    FirstClause,
    /// The first clause's audio is synthesized.
    FirstAudio,
    /// The first audio frame left for the client.
    FirstAudioOut,
}

#[derive(Debug, Default)]
struct Turn {
    item_id: String,
    response_id: Option<String>,
    speech_end: Option<Instant>,
    marks: Vec<(Stage, Instant)>,
    /// Set when the answer was speculated: what was ready at commit.
    speculation: Option<serde_json::Value>,
}

/// One session's waterfall of the turn in progress.
#[derive(Debug, Default)]
pub struct Latency {
    turn: Mutex<Turn>,
}

/// A finished waterfall: ms since the end of speech for each stage reached.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Waterfall {
    pub item_id: String,
    pub response_id: Option<String>,
    pub stages: Vec<(Stage, u64)>,
    /// For an adopted speculative answer: how much was ready at commit.
    pub speculation: Option<serde_json::Value>,
}

impl Waterfall {
    pub fn get(&self, stage: Stage) -> Option<u64> {
        self.stages
            .iter()
            .find(|(s, _)| *s == stage)
            .map(|(_, ms)| *ms)
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut stages = serde_json::Map::new();
        for (stage, ms) in &self.stages {
            if let Ok(serde_json::Value::String(name)) = serde_json::to_value(stage) {
                stages.insert(format!("{name}_ms"), (*ms).into());
            }
        }
        let mut json = serde_json::json!({
            "item_id": self.item_id,
            "response_id": self.response_id,
            "since_speech_end": stages,
        });
        if let Some(s) = &self.speculation {
            json["speculation"] = s.clone();
        }
        json
    }
}

impl Latency {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut Turn) -> R) -> R {
        let mut guard = match self.turn.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// A new turn: the user's speech ended `silence` before now (the VAD
    /// decides after its silence window), or now for a typed turn.
    pub fn start(&self, item_id: &str, silence: Duration) {
        let now = Instant::now();
        self.with(|t| {
            *t = Turn {
                item_id: item_id.to_string(),
                response_id: None,
                speech_end: Some(now.checked_sub(silence).unwrap_or(now)),
                marks: vec![(Stage::SpeechStopped, now)],
                speculation: None,
            }
        });
    }

    /// The response answering the current turn.
    pub fn response(&self, response_id: &str) {
        self.with(|t| t.response_id = Some(response_id.to_string()));
    }

    /// The current turn's answer was speculated: `ready` says how much of
    /// it was generated before the turn was committed.
    pub fn speculated(&self, ready: serde_json::Value) {
        self.with(|t| {
            if t.speech_end.is_some() {
                t.speculation = Some(ready);
            }
        });
    }

    /// Marks a stage (only its first occurrence in the turn counts).
    pub fn mark(&self, stage: Stage) {
        let now = Instant::now();
        self.with(|t| {
            if t.speech_end.is_some() && !t.marks.iter().any(|(s, _)| *s == stage) {
                t.marks.push((stage, now));
            }
        });
    }

    /// Closes the turn and returns its waterfall, once.
    pub fn finish(&self) -> Option<Waterfall> {
        self.with(|t| {
            let end = t.speech_end.take()?;
            let mut stages: Vec<(Stage, u64)> = t
                .marks
                .iter()
                .map(|(s, at)| (*s, at.saturating_duration_since(end).as_millis() as u64))
                .collect();
            stages.sort_by_key(|(_, ms)| *ms);
            Some(Waterfall {
                item_id: t.item_id.clone(),
                response_id: t.response_id.clone(),
                stages,
                speculation: t.speculation.take(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_reports_each_stage_once_since_speech_end() {
        let l = Latency::new();
        assert!(l.finish().is_none(), "no turn yet");
        l.mark(Stage::AsrFinal);
        l.start("item_1", Duration::from_millis(500));
        l.response("resp_1");
        l.mark(Stage::AsrFinal);
        std::thread::sleep(Duration::from_millis(5));
        l.mark(Stage::AsrFinal);
        l.mark(Stage::FirstAudioOut);
        let w = l.finish().unwrap();
        assert_eq!(w.item_id, "item_1");
        assert_eq!(w.response_id.as_deref(), Some("resp_1"));
        let stopped = w.get(Stage::SpeechStopped).unwrap();
        assert!((500..600).contains(&stopped), "{stopped}");
        assert!(w.get(Stage::AsrFinal).unwrap() < w.get(Stage::FirstAudioOut).unwrap());
        assert_eq!(w.stages.len(), 3);
        assert!(l.finish().is_none(), "reported once");
        let json = w.to_json();
        assert!(json["since_speech_end"]["asr_final_ms"].is_u64(), "{json}");
    }
}
