//! The OpenAI Realtime API wire protocol as the server speaks it: parsing the
//! client's events ([`parse_client_event`] into [`ClientEvent`]), the errors
//! it answers bad events with ([`ProtocolError`], shaped as the API's `error`
//! event), the session object ([`SessionState`]: validated updates, the
//! [`SessionSettings`] delta they make for the pipeline stages, and the
//! session JSON in the GA or the beta shape), and the renaming and reshaping
//! of the server's GA events for clients of the older beta protocol
//! ([`outgoing_event_name`], [`adapt_outgoing`]).
//!
//! Both protocol generations are accepted on input whatever the connection
//! negotiated: GA (`gpt-realtime`, 2025-08: nested `session.audio.input...`,
//! `output_modalities`, `max_output_tokens`, `audio/pcm` format objects,
//! `output_text` / `output_audio` content) and beta (what clients sending
//! `OpenAI-Beta: realtime=v1` use: flat `turn_detection`, `modalities`,
//! `input_audio_format: "pcm16"`, `max_response_output_tokens`, `text` /
//! `audio` content). Output is GA unless the connection is beta.
//!
//! Nothing here panics on client input: every field is checked for presence,
//! type and range, and a failure is a [`ProtocolError`] naming the event, the
//! parameter path (e.g. `session.audio.input.turn_detection.threshold`) and
//! what was expected and received.

use std::collections::HashSet;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};

use crate::llm::Role;
use crate::realtime::{SessionSettings, Tool, TurnDetection};

/// Largest client event accepted, in bytes of JSON text. An append of 15 MiB
/// of base64 (the OpenAI limit) fits.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// The only audio sample rate the API carries (PCM16 mono at 24 kHz).
pub const SAMPLE_RATE: u32 = 24_000;

/// The largest numeric `max_output_tokens` a client may set.
pub const MAX_OUTPUT_TOKENS_LIMIT: u32 = 4096;

/// How `"inf"` max output tokens reaches the stages in
/// [`SessionSettings::max_output_tokens`]: no limit beyond the model's own.
/// Stages must clamp it before sizing anything by it.
pub const INF_OUTPUT_TOKENS: usize = usize::MAX;

/// The client event types this server understands.
pub const CLIENT_EVENT_TYPES: &[&str] = &[
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.truncate",
    "conversation.item.delete",
    "conversation.item.retrieve",
    "response.create",
    "response.cancel",
    "output_audio_buffer.clear",
    "duplex.input_video.append",
];

/// Client event types of the OpenAI API this server does not implement.
const UNSUPPORTED_EVENT_TYPES: &[(&str, &str)] = &[
    (
        "transcription_session.update",
        "transcription-only sessions are not supported; use a conversation session (`session.update`)",
    ),
    (
        "session.close",
        "`session.close` belongs to translation sessions; close the WebSocket to end a session",
    ),
    (
        "session.input_audio_buffer.append",
        "translation sessions are not supported; use `input_audio_buffer.append`",
    ),
];

const SUPPORTED_FORMAT: &str = "only 16-bit PCM mono at 24 kHz is supported: \
     {\"type\": \"audio/pcm\", \"rate\": 24000} (beta: \"pcm16\")";

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// A client event the server refuses, reported to the client as an `error`
/// event (see [`ProtocolError::to_event`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtocolError {
    /// `invalid_json`, `unknown_event`, `missing_field`, `invalid_value`,
    /// `invalid_audio` or `message_too_large` (the server may use others).
    pub code: &'static str,
    /// What is wrong, naming the event and parameter.
    pub message: String,
    /// The parameter path, e.g. `session.turn_detection.threshold`.
    pub param: Option<String>,
    /// The client's `event_id` of the event at fault, when it had one.
    pub event_id: Option<String>,
}

impl ProtocolError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        ProtocolError {
            code,
            message: message.into(),
            param: None,
            event_id: None,
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_event_id(mut self, event_id: Option<String>) -> Self {
        self.event_id = event_id;
        self
    }

    /// The body of the Realtime API `error` server event:
    /// `{"error": {"type", "code", "message", "param", "event_id"}}`; the
    /// server adds the event's own `type` and `event_id`.
    pub fn to_event(&self) -> Value {
        json!({
            "error": {
                "type": "invalid_request_error",
                "code": self.code,
                "message": self.message,
                "param": self.param,
                "event_id": self.event_id,
            }
        })
    }

    fn prefixed(mut self, event_type: &str) -> Self {
        self.message = format!("{event_type}: {}", self.message);
        self
    }
}

fn invalid(param: &str, message: impl Into<String>) -> ProtocolError {
    ProtocolError::new("invalid_value", message).with_param(param)
}

fn missing(param: &str, what: &str) -> ProtocolError {
    ProtocolError::new(
        "missing_field",
        format!("missing required field `{param}` ({what})"),
    )
    .with_param(param)
}

/// A short, safe rendering of a client value for an error message.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("\"{}\"", clip(s, 40)),
        Value::Array(a) => format!("an array of {} element(s)", a.len()),
        Value::Object(_) => "an object".into(),
    }
}

/// At most `max` characters of `s`, with an ellipsis when cut.
fn clip(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).collect();
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

// ---------------------------------------------------------------------------
// Field access helpers: null counts as absent unless stated otherwise.
// ---------------------------------------------------------------------------

fn as_object<'a>(v: &'a Value, param: &str) -> Result<&'a Map<String, Value>, ProtocolError> {
    match v {
        Value::Object(o) => Ok(o),
        other => Err(invalid(
            param,
            format!("`{param}` must be an object, got {}", describe(other)),
        )),
    }
}

fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(v) => Some(v),
    }
}

fn opt_str(
    obj: &Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<Option<String>, ProtocolError> {
    match present(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => {
            let param = join(path, key);
            Err(invalid(
                &param,
                format!("`{param}` must be a string, got {}", describe(other)),
            ))
        }
    }
}

fn req_str(
    obj: &Map<String, Value>,
    path: &str,
    key: &str,
    what: &str,
) -> Result<String, ProtocolError> {
    match opt_str(obj, path, key)? {
        Some(s) => Ok(s),
        None => Err(missing(&join(path, key), what)),
    }
}

/// A required string that must not be empty (ids, names).
fn req_id(
    obj: &Map<String, Value>,
    path: &str,
    key: &str,
    what: &str,
) -> Result<String, ProtocolError> {
    let s = req_str(obj, path, key, what)?;
    check_id(&s, &join(path, key))?;
    Ok(s)
}

fn opt_id(
    obj: &Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<Option<String>, ProtocolError> {
    let s = opt_str(obj, path, key)?;
    if let Some(s) = &s {
        check_id(s, &join(path, key))?;
    }
    Ok(s)
}

fn check_id(s: &str, param: &str) -> Result<(), ProtocolError> {
    if s.is_empty() {
        return Err(invalid(param, format!("`{param}` must not be empty")));
    }
    if s.len() > 256 {
        return Err(invalid(
            param,
            format!(
                "`{param}` is {} bytes long; ids are at most 256 bytes",
                s.len()
            ),
        ));
    }
    Ok(())
}

fn opt_bool(
    obj: &Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<Option<bool>, ProtocolError> {
    match present(obj, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => {
            let param = join(path, key);
            Err(invalid(
                &param,
                format!("`{param}` must be true or false, got {}", describe(other)),
            ))
        }
    }
}

/// A number in `[lo, hi]` (both finite).
fn opt_number(
    obj: &Map<String, Value>,
    path: &str,
    key: &str,
    lo: f64,
    hi: f64,
) -> Result<Option<f64>, ProtocolError> {
    let Some(v) = present(obj, key) else {
        return Ok(None);
    };
    let param = join(path, key);
    match v.as_f64() {
        Some(x) if x.is_finite() && x >= lo && x <= hi => Ok(Some(x)),
        _ => Err(invalid(
            &param,
            format!(
                "`{param}` must be a number between {lo} and {hi}, got {}",
                describe(v)
            ),
        )),
    }
}

/// A whole number in `[lo, hi]`; `500.0` counts as whole.
fn opt_int(
    obj: &Map<String, Value>,
    path: &str,
    key: &str,
    lo: u64,
    hi: u64,
) -> Result<Option<u64>, ProtocolError> {
    let Some(v) = present(obj, key) else {
        return Ok(None);
    };
    let param = join(path, key);
    match whole(v) {
        Some(n) if n >= lo && n <= hi => Ok(Some(n)),
        _ => Err(invalid(
            &param,
            format!(
                "`{param}` must be an integer between {lo} and {hi}, got {}",
                describe(v)
            ),
        )),
    }
}

/// A non-negative whole number, if `v` is one.
fn whole(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let x = v.as_f64()?;
    // Whole, non-negative and exactly representable.
    if x.is_finite() && x >= 0.0 && x.fract() == 0.0 && x <= 9.0e15 {
        Some(x as u64)
    } else {
        None
    }
}

// ---------------------------------------------------------------------------
// Client events
// ---------------------------------------------------------------------------

/// A parsed, validated client event. Every variant carries the client's
/// optional `event_id`, to echo in errors about it.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// `session.update`: GA or beta session shape (or a mix).
    SessionUpdate {
        event_id: Option<String>,
        session: SessionUpdate,
    },
    /// `input_audio_buffer.append`: the decoded PCM16 (24 kHz mono) audio.
    InputAudioBufferAppend {
        event_id: Option<String>,
        audio: Vec<f32>,
    },
    /// `input_audio_buffer.commit`.
    InputAudioBufferCommit { event_id: Option<String> },
    /// `input_audio_buffer.clear`.
    InputAudioBufferClear { event_id: Option<String> },
    /// `conversation.item.create`.
    ConversationItemCreate {
        event_id: Option<String>,
        previous_item_id: Option<String>,
        item: NewItem,
    },
    /// `conversation.item.truncate`: the client played only `audio_end_ms`
    /// of the item's audio.
    ConversationItemTruncate {
        event_id: Option<String>,
        item_id: String,
        content_index: u32,
        audio_end_ms: u64,
    },
    /// `conversation.item.delete`.
    ConversationItemDelete {
        event_id: Option<String>,
        item_id: String,
    },
    /// `conversation.item.retrieve`.
    ConversationItemRetrieve {
        event_id: Option<String>,
        item_id: String,
    },
    /// `response.create`, with per-response overrides (all default when the
    /// client sent no `response`).
    ResponseCreate {
        event_id: Option<String>,
        response: ResponseParams,
    },
    /// `response.cancel`; `None`: the response in progress.
    ResponseCancel {
        event_id: Option<String>,
        response_id: Option<String>,
    },
    /// `output_audio_buffer.clear`: stop the bot's audio now.
    OutputAudioBufferClear { event_id: Option<String> },
    /// duplex's extension `duplex.input_video.append`: one camera frame,
    /// `image` base64 JPEG or PNG (checked by its signature).
    InputVideoAppend {
        event_id: Option<String>,
        image: Vec<u8>,
    },
}

impl ClientEvent {
    /// The client's `event_id`, if it sent one.
    pub fn event_id(&self) -> Option<&str> {
        let id = match self {
            ClientEvent::SessionUpdate { event_id, .. }
            | ClientEvent::InputAudioBufferAppend { event_id, .. }
            | ClientEvent::InputAudioBufferCommit { event_id }
            | ClientEvent::InputAudioBufferClear { event_id }
            | ClientEvent::ConversationItemCreate { event_id, .. }
            | ClientEvent::ConversationItemTruncate { event_id, .. }
            | ClientEvent::ConversationItemDelete { event_id, .. }
            | ClientEvent::ConversationItemRetrieve { event_id, .. }
            | ClientEvent::ResponseCreate { event_id, .. }
            | ClientEvent::ResponseCancel { event_id, .. }
            | ClientEvent::OutputAudioBufferClear { event_id }
            | ClientEvent::InputVideoAppend { event_id, .. } => event_id,
        };
        id.as_deref()
    }

    /// The event's `type`, e.g. `"session.update"`.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientEvent::SessionUpdate { .. } => "session.update",
            ClientEvent::InputAudioBufferAppend { .. } => "input_audio_buffer.append",
            ClientEvent::InputAudioBufferCommit { .. } => "input_audio_buffer.commit",
            ClientEvent::InputAudioBufferClear { .. } => "input_audio_buffer.clear",
            ClientEvent::ConversationItemCreate { .. } => "conversation.item.create",
            ClientEvent::ConversationItemTruncate { .. } => "conversation.item.truncate",
            ClientEvent::ConversationItemDelete { .. } => "conversation.item.delete",
            ClientEvent::ConversationItemRetrieve { .. } => "conversation.item.retrieve",
            ClientEvent::ResponseCreate { .. } => "response.create",
            ClientEvent::ResponseCancel { .. } => "response.cancel",
            ClientEvent::OutputAudioBufferClear { .. } => "output_audio_buffer.clear",
            ClientEvent::InputVideoAppend { .. } => "duplex.input_video.append",
        }
    }
}

/// An item a client adds to the conversation (`conversation.item.create`, or
/// `response.create`'s `input`).
#[derive(Debug, Clone, PartialEq)]
pub enum NewItem {
    /// A message. User content is `InputText` / `InputAudio`, system content
    /// `InputText`, assistant content `OutputText` / `OutputAudio`.
    Message {
        id: Option<String>,
        role: Role,
        content: Vec<ContentPart>,
    },
    /// A function call the model made (clients replaying a history).
    FunctionCall {
        id: Option<String>,
        call_id: String,
        name: String,
        arguments: String,
    },
    /// The result of a function call.
    FunctionCallOutput {
        id: Option<String>,
        call_id: String,
        output: String,
    },
}

/// One content part of a message item.
#[derive(Debug, Clone, PartialEq)]
pub enum ContentPart {
    /// `input_text` (beta also `text` in user messages).
    InputText { text: String },
    /// `input_audio`: decoded PCM16 24 kHz audio, with the client's
    /// transcript if it gave one.
    InputAudio {
        audio: Vec<f32>,
        transcript: Option<String>,
    },
    /// Assistant `output_text` (beta: `text`).
    OutputText { text: String },
    /// Assistant `output_audio` (beta: `audio`): only its transcript is kept.
    OutputAudio { transcript: String },
}

impl NewItem {
    /// The id the client chose, if any.
    pub fn id(&self) -> Option<&str> {
        match self {
            NewItem::Message { id, .. }
            | NewItem::FunctionCall { id, .. }
            | NewItem::FunctionCallOutput { id, .. } => id.as_deref(),
        }
    }

