//! One client connection: a session of the pipeline behind a WebSocket.
//!
//! The reader turns client events into frames for the session's graph
//! (audio, controls, manual turn boundaries); the writer sends the session's
//! events to the client, renamed for beta clients. Both obey one
//! cancellation token, so a disconnect, an idle timeout or a client that
//! stops reading ends every task of the session and frees its memory; a
//! misbehaving client never affects another session.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::App;
use super::metrics::Metrics;
use super::protocol::MaxOutputTokens;
use super::protocol::{self, ClientEvent, NewItem, ProtocolError, SessionDefaults, SessionState};
use crate::graph::NodeKind;
use crate::graph::{
    AudioChunk, Control, DataFrame, Event, EventSink, INPUT, Outbox, Payload, SessionGraph,
    SessionShared, SystemKind,
};
use crate::llm::Role;

/// The Realtime API's audio rate (pcm16, mono, 24 kHz).
const CLIENT_RATE: u32 = 24_000;

/// Where the client's audio stands: the session clock and manual turns.
struct InputState {
    /// Samples appended so far (the session clock at 24 kHz).
    appended: u64,
    /// Turn detection is off: the client commits turns itself.
    manual: bool,
    /// A manual utterance is open: (item id, its start in samples).
    open: Option<(String, u64)>,
    next_item: u64,
}

impl InputState {
    fn ms(&self, samples: u64) -> u64 {
        samples * 1000 / CLIENT_RATE as u64
    }
}

/// Runs a session until the client leaves, goes idle, or stops reading.
pub async fn run(app: Arc<App>, socket: WebSocket, session_id: String, model: String, beta: bool) {
    Metrics::inc(&app.metrics.sessions_total);
    app.metrics
        .sessions_active
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let span = tracing::info_span!("session", id = %session_id);
    async {
        tracing::info!(beta, model, "session opened");
        let result = serve_session(&app, socket, &session_id, &model, beta).await;
        if let Err(e) = result {
            tracing::warn!("session ended: {e:#}");
        }
        app.metrics
            .sessions_active
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!("session closed");
        release_freed_memory().await;
    }
    .instrument(span)
    .await
}

/// Hands memory the session freed back to the system. glibc keeps freed
/// heap pages (and, after large blocks are freed, raises its mmap threshold
/// so later ones come from the heap too): without this, the resident size of
/// a server stays at its peak after a burst of sessions.
async fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks glibc's own allocator state.
        let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
    }
}

