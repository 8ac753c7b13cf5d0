//! Function calls: when the router matches the user's words to a function
//! the session declared (`session.update` `tools`), the frozen LLM is asked
//! for that function's arguments as JSON, and the call goes to the client as
//! the Realtime API's `function_call` item (`response.output_item.added`,
//! `response.function_call_arguments.delta` / `done`, `output_item.done`,
//! `response.done`). The client runs it and sends a `function_call_output`
//! item and `response.create`; the answer then uses the result.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde_json::{Value, json};

use crate::graph::Ctx;
use crate::llm::{ChatMessage, GenerateOptions, Llm, Role, Usage};
use crate::realtime::{self, Tool};

/// What a call needs.
pub struct CallJob {
    pub llm: Box<dyn Llm>,
    pub tool: Tool,
    /// The user's words that asked for it.
    pub request: String,
    pub ctx: Ctx,
    /// Response id (`resp_...`), item id and call id of the call.
    pub rid: String,
    pub item_id: String,
    pub call_id: String,
    pub cancel: Arc<AtomicBool>,
    pub seed: u64,
}

/// What a finished call hands back: the engine (none if it crashed), the
/// arguments sent (a JSON object), and the engine's usage.
pub struct CallDone {
    pub llm: Option<Box<dyn Llm>>,
    pub arguments: String,
    pub usage: anyhow::Result<Usage>,
}

