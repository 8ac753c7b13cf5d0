//! JSON shapes of the OpenAI Realtime API objects that several stages put in
//! their events (responses, assistant items, usage), so every stage and the
//! server speak the same shapes.

use serde_json::{Value, json};

use crate::graph::ResponseId;

/// The Realtime API id of a response.
pub fn response_id(id: ResponseId) -> String {
    format!("resp_{id:06}")
}

/// The id of the assistant item a response creates.
pub fn assistant_item_id(id: ResponseId) -> String {
    format!("item_resp_{id:06}")
}

/// Content type of an assistant item: spoken or written.
pub fn content_type(modalities: &[String]) -> &'static str {
    if modalities.iter().any(|m| m == "audio") {
        "output_audio"
    } else {
        "output_text"
    }
}

/// An assistant message item.
pub fn assistant_item(item_id: &str, status: &str, modalities: &[String], text: &str) -> Value {
    let content = if text.is_empty() && status == "in_progress" {
        json!([])
    } else if content_type(modalities) == "output_audio" {
        json!([{"type": "output_audio", "transcript": text}])
    } else {
        json!([{"type": "output_text", "text": text}])
    };
    json!({
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content,
    })
}

/// Token counts of a response, for its `usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenCounts {
    /// The whole prompt.
    pub input: usize,
    /// Prompt tokens served from the KV cache of earlier turns (not
    /// computed again).
    pub cached: usize,
    pub output: usize,
}

impl From<&crate::llm::Usage> for TokenCounts {
    fn from(u: &crate::llm::Usage) -> Self {
        TokenCounts {
            input: u.input_tokens,
            cached: u.input_tokens.saturating_sub(u.prefilled_tokens),
            output: u.output_tokens,
        }
    }
}

/// A response object for `response.created` / `response.done`.
/// `status_details` is e.g. `{"type": "cancelled", "reason": "turn_detected"}`.
pub fn response_object(
    response_id: &str,
    status: &str,
    status_details: Value,
    output: Vec<Value>,
    modalities: &[String],
    usage: Option<TokenCounts>,
) -> Value {
    let usage = match usage {
        Some(t) => json!({
            "total_tokens": t.input + t.output,
            "input_tokens": t.input,
            "output_tokens": t.output,
            "input_token_details": {
                "text_tokens": t.input,
                "audio_tokens": 0,
                "cached_tokens": t.cached,
                "cached_tokens_details": {"text_tokens": t.cached, "audio_tokens": 0},
            },
            "output_token_details": {"text_tokens": t.output, "audio_tokens": 0},
        }),
        None => Value::Null,
    };
    json!({
        "id": response_id,
        "object": "realtime.response",
        "status": status,
        "status_details": status_details,
        "output": output,
        "output_modalities": modalities,
        "usage": usage,
    })
}

/// Turn detection settings: server VAD, or semantic VAD when `semantic` is
/// set (`silence_duration_ms` is then the wait for an unscored pause).
#[derive(Debug, Clone, PartialEq)]
pub struct TurnDetection {
    pub threshold: f32,
    pub prefix_padding_ms: u64,
    pub silence_duration_ms: u64,
    /// Semantic VAD with this eagerness.
    pub semantic: Option<crate::turn::Eagerness>,
    /// Answer each turn automatically.
    pub create_response: bool,
    /// Let the user barge in on the bot.
    pub interrupt_response: bool,
}

impl Default for TurnDetection {
    fn default() -> Self {
        TurnDetection {
            threshold: 0.5,
            prefix_padding_ms: 300,
            silence_duration_ms: 500,
            semantic: None,
            create_response: true,
            interrupt_response: true,
        }
    }
}

/// A function the model may call (`tools` in session.update).
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: Value,
}

/// What a session.update can change in the stages of a running session.
/// `None` fields are left as they are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionSettings {
    pub instructions: Option<String>,
    /// `["audio"]` or `["text"]`.
    pub output_modalities: Option<Vec<String>>,
    /// `Some(None)`: turn detection off (the client commits turns itself).
    pub turn_detection: Option<Option<TurnDetection>>,
    pub max_output_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub tools: Option<Vec<Tool>>,
    /// "auto", "none", "required" or a function name.
    pub tool_choice: Option<String>,
    /// Transcribe the user's audio (`input_audio_transcription` set).
    pub transcription: Option<bool>,
}