async fn serve_session(
    app: &Arc<App>,
    socket: WebSocket,
    session_id: &str,
    model: &str,
    beta: bool,
) -> anyhow::Result<()> {
    let shared = SessionShared::new(session_id);
    let mut graph = SessionGraph::start(&app.pipeline, &app.resources, &shared)?;
    let input = graph
        .input
        .clone()
        .ok_or_else(|| anyhow::anyhow!("session has no input"))?;
    let sink = graph
        .sink()
        .ok_or_else(|| anyhow::anyhow!("session ended at once"))?;
    let mut events = std::mem::replace(&mut graph.events, mpsc::unbounded_channel().1);
    let cancel = CancellationToken::new();
    let (mut ws_out, mut ws_in) = socket.split();

    let mut session = SessionState::new(session_id, model, &session_defaults(&app.pipeline));
    sink.emit(
        "session.created",
        0,
        json!({"session": session.to_json(beta)}),
    );

    // Writer: session events -> socket.
    let writer_cancel = cancel.clone();
    let writer_app = app.clone();
    let writer = tokio::spawn(async move {
        let max_pending = writer_app.config.max_pending_events;
        loop {
            let event = tokio::select! {
                event = events.recv() => event,
                _ = writer_cancel.cancelled() => None,
            };
            let Some(mut event) = event else { break };
            observe(&writer_app.metrics, &event);
            if events.len() > max_pending {
                tracing::warn!(
                    pending = events.len(),
                    "client is not reading; closing the session"
                );
                break;
            }
            if !protocol::adapt_outgoing(&mut event, beta) {
                continue;
            }
            let text = match serde_json::to_string(&event) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!("cannot serialize an event: {e}");
                    continue;
                }
            };
            let sent = tokio::time::timeout(
                Duration::from_secs(10),
                ws_out.send(Message::Text(text.into())),
            )
            .await;
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                Err(_) => {
                    tracing::warn!("client did not take an event for 10 s; closing the session");
                    break;
                }
            }
        }
        writer_cancel.cancel();
        let _ = ws_out.close().await;
    });

    // Reader: socket -> graph.
    let mut state = InputState {
        appended: 0,
        manual: false,
        open: None,
        next_item: 1,
    };
    let idle = app.config.idle_timeout;
    loop {
        let message = tokio::select! {
            m = tokio::time::timeout(idle, ws_in.next()) => m,
            _ = cancel.cancelled() => break,
            _ = app.shutdown.cancelled() => {
                sink.error(0, "server_shutting_down", "the server is shutting down");
                break;
            }
        };
        let message = match message {
            Err(_) => {
                sink.error(
                    0,
                    "idle_timeout",
                    &format!(
                        "no client event for {} s; closing the session",
                        idle.as_secs()
                    ),
                );
                tracing::info!("idle timeout");
                break;
            }
            Ok(None) | Ok(Some(Err(_))) => break,
            Ok(Some(Ok(m))) => m,
        };
        let text = match message {
            Message::Text(text) => text,
            Message::Close(_) => break,
            Message::Binary(_) => {
                client_error(
                    app,
                    &sink,
                    &ProtocolError::new(
                        "invalid_value",
                        "binary WebSocket messages are not supported: send JSON text events",
                    ),
                );
                continue;
            }
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        let event = match protocol::parse_client_event(&text) {
            Ok(event) => event,
            Err(e) => {
                client_error(app, &sink, &e);
                continue;
            }
        };
        if let Err(e) = handle(
            app,
            &graph,
            &shared,
            &input,
            &sink,
            &mut session,
            &mut state,
            event,
            beta,
        )
        .await
        {
            client_error(app, &sink, &e);
        }
    }
    cancel.cancel();
    drop(input);
    drop(graph); // cancels every actor of the session
    let _ = writer.await;
    Ok(())
}

/// What a new session reports as its settings: the pipeline's own.
fn session_defaults(pipeline: &crate::graph::Pipeline) -> SessionDefaults {
    let mut defaults = SessionDefaults::default();
    let mut vad = None;
    for node in &pipeline.nodes {
        match &node.kind {
            NodeKind::SileroVad(p) => vad = Some(p.clone()),
            NodeKind::Controller(p) => {
                defaults.instructions = p.instructions.clone();
                defaults.output_modalities = p.modalities.clone();
                defaults.temperature = p.temperature;
                defaults.max_output_tokens = MaxOutputTokens::Limit(p.max_tokens as u32);
            }
            NodeKind::Whisper(_) => defaults.transcription = true,
            _ => {}
        }
    }
    defaults.turn_detection = vad.map(|v| crate::realtime::TurnDetection {
        threshold: v.threshold,
        prefix_padding_ms: v.prefix_padding_ms,
        silence_duration_ms: v.silence_ms(),
        semantic: v.semantic(),
        ..Default::default()
    });
    defaults
}

fn observe(metrics: &Metrics, event: &Event) {
    match event.get("type").and_then(Value::as_str) {
        Some("error") => Metrics::inc(&metrics.errors_total),
        Some("duplex.turn.latency") => {
            if let Some(stages) = event.get("since_speech_end") {
                metrics.observe_turn(stages);
            }
        }
        _ => {}
    }
}