/// The properties of a function's parameters: (name, type, description),
/// in schema order.
pub fn properties(tool: &Tool) -> Vec<(String, String, String)> {
    tool.parameters["properties"]
        .as_object()
        .map(|props| {
            props
                .iter()
                .map(|(name, schema)| {
                    let kind = schema["type"].as_str().unwrap_or("string").to_string();
                    let about = schema["description"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    (name.clone(), kind, about)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The prompt that asks for one argument's value in `request`. A small
/// model answers one short question far more reliably than it writes a
/// whole JSON object (SmolLM2-135M copied the schema or made up fields).
pub fn argument_prompt(tool: &Tool, request: &str, name: &str, about: &str) -> Vec<ChatMessage> {
    let what = if about.is_empty() {
        name.replace('_', " ")
    } else {
        format!("{} ({about})", name.replace('_', " "))
    };
    vec![
        ChatMessage::new(
            Role::System,
            "You extract one value from a request. Reply with the value only, no sentence.",
        ),
        ChatMessage::new(
            Role::User,
            "Request: \"Set an alarm for 7 am\"\nFor the function set_alarm, what is the time?",
        ),
        ChatMessage::new(Role::Assistant, "7 am"),
        ChatMessage::new(
            Role::User,
            format!(
                "Request: \"{request}\"\nFor the function {} ({}), what is the {what}?",
                tool.name, tool.description
            ),
        ),
    ]
}

/// A model's answer as a JSON value of `kind`: the first line, trimmed of
/// quotes and a final period; numbers and booleans parsed when asked for.
pub fn to_value(answer: &str, kind: &str) -> Value {
    let text = answer
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .trim_matches(|c: char| c == '"' || c == '\'' || c == '`')
        .trim_end_matches('.')
        .trim();
    // "Paris (the city)": the model echoing the question's own format.
    let text = match text.find(" (") {
        Some(at) if text.ends_with(')') => text[..at].trim(),
        _ => text,
    };
    match kind {
        "integer" => text
            .split(|c: char| !c.is_ascii_digit() && c != '-')
            .find_map(|t| t.parse::<i64>().ok())
            .map_or(Value::Null, Value::from),
        "number" => text
            .split(|c: char| !c.is_ascii_digit() && c != '-' && c != '.')
            .find_map(|t| t.parse::<f64>().ok())
            .map_or(Value::Null, Value::from),
        "boolean" => Value::Bool(matches!(
            text.to_lowercase().as_str(),
            "yes" | "true" | "on"
        )),
        _ => Value::String(text.to_string()),
    }
}

/// The first balanced JSON object in `text` that parses, re-serialized
/// compactly; `None` if there is none.
pub fn first_json_object(text: &str) -> Option<String> {
    for (start, _) in text.match_indices('{') {
        let mut depth = 0usize;
        let mut in_string = false;
        let mut escaped = false;
        for (i, c) in text[start..].char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if in_string => escaped = true,
                '"' => in_string = !in_string,
                '{' if !in_string => depth += 1,
                '}' if !in_string => {
                    depth -= 1;
                    if depth == 0 {
                        let candidate = &text[start..start + i + 1];
                        if let Ok(value @ Value::Object(_)) = serde_json::from_str(candidate) {
                            return Some(value.to_string());
                        }
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    None
}

/// The function-call item in the Realtime API's shape.
fn item(job: &CallJob, status: &str, arguments: &str) -> Value {
    json!({
        "id": job.item_id,
        "object": "realtime.item",
        "type": "function_call",
        "status": status,
        "call_id": job.call_id,
        "name": job.tool.name,
        "arguments": arguments,
    })
}

/// Asks the LLM for the arguments (on the blocking pool) and sends the call.
pub async fn run(job: CallJob) -> CallDone {
    let events = job.ctx.events().clone();
    let added = item(&job, "in_progress", "");
    events.emit(
        "response.output_item.added",
        0,
        json!({"response_id": job.rid, "output_index": 0, "item": added}),
    );
    events.emit("conversation.item.added", 0, json!({"item": added}));

    let options = GenerateOptions {
        max_tokens: 16,
        temperature: 0.0,
        seed: job.seed,
    };
    let cancel = job.cancel.clone();
    let (tool, request) = (job.tool.clone(), job.request.clone());
    let mut llm = job.llm;
    let blocking = tokio::task::spawn_blocking(move || {
        let mut arguments = serde_json::Map::new();
        let mut total: Option<Usage> = None;
        for (name, kind, about) in properties(&tool) {
            let messages = argument_prompt(&tool, &request, &name, &about);
            let mut answer = String::new();
            let usage = llm.generate(&messages, &options, &cancel, &mut |piece| {
                answer.push_str(piece);
                !piece.contains('\n')
            });
            match usage {
                Ok(u) => {
                    let t = total.get_or_insert_with(Usage::default);
                    t.input_tokens += u.input_tokens;
                    t.prefilled_tokens += u.prefilled_tokens;
                    t.output_tokens += u.output_tokens;
                }
                Err(e) => return (llm, Value::Object(arguments).to_string(), Err(e)),
            }
            let value = to_value(&answer, &kind);
            if !value.is_null() {
                arguments.insert(name, value);
            }
        }
        (
            llm,
            Value::Object(arguments).to_string(),
            Ok(total.unwrap_or_default()),
        )
    });
    let (llm, text, usage) = match blocking.await {
        Ok((llm, text, usage)) => (Some(llm), text, usage),
        Err(e) => (
            None,
            String::new(),
            Err(anyhow::anyhow!("the LLM crashed: {e}")),
        ),
    };
    // A model that gives no valid object calls the function with none.
    let arguments = first_json_object(&text).unwrap_or_else(|| "{}".to_string());
    let (rid, item_id, call_id) = (&job.rid, &job.item_id, &job.call_id);
    events.emit(
        "response.function_call_arguments.delta",
        0,
        json!({"response_id": rid, "item_id": item_id, "output_index": 0, "call_id": call_id, "delta": arguments}),
    );
    events.emit(
        "response.function_call_arguments.done",
        0,
        json!({"response_id": rid, "item_id": item_id, "output_index": 0, "call_id": call_id, "name": job.tool.name, "arguments": arguments}),
    );
    let done = json!({
        "id": item_id, "object": "realtime.item", "type": "function_call", "status": "completed",
        "call_id": call_id, "name": job.tool.name, "arguments": arguments,
    });
    events.emit(
        "response.output_item.done",
        0,
        json!({"response_id": rid, "output_index": 0, "item": done}),
    );
    events.emit("conversation.item.done", 0, json!({"item": done}));
    let tokens = usage.as_ref().ok().map(realtime::TokenCounts::from);
    events.emit(
        "response.done",
        0,
        json!({"response": realtime::response_object(rid, "completed", Value::Null, vec![done], &["text".to_string()], tokens)}),
    );
    CallDone {
        llm,
        arguments,
        usage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_become_typed_values() {
        assert_eq!(to_value("Paris.\nMore", "string"), json!("Paris"));
        assert_eq!(to_value("\"Paris\"", "string"), json!("Paris"));
        assert_eq!(to_value("Paris (Paris)", "string"), json!("Paris"));
        assert_eq!(to_value("about 3 days", "integer"), json!(3));
        assert_eq!(to_value("21.5 degrees", "number"), json!(21.5));
        assert_eq!(to_value("Yes", "boolean"), json!(true));
        assert_eq!(to_value("none", "integer"), Value::Null);
        let tool = Tool {
            name: "get_weather".into(),
            description: String::new(),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string", "description": "The city"}, "days": {"type": "integer"}}}),
        };
        let props = properties(&tool);
        assert_eq!(
            props[0],
            ("city".into(), "string".into(), "The city".into())
        );
        assert_eq!(props[1].1, "integer");
    }

    #[test]
    fn the_first_valid_object_is_taken() {
        assert_eq!(
            first_json_object("Sure! {\"location\": \"Paris\"} done").as_deref(),
            Some("{\"location\":\"Paris\"}")
        );
        assert_eq!(
            first_json_object("{bad} then {\"a\": {\"b\": \"}\"}}").as_deref(),
            Some("{\"a\":{\"b\":\"}\"}}")
        );
        assert_eq!(first_json_object("no object here"), None);
        assert_eq!(first_json_object("{\"unclosed\": 1"), None);
        assert_eq!(first_json_object("[1, 2]"), None);
    }
}
