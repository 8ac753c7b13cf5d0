//! The Realtime API server: `duplex serve`.
//!
//! HTTP routes: `GET /v1/realtime?model=...` upgrades to a WebSocket that
//! speaks the OpenAI Realtime API (GA event names; beta clients, which send
//! `OpenAI-Beta: realtime=v1`, get the beta names), `GET /healthz`,
//! `GET /metrics` (Prometheus text), and the browser client at `/`.
//!
//! One pipeline graph per session; models are loaded once at start-up and
//! shared. Auth (an API key as a bearer token or the browser subprotocol
//! `openai-insecure-api-key.<key>`) and limits (sessions, message size,
//! buffered audio, idle time) are checked here, each refused with a clear
//! error.

pub mod connection;
pub mod metrics;
pub mod protocol;
pub mod web;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::graph::{Pipeline, Resources};
use metrics::Metrics;

/// Limits and settings of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Clients must present this key (bearer token or subprotocol).
    pub api_key: Option<String>,
    pub max_sessions: usize,
    /// Largest client message (a 20 ms append is ~1.3 KB).
    pub max_message_bytes: usize,
    /// Most audio a client may buffer before committing (manual turns).
    pub max_buffered_audio_ms: u64,
    /// A session with no client message for this long is closed.
    pub idle_timeout: Duration,
    /// Events waiting for a client that does not read; past this the
    /// session is closed so it cannot eat the server's memory.
    pub max_pending_events: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            api_key: None,
            max_sessions: 32,
            max_message_bytes: 4 << 20,
            max_buffered_audio_ms: 15 * 60 * 1000,
            idle_timeout: Duration::from_secs(300),
            max_pending_events: 20_000,
        }
    }
}

/// What every connection shares.
pub struct App {
    pub pipeline: Pipeline,
    pub resources: Arc<Resources>,
    pub config: ServerConfig,
    pub metrics: Metrics,
    /// The pipeline has a controller: it can hold a conversation and answer.
    pub converses: bool,
    /// Cancelled when the server shuts down: every session closes.
    pub shutdown: tokio_util::sync::CancellationToken,
    next_session: AtomicU64,
}

impl App {
    /// Loads every model the pipeline needs (a missing model fails here, not
    /// in the first session).
    pub fn new(
        pipeline: Pipeline,
        resources: Arc<Resources>,
        config: ServerConfig,
    ) -> Result<Arc<App>> {
        for node in &pipeline.nodes {
            node.kind
                .prepare(&resources)
                .with_context(|| format!("node `{}`", node.name))?;
        }
        let converses = pipeline
            .nodes
            .iter()
            .any(|n| matches!(n.kind, crate::graph::NodeKind::Controller(_)));
        Ok(Arc::new(App {
            converses,
            pipeline,
            resources,
            config,
            metrics: Metrics::new(),
            shutdown: tokio_util::sync::CancellationToken::new(),
            next_session: AtomicU64::new(1),
        }))
    }

    fn session_id(&self) -> String {
        let n = self.next_session.fetch_add(1, Ordering::Relaxed);
        let salt = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        format!("sess_{n:06}{salt:08x}")
    }
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/realtime", get(realtime))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_text))
        .merge(web::routes())
        .with_state(app)
}

/// Binds `addr` (port 0 picks a free port).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Serves until `shutdown` resolves, then closes every session and stops.
pub async fn serve(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let local = listener.local_addr().context("listener address")?;
    tracing::info!("listening on http://{local} (Realtime API at ws://{local}/v1/realtime)");
    let closing = app.shutdown.clone();
    axum::serve(listener, router(app))
        .with_graceful_shutdown(async move {
            shutdown.await;
            closing.cancel();
        })
        .await
        .context("server failed")
}

async fn metrics_text(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}

fn refuse(app: &App, status: StatusCode, code: &str, message: &str) -> Response {
    Metrics::inc(&app.metrics.sessions_refused);
    tracing::warn!(code, "refused a connection: {message}");
    let body =
        json!({"error": {"type": "invalid_request_error", "code": code, "message": message}});
    (status, axum::Json(body)).into_response()
}

/// The key a client presented: a bearer token, or the browser subprotocol.
fn presented_key(headers: &HeaderMap) -> Option<String> {
    if let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(token) = auth.strip_prefix("Bearer ")
    {
        return Some(token.trim().to_string());
    }
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| {
            p.trim()
                .strip_prefix("openai-insecure-api-key.")
                .map(String::from)
        })
}

/// Compares without leaking the key's length or content through timing.
fn same_key(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= (a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0)) as usize;
    }
    diff == 0
}

async fn realtime(
    State(app): State<Arc<App>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(e) => {
            return refuse(
                &app,
                StatusCode::BAD_REQUEST,
                "websocket_required",
                &format!("GET /v1/realtime must be a WebSocket upgrade ({e})"),
            );
        }
    };
    if let Some(key) = &app.config.api_key {
        match presented_key(&headers) {
            Some(given) if same_key(&given, key) => {}
            Some(_) => {
                return refuse(
                    &app,
                    StatusCode::UNAUTHORIZED,
                    "invalid_api_key",
                    "the API key is not valid",
                );
            }
            None => {
                return refuse(
                    &app,
                    StatusCode::UNAUTHORIZED,
                    "missing_api_key",
                    "an API key is required: send `Authorization: Bearer <key>` or the subprotocol `openai-insecure-api-key.<key>`",
                );
            }
        }
    }
    let active = app.metrics.sessions_active.load(Ordering::Relaxed) as usize;
    if active >= app.config.max_sessions {
        return refuse(
            &app,
            StatusCode::TOO_MANY_REQUESTS,
            "session_limit_reached",
            &format!(
                "the server holds its maximum of {} sessions; try again later",
                app.config.max_sessions
            ),
        );
    }
    let beta = headers
        .get("openai-beta")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("realtime=v1"));
    let model = query
        .get("model")
        .cloned()
        .unwrap_or_else(|| "duplex".into());
    let session_id = app.session_id();
    upgrade
        .protocols(["realtime"])
        .max_message_size(app.config.max_message_bytes)
        .max_frame_size(app.config.max_message_bytes)
        .on_upgrade(move |socket| connection::run(app, socket, session_id, model, beta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_bearer_or_subprotocol() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_key(&h), None);
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "realtime, openai-insecure-api-key.sk-1".parse().unwrap(),
        );
        assert_eq!(presented_key(&h).as_deref(), Some("sk-1"));
        h.insert(header::AUTHORIZATION, "Bearer sk-2".parse().unwrap());
        assert_eq!(presented_key(&h).as_deref(), Some("sk-2"));
        assert!(same_key("abc", "abc"));
        assert!(!same_key("abc", "abd"));
        assert!(!same_key("abc", "abcd"));
    }
}