    /// The role the item has in a chat history: function calls are the
    /// assistant's, their outputs are fed back as the user's side.
    pub fn role(&self) -> Role {
        match self {
            NewItem::Message { role, .. } => *role,
            NewItem::FunctionCall { .. } => Role::Assistant,
            NewItem::FunctionCallOutput { .. } => Role::User,
        }
    }

    /// The item's text: message texts and transcripts joined by newlines,
    /// a call's arguments, or a function's output.
    pub fn text(&self) -> String {
        match self {
            NewItem::Message { content, .. } => {
                let parts: Vec<&str> = content
                    .iter()
                    .filter_map(|part| match part {
                        ContentPart::InputText { text } | ContentPart::OutputText { text } => {
                            Some(text.as_str())
                        }
                        ContentPart::InputAudio { transcript, .. } => transcript.as_deref(),
                        ContentPart::OutputAudio { transcript } => Some(transcript.as_str()),
                    })
                    .filter(|t| !t.is_empty())
                    .collect();
                parts.join("\n")
            }
            NewItem::FunctionCall { arguments, .. } => arguments.clone(),
            NewItem::FunctionCallOutput { output, .. } => output.clone(),
        }
    }

    /// All input audio of the item, concatenated (24 kHz mono).
    pub fn audio(&self) -> Vec<f32> {
        let mut out = Vec::new();
        if let NewItem::Message { content, .. } = self {
            for part in content {
                if let ContentPart::InputAudio { audio, .. } = part {
                    out.extend_from_slice(audio);
                }
            }
        }
        out
    }

    /// The `call_id` of a function call or its output.
    pub fn call_id(&self) -> Option<&str> {
        match self {
            NewItem::FunctionCall { call_id, .. } | NewItem::FunctionCallOutput { call_id, .. } => {
                Some(call_id)
            }
            NewItem::Message { .. } => None,
        }
    }

    /// The item as a GA `realtime.item` with id `id` and status `completed`
    /// (for `conversation.item.added` / `.done` / `.retrieved`; pass it
    /// through [`adapt_outgoing`] for beta clients). Audio data is not echoed.
    pub fn to_json(&self, id: &str) -> Value {
        match self {
            NewItem::Message { role, content, .. } => {
                let content: Vec<Value> = content
                    .iter()
                    .map(|part| match part {
                        ContentPart::InputText { text } => {
                            json!({"type": "input_text", "text": text})
                        }
                        ContentPart::InputAudio { transcript, .. } => {
                            json!({"type": "input_audio", "transcript": transcript})
                        }
                        ContentPart::OutputText { text } => {
                            json!({"type": "output_text", "text": text})
                        }
                        ContentPart::OutputAudio { transcript } => {
                            json!({"type": "output_audio", "transcript": transcript})
                        }
                    })
                    .collect();
                json!({
                    "id": id,
                    "object": "realtime.item",
                    "type": "message",
                    "status": "completed",
                    "role": role_name(*role),
                    "content": content,
                })
            }
            NewItem::FunctionCall {
                call_id,
                name,
                arguments,
                ..
            } => json!({
                "id": id,
                "object": "realtime.item",
                "type": "function_call",
                "status": "completed",
                "call_id": call_id,
                "name": name,
                "arguments": arguments,
            }),
            NewItem::FunctionCallOutput {
                call_id, output, ..
            } => json!({
                "id": id,
                "object": "realtime.item",
                "type": "function_call_output",
                "status": "completed",
                "call_id": call_id,
                "output": output,
            }),
        }
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

/// One entry of `response.create`'s `input`.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseInput {
    /// A new item, used for this response only.
    Item(NewItem),
    /// `{"type": "item_reference", "id": ...}`: an existing item.
    Reference(String),
}

/// `max_output_tokens` / `max_response_output_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxOutputTokens {
    Limit(u32),
    Inf,
}

impl MaxOutputTokens {
    /// As the stages take it; `Inf` is [`INF_OUTPUT_TOKENS`].
    pub fn as_usize(self) -> usize {
        match self {
            MaxOutputTokens::Limit(n) => n as usize,
            MaxOutputTokens::Inf => INF_OUTPUT_TOKENS,
        }
    }

    pub fn to_json(self) -> Value {
        match self {
            MaxOutputTokens::Limit(n) => json!(n),
            MaxOutputTokens::Inf => json!("inf"),
        }
    }
}

/// Which conversation a response belongs to (`response.conversation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResponseConversation {
    /// The default conversation: the response's items are added to it.
    #[default]
    Auto,
    /// Out of band: nothing is added to the conversation.
    None,
}

/// The overrides of a `response.create` (GA and beta names accepted).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResponseParams {
    pub instructions: Option<String>,
    /// Normalized to `["audio"]` or `["text"]`.
    pub output_modalities: Option<Vec<String>>,
    pub max_output_tokens: Option<MaxOutputTokens>,
    pub temperature: Option<f32>,
    pub conversation: ResponseConversation,
    /// Up to 16 string key/value pairs, echoed in the response object.
    pub metadata: Option<Map<String, Value>>,
    pub tools: Option<Vec<Tool>>,
    /// "auto", "none", "required" or a function name.
    pub tool_choice: Option<String>,
    pub voice: Option<String>,
    /// The response's input instead of the conversation, if given.
    pub input: Option<Vec<ResponseInput>>,
}

/// Parses one client event (a WebSocket text message).
pub fn parse_client_event(text: &str) -> Result<ClientEvent, ProtocolError> {
    if text.len() > MAX_EVENT_BYTES {
        return Err(ProtocolError::new(
            "message_too_large",
            format!(
                "event is {} bytes; the limit is {MAX_EVENT_BYTES} bytes \
                 (send long audio as several input_audio_buffer.append events)",
                text.len()
            ),
        ));
    }
    if text.trim().is_empty() {
        return Err(ProtocolError::new(
            "invalid_json",
            "event is empty; expected a JSON object with a `type` field",
        ));
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ProtocolError::new("invalid_json", format!("event is not valid JSON: {e}")))?;
    parse_client_value(&value)
}

/// Parses one client event already parsed as JSON.
pub fn parse_client_value(value: &Value) -> Result<ClientEvent, ProtocolError> {
    let Value::Object(obj) = value else {
        return Err(ProtocolError::new(
            "invalid_json",
            format!(
                "expected a JSON object with a `type` field, got {}",
                describe(value)
            ),
        ));
    };
    let event_id = opt_str(obj, "", "event_id")?;
    let ty = match obj.get("type") {
        None | Some(Value::Null) => {
            return Err(ProtocolError::new(
                "missing_field",
                format!(
                    "event has no `type` field; known types: {}",
                    CLIENT_EVENT_TYPES.join(", ")
                ),
            )
            .with_param("type")
            .with_event_id(event_id));
        }
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(invalid(
                "type",
                format!("`type` must be a string, got {}", describe(other)),
            )
            .with_event_id(event_id));
        }
    };
    let parsed = match ty {
        "session.update" => parse_session_update(obj, event_id.clone()),
        "input_audio_buffer.append" => {
            // Borrowed, not copied: this is the hot path.
            let audio = match obj.get("audio") {
                Some(Value::String(b64)) => decode_audio(b64, "audio"),
                None | Some(Value::Null) => Err(missing("audio", "base64 PCM16 24 kHz mono audio")),
                Some(other) => Err(invalid(
                    "audio",
                    format!("`audio` must be a base64 string, got {}", describe(other)),
                )),
            };
            audio.map(|audio| ClientEvent::InputAudioBufferAppend {
                event_id: event_id.clone(),
                audio,
            })
        }
        "input_audio_buffer.commit" => Ok(ClientEvent::InputAudioBufferCommit {
            event_id: event_id.clone(),
        }),
        "input_audio_buffer.clear" => Ok(ClientEvent::InputAudioBufferClear {
            event_id: event_id.clone(),
        }),
        "output_audio_buffer.clear" => Ok(ClientEvent::OutputAudioBufferClear {
            event_id: event_id.clone(),
        }),
        "duplex.input_video.append" => parse_video_append(obj, event_id.clone()),
        "conversation.item.create" => parse_item_create(obj, event_id.clone()),
        "conversation.item.truncate" => parse_truncate(obj, event_id.clone()),
        "conversation.item.delete" => req_id(obj, "", "item_id", "the id of the item to delete")
            .map(|item_id| ClientEvent::ConversationItemDelete {
                event_id: event_id.clone(),
                item_id,
            }),
        "conversation.item.retrieve" => {
            req_id(obj, "", "item_id", "the id of the item to retrieve").map(|item_id| {
                ClientEvent::ConversationItemRetrieve {
                    event_id: event_id.clone(),
                    item_id,
                }
            })
        }
        "response.create" => {
            let response = match obj.get("response") {
                None | Some(Value::Null) => Ok(ResponseParams::default()),
                Some(v) => parse_response_params(v, "response"),
            };
            response.map(|response| ClientEvent::ResponseCreate {
                event_id: event_id.clone(),
                response,
            })
        }
        "response.cancel" => {
            opt_id(obj, "", "response_id").map(|response_id| ClientEvent::ResponseCancel {
                event_id: event_id.clone(),
                response_id,
            })
        }
        other => return Err(unknown_event(other).with_event_id(event_id)),
    };
    parsed.map_err(|e| e.prefixed(ty).with_event_id(event_id))
}

fn unknown_event(ty: &str) -> ProtocolError {
    let shown = clip(ty, 64);
    if let Some((_, why)) = UNSUPPORTED_EVENT_TYPES.iter().find(|(name, _)| *name == ty) {
        return ProtocolError::new(
            "unknown_event",
            format!("event type `{shown}` is not supported: {why}"),
        )
        .with_param("type");
    }
    // A server event sent back (`session.updated`), or a near miss.
    let hint = ["d", "ed", "ted"]
        .iter()
        .filter_map(|suffix| ty.strip_suffix(suffix))
        .find(|stem| CLIENT_EVENT_TYPES.contains(stem))
        .map(|stem| format!(" (`{shown}` is a server event; did you mean `{stem}`?)"))
        .unwrap_or_default();
    ProtocolError::new(
        "unknown_event",
        format!(
            "unknown event type `{shown}`{hint}; known types: {}",
            CLIENT_EVENT_TYPES.join(", ")
        ),
    )
    .with_param("type")
}

/// `duplex.input_video.append`: `image` must be base64 of a JPEG or PNG.
fn parse_video_append(
    obj: &Map<String, Value>,
    event_id: Option<String>,
) -> Result<ClientEvent, ProtocolError> {
    let b64 = match obj.get("image") {
        Some(Value::String(b64)) => b64,
        None | Some(Value::Null) => {
            return Err(missing("image", "a base64 JPEG or PNG camera frame"));
        }
        Some(other) => {
            return Err(invalid(
                "image",
                format!("`image` must be a base64 string, got {}", describe(other)),
            ));
        }
    };
    let image = BASE64
        .decode(b64)
        .map_err(|e| invalid("image", format!("`image` is not valid base64: {e}")))?;
    let is_jpeg = image.starts_with(&[0xFF, 0xD8, 0xFF]);
    let is_png = image.starts_with(b"\x89PNG\r\n\x1a\n");
    if !is_jpeg && !is_png {
        return Err(invalid(
            "image",
            format!(
                "`image` must be a JPEG or PNG file ({} bytes that are neither)",
                image.len()
            ),
        ));
    }
    Ok(ClientEvent::InputVideoAppend { event_id, image })
}

/// Decodes base64 PCM16 (little-endian) audio, with a precise error.
fn decode_audio(b64: &str, param: &str) -> Result<Vec<f32>, ProtocolError> {
    match crate::audio::pcm16_base64_decode(b64) {
        Ok(samples) => Ok(samples),
        Err(_) => Err(audio_error(b64, param)),
    }
}

/// Says exactly why `b64` is not PCM16 audio (the slow path: errors only).
fn audio_error(b64: &str, param: &str) -> ProtocolError {
    let lead = b64.len() - b64.trim_start().len();
    let trimmed = b64.trim();
    let message = match BASE64.decode(trimmed) {
        Err(base64::DecodeError::InvalidByte(offset, byte)) => format!(
            "`{param}` is not valid base64 (invalid byte 0x{byte:02x} at offset {})",
            offset + lead
        ),
        Err(base64::DecodeError::InvalidLastSymbol(offset, byte)) => format!(
            "`{param}` is not valid base64 (invalid last symbol 0x{byte:02x} at offset {}; \
             is it truncated?)",
            offset + lead
        ),
        Err(base64::DecodeError::InvalidLength(len)) => format!(
            "`{param}` is not valid base64 ({len} symbols is not a valid base64 length; \
             is it truncated?)"
        ),
        Err(base64::DecodeError::InvalidPadding) => format!(
            "`{param}` is not valid base64 (bad `=` padding: standard padded base64 is expected)"
        ),
        Ok(bytes) if bytes.len() % 2 == 1 => format!(
            "`{param}` decodes to {} bytes, an odd count: pcm16 audio is 2 bytes \
             (16-bit little-endian) per sample, 24 kHz mono",
            bytes.len()
        ),
        Ok(_) => format!("`{param}` could not be decoded as base64 PCM16 audio"),
    };
    ProtocolError::new("invalid_audio", message).with_param(param)
}

fn parse_truncate(
    obj: &Map<String, Value>,
    event_id: Option<String>,
) -> Result<ClientEvent, ProtocolError> {
    let item_id = req_id(
        obj,
        "",
        "item_id",
        "the id of the assistant item to truncate",
    )?;
    let content_index = opt_int(obj, "", "content_index", 0, u32::MAX as u64)?.unwrap_or(0) as u32;
    let audio_end_ms = opt_int(obj, "", "audio_end_ms", 0, 24 * 3_600_000)?.ok_or_else(|| {
        missing(
            "audio_end_ms",
            "how many ms of the item's audio the client played",
        )
    })?;
    Ok(ClientEvent::ConversationItemTruncate {
        event_id,
        item_id,
        content_index,
        audio_end_ms,
    })
}

fn parse_item_create(
    obj: &Map<String, Value>,
    event_id: Option<String>,
) -> Result<ClientEvent, ProtocolError> {
    let previous_item_id = opt_id(obj, "", "previous_item_id")?;
    let item = match obj.get("item") {
        None | Some(Value::Null) => return Err(missing("item", "the item to add")),
        Some(v) => parse_item(v, "item")?,
    };
    Ok(ClientEvent::ConversationItemCreate {
        event_id,
        previous_item_id,
        item,
    })
}

