//! Property tests of the Realtime API client-event parser
//! (`duplex::server::protocol`): arbitrary text, arbitrary JSON, and
//! mutations of valid events (a field dropped, a value of another type, the
//! text cut short) never panic, and every refusal is a well-formed `error`
//! event. Also the parser's throughput on the hottest event, a 20 ms
//! `input_audio_buffer.append` (printed; run with `-- --nocapture`).

use std::time::{Duration, Instant};

use duplex::audio::pcm16_base64_encode;
use duplex::server::protocol::{
    ClientEvent, ProtocolError, SessionDefaults, SessionState, adapt_outgoing, parse_client_event,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{Map, Value, json};

const CODES: &[&str] = &[
    "invalid_json",
    "unknown_event",
    "missing_field",
    "invalid_value",
    "invalid_audio",
    "message_too_large",
];

/// Checks the error event shape: exactly the five fields, well typed.
fn check_error(e: &ProtocolError) -> Result<(), TestCaseError> {
    let event = e.to_event();
    let error = event
        .get("error")
        .and_then(Value::as_object)
        .ok_or_else(|| TestCaseError::fail(format!("no error object in {event}")))?;
    let keys: Vec<&str> = error.keys().map(String::as_str).collect();
    prop_assert_eq!(keys, vec!["type", "code", "message", "param", "event_id"]);
    prop_assert_eq!(&error["type"], "invalid_request_error");
    let code = error["code"].as_str().unwrap_or_default();
    prop_assert!(CODES.contains(&code), "unexpected code {code}");
    let message = error["message"].as_str().unwrap_or_default();
    prop_assert!(!message.is_empty(), "empty message");
    prop_assert!(error["param"].is_null() || error["param"].is_string());
    prop_assert!(error["event_id"].is_null() || error["event_id"].is_string());
    Ok(())
}

/// Parses `text`; a session.update that parses is also applied and the
/// session rendered in both shapes.
fn check_text(text: &str) -> Result<(), TestCaseError> {
    match parse_client_event(text) {
        Ok(ClientEvent::SessionUpdate { session, .. }) => {
            let mut state = SessionState::new("sess_fuzz", "duplex", &SessionDefaults::default());
            match state.apply(&session) {
                Ok(_) => {}
                Err(e) => check_error(&e)?,
            }
            let ga = state.to_json(false);
            let beta = state.to_json(true);
            prop_assert!(ga.is_object() && beta.is_object());
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(e) => check_error(&e),
    }
}

fn check_value(v: &Value) -> Result<(), TestCaseError> {
    check_text(&v.to_string())
}

/// Field names of the protocol, so random objects hit the parser's paths.
const KEYS: &[&str] = &[
    "type",
    "event_id",
    "session",
    "audio",
    "input",
    "output",
    "format",
    "rate",
    "turn_detection",
    "threshold",
    "prefix_padding_ms",
    "silence_duration_ms",
    "create_response",
    "interrupt_response",
    "idle_timeout_ms",
    "eagerness",
    "transcription",
    "model",
    "noise_reduction",
    "voice",
    "speed",
    "tools",
    "name",
    "parameters",
    "description",
    "tool_choice",
    "max_output_tokens",
    "max_response_output_tokens",
    "temperature",
    "modalities",
    "output_modalities",
    "instructions",
    "input_audio_format",
    "output_audio_format",
    "input_audio_transcription",
    "item",
    "role",
    "content",
    "text",
    "transcript",
    "call_id",
    "item_id",
    "content_index",
    "audio_end_ms",
    "previous_item_id",
    "response",
    "conversation",
    "metadata",
    "response_id",
    "id",
    "part",
    "delta",
];

/// Strings the parser gives meaning to.
const WORDS: &[&str] = &[
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
    "message",
    "function_call",
    "function_call_output",
    "item_reference",
    "user",
    "system",
    "assistant",
    "input_text",
    "input_audio",
    "output_text",
    "output_audio",
    "text",
    "audio",
    "server_vad",
    "semantic_vad",
    "low",
    "high",
    "auto",
    "none",
    "required",
    "inf",
    "pcm16",
    "audio/pcm",
    "audio/pcmu",
    "realtime",
    "transcription",
    "function",
    "AAAA",
    "AQID",
    "AAA!",
    "",
    "g711_ulaw",
    "near_field",
    "response.output_audio.delta",
    "conversation.item.added",
    "conversation.item.done",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|x| serde_json::Number::from_f64(x)
            .map(Value::Number)
            .unwrap_or(Value::Null)),
        (-2.0f64..3.0).prop_map(|x| json!(x)),
        (0u64..30_000).prop_map(|n| json!(n)),
        prop::sample::select(WORDS).prop_map(|s| json!(s)),
        ".{0,12}".prop_map(Value::String),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(KEYS).prop_map(str::to_string),
        1 => "[a-z_]{0,8}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(6, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..8)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

/// An object whose `type` is a known event type, other fields random.
fn typed_event() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(WORDS),
        prop::collection::vec((key(), json_value()), 0..6),
    )
        .prop_map(|(ty, pairs)| {
            let mut obj: Map<String, Value> = pairs.into_iter().collect();
            obj.insert("type".into(), json!(ty));
            Value::Object(obj)
        })
}

