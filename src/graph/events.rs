//! Session events: what a client sees.
//!
//! Actors emit events with OpenAI Realtime API server event names and fields
//! (`input_audio_buffer.speech_started`, `error`, ...) plus a `t_ms`
//! session-clock field. The headless runner writes them as JSON lines; the
//! server sends them over the socket. Both see exactly the same stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

/// One server event as a JSON object (`type` first, `event_id`, fields, `t_ms`).
pub type Event = Map<String, Value>;

/// Where a session's actors send their events. Cheap to clone.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::UnboundedSender<Event>,
    next_id: Arc<AtomicU64>,
}

impl EventSink {
    pub fn new() -> (EventSink, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let sink = EventSink {
            tx,
            next_id: Arc::new(AtomicU64::new(1)),
        };
        (sink, rx)
    }

    /// Emits `{type, event_id, ...fields, t_ms}`. `fields` must be a JSON
    /// object (anything else is wrapped under `data`). A closed sink (the
    /// client is gone) silently drops the event.
    pub fn emit(&self, kind: &str, t_ms: u64, fields: Value) {
        let mut event = Map::new();
        event.insert("type".into(), Value::String(kind.into()));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        event.insert("event_id".into(), Value::String(format!("event_{id}")));
        match fields {
            Value::Object(map) => event.extend(map),
            Value::Null => {}
            other => {
                event.insert("data".into(), other);
            }
        }
        event.insert("t_ms".into(), json!(t_ms));
        let _ = self.tx.send(event);
    }

    /// A handle that does not keep the event stream open.
    pub fn downgrade(&self) -> WeakEventSink {
        WeakEventSink {
            tx: self.tx.downgrade(),
            next_id: self.next_id.clone(),
        }
    }

    /// Emits a Realtime API `error` event; the session stays open.
    pub fn error(&self, t_ms: u64, code: &str, message: &str) {
        self.emit(
            "error",
            t_ms,
            json!({
                "error": {
                    "type": "server_error",
                    "code": code,
                    "message": message,
                    "param": null,
                    "event_id": null,
                }
            }),
        );
    }
}

/// An [`EventSink`] that lets the stream close when the session's actors are
/// done.
#[derive(Clone)]
pub struct WeakEventSink {
    tx: mpsc::WeakUnboundedSender<Event>,
    next_id: Arc<AtomicU64>,
}

impl WeakEventSink {
    /// The sink, while the session is alive.
    pub fn upgrade(&self) -> Option<EventSink> {
        Some(EventSink {
            tx: self.tx.upgrade()?,
            next_id: self.next_id.clone(),
        })
    }
}