fn client_error(app: &App, sink: &EventSink, error: &ProtocolError) {
    Metrics::inc(&app.metrics.client_errors_total);
    tracing::debug!(code = error.code, "client error: {}", error.message);
    sink.emit("error", 0, error.to_event());
}

async fn control(input: &Outbox, t_ms: u64, control: Control) {
    input
        .send_data(DataFrame {
            t_ms,
            response_id: INPUT,
            payload: Payload::Control(Arc::new(control)),
        })
        .await;
}

#[allow(clippy::too_many_arguments)]
async fn handle(
    app: &App,
    graph: &SessionGraph,
    shared: &SessionShared,
    input: &Outbox,
    sink: &EventSink,
    session: &mut SessionState,
    state: &mut InputState,
    event: ClientEvent,
    beta: bool,
) -> Result<(), ProtocolError> {
    let now = state.ms(state.appended);
    let conversational = matches!(
        event,
        ClientEvent::ConversationItemCreate { .. }
            | ClientEvent::ConversationItemTruncate { .. }
            | ClientEvent::ConversationItemDelete { .. }
            | ClientEvent::ResponseCreate { .. }
            | ClientEvent::ResponseCancel { .. }
            | ClientEvent::OutputAudioBufferClear { .. }
    );
    if conversational && !app.converses {
        return Err(ProtocolError::new(
            "not_supported",
            format!(
                "{}: this server's pipeline ({}) only listens: it has no `controller` node to hold a conversation",
                event.type_name(),
                app.pipeline.source.display()
            ),
        )
        .with_event_id(event.event_id().map(String::from)));
    }
    match event {
        ClientEvent::SessionUpdate {
            event_id,
            session: update,
        } => {
            let settings = session
                .apply(&update)
                .map_err(|e| e.with_event_id(event_id.clone()))?;
            if let Some(turn) = &settings.turn_detection {
                state.manual = turn.is_none();
            }
            control(input, now, Control::Configure(settings)).await;
            sink.emit(
                "session.updated",
                now,
                json!({"session": session.to_json(beta)}),
            );
        }
        ClientEvent::InputAudioBufferAppend { event_id, audio } => {
            let buffered_ms = state
                .open
                .as_ref()
                .map(|(_, start)| state.ms(state.appended - start))
                .unwrap_or(0);
            if buffered_ms > app.config.max_buffered_audio_ms {
                return Err(ProtocolError::new(
                    "input_audio_buffer_full",
                    format!("input_audio_buffer.append: more than {} s of audio is buffered; commit or clear it first", app.config.max_buffered_audio_ms / 1000),
                )
                .with_event_id(event_id));
            }
            if state.manual && state.open.is_none() {
                let item_id = format!("item_u{:04}", state.next_item);
                state.next_item += 1;
                graph.raise(
                    now,
                    SystemKind::SpeechStarted {
                        item_id: item_id.clone(),
                        audio_start_ms: now,
                        wants_scores: false,
                    },
                );
                state.open = Some((item_id, state.appended));
            }
            state.appended += audio.len() as u64;
            input
                .send_data(DataFrame::audio(
                    now,
                    INPUT,
                    AudioChunk::new(audio, CLIENT_RATE),
                ))
                .await;
        }
        ClientEvent::InputAudioBufferCommit { event_id } => {
            let Some((item_id, start)) = state
                .open
                .take()
                .filter(|(_, start)| state.appended > *start)
            else {
                let why = if state.manual {
                    "input_audio_buffer.commit: the buffer is empty: append audio first"
                } else {
                    "input_audio_buffer.commit: nothing to commit: server turn detection commits each turn itself"
                };
                return Err(ProtocolError::new("input_audio_buffer_commit_empty", why)
                    .with_event_id(event_id));
            };
            let _ = start;
            shared.latency.start(&item_id, Duration::ZERO);
            graph.raise(
                now,
                SystemKind::SpeechStopped {
                    item_id,
                    audio_end_ms: now,
                    speech_end_ms: now,
                },
            );
        }
        ClientEvent::InputAudioBufferClear { .. } => {
            state.open = None;
            control(input, now, Control::ClearInput).await;
            sink.emit("input_audio_buffer.cleared", now, json!({}));
        }
        ClientEvent::ConversationItemCreate {
            event_id,
            previous_item_id,
            item,
        } => {
            let item_id = item.id().map(String::from).unwrap_or_else(|| {
                state.next_item += 1;
                format!("item_c{:04}", state.next_item)
            });
            let audio = item.audio();
            match &item {
                NewItem::FunctionCall { .. } => {
                    return Err(ProtocolError::new(
                        "invalid_value",
                        "conversation.item.create: function_call items are made by the model, not the client",
                    )
                    .with_param("item.type")
                    .with_event_id(event_id));
                }
                NewItem::FunctionCallOutput {
                    call_id, output, ..
                } => {
                    control(
                        input,
                        now,
                        Control::AddItem {
                            item_id,
                            previous_item_id,
                            role: Role::User,
                            text: output.clone(),
                            call_id: Some(call_id.clone()),
                        },
                    )
                    .await;
                }
                NewItem::Message { .. } if !audio.is_empty() => {
                    // Transcribed like a committed turn of the user's speech.
                    if state.open.is_some() {
                        return Err(ProtocolError::new(
                            "invalid_value",
                            "conversation.item.create: commit or clear the input audio buffer before adding an audio item",
                        )
                        .with_event_id(event_id));
                    }
                    graph.raise(
                        now,
                        SystemKind::SpeechStarted {
                            item_id: item_id.clone(),
                            audio_start_ms: now,
                            wants_scores: false,
                        },
                    );
                    state.appended += audio.len() as u64;
                    input
                        .send_data(DataFrame::audio(
                            now,
                            INPUT,
                            AudioChunk::new(audio, CLIENT_RATE),
                        ))
                        .await;
                    let end = state.ms(state.appended);
                    graph.raise(
                        end,
                        SystemKind::SpeechStopped {
                            item_id,
                            audio_end_ms: end,
                            speech_end_ms: end,
                        },
                    );
                }
                NewItem::Message { .. } => {
                    control(
                        input,
                        now,
                        Control::AddItem {
                            item_id,
                            previous_item_id,
                            role: item.role(),
                            text: item.text(),
                            call_id: None,
                        },
                    )
                    .await;
                }
            }
        }
        ClientEvent::ConversationItemTruncate {
            item_id,
            audio_end_ms,
            ..
        } => {
            control(
                input,
                now,
                Control::Truncate {
                    item_id,
                    audio_end_ms,
                },
            )
            .await;
        }
        ClientEvent::ConversationItemDelete { item_id, .. } => {
            control(input, now, Control::Delete { item_id }).await;
        }
        ClientEvent::ConversationItemRetrieve { item_id, .. } => {
            control(input, now, Control::Retrieve { item_id }).await;
        }
        ClientEvent::ResponseCreate { response: r, .. } => {
            control(
                input,
                now,
                Control::CreateResponse {
                    instructions: r.instructions,
                    modalities: r.output_modalities,
                    max_tokens: r.max_output_tokens.map(|m| m.as_usize()),
                },
            )
            .await;
        }
        ClientEvent::ResponseCancel { response_id, .. } => {
            control(input, now, Control::CancelResponse { response_id }).await;
        }
        ClientEvent::OutputAudioBufferClear { .. } => {
            control(input, now, Control::CancelResponse { response_id: None }).await;
        }
        ClientEvent::InputVideoAppend { image, .. } => {
            Metrics::inc(&app.metrics.video_frames_total);
            input
                .send_data(DataFrame {
                    t_ms: now,
                    response_id: INPUT,
                    payload: Payload::Video(image.into()),
                })
                .await;
        }
    }
    Ok(())
}