/// Valid events of every kind, GA and beta shapes.
fn valid_events() -> Vec<Value> {
    let audio = pcm16_base64_encode(&[0.1, -0.2, 0.3, 0.0]);
    vec![
        json!({"type": "session.update", "event_id": "e1", "session": {
            "type": "realtime", "instructions": "Be brief.", "output_modalities": ["audio"],
            "audio": {
                "input": {"format": {"type": "audio/pcm", "rate": 24000},
                          "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                                             "silence_duration_ms": 500, "create_response": true,
                                             "interrupt_response": true, "idle_timeout_ms": null},
                          "transcription": {"model": "whisper-1", "language": "en"},
                          "noise_reduction": {"type": "near_field"}},
                "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin", "speed": 1.0}},
            "tools": [{"type": "function", "name": "get_weather", "description": "d",
                       "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "max_output_tokens": "inf"}}),
        json!({"type": "session.update", "session": {
            "modalities": ["text", "audio"], "voice": "alloy", "input_audio_format": "pcm16",
            "output_audio_format": "pcm16", "input_audio_transcription": {"model": "whisper-1"},
            "turn_detection": {"type": "semantic_vad", "eagerness": "low"},
            "tools": [], "tool_choice": "auto", "temperature": 0.8, "max_response_output_tokens": 1024}}),
        json!({"type": "input_audio_buffer.append", "event_id": "e2", "audio": audio}),
        json!({"type": "input_audio_buffer.commit", "event_id": "e3"}),
        json!({"type": "input_audio_buffer.clear"}),
        json!({"type": "output_audio_buffer.clear"}),
        json!({"type": "conversation.item.create", "previous_item_id": "item_1", "item": {
            "id": "item_2", "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "hi"}, {"type": "input_audio", "audio": audio}]}}),
        json!({"type": "conversation.item.create", "item": {
            "type": "message", "role": "assistant", "content": [{"type": "output_audio", "transcript": "hello"}]}}),
        json!({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": "call_1", "output": "{\"ok\": true}"}}),
        json!({"type": "conversation.item.truncate", "item_id": "item_3", "content_index": 0, "audio_end_ms": 1200}),
        json!({"type": "conversation.item.delete", "item_id": "item_3"}),
        json!({"type": "conversation.item.retrieve", "item_id": "item_3"}),
        json!({"type": "response.create", "response": {
            "instructions": "x", "output_modalities": ["text"], "max_output_tokens": 100,
            "conversation": "none", "metadata": {"k": "v"},
            "input": [{"type": "item_reference", "id": "item_1"},
                      {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "s"}]}]}}),
        json!({"type": "response.create", "response": {
            "modalities": ["text"], "max_response_output_tokens": "inf", "temperature": 1.0, "voice": "echo"}}),
        json!({"type": "response.create"}),
        json!({"type": "response.cancel", "response_id": "resp_1"}),
    ]
}

#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Idx(usize),
}

/// Every path to a value inside `v` (the root excluded).
fn paths(v: &Value, prefix: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    match v {
        Value::Object(obj) => {
            for (k, child) in obj {
                prefix.push(Seg::Key(k.clone()));
                out.push(prefix.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                prefix.push(Seg::Idx(i));
                out.push(prefix.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn parent_mut<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    let mut cur = v;
    for seg in path {
        cur = match seg {
            Seg::Key(k) => cur.get_mut(k.as_str())?,
            Seg::Idx(i) => cur.get_mut(*i)?,
        };
    }
    Some(cur)
}

/// Removes the value at `path`.
fn drop_at(v: &mut Value, path: &[Seg]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    match (parent_mut(v, parent), last) {
        (Some(Value::Object(obj)), Seg::Key(k)) => {
            obj.remove(k);
        }
        (Some(Value::Array(items)), Seg::Idx(i)) if *i < items.len() => {
            items.remove(*i);
        }
        _ => {}
    }
}

/// Replaces the value at `path`.
fn replace_at(v: &mut Value, path: &[Seg], new: Value) {
    if let Some(slot) = parent_mut(v, path) {
        *slot = new;
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 3000,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_strings(text in any::<String>()) {
        check_text(&text)?;
    }

    #[test]
    fn jsonish_strings(text in "[\\[\\]{}\":,a-z0-9_. \\-]{0,120}") {
        check_text(&text)?;
    }

    #[test]
    fn arbitrary_json(v in json_value()) {
        check_value(&v)?;
    }

    #[test]
    fn arbitrary_typed_events(v in typed_event()) {
        check_value(&v)?;
    }

    #[test]
    fn dropped_field(which in any::<Index>(), path in any::<Index>()) {
        let events = valid_events();
        let mut v = which.get(&events).clone();
        let mut all = Vec::new();
        paths(&v, &mut Vec::new(), &mut all);
        if !all.is_empty() {
            let p: &Vec<Seg> = path.get(&all);
            drop_at(&mut v, p);
        }
        check_value(&v)?;
    }

    #[test]
    fn changed_type(which in any::<Index>(), path in any::<Index>(), new in json_value()) {
        let events = valid_events();
        let mut v = which.get(&events).clone();
        let mut all = Vec::new();
        paths(&v, &mut Vec::new(), &mut all);
        if !all.is_empty() {
            let p: &Vec<Seg> = path.get(&all);
            replace_at(&mut v, p, new);
        }
        check_value(&v)?;
    }

    #[test]
    fn truncated_text(which in any::<Index>(), cut in any::<Index>()) {
        let events = valid_events();
        let text = which.get(&events).to_string();
        // Cut at a char boundary at or before the chosen byte.
        let mut at = cut.index(text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        check_text(&text[..at])?;
    }

    #[test]
    fn valid_events_parse(which in any::<Index>()) {
        let events = valid_events();
        let v = which.get(&events);
        prop_assert!(parse_client_event(&v.to_string()).is_ok(), "{v} did not parse");
    }

    #[test]
    fn adapt_outgoing_never_panics(v in json_value(), ty in prop::sample::select(WORDS), beta in any::<bool>()) {
        let mut obj = match v {
            Value::Object(obj) => obj,
            other => {
                let mut obj = Map::new();
                obj.insert("item".into(), other);
                obj
            }
        };
        obj.insert("type".into(), json!(ty));
        let _ = adapt_outgoing(&mut obj, beta);
    }
}

#[test]
fn append_throughput() {
    // 20 ms of a 440 Hz tone at 24 kHz: 480 samples, 1280 base64 chars.
    let samples: Vec<f32> = (0..480)
        .map(|i| 0.3 * (i as f32 * 440.0 * std::f32::consts::TAU / 24_000.0).sin())
        .collect();
    let text = json!({
        "type": "input_audio_buffer.append",
        "event_id": "evt_0001",
        "audio": pcm16_base64_encode(&samples),
    })
    .to_string();
    let mut parsed = 0u64;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(500) {
        for _ in 0..100 {
            match parse_client_event(&text) {
                Ok(ClientEvent::InputAudioBufferAppend { audio, .. }) => {
                    assert_eq!(audio.len(), 480)
                }
                other => panic!("unexpected {other:?}"),
            }
            parsed += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let per_sec = parsed as f64 / secs;
    println!(
        "input_audio_buffer.append (20 ms, {} bytes): {:.0} events/s, {:.2} us/event, {:.0}x real time for one stream",
        text.len(),
        per_sec,
        1e6 / per_sec,
        per_sec / 50.0
    );
    // One stream sends 50 a second; even a debug build must keep far ahead.
    assert!(per_sec > 5_000.0, "only {per_sec:.0} events/s");
}