/// Parses a conversation item (GA or beta shape).
fn parse_item(v: &Value, path: &str) -> Result<NewItem, ProtocolError> {
    let obj = as_object(v, path)?;
    let id = opt_id(obj, path, "id")?;
    // Beta made `type` optional; infer it when it is unambiguous.
    let ty = match opt_str(obj, path, "type")? {
        Some(t) => t,
        None if obj.contains_key("role") => "message".into(),
        None if obj.contains_key("output") => "function_call_output".into(),
        None => {
            return Err(missing(
                &join(path, "type"),
                "\"message\", \"function_call\" or \"function_call_output\"",
            ));
        }
    };
    match ty.as_str() {
        "message" => parse_message(obj, path, id),
        "function_call_output" => {
            let call_id = req_id(
                obj,
                path,
                "call_id",
                "the call_id of the function call this answers",
            )?;
            let output = match present(obj, "output") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => {
                    let param = join(path, "output");
                    return Err(invalid(
                        &param,
                        format!(
                            "`{param}` must be a string (serialize structured results as JSON text), got {}",
                            describe(other)
                        ),
                    ));
                }
                None => {
                    return Err(missing(
                        &join(path, "output"),
                        "the function's result as a string",
                    ));
                }
            };
            Ok(NewItem::FunctionCallOutput {
                id,
                call_id,
                output,
            })
        }
        "function_call" => {
            let call_id = req_id(obj, path, "call_id", "the id of the call")?;
            let name = req_id(obj, path, "name", "the function's name")?;
            let arguments = opt_str(obj, path, "arguments")?.unwrap_or_default();
            Ok(NewItem::FunctionCall {
                id,
                call_id,
                name,
                arguments,
            })
        }
        other => {
            let param = join(path, "type");
            Err(invalid(
                &param,
                format!(
                    "`{param}` \"{}\" is not supported; supported item types: message, \
                     function_call, function_call_output",
                    clip(other, 64)
                ),
            ))
        }
    }
}

fn parse_message(
    obj: &Map<String, Value>,
    path: &str,
    id: Option<String>,
) -> Result<NewItem, ProtocolError> {
    let role_param = join(path, "role");
    let role = match opt_str(obj, path, "role")?.as_deref() {
        Some("user") => Role::User,
        Some("system") => Role::System,
        Some("assistant") => Role::Assistant,
        Some(other) => {
            return Err(invalid(
                &role_param,
                format!(
                    "`{role_param}` must be \"user\", \"system\" or \"assistant\", got \"{}\"",
                    clip(other, 40)
                ),
            ));
        }
        None => {
            return Err(missing(
                &role_param,
                "\"user\", \"system\" or \"assistant\"",
            ));
        }
    };
    let content_param = join(path, "content");
    let parts = match present(obj, "content") {
        Some(Value::Array(parts)) => parts,
        Some(other) => {
            return Err(invalid(
                &content_param,
                format!(
                    "`{content_param}` must be an array of content parts, got {}",
                    describe(other)
                ),
            ));
        }
        None => return Err(missing(&content_param, "an array of content parts")),
    };
    if parts.is_empty() {
        return Err(invalid(
            &content_param,
            format!("`{content_param}` must hold at least one content part"),
        ));
    }
    let mut content = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let part_path = format!("{content_param}[{i}]");
        content.push(parse_content_part(part, &part_path, role)?);
    }
    Ok(NewItem::Message { id, role, content })
}

fn parse_content_part(v: &Value, path: &str, role: Role) -> Result<ContentPart, ProtocolError> {
    let obj = as_object(v, path)?;
    let type_param = join(path, "type");
    let ty = opt_str(obj, path, "type")?
        .ok_or_else(|| missing(&type_param, "the content part's type, e.g. \"input_text\""))?;
    let text = |what: &str| -> Result<String, ProtocolError> { req_str(obj, path, "text", what) };
    let part = match (role, ty.as_str()) {
        (Role::User | Role::System, "input_text") | (Role::User, "text") => {
            ContentPart::InputText {
                text: text("the message text")?,
            }
        }
        (Role::User, "input_audio") => {
            let transcript = opt_str(obj, path, "transcript")?;
            let audio = match opt_str(obj, path, "audio")? {
                Some(b64) => decode_audio(&b64, &join(path, "audio"))?,
                None if transcript.is_some() => Vec::new(),
                None => {
                    return Err(missing(
                        &join(path, "audio"),
                        "base64 PCM16 24 kHz mono audio",
                    ));
                }
            };
            ContentPart::InputAudio { audio, transcript }
        }
        (Role::Assistant, "output_text" | "text") => ContentPart::OutputText {
            text: text("the assistant's text")?,
        },
        (Role::Assistant, "output_audio" | "audio") => ContentPart::OutputAudio {
            transcript: opt_str(obj, path, "transcript")?.unwrap_or_default(),
        },
        (_, other) => {
            let supported = match role {
                Role::User => "input_text, input_audio",
                Role::System => "input_text",
                Role::Assistant => "output_text, output_audio (beta: text, audio)",
            };
            let why = if other == "input_image" {
                " (images are not supported by this server)"
            } else {
                ""
            };
            return Err(invalid(
                &type_param,
                format!(
                    "`{type_param}` \"{}\" is not valid in a {} message{why}; supported: {supported}",
                    clip(other, 40),
                    role_name(role)
                ),
            ));
        }
    };
    Ok(part)
}

fn parse_response_params(v: &Value, path: &str) -> Result<ResponseParams, ProtocolError> {
    let obj = as_object(v, path)?;
    let mut params = ResponseParams {
        instructions: opt_str(obj, path, "instructions")?,
        output_modalities: parse_modalities_of(obj, path)?,
        max_output_tokens: parse_max_tokens_of(obj, path)?,
        temperature: opt_number(obj, path, "temperature", 0.0, 2.0)?.map(|t| t as f32),
        ..ResponseParams::default()
    };
    if let Some(c) = present(obj, "conversation") {
        let param = join(path, "conversation");
        params.conversation = match c {
            Value::String(s) if s == "auto" => ResponseConversation::Auto,
            Value::String(s) if s == "none" => ResponseConversation::None,
            other => {
                return Err(invalid(
                    &param,
                    format!(
                        "`{param}` must be \"auto\" or \"none\" (one conversation per session), got {}",
                        describe(other)
                    ),
                ));
            }
        };
    }
    if let Some(m) = present(obj, "metadata") {
        let param = join(path, "metadata");
        let map = as_object(m, &param)?;
        if map.len() > 16 {
            return Err(invalid(
                &param,
                format!("`{param}` has {} keys; at most 16 are allowed", map.len()),
            ));
        }
        for (key, value) in map {
            if !value.is_string() {
                return Err(invalid(
                    &param,
                    format!(
                        "`{param}` values must be strings; `{}` is {}",
                        clip(key, 40),
                        describe(value)
                    ),
                ));
            }
        }
        params.metadata = Some(map.clone());
    }
    if let Some(t) = present(obj, "tools") {
        params.tools = Some(parse_tools(t, &join(path, "tools"))?);
    }
    if let Some(t) = present(obj, "tool_choice") {
        params.tool_choice = Some(parse_tool_choice(t, &join(path, "tool_choice"))?);
    }
    // Voice and format: beta flat, GA under audio.output.
    if let Some(voice) = present(obj, "voice") {
        params.voice = Some(parse_voice(voice, &join(path, "voice"))?);
    }
    if let Some(f) = present(obj, "output_audio_format") {
        parse_format(f, &join(path, "output_audio_format"))?;
    }
    if let Some(audio) = present(obj, "audio") {
        let audio_path = join(path, "audio");
        let audio = as_object(audio, &audio_path)?;
        if let Some(output) = present(audio, "output") {
            let output_path = join(&audio_path, "output");
            let output = as_object(output, &output_path)?;
            if let Some(voice) = present(output, "voice") {
                params.voice = Some(parse_voice(voice, &join(&output_path, "voice"))?);
            }
            if let Some(f) = present(output, "format") {
                parse_format(f, &join(&output_path, "format"))?;
            }
        }
    }
    if let Some(input) = present(obj, "input") {
        let param = join(path, "input");
        let Value::Array(entries) = input else {
            return Err(invalid(
                &param,
                format!(
                    "`{param}` must be an array of items, got {}",
                    describe(input)
                ),
            ));
        };
        let mut out = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let entry_path = format!("{param}[{i}]");
            let entry_obj = as_object(entry, &entry_path)?;
            if present(entry_obj, "type").and_then(Value::as_str) == Some("item_reference") {
                out.push(ResponseInput::Reference(req_id(
                    entry_obj,
                    &entry_path,
                    "id",
                    "the id of an existing item",
                )?));
            } else {
                out.push(ResponseInput::Item(parse_item(entry, &entry_path)?));
            }
        }
        params.input = Some(out);
    }
    Ok(params)
}

// ---------------------------------------------------------------------------
// Session update
// ---------------------------------------------------------------------------

/// Server VAD, or semantic VAD (the silence wait follows an end-of-turn score
/// of each pause when the pipeline has an `end_of_turn` node, else the
/// eagerness' fallback).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VadKind {
    ServerVad,
    SemanticVad,
}

impl VadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VadKind::ServerVad => "server_vad",
            VadKind::SemanticVad => "semantic_vad",
        }
    }
}

pub use crate::turn::Eagerness;

/// A `turn_detection` object of a session.update; absent fields keep their
/// current value (or the default when the type changes).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TurnDetectionUpdate {
    /// `None`: keep the current type (server_vad if off), unless the fields
    /// given belong to one type only.
    pub kind: Option<VadKind>,
    pub threshold: Option<f32>,
    pub prefix_padding_ms: Option<u64>,
    pub silence_duration_ms: Option<u64>,
    pub create_response: Option<bool>,
    pub interrupt_response: Option<bool>,
    /// `Some(None)`: set to null.
    pub idle_timeout_ms: Option<Option<u64>>,
    pub eagerness: Option<Eagerness>,
}

/// `input_audio_transcription` / `audio.input.transcription`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TranscriptionUpdate {
    pub model: Option<String>,
    pub language: Option<String>,
    pub prompt: Option<String>,
}

/// A validated session.update (GA, beta or mixed shape). `None` fields are
/// left as they are; for nullable settings `Some(None)` turns them off.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SessionUpdate {
    /// Accepted and ignored: the server runs its own model.
    pub model: Option<String>,
    pub instructions: Option<String>,
    /// Normalized to `["audio"]` or `["text"]`.
    pub output_modalities: Option<Vec<String>>,
    pub turn_detection: Option<Option<TurnDetectionUpdate>>,
    pub transcription: Option<Option<TranscriptionUpdate>>,
    /// `near_field` / `far_field`; reported back only.
    pub noise_reduction: Option<Option<String>>,
    pub voice: Option<String>,
    pub speed: Option<f32>,
    pub tools: Option<Vec<Tool>>,
    /// "auto", "none", "required" or a function name.
    pub tool_choice: Option<String>,
    pub max_output_tokens: Option<MaxOutputTokens>,
    pub temperature: Option<f32>,
}

impl SessionUpdate {
    /// Parses and validates a session object as a client sends it
    /// (`path` is its parameter path, `"session"` in a session.update).
    pub fn from_json(v: &Value, path: &str) -> Result<SessionUpdate, ProtocolError> {
        let obj = as_object(v, path)?;
        if let Some(t) = present(obj, "type") {
            let param = join(path, "type");
            match t {
                Value::String(s) if s == "realtime" => {}
                Value::String(s) if s == "transcription" => {
                    return Err(invalid(
                        &param,
                        format!(
                            "`{param}` \"transcription\" is not supported: this server runs \
                             conversation sessions only (`\"realtime\"`)"
                        ),
                    ));
                }
                other => {
                    return Err(invalid(
                        &param,
                        format!("`{param}` must be \"realtime\", got {}", describe(other)),
                    ));
                }
            }
        }
        let mut update = SessionUpdate {
            model: opt_str(obj, path, "model")?,
            instructions: opt_str(obj, path, "instructions")?,
            output_modalities: parse_modalities_of(obj, path)?,
            max_output_tokens: parse_max_tokens_of(obj, path)?,
            temperature: opt_number(obj, path, "temperature", 0.0, 2.0)?.map(|t| t as f32),
            ..SessionUpdate::default()
        };
        if let Some(t) = present(obj, "tools") {
            update.tools = Some(parse_tools(t, &join(path, "tools"))?);
        }
        if let Some(t) = present(obj, "tool_choice") {
            update.tool_choice = Some(parse_tool_choice(t, &join(path, "tool_choice"))?);
        }

        // Beta: flat audio settings.
        if let Some(f) = present(obj, "input_audio_format") {
            parse_format(f, &join(path, "input_audio_format"))?;
        }
        if let Some(f) = present(obj, "output_audio_format") {
            parse_format(f, &join(path, "output_audio_format"))?;
        }
        if let Some(td) = obj.get("turn_detection") {
            update.turn_detection = Some(parse_turn_detection(td, &join(path, "turn_detection"))?);
        }
        if let Some(tr) = obj.get("input_audio_transcription") {
            update.transcription = Some(parse_transcription(
                tr,
                &join(path, "input_audio_transcription"),
            )?);
        }
        if let Some(nr) = obj.get("input_audio_noise_reduction") {
            update.noise_reduction = Some(parse_noise_reduction(
                nr,
                &join(path, "input_audio_noise_reduction"),
            )?);
        }
        if let Some(voice) = present(obj, "voice") {
            update.voice = Some(parse_voice(voice, &join(path, "voice"))?);
        }
        if let Some(speed) = opt_number(obj, path, "speed", 0.25, 1.5)? {
            update.speed = Some(speed as f32);
        }

        // GA: audio.input / audio.output (wins over the beta fields).
        if let Some(audio) = present(obj, "audio") {
            let audio_path = join(path, "audio");
            let audio = as_object(audio, &audio_path)?;
            if let Some(input) = present(audio, "input") {
                let input_path = join(&audio_path, "input");
                let input = as_object(input, &input_path)?;
                if let Some(f) = present(input, "format") {
                    parse_format(f, &join(&input_path, "format"))?;
                }
                if let Some(td) = input.get("turn_detection") {
                    update.turn_detection = Some(parse_turn_detection(
                        td,
                        &join(&input_path, "turn_detection"),
                    )?);
                }
                if let Some(tr) = input.get("transcription") {
                    update.transcription = Some(parse_transcription(
                        tr,
                        &join(&input_path, "transcription"),
                    )?);
                }
                if let Some(nr) = input.get("noise_reduction") {
                    update.noise_reduction = Some(parse_noise_reduction(
                        nr,
                        &join(&input_path, "noise_reduction"),
                    )?);
                }
            }
            if let Some(output) = present(audio, "output") {
                let output_path = join(&audio_path, "output");
                let output = as_object(output, &output_path)?;
                if let Some(f) = present(output, "format") {
                    parse_format(f, &join(&output_path, "format"))?;
                }
                if let Some(voice) = present(output, "voice") {
                    update.voice = Some(parse_voice(voice, &join(&output_path, "voice"))?);
                }
                if let Some(speed) = opt_number(output, &output_path, "speed", 0.25, 1.5)? {
                    update.speed = Some(speed as f32);
                }
            }
        }
        Ok(update)
    }

    /// Re-checks the ranges `from_json` enforces (for hand-built updates).
    fn validate(&self) -> Result<(), ProtocolError> {
        let range = |x: f32, lo: f32, hi: f32, param: &str| {
            if x.is_finite() && x >= lo && x <= hi {
                Ok(())
            } else {
                Err(invalid(
                    param,
                    format!("`{param}` must be a number between {lo} and {hi}, got {x}"),
                ))
            }
        };
        if let Some(Some(td)) = &self.turn_detection {
            if let Some(t) = td.threshold {
                check_threshold(t as f64, "session.turn_detection.threshold")?;
            }
            for (value, name) in [
                (td.prefix_padding_ms, "prefix_padding_ms"),
                (td.silence_duration_ms, "silence_duration_ms"),
            ] {
                if let Some(ms) = value
                    && ms > 10_000
                {
                    let param = format!("session.turn_detection.{name}");
                    return Err(invalid(
                        &param,
                        format!("`{param}` must be an integer between 0 and 10000, got {ms}"),
                    ));
                }
            }
        }
        if let Some(t) = self.temperature {
            range(t, 0.0, 2.0, "session.temperature")?;
        }
        if let Some(s) = self.speed {
            range(s, 0.25, 1.5, "session.speed")?;
        }
        if let Some(MaxOutputTokens::Limit(n)) = self.max_output_tokens
            && !(1..=MAX_OUTPUT_TOKENS_LIMIT).contains(&n)
        {
            return Err(invalid(
                "session.max_output_tokens",
                format!(
                    "`session.max_output_tokens` must be an integer between 1 and \
                     {MAX_OUTPUT_TOKENS_LIMIT} or \"inf\", got {n}"
                ),
            ));
        }
        if let Some(m) = &self.output_modalities {
            let ok = matches!(m.as_slice(), [x] if x == "audio" || x == "text");
            if !ok {
                return Err(invalid(
                    "session.output_modalities",
                    format!(
                        "`session.output_modalities` must be [\"audio\"] or [\"text\"], got {m:?}"
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn parse_session_update(
    obj: &Map<String, Value>,
    event_id: Option<String>,
) -> Result<ClientEvent, ProtocolError> {
    let session = match obj.get("session") {
        None | Some(Value::Null) => {
            return Err(missing("session", "the session settings to change"));
        }
        Some(v) => SessionUpdate::from_json(v, "session")?,
    };
    Ok(ClientEvent::SessionUpdate { event_id, session })
}

/// `output_modalities` (GA) or `modalities` (beta) of `obj`, normalized to
/// `["audio"]` (audio with its transcript) or `["text"]`.
fn parse_modalities_of(
    obj: &Map<String, Value>,
    path: &str,
) -> Result<Option<Vec<String>>, ProtocolError> {
    let (key, v) = match (
        present(obj, "output_modalities"),
        present(obj, "modalities"),
    ) {
        (Some(v), _) => ("output_modalities", v),
        (None, Some(v)) => ("modalities", v),
        (None, None) => return Ok(None),
    };
    let param = join(path, key);
    let expected = "[\"audio\"] or [\"text\"] (beta: [\"text\", \"audio\"] or [\"text\"])";
    let Value::Array(items) = v else {
        return Err(invalid(
            &param,
            format!("`{param}` must be {expected}, got {}", describe(v)),
        ));
    };
    let mut audio = false;
    let mut text = false;
    for item in items {
        match item.as_str() {
            Some("audio") => audio = true,
            Some("text") => text = true,
            _ => {
                return Err(invalid(
                    &param,
                    format!(
                        "`{param}` may hold only \"audio\" and \"text\", got {}",
                        describe(item)
                    ),
                ));
            }
        }
    }
    let modality = match (audio, text) {
        (true, _) => "audio",
        (false, true) => "text",
        (false, false) => {
            return Err(invalid(
                &param,
                format!("`{param}` must not be empty; use {expected}"),
            ));
        }
    };
    Ok(Some(vec![modality.to_string()]))
}

/// `max_output_tokens` (GA) or `max_response_output_tokens` (beta).
fn parse_max_tokens_of(
    obj: &Map<String, Value>,
    path: &str,
) -> Result<Option<MaxOutputTokens>, ProtocolError> {
    let (key, v) = match (
        present(obj, "max_output_tokens"),
        present(obj, "max_response_output_tokens"),
    ) {
        (Some(v), _) => ("max_output_tokens", v),
        (None, Some(v)) => ("max_response_output_tokens", v),
        (None, None) => return Ok(None),
    };
    let param = join(path, key);
    if v.as_str() == Some("inf") {
        return Ok(Some(MaxOutputTokens::Inf));
    }
    match whole(v) {
        Some(n) if n >= 1 && n <= MAX_OUTPUT_TOKENS_LIMIT as u64 => {
            Ok(Some(MaxOutputTokens::Limit(n as u32)))
        }
        _ => Err(invalid(
            &param,
            format!(
                "`{param}` must be an integer between 1 and {MAX_OUTPUT_TOKENS_LIMIT} or \"inf\", got {}",
                describe(v)
            ),
        )),
    }
}

/// Accepts only PCM16 at 24 kHz, in any of its spellings.
fn parse_format(v: &Value, param: &str) -> Result<(), ProtocolError> {
    match v {
        Value::String(s) if s == "pcm16" || s == "audio/pcm" => Ok(()),
        Value::String(s) => Err(invalid(
            param,
            format!(
                "`{param}` \"{}\" is not supported; {SUPPORTED_FORMAT}",
                clip(s, 40)
            ),
        )),
        Value::Object(o) => {
            match present(o, "type") {
                None => {}
                Some(Value::String(s)) if s == "audio/pcm" || s == "pcm16" => {}
                Some(other) => {
                    let type_param = join(param, "type");
                    return Err(invalid(
                        &type_param,
                        format!(
                            "`{type_param}` {} is not supported; {SUPPORTED_FORMAT}",
                            describe(other)
                        ),
                    ));
                }
            }
            if let Some(rate) = present(o, "rate")
                && whole(rate) != Some(SAMPLE_RATE as u64)
            {
                let rate_param = join(param, "rate");
                return Err(invalid(
                    &rate_param,
                    format!(
                        "`{rate_param}` must be 24000, got {}; {SUPPORTED_FORMAT}",
                        describe(rate)
                    ),
                ));
            }
            Ok(())
        }
        other => Err(invalid(
            param,
            format!(
                "`{param}` must be a format object, got {}; {SUPPORTED_FORMAT}",
                describe(other)
            ),
        )),
    }
}

fn check_threshold(x: f64, param: &str) -> Result<f32, ProtocolError> {
    if x.is_finite() && x > 0.0 && x < 1.0 {
        Ok(x as f32)
    } else {
        Err(invalid(
            param,
            format!("`{param}` must be a number between 0 and 1 (exclusive), got {x}"),
        ))
    }
}

/// A `turn_detection` value; null turns it off.
fn parse_turn_detection(
    v: &Value,
    path: &str,
) -> Result<Option<TurnDetectionUpdate>, ProtocolError> {
    if v.is_null() {
        return Ok(None);
    }
    let obj = as_object(v, path)?;
    let type_param = join(path, "type");
    let kind = match present(obj, "type") {
        None => None,
        Some(Value::String(s)) if s == "server_vad" => Some(VadKind::ServerVad),
        Some(Value::String(s)) if s == "semantic_vad" => Some(VadKind::SemanticVad),
        Some(other) => {
            return Err(invalid(
                &type_param,
                format!(
                    "`{type_param}` {} is not supported; supported: \"server_vad\", \"semantic_vad\" \
                     (or set `turn_detection` to null to commit turns yourself)",
                    describe(other)
                ),
            ));
        }
    };
    let threshold = match present(obj, "threshold") {
        None => None,
        Some(t) => {
            let param = join(path, "threshold");
            match t.as_f64() {
                Some(x) => Some(check_threshold(x, &param)?),
                None => {
                    return Err(invalid(
                        &param,
                        format!(
                            "`{param}` must be a number between 0 and 1 (exclusive), got {}",
                            describe(t)
                        ),
                    ));
                }
            }
        }
    };
    let update = TurnDetectionUpdate {
        kind,
        threshold,
        prefix_padding_ms: opt_int(obj, path, "prefix_padding_ms", 0, 10_000)?,
        silence_duration_ms: opt_int(obj, path, "silence_duration_ms", 0, 10_000)?,
        create_response: opt_bool(obj, path, "create_response")?,
        interrupt_response: opt_bool(obj, path, "interrupt_response")?,
        idle_timeout_ms: match obj.get("idle_timeout_ms") {
            None => None,
            Some(Value::Null) => Some(None),
            Some(_) => Some(opt_int(obj, path, "idle_timeout_ms", 1_000, 600_000)?),
        },
        eagerness: match present(obj, "eagerness") {
            None => None,
            Some(e) => Some(match e.as_str() {
                Some("low") => Eagerness::Low,
                Some("medium") => Eagerness::Medium,
                Some("high") => Eagerness::High,
                Some("auto") => Eagerness::Auto,
                _ => {
                    let param = join(path, "eagerness");
                    return Err(invalid(
                        &param,
                        format!(
                            "`{param}` must be \"low\", \"medium\", \"high\" or \"auto\", got {}",
                            describe(e)
                        ),
                    ));
                }
            }),
        },
    };
    // Fields of the other type are an error, not silently dropped.
    let server_only = [
        ("threshold", update.threshold.is_some()),
        ("prefix_padding_ms", update.prefix_padding_ms.is_some()),
        ("silence_duration_ms", update.silence_duration_ms.is_some()),
        (
            "idle_timeout_ms",
            matches!(update.idle_timeout_ms, Some(Some(_))),
        ),
    ];
    let first_server_only = server_only
        .iter()
        .find(|(_, given)| *given)
        .map(|(n, _)| *n);
    let kind = match (kind, first_server_only, update.eagerness.is_some()) {
        (Some(VadKind::SemanticVad), Some(field), _) => {
            let param = join(path, field);
            return Err(invalid(
                &param,
                format!(
                    "`{param}` applies only to \"server_vad\", not \"semantic_vad\" (use `eagerness`)"
                ),
            ));
        }
        (Some(VadKind::ServerVad), _, true) => {
            let param = join(path, "eagerness");
            return Err(invalid(
                &param,
                format!("`{param}` applies only to \"semantic_vad\", not \"server_vad\""),
            ));
        }
        (None, Some(field), true) => {
            return Err(invalid(
                &type_param,
                format!(
                    "`{path}` mixes `{field}` (server_vad) and `eagerness` (semantic_vad); \
                     set `type` to one of them"
                ),
            ));
        }
        (None, Some(_), false) => Some(VadKind::ServerVad),
        (None, None, true) => Some(VadKind::SemanticVad),
        (kind, _, _) => kind,
    };
    Ok(Some(TurnDetectionUpdate { kind, ..update }))
}

fn parse_transcription(
    v: &Value,
    path: &str,
) -> Result<Option<TranscriptionUpdate>, ProtocolError> {
    if v.is_null() {
        return Ok(None);
    }
    let obj = as_object(v, path)?;
    Ok(Some(TranscriptionUpdate {
        model: opt_str(obj, path, "model")?.filter(|m| !m.is_empty()),
        language: opt_str(obj, path, "language")?.filter(|l| !l.is_empty()),
        prompt: opt_str(obj, path, "prompt")?,
    }))
}

fn parse_noise_reduction(v: &Value, path: &str) -> Result<Option<String>, ProtocolError> {
    if v.is_null() {
        return Ok(None);
    }
    let obj = as_object(v, path)?;
    match opt_str(obj, path, "type")?.as_deref() {
        None => Ok(Some("near_field".into())),
        Some(t @ ("near_field" | "far_field")) => Ok(Some(t.to_string())),
        Some(other) => {
            let param = join(path, "type");
            Err(invalid(
                &param,
                format!(
                    "`{param}` must be \"near_field\" or \"far_field\", got \"{}\"",
                    clip(other, 40)
                ),
            ))
        }
    }
}

/// A voice name, or GA's `{"id": ...}` custom voice.
fn parse_voice(v: &Value, param: &str) -> Result<String, ProtocolError> {
    let name = match v {
        Value::String(s) => s.as_str(),
        Value::Object(o) => match present(o, "id") {
            Some(Value::String(s)) => s.as_str(),
            _ => {
                return Err(missing(&join(param, "id"), "the custom voice's id"));
            }
        },
        other => {
            return Err(invalid(
                param,
                format!(
                    "`{param}` must be a voice name such as \"alloy\", got {}",
                    describe(other)
                ),
            ));
        }
    };
    if name.is_empty() || name.len() > 128 {
        return Err(invalid(
            param,
            format!("`{param}` must be a voice name of 1 to 128 bytes"),
        ));
    }
    Ok(name.to_string())
}

fn valid_function_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn parse_tools(v: &Value, path: &str) -> Result<Vec<Tool>, ProtocolError> {
    let Value::Array(entries) = v else {
        return Err(invalid(
            path,
            format!(
                "`{path}` must be an array of function tools, got {}",
                describe(v)
            ),
        ));
    };
    let mut tools = Vec::with_capacity(entries.len());
    let mut names = HashSet::new();
    for (i, entry) in entries.iter().enumerate() {
        let tool_path = format!("{path}[{i}]");
        let obj = as_object(entry, &tool_path)?;
        match present(obj, "type") {
            None => {}
            Some(Value::String(s)) if s == "function" => {}
            Some(other) => {
                let param = join(&tool_path, "type");
                return Err(invalid(
                    &param,
                    format!(
                        "`{param}` must be \"function\" (the only tool type this server runs), got {}",
                        describe(other)
                    ),
                ));
            }
        }
        let name_param = join(&tool_path, "name");
        let name = req_str(obj, &tool_path, "name", "the function's name")?;
        if !valid_function_name(&name) {
            return Err(invalid(
                &name_param,
                format!(
                    "`{name_param}` \"{}\" must be 1 to 64 letters, digits, `_` or `-`",
                    clip(&name, 70)
                ),
            ));
        }
        if !names.insert(name.clone()) {
            return Err(invalid(
                &name_param,
                format!("`{name_param}`: a tool named \"{name}\" is already defined"),
            ));
        }
        let description = opt_str(obj, &tool_path, "description")?.unwrap_or_default();
        let parameters = match present(obj, "parameters") {
            None => json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(other) => {
                let param = join(&tool_path, "parameters");
                return Err(invalid(
                    &param,
                    format!(
                        "`{param}` must be a JSON Schema object, got {}",
                        describe(other)
                    ),
                ));
            }
        };
        tools.push(Tool {
            name,
            description,
            parameters,
        });
    }
    Ok(tools)
}

/// "auto" / "none" / "required", a function name (beta), or GA's
/// `{"type": "function", "name": ...}`.
fn parse_tool_choice(v: &Value, param: &str) -> Result<String, ProtocolError> {
    match v {
        Value::String(s) if valid_function_name(s) => Ok(s.clone()),
        Value::Object(o) => {
            match present(o, "type") {
                Some(Value::String(t)) if t == "function" => {}
                other => {
                    let type_param = join(param, "type");
                    return Err(invalid(
                        &type_param,
                        format!(
                            "`{type_param}` must be \"function\", got {}",
                            other.map(describe).unwrap_or_else(|| "nothing".into())
                        ),
                    ));
                }
            }
            // GA: {"type": "function", "name"}; chat-style {"function": {"name"}}.
            let name = match (
                present(o, "name"),
                o.get("function").and_then(|f| f.get("name")),
            ) {
                (Some(Value::String(n)), _) | (None, Some(Value::String(n))) => n.clone(),
                _ => return Err(missing(&join(param, "name"), "the function to call")),
            };
            if !valid_function_name(&name) {
                let name_param = join(param, "name");
                return Err(invalid(
                    &name_param,
                    format!(
                        "`{name_param}` \"{}\" is not a valid function name",
                        clip(&name, 70)
                    ),
                ));
            }
            Ok(name)
        }
        other => Err(invalid(
            param,
            format!(
                "`{param}` must be \"auto\", \"none\", \"required\" or {{\"type\": \"function\", \
                 \"name\": ...}}, got {}",
                describe(other)
            ),
        )),
    }
}

fn is_tool_mode(choice: &str) -> bool {
    matches!(choice, "auto" | "none" | "required")
}

// ---------------------------------------------------------------------------
// Session state
// ---------------------------------------------------------------------------

/// The current turn detection of a session.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnDetectionConfig {
    pub kind: VadKind,
    pub threshold: f32,
    pub prefix_padding_ms: u64,
    pub silence_duration_ms: u64,
    pub create_response: bool,
    pub interrupt_response: bool,
    pub idle_timeout_ms: Option<u64>,
    pub eagerness: Eagerness,
}

impl TurnDetectionConfig {
    /// The pipeline's turn detection (server VAD, or semantic VAD when the
    /// pipeline's VAD runs it).
    pub fn from_pipeline(t: &TurnDetection) -> Self {
        TurnDetectionConfig {
            kind: match t.semantic {
                Some(_) => VadKind::SemanticVad,
                None => VadKind::ServerVad,
            },
            threshold: t.threshold,
            prefix_padding_ms: t.prefix_padding_ms,
            silence_duration_ms: t.silence_duration_ms,
            create_response: t.create_response,
            interrupt_response: t.interrupt_response,
            idle_timeout_ms: None,
            eagerness: t.semantic.unwrap_or_default(),
        }
    }

    /// What the VAD stage runs.
    pub fn to_pipeline(&self) -> TurnDetection {
        let defaults = TurnDetection::default();
        match self.kind {
            VadKind::ServerVad => TurnDetection {
                threshold: self.threshold,
                prefix_padding_ms: self.prefix_padding_ms,
                silence_duration_ms: self.silence_duration_ms,
                semantic: None,
                create_response: self.create_response,
                interrupt_response: self.interrupt_response,
            },
            VadKind::SemanticVad => TurnDetection {
                threshold: defaults.threshold,
                prefix_padding_ms: defaults.prefix_padding_ms,
                silence_duration_ms: self.eagerness.fallback_ms(),
                semantic: Some(self.eagerness),
                create_response: self.create_response,
                interrupt_response: self.interrupt_response,
            },
        }
    }

    fn merged(current: Option<&TurnDetectionConfig>, update: &TurnDetectionUpdate) -> Self {
        let kind = update
            .kind
            .or(current.map(|c| c.kind))
            .unwrap_or(VadKind::ServerVad);
        let base = match current {
            Some(c) if c.kind == kind => c.clone(),
            _ => {
                let mut base = TurnDetectionConfig::from_pipeline(&TurnDetection::default());
                base.kind = kind;
                base
            }
        };
        TurnDetectionConfig {
            kind,
            threshold: update.threshold.unwrap_or(base.threshold),
            prefix_padding_ms: update.prefix_padding_ms.unwrap_or(base.prefix_padding_ms),
            silence_duration_ms: update
                .silence_duration_ms
                .unwrap_or(base.silence_duration_ms),
            create_response: update.create_response.unwrap_or(base.create_response),
            interrupt_response: update.interrupt_response.unwrap_or(base.interrupt_response),
            idle_timeout_ms: update.idle_timeout_ms.unwrap_or(base.idle_timeout_ms),
            eagerness: update.eagerness.unwrap_or(base.eagerness),
        }
    }

    /// The `turn_detection` object (same in GA and beta).
    pub fn to_json(&self) -> Value {
        match self.kind {
            VadKind::ServerVad => json!({
                "type": "server_vad",
                "threshold": self.threshold,
                "prefix_padding_ms": self.prefix_padding_ms,
                "silence_duration_ms": self.silence_duration_ms,
                "create_response": self.create_response,
                "interrupt_response": self.interrupt_response,
                "idle_timeout_ms": self.idle_timeout_ms,
            }),
            VadKind::SemanticVad => json!({
                "type": "semantic_vad",
                "eagerness": self.eagerness.as_str(),
                "create_response": self.create_response,
                "interrupt_response": self.interrupt_response,
            }),
        }
    }
}

/// The current input transcription of a session.
#[derive(Debug, Clone, PartialEq)]
pub struct TranscriptionConfig {
    pub model: String,
    pub language: Option<String>,
    pub prompt: Option<String>,
}

impl TranscriptionConfig {
    fn to_json(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("model".into(), json!(self.model));
        if let Some(language) = &self.language {
            obj.insert("language".into(), json!(language));
        }
        if let Some(prompt) = &self.prompt {
            obj.insert("prompt".into(), json!(prompt));
        }
        Value::Object(obj)
    }
}

/// A new session's settings, before any session.update.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionDefaults {
    pub instructions: String,
    /// `["audio"]` or `["text"]`.
    pub output_modalities: Vec<String>,
    pub voice: String,
    pub turn_detection: Option<TurnDetection>,
    /// Transcribe the user's audio from the start (OpenAI: off).
    pub transcription: bool,
    /// Reported when a client turns transcription on without a model.
    pub transcription_model: String,
    pub temperature: f32,
    pub max_output_tokens: MaxOutputTokens,
}

impl Default for SessionDefaults {
    fn default() -> Self {
        SessionDefaults {
            instructions: String::new(),
            output_modalities: vec!["audio".into()],
            voice: "alloy".into(),
            turn_detection: Some(TurnDetection::default()),
            transcription: false,
            transcription_model: "whisper-1".into(),
            temperature: 0.8,
            max_output_tokens: MaxOutputTokens::Inf,
        }
    }
}

/// The whole session as the server reports it in `session.created` /
/// `session.updated`.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionState {
    pub id: String,
    pub model: String,
    /// Unix seconds.
    pub expires_at: u64,
    pub instructions: String,
    /// `["audio"]` or `["text"]`.
    pub output_modalities: Vec<String>,
    pub turn_detection: Option<TurnDetectionConfig>,
    pub transcription: Option<TranscriptionConfig>,
    pub noise_reduction: Option<String>,
    pub voice: String,
    pub speed: f32,
    pub tools: Vec<Tool>,
    /// "auto", "none", "required" or a function name.
    pub tool_choice: String,
    pub max_output_tokens: MaxOutputTokens,
    pub temperature: f32,
    /// Model name reported for transcription turned on without one.
    pub default_transcription_model: String,
}

impl SessionState {
    pub fn new(
        id: impl Into<String>,
        model: impl Into<String>,
        defaults: &SessionDefaults,
    ) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        SessionState {
            id: id.into(),
            model: model.into(),
            expires_at: now + 30 * 60,
            instructions: defaults.instructions.clone(),
            output_modalities: defaults.output_modalities.clone(),
            turn_detection: defaults
                .turn_detection
                .as_ref()
                .map(TurnDetectionConfig::from_pipeline),
            transcription: defaults.transcription.then(|| TranscriptionConfig {
                model: defaults.transcription_model.clone(),
                language: None,
                prompt: None,
            }),
            noise_reduction: None,
            voice: defaults.voice.clone(),
            speed: 1.0,
            tools: Vec::new(),
            tool_choice: "auto".into(),
            max_output_tokens: defaults.max_output_tokens,
            temperature: defaults.temperature,
            default_transcription_model: defaults.transcription_model.clone(),
        }
    }

    /// Every setting, for configuring a new session's stages.
    pub fn settings(&self) -> SessionSettings {
        SessionSettings {
            instructions: Some(self.instructions.clone()),
            output_modalities: Some(self.output_modalities.clone()),
            turn_detection: Some(
                self.turn_detection
                    .as_ref()
                    .map(TurnDetectionConfig::to_pipeline),
            ),
            max_output_tokens: Some(self.max_output_tokens.as_usize()),
            temperature: Some(self.temperature),
            tools: Some(self.tools.clone()),
            tool_choice: Some(self.tool_choice.clone()),
            transcription: Some(self.transcription.is_some()),
        }
    }

    /// Applies a session.update: all or nothing. Returns what changed, for
    /// the pipeline stages (fields the update named, even if unchanged).
    pub fn apply(&mut self, update: &SessionUpdate) -> Result<SessionSettings, ProtocolError> {
        update.validate()?;
        let mut next = self.clone();
        let mut delta = SessionSettings::default();
        if let Some(instructions) = &update.instructions {
            next.instructions = instructions.clone();
            delta.instructions = Some(instructions.clone());
        }
        if let Some(modalities) = &update.output_modalities {
            next.output_modalities = modalities.clone();
            delta.output_modalities = Some(modalities.clone());
        }
        if let Some(turn_detection) = &update.turn_detection {
            next.turn_detection = turn_detection
                .as_ref()
                .map(|u| TurnDetectionConfig::merged(self.turn_detection.as_ref(), u));
            delta.turn_detection = Some(
                next.turn_detection
                    .as_ref()
                    .map(TurnDetectionConfig::to_pipeline),
            );
        }
        if let Some(transcription) = &update.transcription {
            next.transcription = transcription.as_ref().map(|u| TranscriptionConfig {
                model: u
                    .model
                    .clone()
                    .or_else(|| self.transcription.as_ref().map(|t| t.model.clone()))
                    .unwrap_or_else(|| self.default_transcription_model.clone()),
                language: u.language.clone(),
                prompt: u.prompt.clone(),
            });
            delta.transcription = Some(next.transcription.is_some());
        }
        if let Some(noise_reduction) = &update.noise_reduction {
            next.noise_reduction = noise_reduction.clone();
        }
        if let Some(voice) = &update.voice {
            next.voice = voice.clone();
        }
        if let Some(speed) = update.speed {
            next.speed = speed;
        }
        if let Some(tools) = &update.tools {
            next.tools = tools.clone();
            delta.tools = Some(tools.clone());
        }
        if let Some(choice) = &update.tool_choice {
            next.tool_choice = choice.clone();
            delta.tool_choice = Some(choice.clone());
        }
        if (update.tools.is_some() || update.tool_choice.is_some())
            && !is_tool_mode(&next.tool_choice)
            && !next.tools.iter().any(|t| t.name == next.tool_choice)
        {
            let known: Vec<&str> = next.tools.iter().map(|t| t.name.as_str()).collect();
            return Err(invalid(
                "session.tool_choice",
                format!(
                    "`session.tool_choice` names the function \"{}\", which is not among the \
                     session's tools ({}); use \"auto\", \"none\", \"required\" or a defined tool",
                    next.tool_choice,
                    if known.is_empty() {
                        "none defined".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        if let Some(max) = update.max_output_tokens {
            next.max_output_tokens = max;
            delta.max_output_tokens = Some(max.as_usize());
        }
        if let Some(temperature) = update.temperature {
            next.temperature = temperature;
            delta.temperature = Some(temperature);
        }
        *self = next;
        Ok(delta)
    }

    /// The session object: GA shape, or the beta shape for `beta` clients.
    pub fn to_json(&self, beta: bool) -> Value {
        let ga = self.to_ga_json();
        if beta {
            let mut session = session_ga_to_beta(&ga);
            if let Value::Object(obj) = &mut session {
                obj.insert("temperature".into(), json!(self.temperature));
            }
            session
        } else {
            ga
        }
    }

    fn to_ga_json(&self) -> Value {
        let format = json!({"type": "audio/pcm", "rate": SAMPLE_RATE});
        let tool_choice = if is_tool_mode(&self.tool_choice) {
            json!(self.tool_choice)
        } else {
            json!({"type": "function", "name": self.tool_choice})
        };
        let tools: Vec<Value> = self
            .tools
            .iter()
            .map(|t| {
                json!({
                    "type": "function",
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                })
            })
            .collect();
        json!({
            "type": "realtime",
            "object": "realtime.session",
            "id": self.id,
            "model": self.model,
            "output_modalities": self.output_modalities,
            "instructions": self.instructions,
            "audio": {
                "input": {
                    "format": format,
                    "transcription": self.transcription.as_ref().map(TranscriptionConfig::to_json),
                    "noise_reduction": self.noise_reduction.as_ref().map(|t| json!({"type": t})),
                    "turn_detection": self.turn_detection.as_ref().map(TurnDetectionConfig::to_json),
                },
                "output": {
                    "format": format,
                    "voice": self.voice,
                    "speed": self.speed,
                },
            },
            "tools": tools,
            "tool_choice": tool_choice,
            "max_output_tokens": self.max_output_tokens.to_json(),
            "tracing": null,
            "truncation": "auto",
            "prompt": null,
            "include": null,
            "expires_at": self.expires_at,
        })
    }
}

/// Beta `pcm16` for a GA format object (this server has no other format).
fn beta_format(_ga: Option<&Value>) -> Value {
    json!("pcm16")
}

/// Beta modalities for GA output modalities: audio comes with its text.
fn beta_modalities(ga: Option<&Value>) -> Value {
    let audio = ga
        .and_then(Value::as_array)
        .is_some_and(|m| m.iter().any(|x| x.as_str() == Some("audio")));
    if audio {
        json!(["text", "audio"])
    } else {
        json!(["text"])
    }
}

/// A GA session object in the beta shape (flat audio settings,
/// `modalities`, `max_response_output_tokens`, `tool_choice` a string).
pub fn session_ga_to_beta(ga: &Value) -> Value {
    let Value::Object(ga) = ga else {
        return ga.clone();
    };
    let input = ga.get("audio").and_then(|a| a.get("input"));
    let output = ga.get("audio").and_then(|a| a.get("output"));
    let field =
        |v: Option<&Value>, key: &str| v.and_then(|o| o.get(key)).cloned().unwrap_or(Value::Null);
    let mut beta = Map::new();
    for key in ["id", "object", "model", "expires_at"] {
        if let Some(v) = ga.get(key) {
            beta.insert(key.into(), v.clone());
        }
    }
    beta.insert(
        "modalities".into(),
        beta_modalities(ga.get("output_modalities")),
    );
    if let Some(v) = ga.get("instructions") {
        beta.insert("instructions".into(), v.clone());
    }
    beta.insert("voice".into(), field(output, "voice"));
    beta.insert(
        "input_audio_format".into(),
        beta_format(input.and_then(|i| i.get("format"))),
    );
    beta.insert(
        "output_audio_format".into(),
        beta_format(output.and_then(|o| o.get("format"))),
    );
    beta.insert(
        "input_audio_transcription".into(),
        field(input, "transcription"),
    );
    beta.insert(
        "input_audio_noise_reduction".into(),
        field(input, "noise_reduction"),
    );
    beta.insert("turn_detection".into(), field(input, "turn_detection"));
    if let Some(speed) = output.and_then(|o| o.get("speed")) {
        beta.insert("speed".into(), speed.clone());
    }
    if let Some(tools) = ga.get("tools") {
        beta.insert("tools".into(), tools.clone());
    }
    if let Some(choice) = ga.get("tool_choice") {
        let choice = match choice.get("name") {
            Some(name) => name.clone(),
            None => choice.clone(),
        };
        beta.insert("tool_choice".into(), choice);
    }
    if let Some(temperature) = ga.get("temperature") {
        beta.insert("temperature".into(), temperature.clone());
    }
    if let Some(max) = ga.get("max_output_tokens") {
        beta.insert("max_response_output_tokens".into(), max.clone());
    }
    if let Some(tracing) = ga.get("tracing") {
        beta.insert("tracing".into(), tracing.clone());
    }
    Value::Object(beta)
}

// ---------------------------------------------------------------------------
// Outgoing events
// ---------------------------------------------------------------------------

/// GA server events beta clients have no counterpart for: not sent to them.
const GA_ONLY_EVENTS: &[&str] = &[
    "conversation.item.done",
    "conversation.item.input_audio_transcription.segment",
    "input_audio_buffer.timeout_triggered",
    "input_audio_buffer.dtmf_event_received",
    "mcp_list_tools.in_progress",
    "mcp_list_tools.completed",
    "mcp_list_tools.failed",
    "response.mcp_call_arguments.delta",
    "response.mcp_call_arguments.done",
    "response.mcp_call.in_progress",
    "response.mcp_call.completed",
    "response.mcp_call.failed",
];

/// The name of a server event (given by its GA name) for the client's
/// protocol; `None`: beta clients do not get this event.
pub fn outgoing_event_name(ga: &str, beta: bool) -> Option<&str> {
    if !beta {
        return Some(ga);
    }
    if GA_ONLY_EVENTS.contains(&ga) {
        return None;
    }
    Some(match ga {
        "response.output_audio.delta" => "response.audio.delta",
        "response.output_audio.done" => "response.audio.done",
        "response.output_audio_transcript.delta" => "response.audio_transcript.delta",
        "response.output_audio_transcript.done" => "response.audio_transcript.done",
        "response.output_text.delta" => "response.text.delta",
        "response.output_text.done" => "response.text.done",
        "conversation.item.added" => "conversation.item.created",
        other => other,
    })
}

/// Beta content type for a GA one.
fn beta_content_type(ga: &str) -> Option<&'static str> {
    match ga {
        "output_audio" => Some("audio"),
        "output_text" => Some("text"),
        _ => None,
    }
}

/// Renames GA content types inside a content part.
fn adapt_part(part: &mut Value) {
    if let Some(Value::String(ty)) = part.get_mut("type")
        && let Some(beta) = beta_content_type(ty)
    {
        *ty = beta.to_string();
    }
}

/// Renames GA content types inside an item's content.
fn adapt_item(item: &mut Value) {
    if let Some(Value::Array(content)) = item.get_mut("content") {
        content.iter_mut().for_each(adapt_part);
    }
}

/// A GA response object in the beta shape: `modalities`, flat `voice` and
/// `output_audio_format`, beta content types in its output items.
fn adapt_response(response: &mut Value) {
    let Value::Object(obj) = response else {
        return;
    };
    if let Some(modalities) = obj.shift_remove("output_modalities") {
        obj.insert("modalities".into(), beta_modalities(Some(&modalities)));
    }
    if let Some(audio) = obj.shift_remove("audio") {
        let output = audio.get("output");
        if let Some(voice) = output.and_then(|o| o.get("voice")) {
            obj.insert("voice".into(), voice.clone());
        }
        if output.and_then(|o| o.get("format")).is_some() {
            obj.insert("output_audio_format".into(), json!("pcm16"));
        }
    }
    if let Some(Value::Array(items)) = obj.get_mut("output") {
        items.iter_mut().for_each(adapt_item);
    }
}

/// Adapts a server event built in the GA shape to the client's protocol:
/// renames its type and reshapes what differs for beta clients (content
/// types, response objects, session objects). Returns false when the event
/// must not be sent.
pub fn adapt_outgoing(event: &mut Map<String, Value>, beta: bool) -> bool {
    if !beta {
        return true;
    }
    let Some(ga_type) = event
        .get("type")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return true;
    };
    let Some(name) = outgoing_event_name(&ga_type, true) else {
        return false;
    };
    if name != ga_type {
        event.insert("type".into(), json!(name));
    }
    if let Some(item) = event.get_mut("item") {
        adapt_item(item);
    }
    if let Some(part) = event.get_mut("part") {
        adapt_part(part);
    }
    if let Some(response) = event.get_mut("response") {
        adapt_response(response);
    }
    if let Some(session) = event.get_mut("session")
        && session.get("audio").is_some()
    {
        *session = session_ga_to_beta(session);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::pcm16_base64_encode;

    fn parse(v: Value) -> Result<ClientEvent, ProtocolError> {
        parse_client_event(&v.to_string())
    }

    fn err(v: Value) -> ProtocolError {
        match parse(v.clone()) {
            Ok(ev) => panic!("expected an error for {v}, got {ev:?}"),
            Err(e) => e,
        }
    }

    fn session(v: Value) -> SessionUpdate {
        match parse(json!({"type": "session.update", "session": v})) {
            Ok(ClientEvent::SessionUpdate { session, .. }) => session,
            other => panic!("not a session.update: {other:?}"),
        }
    }

    fn state() -> SessionState {
        SessionState::new("sess_1", "duplex-local", &SessionDefaults::default())
    }

    #[test]
    fn error_event_has_all_fields() {
        let e = err(json!({"type": "foo.bar", "event_id": "evt_1"}));
        assert_eq!(e.code, "unknown_event");
        assert!(
            e.message.contains("unknown event type `foo.bar`"),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("known types: session.update"),
            "{}",
            e.message
        );
        let ev = e.to_event();
        let error = &ev["error"];
        assert_eq!(error["type"], "invalid_request_error");
        assert_eq!(error["code"], "unknown_event");
        assert_eq!(error["event_id"], "evt_1");
        assert_eq!(error["param"], "type");
        assert!(error["message"].is_string());
        let keys: Vec<&str> = error
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["type", "code", "message", "param", "event_id"]);
    }

    #[test]
    fn server_event_names_get_a_hint() {
        let e = err(json!({"type": "session.updated"}));
        assert!(
            e.message.contains("did you mean `session.update`"),
            "{}",
            e.message
        );
        let e = err(json!({"type": "input_audio_buffer.committed"}));
        assert!(
            e.message
                .contains("did you mean `input_audio_buffer.commit`"),
            "{}",
            e.message
        );
        let e = err(json!({"type": "transcription_session.update"}));
        assert!(e.message.contains("not supported"), "{}", e.message);
    }

    #[test]
    fn bad_json_and_non_objects() {
        for text in ["", "   ", "{", "nul", "{\"type\": }", "[1,2", "\u{0}"] {
            let e = parse_client_event(text).unwrap_err();
            assert_eq!(e.code, "invalid_json", "{text:?}: {e:?}");
        }
        for v in [
            json!(null),
            json!(1),
            json!("session.update"),
            json!([{"type": "x"}]),
        ] {
            let e = err(v);
            assert_eq!(e.code, "invalid_json");
            assert!(
                e.message.contains("expected a JSON object"),
                "{}",
                e.message
            );
        }
        let e = err(json!({"event_id": "e"}));
        assert_eq!(e.code, "missing_field");
        assert_eq!(e.event_id.as_deref(), Some("e"));
        let e = err(json!({"type": 5}));
        assert_eq!(e.code, "invalid_value");
        assert_eq!(e.param.as_deref(), Some("type"));
        let e = err(json!({"type": "input_audio_buffer.commit", "event_id": 5}));
        assert_eq!(e.param.as_deref(), Some("event_id"));
        // Deep nesting is refused by the JSON parser, not a stack overflow.
        let deep = "[".repeat(100_000);
        assert_eq!(parse_client_event(&deep).unwrap_err().code, "invalid_json");
        let deep = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
        assert_eq!(parse_client_event(&deep).unwrap_err().code, "invalid_json");
    }

    #[test]
    fn too_large() {
        let big = format!(
            "{{\"type\":\"input_audio_buffer.append\",\"audio\":\"{}\"}}",
            "A".repeat(MAX_EVENT_BYTES)
        );
        assert_eq!(
            parse_client_event(&big).unwrap_err().code,
            "message_too_large"
        );
    }

    #[test]
    fn append_decodes_audio() {
        let samples = [0.5f32, -0.25, 0.0, 0.125];
        let ev = parse(json!({
            "type": "input_audio_buffer.append",
            "event_id": "e1",
            "audio": pcm16_base64_encode(&samples),
        }))
        .unwrap();
        assert_eq!(ev.event_id(), Some("e1"));
        assert_eq!(ev.type_name(), "input_audio_buffer.append");
        match ev {
            ClientEvent::InputAudioBufferAppend { audio, .. } => assert_eq!(audio, samples),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn append_bad_audio() {
        let e =
            err(json!({"type": "input_audio_buffer.append", "audio": "AAA!AAAA", "event_id": "x"}));
        assert_eq!(e.code, "invalid_audio");
        assert_eq!(e.param.as_deref(), Some("audio"));
        assert_eq!(e.event_id.as_deref(), Some("x"));
        assert_eq!(
            e.message,
            "input_audio_buffer.append: `audio` is not valid base64 (invalid byte 0x21 at offset 3)"
        );
        // Three bytes: an odd count.
        let e = err(json!({"type": "input_audio_buffer.append", "audio": "AQID"}));
        assert_eq!(e.code, "invalid_audio");
        assert!(e.message.contains("3 bytes, an odd count"), "{}", e.message);
        // Truncated.
        let e = err(json!({"type": "input_audio_buffer.append", "audio": "AQIDBAU"}));
        assert_eq!(e.code, "invalid_audio");
        assert!(e.message.contains("not valid base64"), "{}", e.message);
        let e = err(json!({"type": "input_audio_buffer.append", "event_id": "m"}));
        assert_eq!(e.code, "missing_field");
        assert_eq!(e.param.as_deref(), Some("audio"));
        assert_eq!(e.event_id.as_deref(), Some("m"));
        assert!(
            e.message.starts_with("input_audio_buffer.append: "),
            "{}",
            e.message
        );
        let e = err(json!({"type": "input_audio_buffer.append", "audio": 12}));
        assert_eq!(e.code, "invalid_value");
        assert!(
            e.message
                .contains("`audio` must be a base64 string, got 12"),
            "{}",
            e.message
        );
        // Empty audio is an empty append.
        assert!(matches!(
            parse(json!({"type": "input_audio_buffer.append", "audio": ""})),
            Ok(ClientEvent::InputAudioBufferAppend { audio, .. }) if audio.is_empty()
        ));
    }

    #[test]
    fn simple_events() {
        assert_eq!(
            parse(json!({"type": "input_audio_buffer.commit", "event_id": "c"})).unwrap(),
            ClientEvent::InputAudioBufferCommit {
                event_id: Some("c".into())
            }
        );
        assert_eq!(
            parse(json!({"type": "input_audio_buffer.clear"})).unwrap(),
            ClientEvent::InputAudioBufferClear { event_id: None }
        );
        assert_eq!(
            parse(json!({"type": "output_audio_buffer.clear"})).unwrap(),
            ClientEvent::OutputAudioBufferClear { event_id: None }
        );
        assert_eq!(
            parse(json!({"type": "response.cancel"})).unwrap(),
            ClientEvent::ResponseCancel {
                event_id: None,
                response_id: None
            }
        );
        assert_eq!(
            parse(json!({"type": "response.cancel", "response_id": "resp_1"})).unwrap(),
            ClientEvent::ResponseCancel {
                event_id: None,
                response_id: Some("resp_1".into())
            }
        );
        let e = err(json!({"type": "response.cancel", "response_id": 3}));
        assert_eq!(e.param.as_deref(), Some("response_id"));
    }

    #[test]
    fn item_delete_retrieve_truncate() {
        assert_eq!(
            parse(json!({"type": "conversation.item.delete", "item_id": "item_1"})).unwrap(),
            ClientEvent::ConversationItemDelete {
                event_id: None,
                item_id: "item_1".into()
            }
        );
        assert_eq!(
            parse(json!({"type": "conversation.item.retrieve", "item_id": "item_1"})).unwrap(),
            ClientEvent::ConversationItemRetrieve {
                event_id: None,
                item_id: "item_1".into()
            }
        );
        let e = err(json!({"type": "conversation.item.delete"}));
        assert_eq!(
            (e.code, e.param.as_deref()),
            ("missing_field", Some("item_id"))
        );
        let e = err(json!({"type": "conversation.item.retrieve", "item_id": ""}));
        assert_eq!(
            (e.code, e.param.as_deref()),
            ("invalid_value", Some("item_id"))
        );

        assert_eq!(
            parse(json!({"type": "conversation.item.truncate", "item_id": "a", "content_index": 0, "audio_end_ms": 1500}))
                .unwrap(),
            ClientEvent::ConversationItemTruncate {
                event_id: None,
                item_id: "a".into(),
                content_index: 0,
                audio_end_ms: 1500
            }
        );
        let e =
            err(json!({"type": "conversation.item.truncate", "item_id": "a", "content_index": 0}));
        assert_eq!(
            (e.code, e.param.as_deref()),
            ("missing_field", Some("audio_end_ms"))
        );
        let e =
            err(json!({"type": "conversation.item.truncate", "item_id": "a", "audio_end_ms": -5}));
        assert_eq!(e.param.as_deref(), Some("audio_end_ms"));
        assert!(e.message.contains("got -5"), "{}", e.message);
        let e = err(
            json!({"type": "conversation.item.truncate", "item_id": "a", "audio_end_ms": 1e300}),
        );
        assert_eq!(e.param.as_deref(), Some("audio_end_ms"));
    }

    #[test]
    fn item_create_messages() {
        let ev = parse(json!({
            "type": "conversation.item.create",
            "previous_item_id": "item_0",
            "item": {"id": "mine", "type": "message", "role": "user",
                     "content": [{"type": "input_text", "text": "hello"}]},
        }))
        .unwrap();
        let ClientEvent::ConversationItemCreate {
            previous_item_id,
            item,
            ..
        } = ev
        else {
            panic!()
        };
        assert_eq!(previous_item_id.as_deref(), Some("item_0"));
        assert_eq!(item.id(), Some("mine"));
        assert_eq!(item.role(), Role::User);
        assert_eq!(item.text(), "hello");
        let echoed = item.to_json("mine");
        assert_eq!(echoed["content"][0]["type"], "input_text");
        assert_eq!(echoed["object"], "realtime.item");

        // System text.
        let ev = parse(json!({"type": "conversation.item.create",
            "item": {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "be brief"}]}}))
        .unwrap();
        assert!(matches!(
            ev,
            ClientEvent::ConversationItemCreate {
                item: NewItem::Message {
                    role: Role::System,
                    ..
                },
                ..
            }
        ));

        // User audio.
        let b64 = pcm16_base64_encode(&[0.5, 0.5]);
        let ev = parse(json!({"type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": b64}]}}))
        .unwrap();
        let ClientEvent::ConversationItemCreate { item, .. } = ev else {
            panic!()
        };
        assert_eq!(item.audio(), vec![0.5, 0.5]);

        // Beta assistant history uses `text`; GA uses `output_text`.
        for ty in ["text", "output_text"] {
            let ev = parse(json!({"type": "conversation.item.create",
                "item": {"type": "message", "role": "assistant", "content": [{"type": ty, "text": "hi"}]}}))
            .unwrap();
            let ClientEvent::ConversationItemCreate { item, .. } = ev else {
                panic!()
            };
            assert_eq!(item.text(), "hi");
            assert_eq!(item.to_json("x")["content"][0]["type"], "output_text");
        }
    }

    #[test]
    fn item_create_errors() {
        let base = |item: Value| json!({"type": "conversation.item.create", "event_id": "e", "item": item});
        let e = err(base(
            json!({"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": "%%%%"}]}),
        ));
        assert_eq!(e.code, "invalid_audio");
        assert_eq!(e.param.as_deref(), Some("item.content[0].audio"));
        assert!(
            e.message.starts_with(
                "conversation.item.create: `item.content[0].audio` is not valid base64"
            ),
            "{}",
            e.message
        );

        let e = err(base(
            json!({"type": "message", "role": "system", "content": [{"type": "input_audio", "audio": ""}]}),
        ));
        assert_eq!(e.param.as_deref(), Some("item.content[0].type"));
        assert!(
            e.message.contains("not valid in a system message"),
            "{}",
            e.message
        );

        let e = err(base(
            json!({"type": "message", "role": "user", "content": [{"type": "input_image", "image_url": "x"}]}),
        ));
        assert!(
            e.message.contains("images are not supported"),
            "{}",
            e.message
        );

        let e = err(base(
            json!({"type": "message", "role": "robot", "content": []}),
        ));
        assert_eq!(e.param.as_deref(), Some("item.role"));
        let e = err(base(
            json!({"type": "message", "role": "user", "content": []}),
        ));
        assert_eq!(e.param.as_deref(), Some("item.content"));
        let e = err(base(
            json!({"type": "message", "role": "user", "content": "hello"}),
        ));
        assert_eq!(e.param.as_deref(), Some("item.content"));
        let e = err(base(
            json!({"type": "message", "role": "user", "content": [{"type": "input_text"}]}),
        ));
        assert_eq!(
            (e.code, e.param.as_deref()),
            ("missing_field", Some("item.content[0].text"))
        );
        let e = err(base(json!({"type": "teleport"})));
        assert_eq!(e.param.as_deref(), Some("item.type"));
        let e = err(base(json!("text")));
        assert_eq!(e.param.as_deref(), Some("item"));
        let e = err(json!({"type": "conversation.item.create"}));
        assert_eq!(
            (e.code, e.param.as_deref()),
            ("missing_field", Some("item"))
        );
        assert_eq!(e.event_id, None);
        let e = err(base(json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]}))
            .as_object()
            .map(|o| {
                let mut o = o.clone();
                o.insert("previous_item_id".into(), json!(7));
                Value::Object(o)
            })
            .unwrap());
        assert_eq!(e.param.as_deref(), Some("previous_item_id"));
    }

    #[test]
    fn function_call_output() {
        let ev = parse(json!({"type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "call_1", "output": "{\"temp\": 20}"}}))
        .unwrap();
        let ClientEvent::ConversationItemCreate { item, .. } = ev else {
            panic!()
        };
        assert_eq!(item.call_id(), Some("call_1"));
        assert_eq!(item.text(), "{\"temp\": 20}");
        assert_eq!(item.to_json("i")["type"], "function_call_output");

        let e = err(json!({"type": "conversation.item.create",
            "item": {"type": "function_call_output", "output": "x"}}));
        assert_eq!(
            (e.code, e.param.as_deref()),
            ("missing_field", Some("item.call_id"))
        );
        let e = err(json!({"type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "c", "output": {"temp": 20}}}));
        assert_eq!(e.param.as_deref(), Some("item.output"));
        assert!(
            e.message.contains("serialize structured results"),
            "{}",
            e.message
        );

        // Beta clients may leave out the item type.
        let ev = parse(json!({"type": "conversation.item.create",
            "item": {"call_id": "c", "output": "done"}}))
        .unwrap();
        assert!(matches!(
            ev,
            ClientEvent::ConversationItemCreate {
                item: NewItem::FunctionCallOutput { .. },
                ..
            }
        ));
    }

    #[test]
    fn response_create() {
        assert_eq!(
            parse(json!({"type": "response.create"})).unwrap(),
            ClientEvent::ResponseCreate {
                event_id: None,
                response: ResponseParams::default()
            }
        );
        let ev = parse(json!({"type": "response.create", "response": {
            "instructions": "say hi",
            "output_modalities": ["text"],
            "max_output_tokens": "inf",
            "conversation": "none",
            "metadata": {"topic": "greeting"},
            "audio": {"output": {"voice": "marin", "format": {"type": "audio/pcm", "rate": 24000}}},
            "input": [
                {"type": "item_reference", "id": "item_1"},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
            ]
        }}))
        .unwrap();
        let ClientEvent::ResponseCreate { response, .. } = ev else {
            panic!()
        };
        assert_eq!(response.instructions.as_deref(), Some("say hi"));
        assert_eq!(response.output_modalities, Some(vec!["text".to_string()]));
        assert_eq!(response.max_output_tokens, Some(MaxOutputTokens::Inf));
        assert_eq!(response.conversation, ResponseConversation::None);
        assert_eq!(response.voice.as_deref(), Some("marin"));
        assert_eq!(response.input.as_ref().map(Vec::len), Some(2));
        assert_eq!(
            response.input.as_ref().unwrap()[0],
            ResponseInput::Reference("item_1".into())
        );

        // Beta names.
        let ev = parse(json!({"type": "response.create", "response": {
            "modalities": ["text", "audio"], "max_response_output_tokens": 200, "temperature": 0.7,
            "voice": "alloy", "output_audio_format": "pcm16"
        }}))
        .unwrap();
        let ClientEvent::ResponseCreate { response, .. } = ev else {
            panic!()
        };
        assert_eq!(response.output_modalities, Some(vec!["audio".to_string()]));
        assert_eq!(
            response.max_output_tokens,
            Some(MaxOutputTokens::Limit(200))
        );
        assert_eq!(response.temperature, Some(0.7));

        let bad = |r: Value| err(json!({"type": "response.create", "response": r}));
        assert_eq!(
            bad(json!({"max_output_tokens": 0})).param.as_deref(),
            Some("response.max_output_tokens")
        );
        assert_eq!(
            bad(json!({"max_output_tokens": 5000})).param.as_deref(),
            Some("response.max_output_tokens")
        );
        assert_eq!(
            bad(json!({"max_response_output_tokens": "lots"}))
                .param
                .as_deref(),
            Some("response.max_response_output_tokens")
        );
        assert_eq!(
            bad(json!({"temperature": 3})).param.as_deref(),
            Some("response.temperature")
        );
        assert_eq!(
            bad(json!({"conversation": "conv_9"})).param.as_deref(),
            Some("response.conversation")
        );
        assert_eq!(
            bad(json!({"modalities": []})).param.as_deref(),
            Some("response.modalities")
        );
        assert_eq!(
            bad(json!({"output_modalities": ["video"]}))
                .param
                .as_deref(),
            Some("response.output_modalities")
        );
        assert_eq!(
            bad(json!({"metadata": {"a": 1}})).param.as_deref(),
            Some("response.metadata")
        );
        assert_eq!(
            bad(json!({"output_audio_format": "g711_ulaw"}))
                .param
                .as_deref(),
            Some("response.output_audio_format")
        );
        assert_eq!(
            bad(json!({"input": [{"type": "item_reference"}]}))
                .param
                .as_deref(),
            Some("response.input[0].id")
        );
        assert_eq!(bad(json!("now")).param.as_deref(), Some("response"));
    }

    #[test]
    fn ga_session_update() {
        let update = session(json!({
            "type": "realtime",
            "model": "gpt-realtime",
            "instructions": "You are terse.",
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "turn_detection": {"type": "server_vad", "threshold": 0.6, "silence_duration_ms": 700,
                                       "prefix_padding_ms": 200, "create_response": false, "idle_timeout_ms": null},
                    "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
                    "noise_reduction": {"type": "far_field"}
                },
                "output": {"format": {"type": "audio/pcm"}, "voice": "marin", "speed": 1.2}
            },
            "tools": [{"type": "function", "name": "get_weather", "description": "Weather",
                       "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "max_output_tokens": 512,
            "tracing": "auto",
            "truncation": "auto"
        }));
        let mut s = state();
        let delta = s.apply(&update).unwrap();
        assert_eq!(delta.instructions.as_deref(), Some("You are terse."));
        let td = delta.turn_detection.clone().unwrap().unwrap();
        assert_eq!(td.threshold, 0.6);
        assert_eq!(td.silence_duration_ms, 700);
        assert_eq!(td.prefix_padding_ms, 200);
        assert!(!td.create_response);
        assert!(td.interrupt_response);
        assert_eq!(delta.transcription, Some(true));
        assert_eq!(delta.tool_choice.as_deref(), Some("get_weather"));
        assert_eq!(delta.max_output_tokens, Some(512));
        assert_eq!(delta.temperature, None);
        assert_eq!(delta.tools.as_ref().map(Vec::len), Some(1));

        let ga = s.to_json(false);
        assert_eq!(ga["type"], "realtime");
        assert_eq!(ga["object"], "realtime.session");
        assert_eq!(ga["id"], "sess_1");
        assert_eq!(
            ga["audio"]["input"]["format"],
            json!({"type": "audio/pcm", "rate": 24000})
        );
        assert_eq!(ga["audio"]["input"]["turn_detection"]["type"], "server_vad");
        assert!(
            (ga["audio"]["input"]["turn_detection"]["threshold"]
                .as_f64()
                .unwrap()
                - 0.6)
                .abs()
                < 1e-6
        );
        assert!(ga["audio"]["input"]["turn_detection"]["idle_timeout_ms"].is_null());
        assert_eq!(
            ga["audio"]["input"]["transcription"]["model"],
            "gpt-4o-transcribe"
        );
        assert_eq!(ga["audio"]["input"]["noise_reduction"]["type"], "far_field");
        assert_eq!(ga["audio"]["output"]["voice"], "marin");
        assert_eq!(
            ga["tool_choice"],
            json!({"type": "function", "name": "get_weather"})
        );
        assert_eq!(ga["max_output_tokens"], 512);
        assert!(ga.get("temperature").is_none());

        let beta = s.to_json(true);
        assert_eq!(beta["modalities"], json!(["text", "audio"]));
        assert_eq!(beta["input_audio_format"], "pcm16");
        assert_eq!(beta["output_audio_format"], "pcm16");
        assert_eq!(beta["turn_detection"]["silence_duration_ms"], 700);
        assert_eq!(
            beta["input_audio_transcription"]["model"],
            "gpt-4o-transcribe"
        );
        assert_eq!(beta["voice"], "marin");
        assert_eq!(beta["tool_choice"], "get_weather");
        assert_eq!(beta["max_response_output_tokens"], 512);
        assert!((beta["temperature"].as_f64().unwrap() - 0.8).abs() < 1e-6);
        assert!(beta.get("audio").is_none());
        assert!(beta.get("output_modalities").is_none());
    }

    #[test]
    fn beta_session_update() {
        let update = session(json!({
            "modalities": ["text"],
            "instructions": "Hi",
            "voice": "verse",
            "input_audio_format": "pcm16",
            "output_audio_format": "pcm16",
            "input_audio_transcription": {"model": "whisper-1"},
            "turn_detection": {"type": "server_vad", "threshold": 0.4, "prefix_padding_ms": 300, "silence_duration_ms": 400},
            "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}],
            "tool_choice": "required",
            "temperature": 0.9,
            "max_response_output_tokens": "inf"
        }));
        let mut s = state();
        let delta = s.apply(&update).unwrap();
        assert_eq!(delta.output_modalities, Some(vec!["text".to_string()]));
        assert_eq!(delta.temperature, Some(0.9));
        assert_eq!(delta.max_output_tokens, Some(INF_OUTPUT_TOKENS));
        assert_eq!(delta.tool_choice.as_deref(), Some("required"));
        assert_eq!(
            delta
                .turn_detection
                .clone()
                .unwrap()
                .unwrap()
                .silence_duration_ms,
            400
        );
        let beta = s.to_json(true);
        assert_eq!(beta["modalities"], json!(["text"]));
        assert_eq!(beta["max_response_output_tokens"], "inf");
        assert_eq!(beta["voice"], "verse");
        let ga = s.to_json(false);
        assert_eq!(ga["output_modalities"], json!(["text"]));
        assert_eq!(ga["max_output_tokens"], "inf");

        // Turn detection off, then back on with only some fields.
        let delta = s.apply(&session(json!({"turn_detection": null}))).unwrap();
        assert_eq!(delta.turn_detection, Some(None));
        assert!(s.to_json(false)["audio"]["input"]["turn_detection"].is_null());
        assert!(s.to_json(true)["turn_detection"].is_null());
        let delta = s
            .apply(&session(
                json!({"turn_detection": {"silence_duration_ms": 900}}),
            ))
            .unwrap();
        let td = delta.turn_detection.unwrap().unwrap();
        assert_eq!((td.threshold, td.silence_duration_ms), (0.5, 900));
        // Partial update keeps the rest.
        s.apply(&session(
            json!({"turn_detection": {"type": "server_vad", "threshold": 0.7}}),
        ))
        .unwrap();
        let td = s.turn_detection.clone().unwrap();
        assert_eq!((td.threshold, td.silence_duration_ms), (0.7, 900));
        // Transcription off.
        assert_eq!(
            s.apply(&session(json!({"input_audio_transcription": null})))
                .unwrap()
                .transcription,
            Some(false)
        );
    }

    #[test]
    fn semantic_vad() {
        let mut s = state();
        let delta = s
            .apply(&session(json!({"audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "high"}}}})))
            .unwrap();
        let td = delta.turn_detection.unwrap().unwrap();
        assert_eq!(td.silence_duration_ms, Eagerness::High.fallback_ms());
        let reported = &s.to_json(false)["audio"]["input"]["turn_detection"];
        assert_eq!(reported["type"], "semantic_vad");
        assert_eq!(reported["eagerness"], "high");
        assert!(reported.get("threshold").is_none());
        assert_eq!(s.to_json(true)["turn_detection"]["eagerness"], "high");

        let e = err(
            json!({"type": "session.update", "session": {"turn_detection": {"type": "semantic_vad", "threshold": 0.5}}}),
        );
        assert_eq!(e.param.as_deref(), Some("session.turn_detection.threshold"));
        let e = err(
            json!({"type": "session.update", "session": {"turn_detection": {"type": "server_vad", "eagerness": "low"}}}),
        );
        assert_eq!(e.param.as_deref(), Some("session.turn_detection.eagerness"));
        let e = err(
            json!({"type": "session.update", "session": {"turn_detection": {"type": "semantic_vad", "eagerness": "eager"}}}),
        );
        assert_eq!(e.param.as_deref(), Some("session.turn_detection.eagerness"));
        let e = err(
            json!({"type": "session.update", "session": {"turn_detection": {"type": "push_to_talk"}}}),
        );
        assert_eq!(e.param.as_deref(), Some("session.turn_detection.type"));
        assert!(
            e.message.contains("\"server_vad\", \"semantic_vad\""),
            "{}",
            e.message
        );
    }

    #[test]
    fn session_errors_name_the_param() {
        let bad = |s: Value| err(json!({"type": "session.update", "event_id": "ev", "session": s}));
        let e = bad(json!({"turn_detection": {"type": "server_vad", "threshold": 7}}));
        assert_eq!(e.code, "invalid_value");
        assert_eq!(e.event_id.as_deref(), Some("ev"));
        assert_eq!(e.param.as_deref(), Some("session.turn_detection.threshold"));
        assert_eq!(
            e.message,
            "session.update: `session.turn_detection.threshold` must be a number between 0 and 1 (exclusive), got 7"
        );
        let e = bad(
            json!({"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": "high"}}}}),
        );
        assert_eq!(
            e.param.as_deref(),
            Some("session.audio.input.turn_detection.threshold")
        );
        assert!(e.message.contains("got \"high\""), "{}", e.message);

        let cases = [
            (
                json!({"input_audio_format": "g711_ulaw"}),
                "session.input_audio_format",
            ),
            (
                json!({"output_audio_format": "g711_alaw"}),
                "session.output_audio_format",
            ),
            (
                json!({"audio": {"input": {"format": {"type": "audio/pcmu"}}}}),
                "session.audio.input.format.type",
            ),
            (
                json!({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}),
                "session.audio.input.format.rate",
            ),
            (
                json!({"audio": {"output": {"format": "audio/pcma"}}}),
                "session.audio.output.format",
            ),
            (
                json!({"audio": {"output": {"speed": 4}}}),
                "session.audio.output.speed",
            ),
            (
                json!({"turn_detection": {"silence_duration_ms": 20000}}),
                "session.turn_detection.silence_duration_ms",
            ),
            (
                json!({"turn_detection": {"prefix_padding_ms": -1}}),
                "session.turn_detection.prefix_padding_ms",
            ),
            (
                json!({"turn_detection": {"create_response": "yes"}}),
                "session.turn_detection.create_response",
            ),
            (json!({"turn_detection": 5}), "session.turn_detection"),
            (json!({"max_output_tokens": 0}), "session.max_output_tokens"),
            (
                json!({"max_output_tokens": 4097}),
                "session.max_output_tokens",
            ),
            (
                json!({"max_response_output_tokens": "infinite"}),
                "session.max_response_output_tokens",
            ),
            (json!({"temperature": 2.5}), "session.temperature"),
            (json!({"temperature": "warm"}), "session.temperature"),
            (json!({"instructions": 42}), "session.instructions"),
            (json!({"modalities": ["video"]}), "session.modalities"),
            (
                json!({"output_modalities": "audio"}),
                "session.output_modalities",
            ),
            (
                json!({"tools": [{"type": "mcp", "server_label": "x"}]}),
                "session.tools[0].type",
            ),
            (
                json!({"tools": [{"type": "function"}]}),
                "session.tools[0].name",
            ),
            (
                json!({"tools": [{"type": "function", "name": "has space"}]}),
                "session.tools[0].name",
            ),
            (
                json!({"tools": [{"type": "function", "name": "f", "parameters": "{}"}]}),
                "session.tools[0].parameters",
            ),
            (
                json!({"tools": [{"name": "f"}, {"name": "f"}]}),
                "session.tools[1].name",
            ),
            (json!({"tools": {"name": "f"}}), "session.tools"),
            (json!({"tool_choice": 3}), "session.tool_choice"),
            (
                json!({"tool_choice": {"type": "mcp", "server_label": "x"}}),
                "session.tool_choice.type",
            ),
            (json!({"type": "transcription"}), "session.type"),
            (json!({"voice": 7}), "session.voice"),
            (
                json!({"input_audio_noise_reduction": {"type": "loud"}}),
                "session.input_audio_noise_reduction.type",
            ),
            (json!({"audio": "pcm"}), "session.audio"),
            (json!([]), "session"),
        ];
        for (s, param) in cases {
            let e = bad(s.clone());
            assert_eq!(e.param.as_deref(), Some(param), "{s}: {}", e.message);
            assert!(e.message.starts_with("session.update: "), "{}", e.message);
            assert!(e.message.contains(param), "{s}: {}", e.message);
        }
        let e = bad(json!({"input_audio_format": "g711_ulaw"}));
        assert!(
            e.message.contains("audio/pcm") && e.message.contains("24000"),
            "{}",
            e.message
        );
        let e = err(json!({"type": "session.update"}));
        assert_eq!(
            (e.code, e.param.as_deref()),
            ("missing_field", Some("session"))
        );
    }

    #[test]
    fn tool_choice_must_name_a_tool() {
        let mut s = state();
        let e = s
            .apply(&session(json!({"tool_choice": "get_time"})))
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("session.tool_choice"));
        assert!(e.message.contains("none defined"), "{}", e.message);
        // Failed updates change nothing.
        assert_eq!(s.tool_choice, "auto");
        s.apply(&session(
            json!({"tools": [{"name": "get_time"}], "tool_choice": "get_time"}),
        ))
        .unwrap();
        assert_eq!(s.tool_choice, "get_time");
        assert_eq!(
            s.tools[0].parameters,
            json!({"type": "object", "properties": {}})
        );
        // Removing the tool while it is chosen is refused.
        assert!(s.apply(&session(json!({"tools": []}))).is_err());
        assert_eq!(s.tools.len(), 1);
    }

    #[test]
    fn apply_is_all_or_nothing() {
        let mut s = state();
        let before = s.clone();
        let update = SessionUpdate {
            instructions: Some("changed".into()),
            temperature: Some(9.0),
            ..SessionUpdate::default()
        };
        assert!(s.apply(&update).is_err());
        assert_eq!(s, before);
    }

    #[test]
    fn defaults_and_full_settings() {
        let s = state();
        let settings = s.settings();
        assert_eq!(
            settings.turn_detection,
            Some(Some(TurnDetection::default()))
        );
        assert_eq!(settings.transcription, Some(false));
        assert_eq!(settings.output_modalities, Some(vec!["audio".to_string()]));
        let ga = s.to_json(false);
        assert_eq!(ga["audio"]["input"]["turn_detection"]["threshold"], 0.5);
        assert_eq!(
            ga["audio"]["input"]["turn_detection"]["create_response"],
            true
        );
        assert_eq!(
            ga["audio"]["input"]["turn_detection"]["interrupt_response"],
            true
        );
        assert_eq!(ga["audio"]["output"]["format"]["rate"], 24000);
        assert!(ga["audio"]["input"]["transcription"].is_null());
        assert_eq!(ga["max_output_tokens"], "inf");
        // Turning transcription on without a model reports the default.
        let mut s = s;
        s.apply(&session(json!({"audio": {"input": {"transcription": {}}}})))
            .unwrap();
        assert_eq!(
            s.to_json(false)["audio"]["input"]["transcription"]["model"],
            "whisper-1"
        );
    }

    #[test]
    fn event_names_for_beta() {
        assert_eq!(
            outgoing_event_name("response.output_audio.delta", true),
            Some("response.audio.delta")
        );
        assert_eq!(
            outgoing_event_name("response.output_audio.done", true),
            Some("response.audio.done")
        );
        assert_eq!(
            outgoing_event_name("response.output_audio_transcript.delta", true),
            Some("response.audio_transcript.delta")
        );
        assert_eq!(
            outgoing_event_name("response.output_audio_transcript.done", true),
            Some("response.audio_transcript.done")
        );
        assert_eq!(
            outgoing_event_name("response.output_text.delta", true),
            Some("response.text.delta")
        );
        assert_eq!(
            outgoing_event_name("response.output_text.done", true),
            Some("response.text.done")
        );
        assert_eq!(
            outgoing_event_name("conversation.item.added", true),
            Some("conversation.item.created")
        );
        assert_eq!(outgoing_event_name("conversation.item.done", true), None);
        assert_eq!(
            outgoing_event_name("input_audio_buffer.speech_started", true),
            Some("input_audio_buffer.speech_started")
        );
        assert_eq!(
            outgoing_event_name("conversation.item.done", false),
            Some("conversation.item.done")
        );
        assert_eq!(
            outgoing_event_name("response.output_audio.delta", false),
            Some("response.output_audio.delta")
        );
    }

    #[test]
    fn adapt_outgoing_shapes() {
        let ev = |v: Value| v.as_object().unwrap().clone();

        let mut e = ev(json!({"type": "response.output_audio.delta", "delta": "AAAA"}));
        assert!(adapt_outgoing(&mut e, false));
        assert_eq!(e["type"], "response.output_audio.delta");
        assert!(adapt_outgoing(&mut e, true));
        assert_eq!(e["type"], "response.audio.delta");

        let mut e = ev(json!({"type": "conversation.item.done", "item": {}}));
        assert!(!adapt_outgoing(&mut e, true));

        let item =
            crate::realtime::assistant_item("item_1", "completed", &["audio".to_string()], "Hello");
        let mut e = ev(json!({"type": "response.output_item.done", "item": item}));
        assert!(adapt_outgoing(&mut e, true));
        assert_eq!(e["item"]["content"][0]["type"], "audio");
        assert_eq!(e["item"]["content"][0]["transcript"], "Hello");

        let mut e = ev(
            json!({"type": "response.content_part.added", "part": {"type": "output_text", "text": ""}}),
        );
        assert!(adapt_outgoing(&mut e, true));
        assert_eq!(e["part"]["type"], "text");

        let response = crate::realtime::response_object(
            "resp_1",
            "completed",
            Value::Null,
            vec![crate::realtime::assistant_item(
                "item_1",
                "completed",
                &["text".to_string()],
                "Hi",
            )],
            &["text".to_string()],
            Some(crate::realtime::TokenCounts {
                input: 3,
                cached: 0,
                output: 4,
            }),
        );
        let mut e = ev(json!({"type": "response.done", "response": response}));
        let ga = e.clone();
        assert!(adapt_outgoing(&mut e, true));
        assert_eq!(e["response"]["modalities"], json!(["text"]));
        assert!(e["response"].get("output_modalities").is_none());
        assert_eq!(e["response"]["output"][0]["content"][0]["type"], "text");
        assert_eq!(e["response"]["usage"], ga["response"]["usage"]);

        let mut e = ev(json!({"type": "response.created", "response": {
            "output_modalities": ["audio"], "audio": {"output": {"voice": "alloy", "format": {"type": "audio/pcm", "rate": 24000}}}}}));
        assert!(adapt_outgoing(&mut e, true));
        assert_eq!(e["response"]["modalities"], json!(["text", "audio"]));
        assert_eq!(e["response"]["voice"], "alloy");
        assert_eq!(e["response"]["output_audio_format"], "pcm16");

        let mut e = ev(json!({"type": "session.updated", "session": state().to_json(false)}));
        assert!(adapt_outgoing(&mut e, true));
        assert_eq!(e["session"]["input_audio_format"], "pcm16");
        assert!(e["session"].get("audio").is_none());

        // Malformed events are left alone, never a panic.
        let mut e =
            ev(json!({"type": 5, "item": 3, "part": [], "response": "x", "session": {"audio": 1}}));
        assert!(adapt_outgoing(&mut e, true));
        let mut e = Map::new();
        assert!(adapt_outgoing(&mut e, true));
    }
}
