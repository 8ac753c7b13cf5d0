//! The remote engine: [`RemoteLlm`] drives any OpenAI-compatible
//! `/v1/chat/completions` server (vLLM, llama.cpp's server, Ollama, hosted
//! APIs) with `stream: true` and reads its server-sent events as they come.
//!
//! The HTTP exchange runs on a helper thread that hands text pieces to the
//! caller's thread over a channel; the caller polls its cancel flag every few
//! milliseconds while it waits, so a cancel returns at once even while the
//! server is still busy with the prompt and sends nothing. The helper drops
//! the connection (which tells the server to stop) as soon as it wakes up.

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use super::{ChatMessage, GenerateOptions, Llm, Usage};

/// Where the server is and how long to wait for it.
#[derive(Clone)]
pub struct RemoteOptions {
    /// The API root, e.g. `http://127.0.0.1:8000/v1`; `/chat/completions` is
    /// appended.
    pub base_url: String,
    /// The `model` field of the request (vLLM and hosted APIs check it; a
    /// single-model llama.cpp server accepts any name).
    pub model: String,
    /// Sent as `Authorization: Bearer ...`; never logged or shown.
    pub api_key: Option<String>,
    /// Limit on establishing the TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Limit on any single wait for data from the server: the response
    /// headers, then each piece of the stream.
    pub read_timeout: Duration,
}

impl RemoteOptions {
    /// Options with the default timeouts (connect 5 s, read 60 s) and no key.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        RemoteOptions {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
        }
    }
}

impl fmt::Debug for RemoteOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteOptions")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .finish()
    }
}

/// How often the caller's thread looks at the cancel flag while it waits.
const CANCEL_POLL: Duration = Duration::from_millis(5);
/// Longest SSE line accepted (a runaway server must not exhaust memory).
const MAX_LINE: usize = 1 << 20;
/// Longest error body read from a failed response.
const MAX_ERROR_BODY: u64 = 64 << 10;
/// Longest non-streamed JSON reply accepted.
const MAX_JSON_BODY: u64 = 16 << 20;

/// An [`Llm`] over an OpenAI-compatible chat-completions server.
pub struct RemoteLlm {
    options: RemoteOptions,
    endpoint: String,
    agent: ureq::Agent,
}

impl fmt::Debug for RemoteLlm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteLlm")
            .field("endpoint", &self.endpoint)
            .field("options", &self.options)
            .finish()
    }
}

impl RemoteLlm {
    /// Checks the URL (no request is made: the server may start later).
    pub fn new(options: RemoteOptions) -> Result<RemoteLlm> {
        let base = options.base_url.trim().trim_end_matches('/');
        let Some((scheme, rest)) = base.split_once("://") else {
            bail!(
                "LLM server URL {:?} has no scheme: use e.g. http://127.0.0.1:8000/v1",
                options.base_url
            );
        };
        if !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") || rest.is_empty() {
            bail!(
                "LLM server URL {:?} must be http:// or https:// with a host, e.g. http://127.0.0.1:8000/v1",
                options.base_url
            );
        }
        let endpoint = format!("{base}/chat/completions");
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(options.connect_timeout))
            .timeout_per_read(Some(options.read_timeout))
            .timeout_per_write(Some(options.read_timeout))
            .build();
        Ok(RemoteLlm {
            endpoint,
            agent: ureq::Agent::new_with_config(config),
            options,
        })
    }

    /// The full URL requests go to (`<base_url>/chat/completions`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn options(&self) -> &RemoteOptions {
        &self.options
    }

    fn request_body(&self, messages: &[ChatMessage], options: &GenerateOptions) -> Vec<u8> {
        // f32 -> f64 through decimal rounding: 0.7 goes out as 0.7, not
        // 0.699999988079071.
        let temperature = (options.temperature as f64 * 1e6).round() / 1e6;
        json!({
            "model": self.options.model,
            "messages": messages,
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_tokens": options.max_tokens,
            "temperature": temperature,
            "seed": options.seed,
        })
        .to_string()
        .into_bytes()
    }
}

/// What the helper thread reports.
enum Event {
    Text(String),
    Usage(ServerUsage),
    /// The stream ended normally.
    Done,
    Failed(anyhow::Error),
}

/// The `usage` object of a chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct ServerUsage {
    prompt_tokens: Option<usize>,
    completion_tokens: Option<usize>,
    cached_tokens: Option<usize>,
}

impl Llm for RemoteLlm {
    fn generate(
        &mut self,
        messages: &[ChatMessage],
        options: &GenerateOptions,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Usage> {
        let start = Instant::now();
        let mut usage = Usage::default();
        if cancel.load(Ordering::Relaxed) {
            usage.cancelled = true;
            return Ok(usage);
        }
        tracing::debug!(
            url = %self.endpoint,
            model = %self.options.model,
            messages = messages.len(),
            max_tokens = options.max_tokens,
            "remote LLM request"
        );
        let request = Request {
            agent: self.agent.clone(),
            endpoint: self.endpoint.clone(),
            api_key: self.options.api_key.clone(),
            body: self.request_body(messages, options),
            connect_timeout: self.options.connect_timeout,
            read_timeout: self.options.read_timeout,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let thread_stop = stop.clone();
        std::thread::Builder::new()
            .name("llm-remote".into())
            .spawn(move || {
                let result = request.stream(&thread_stop, &tx);
                let _ = tx.send(match result {
                    Ok(()) => Event::Done,
                    Err(e) => Event::Failed(e),
                });
            })
            .context("cannot start the remote LLM reader thread")?;
        // Stop the helper however this returns (error, cancel, panic in
        // on_text): it then drops the connection at its next wake-up.
        struct StopOnDrop(Arc<AtomicBool>);
        impl Drop for StopOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = StopOnDrop(stop);

        let mut pieces = 0usize;
        let mut server_usage = None;
        loop {
            if cancel.load(Ordering::Relaxed) {
                usage.cancelled = true;
                break;
            }
            match rx.recv_timeout(CANCEL_POLL) {
                Ok(Event::Text(text)) => {
                    pieces += 1;
                    usage
                        .time_to_first_token
                        .get_or_insert_with(|| start.elapsed());
                    if !on_text(&text) {
                        usage.cancelled = true;
                        break;
                    }
                }
                Ok(Event::Usage(u)) => server_usage = Some(u),
                Ok(Event::Done) => break,
                Ok(Event::Failed(e)) => return Err(e),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!(
                        "the reader of the LLM stream from {} stopped unexpectedly",
                        self.endpoint
                    )
                }
            }
        }
        let u = server_usage.unwrap_or_default();
        usage.input_tokens = u.prompt_tokens.unwrap_or(0);
        usage.prefilled_tokens = match u.cached_tokens {
            Some(cached) => usage.input_tokens.saturating_sub(cached),
            None => usage.input_tokens,
        };
        usage.output_tokens = u.completion_tokens.unwrap_or(pieces);
        tracing::debug!(
            url = %self.endpoint,
            input_tokens = usage.input_tokens,
            output_tokens = usage.output_tokens,
            cancelled = usage.cancelled,
            elapsed_ms = start.elapsed().as_millis() as u64,
            "remote LLM reply"
        );
        Ok(usage)
    }
}

/// One HTTP exchange, run on the helper thread.
struct Request {
    agent: ureq::Agent,
    endpoint: String,
    api_key: Option<String>,
    body: Vec<u8>,
    connect_timeout: Duration,
    read_timeout: Duration,
}

impl Request {
    /// Sends the request and forwards the stream to `tx` until it ends,
    /// `stop` is raised or the receiver is gone; returning drops the
    /// connection.
    /// Streams the reply into `tx`. A connection the server drops before
    /// any text came is tried once more (llama.cpp's Python server drops
    /// the next stream after one that failed): nothing reached the caller,
    /// so asking again is safe.
    fn stream(self, stop: &AtomicBool, tx: &mpsc::Sender<Event>) -> Result<()> {
        let mut delivered = false;
        match self.stream_once(stop, tx, &mut delivered) {
            Err(e) if !delivered && e.downcast_ref::<StreamDropped>().is_some() => {
                tracing::debug!(url = %self.endpoint, error = %e, "stream dropped before any text; retrying");
                self.stream_once(stop, tx, &mut delivered)
            }
            result => result,
        }
    }

    fn stream_once(
        &self,
        stop: &AtomicBool,
        tx: &mpsc::Sender<Event>,
        delivered: &mut bool,
    ) -> Result<()> {
        let url = self.endpoint.as_str();
        let send = || {
            let mut req = self
                .agent
                .post(url)
                .header("Content-Type", "application/json")
                .header("Accept", "text/event-stream");
            if let Some(key) = &self.api_key {
                req = req.header("Authorization", format!("Bearer {key}"));
            }
            req.send(&self.body[..])
        };
        // A kept-alive connection from the pool may have been closed by the
        // server an instant ago (uvicorn closes after a failed stream, or at
        // its keep-alive timeout): the request dies before any answer. The
        // server saw nothing, so sending again on a fresh connection is safe.
        let mut attempt = 0;
        let response = loop {
            attempt += 1;
            match send() {
                Ok(r) => break r,
                Err(e) if attempt <= STALE_RETRIES && is_stale_connection(&e) => {
                    tracing::debug!(url, error = %e, "connection closed before an answer; retrying");
                    if stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                }
                Err(e) => return Err(self.describe(e, "sending the request")),
            }
        };
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let body = response.into_body();
        if !status.is_success() {
            let mut text = String::new();
            let _ = body
                .into_with_config()
                .limit(MAX_ERROR_BODY)
                .reader()
                .read_to_string(&mut text);
            let reason = status.canonical_reason().unwrap_or("");
            bail!(
                "LLM server at {url} answered HTTP {} {reason}: {}",
                status.as_u16(),
                error_message(&text)
            );
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        if content_type.starts_with("application/json") {
            // A server that ignores `stream: true` sends one JSON reply.
            let text = body
                .into_with_config()
                .limit(MAX_JSON_BODY)
                .read_to_string()
                .map_err(|e| self.describe(e, "reading the reply"))?;
            let reply = parse_full_reply(&text)
                .map_err(|e| anyhow!("malformed JSON reply from LLM server at {url}: {e}"))?;
            if let Some(content) = reply.text.filter(|t| !t.is_empty()) {
                let _ = tx.send(Event::Text(content));
            }
            if let Some(u) = reply.usage {
                let _ = tx.send(Event::Usage(u));
            }
            return Ok(());
        }

        let mut reader = BufReader::new(body.into_reader());
        let mut sse = SseParser::default();
        let mut line = Vec::new();
        let mut finished = false;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            line.clear();
            let n = (&mut reader)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut line)
                .map_err(|e| {
                    let dropped = is_dropped(&e);
                    let error = self.describe(ureq::Error::from(e), "reading the stream");
                    if dropped {
                        anyhow::Error::new(StreamDropped(format!("{error:#}")))
                    } else {
                        error
                    }
                })?;
            let eof = n == 0;
            if !eof && line.len() >= MAX_LINE && !line.ends_with(b"\n") {
                bail!("LLM server at {url} sent an SSE line longer than {MAX_LINE} bytes");
            }
            let text = String::from_utf8_lossy(&line);
            let event = if eof { sse.end() } else { sse.line(&text) };
            if let Some(event) = event {
                match parse_event(&event) {
                    Ok(Chunk::Done) => return Ok(()),
                    Ok(Chunk::Delta {
                        text,
                        finish,
                        usage,
                    }) => {
                        finished |= finish;
                        if let Some(text) = text.filter(|t| !t.is_empty()) {
                            *delivered = true;
                            if tx.send(Event::Text(text)).is_err() {
                                return Ok(()); // the caller is gone
                            }
                        }
                        if let Some(u) = usage {
                            let _ = tx.send(Event::Usage(u));
                        }
                    }
                    Ok(Chunk::Ignore) => {}
                    Err(ChunkError::Malformed(e)) => {
                        bail!(
                            "malformed SSE data from LLM server at {url}: {e}: {}",
                            snippet(&event.data)
                        )
                    }
                    Err(ChunkError::Server(msg)) => {
                        bail!("LLM server at {url} reported an error in the stream: {msg}")
                    }
                }
            }
            if eof {
                if finished {
                    return Ok(()); // a finish_reason but no [DONE]: tolerated
                }
                bail!(
                    "LLM server at {url} closed the stream before it finished (no [DONE] and no finish_reason)"
                );
            }
        }
    }

    /// A ureq error as a sentence naming the URL.
    fn describe(&self, e: ureq::Error, doing: &str) -> anyhow::Error {
        use std::io::ErrorKind;
        let url = &self.endpoint;
        match e {
            ureq::Error::Io(io) => match io.kind() {
                ErrorKind::ConnectionRefused => {
                    anyhow!("cannot reach LLM server at {url}: connection refused")
                }
                ErrorKind::TimedOut | ErrorKind::WouldBlock => anyhow!(
                    "LLM server at {url} timed out {doing}: no data within {:?}",
                    self.read_timeout
                ),
                ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
                | ErrorKind::UnexpectedEof => {
                    anyhow!("LLM server at {url} dropped the connection while {doing}: {io}")
                }
                _ => anyhow!("cannot talk to LLM server at {url} ({doing}): {io}"),
            },
            ureq::Error::Timeout(t) => match t {
                ureq::Timeout::Connect => anyhow!(
                    "cannot reach LLM server at {url}: connection timed out after {:?}",
                    self.connect_timeout
                ),
                ureq::Timeout::Resolve => {
                    anyhow!("cannot reach LLM server at {url}: resolving the host timed out")
                }
                _ => anyhow!(
                    "LLM server at {url} timed out {doing}: no data within {:?}",
                    self.read_timeout
                ),
            },
            ureq::Error::HostNotFound => {
                anyhow!("cannot reach LLM server at {url}: host not found")
            }
            ureq::Error::ConnectionFailed => {
                anyhow!("cannot reach LLM server at {url}: connection failed")
            }
            other => anyhow!("request to LLM server at {url} failed ({doing}): {other}"),
        }
    }
}

/// Fresh-connection retries after a pooled connection turned out closed.
const STALE_RETRIES: usize = 2;

/// The server dropped the connection mid-stream (the message says so).
#[derive(Debug)]
struct StreamDropped(String);

impl std::fmt::Display for StreamDropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StreamDropped {}

/// Whether a read failed because the peer went away.
fn is_dropped(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
    )
}

/// The connection closed before any response byte: a stale kept-alive one.
fn is_stale_connection(e: &ureq::Error) -> bool {
    use std::io::ErrorKind;
    matches!(e, ureq::Error::Io(io) if matches!(
        io.kind(),
        ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
    ))
}

/// One dispatched server-sent event.
#[derive(Debug, Clone, PartialEq, Default)]
struct SseEvent {
    /// The `event:` field (`None` = the default "message").
    name: Option<String>,
    /// The `data:` lines joined with `\n`.
    data: String,
}

/// Server-sent events (the WHATWG `text/event-stream` format) line by line:
/// `data:` lines accumulate until a blank line dispatches them; comments
/// (`:`), `id:` and `retry:` are ignored.
#[derive(Debug, Default)]
struct SseParser {
    name: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// Feeds one line (with or without its line ending).
    fn line(&mut self, line: &str) -> Option<SseEvent> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                let data = self.data.get_or_insert_with(String::new);
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            "event" => self.name = Some(value.to_string()),
            _ => {}
        }
        None
    }

    /// The end of the stream: whatever is pending.
    fn end(&mut self) -> Option<SseEvent> {
        self.dispatch()
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let name = self.name.take();
        let data = self.data.take()?;
        Some(SseEvent { name, data })
    }
}

/// What one event means.
#[derive(Debug, Clone, PartialEq)]
enum Chunk {
    /// `data: [DONE]`.
    Done,
    Delta {
        text: Option<String>,
        /// `finish_reason` was set.
        finish: bool,
        usage: Option<ServerUsage>,
    },
    /// Blank data or a keep-alive.
    Ignore,
}

#[derive(Debug, Clone, PartialEq)]
enum ChunkError {
    Malformed(String),
    /// The server reported an error object.
    Server(String),
}

fn parse_event(event: &SseEvent) -> Result<Chunk, ChunkError> {
    let data = event.data.trim();
    if data == "[DONE]" {
        return Ok(Chunk::Done);
    }
    if data.is_empty() {
        return Ok(Chunk::Ignore);
    }
    let value: Value =
        serde_json::from_str(data).map_err(|e| ChunkError::Malformed(e.to_string()))?;
    if let Some(err) = value.get("error").filter(|e| !e.is_null()) {
        return Err(ChunkError::Server(error_text(err)));
    }
    if event.name.as_deref() == Some("error") {
        return Err(ChunkError::Server(snippet(data)));
    }
    if !value.is_object() {
        return Err(ChunkError::Malformed(format!(
            "expected a JSON object, got {}",
            snippet(data)
        )));
    }
    let choice = value.get("choices").and_then(|c| c.get(0));
    let text = choice.and_then(|c| {
        c.get("delta")
            .and_then(|d| d.get("content"))
            .or_else(|| c.get("text"))
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let finish = choice
        .and_then(|c| c.get("finish_reason"))
        .is_some_and(|f| !f.is_null());
    let usage = value.get("usage").and_then(parse_usage);
    Ok(Chunk::Delta {
        text,
        finish,
        usage,
    })
}

fn parse_usage(u: &Value) -> Option<ServerUsage> {
    if !u.is_object() {
        return None;
    }
    let n = |v: Option<&Value>| v.and_then(Value::as_u64).map(|n| n as usize);
    Some(ServerUsage {
        prompt_tokens: n(u.get("prompt_tokens")),
        completion_tokens: n(u.get("completion_tokens")),
        cached_tokens: n(u
            .get("prompt_tokens_details")
            .and_then(|d| d.get("cached_tokens"))),
    })
}

struct FullReply {
    text: Option<String>,
    usage: Option<ServerUsage>,
}

/// A non-streamed `chat.completion` object.
fn parse_full_reply(body: &str) -> Result<FullReply, String> {
    let value: Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
    if let Some(err) = value.get("error").filter(|e| !e.is_null()) {
        return Err(error_text(err));
    }
    let text = value
        .get("choices")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("message"))
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(FullReply {
        text,
        usage: value.get("usage").and_then(parse_usage),
    })
}

/// The message of an error body: OpenAI's `{"error": {"message": ...}}`,
/// `{"error": "..."}`, FastAPI's `{"detail": ...}`, else the text itself.
fn error_message(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        return "(empty body)".into();
    }
    if let Ok(value) = serde_json::from_str::<Value>(body) {
        if let Some(err) = value.get("error").filter(|e| !e.is_null()) {
            return error_text(err);
        }
        if let Some(detail) = value.get("detail").or_else(|| value.get("message")) {
            return match detail.as_str() {
                Some(s) => s.to_string(),
                None => snippet(&detail.to_string()),
            };
        }
    }
    snippet(body)
}

fn error_text(err: &Value) -> String {
    match err {
        Value::String(s) => s.clone(),
        Value::Object(o) => match o.get("message").and_then(Value::as_str) {
            Some(m) => m.to_string(),
            None => snippet(&err.to_string()),
        },
        other => snippet(&other.to_string()),
    }
}

/// At most 300 characters of `text`, on one line.
fn snippet(text: &str) -> String {
    let flat: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() > 300 {
        let cut: String = flat.chars().take(300).collect();
        format!("{cut}...")
    } else {
        flat
    }
}

#[cfg(test)]
mod tests {
    //! The protocol against scripted fake servers; tests/llm_remote.rs runs
    //! the engine against a real llama.cpp server.
    use super::*;
    use crate::llm::Role;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::sync::Mutex;

    fn events(text: &str) -> Vec<SseEvent> {
        let mut p = SseParser::default();
        let mut out: Vec<SseEvent> = text
            .split_inclusive('\n')
            .filter_map(|l| p.line(l))
            .collect();
        out.extend(p.end());
        out
    }

    #[test]
    fn sse_lines() {
        let got = events(
            ": keep-alive\r\n\r\ndata: {\"a\":1}\r\n\r\nevent: error\ndata: x\ndata: y\n\nid: 3\nretry: 10\ndata:[DONE]\n",
        );
        assert_eq!(
            got,
            [
                SseEvent {
                    name: None,
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    name: Some("error".into()),
                    data: "x\ny".into()
                },
                SseEvent {
                    name: None,
                    data: "[DONE]".into()
                },
            ]
        );
    }

    fn ev(data: &str) -> SseEvent {
        SseEvent {
            name: None,
            data: data.into(),
        }
    }

    #[test]
    fn chunks() {
        assert_eq!(parse_event(&ev("[DONE]")), Ok(Chunk::Done));
        assert_eq!(
            parse_event(&ev(
                r#"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#
            )),
            Ok(Chunk::Delta {
                text: Some("Hi".into()),
                finish: false,
                usage: None
            })
        );
        assert_eq!(
            parse_event(&ev(r#"{"choices":[{"delta":{"role":"assistant"}}]}"#)),
            Ok(Chunk::Delta {
                text: None,
                finish: false,
                usage: None
            })
        );
        assert_eq!(
            parse_event(&ev(
                r#"{"choices":[],"usage":{"prompt_tokens":30,"completion_tokens":7,"prompt_tokens_details":{"cached_tokens":20}}}"#
            )),
            Ok(Chunk::Delta {
                text: None,
                finish: false,
                usage: Some(ServerUsage {
                    prompt_tokens: Some(30),
                    completion_tokens: Some(7),
                    cached_tokens: Some(20)
                })
            })
        );
        assert_eq!(
            parse_event(&ev(
                r#"{"choices":[{"delta":{},"finish_reason":"stop"}],"usage":null}"#
            )),
            Ok(Chunk::Delta {
                text: None,
                finish: true,
                usage: None
            })
        );
        assert!(matches!(
            parse_event(&ev(r#"{"choices":[{"delta":"#)),
            Err(ChunkError::Malformed(_))
        ));
        assert_eq!(
            parse_event(&ev(r#"{"error":{"message":"out of memory","code":500}}"#)),
            Err(ChunkError::Server("out of memory".into()))
        );
    }

    #[test]
    fn error_bodies() {
        assert_eq!(
            error_message(
                r#"{"error":{"message":"The model `x` does not exist.","type":"invalid_request_error"}}"#
            ),
            "The model `x` does not exist."
        );
        assert_eq!(error_message(r#"{"detail":"Not Found"}"#), "Not Found");
        assert_eq!(error_message(r#"{"error":"bad"}"#), "bad");
        assert_eq!(error_message("plain\ntext"), "plain text");
        assert_eq!(error_message(""), "(empty body)");
    }

    #[test]
    fn bad_urls_are_refused_up_front() {
        for url in ["127.0.0.1:8000/v1", "ftp://x/v1", "http://"] {
            let e = RemoteLlm::new(RemoteOptions::new(url, "m")).unwrap_err();
            assert!(e.to_string().contains(url), "{e}");
        }
        let llm = RemoteLlm::new(RemoteOptions::new("http://127.0.0.1:8000/v1/", "m")).unwrap();
        assert_eq!(llm.endpoint(), "http://127.0.0.1:8000/v1/chat/completions");
    }

    #[test]
    fn the_api_key_is_never_shown() {
        let mut opts = RemoteOptions::new("http://127.0.0.1:1/v1", "m");
        opts.api_key = Some("sk-secret-123".into());
        let llm = RemoteLlm::new(opts).unwrap();
        assert!(!format!("{llm:?}").contains("sk-secret-123"));
        assert!(format!("{llm:?}").contains("<redacted>"));
    }

    /// A one-connection fake server: reads the request, hands it to the test,
    /// then runs `respond` on the socket.
    fn fake_server(
        respond: impl FnOnce(TcpStream) + Send + 'static,
    ) -> (String, Arc<Mutex<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(String::new()));
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(sock.try_clone().unwrap());
            let mut head = String::new();
            let mut len = 0;
            loop {
                let mut l = String::new();
                reader.read_line(&mut l).unwrap();
                if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                head.push_str(&l);
                if l == "\r\n" || l.is_empty() {
                    break;
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            head.push_str(&String::from_utf8_lossy(&body));
            *seen2.lock().unwrap() = head;
            respond(sock.try_clone().unwrap());
            let _ = sock.flush();
        });
        (url, seen)
    }

    fn sse_head(sock: &mut TcpStream) {
        sock.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
    }

    fn sse_send(sock: &mut TcpStream, text: &str) -> std::io::Result<()> {
        sock.write_all(format!("{:x}\r\n{text}\r\n", text.len()).as_bytes())?;
        sock.flush()
    }

    fn delta(t: &str) -> String {
        format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": {"content": t}, "finish_reason": null}]})
        )
    }

    fn run(url: &str, opts: impl FnOnce(&mut RemoteOptions)) -> (Result<Usage>, Vec<String>) {
        let mut o = RemoteOptions::new(url, "test-model");
        opts(&mut o);
        let mut llm = RemoteLlm::new(o).unwrap();
        let mut pieces = Vec::new();
        let msgs = [
            ChatMessage::new(Role::System, "Be brief."),
            ChatMessage::new(Role::User, "Hi"),
        ];
        let r = llm.generate(
            &msgs,
            &GenerateOptions::default(),
            &AtomicBool::new(false),
            &mut |t| {
                pieces.push(t.to_string());
                true
            },
        );
        (r, pieces)
    }

    #[test]
    fn streams_text_and_usage_and_sends_the_request() {
        let (url, seen) = fake_server(|mut s| {
            sse_head(&mut s);
            sse_send(&mut s, ": ping\n\n").unwrap();
            sse_send(
                &mut s,
                "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n",
            )
            .unwrap();
            for t in ["Hel", "lo", " there."] {
                sse_send(&mut s, &delta(t)).unwrap();
            }
            sse_send(
                &mut s,
                "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            )
            .unwrap();
            sse_send(&mut s, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"prompt_tokens_details\":{\"cached_tokens\":8}}}\n\n").unwrap();
            sse_send(&mut s, "data: [DONE]\n\n").unwrap();
            sse_send(&mut s, "").unwrap();
        });
        let (r, pieces) = run(&url, |o| o.api_key = Some("sk-test".into()));
        let usage = r.unwrap();
        assert_eq!(pieces, ["Hel", "lo", " there."]);
        assert_eq!(usage.input_tokens, 12);
        assert_eq!(usage.prefilled_tokens, 4);
        assert_eq!(usage.output_tokens, 3);
        assert!(!usage.cancelled);
        assert!(usage.time_to_first_token.is_some());
        let req = seen.lock().unwrap().clone();
        assert!(req.starts_with("POST /v1/chat/completions "), "{req}");
        assert!(
            req.to_ascii_lowercase()
                .contains("authorization: bearer sk-test"),
            "{req}"
        );
        let body: Value = serde_json::from_str(&req[req.find("\r\n\r\n").unwrap() + 4..]).unwrap();
        assert_eq!(body["model"], "test-model");
        assert_eq!(body["stream"], true);
        assert_eq!(body["max_tokens"], 256);
        assert_eq!(body["temperature"], 0.0);
        assert_eq!(body["seed"], 42);
        assert_eq!(
            body["messages"][0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(
            body["messages"][1],
            json!({"role": "user", "content": "Hi"})
        );
    }

    #[test]
    fn without_usage_output_pieces_are_counted() {
        let (url, _) = fake_server(|mut s| {
            sse_head(&mut s);
            for t in ["a", "b"] {
                sse_send(&mut s, &delta(t)).unwrap();
            }
            sse_send(&mut s, "data: [DONE]\n\n").unwrap();
            sse_send(&mut s, "").unwrap();
        });
        let usage = run(&url, |_| {}).0.unwrap();
        assert_eq!(
            (
                usage.input_tokens,
                usage.prefilled_tokens,
                usage.output_tokens
            ),
            (0, 0, 2)
        );
    }

    /// A fake server that hangs up on the first `drops` connections right
    /// after reading their request (after sending the reply's head, with
    /// `head_first`), then streams a reply.
    fn hang_up_server(drops: usize, head_first: bool) -> (String, Arc<Mutex<usize>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let accepted = Arc::new(Mutex::new(0));
        let accepted2 = accepted.clone();
        std::thread::spawn(move || {
            for (i, sock) in listener.incoming().enumerate() {
                let mut sock = sock.unwrap();
                *accepted2.lock().unwrap() += 1;
                let mut reader = BufReader::new(sock.try_clone().unwrap());
                let mut len = 0;
                loop {
                    let mut l = String::new();
                    if reader.read_line(&mut l).unwrap() == 0 {
                        break;
                    }
                    if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    if l == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                if i < drops {
                    if head_first {
                        sse_head(&mut sock);
                    }
                    drop(sock); // closed without a byte of the answer's text
                    continue;
                }
                sse_head(&mut sock);
                sse_send(&mut sock, &delta("fresh")).unwrap();
                sse_send(&mut sock, "data: [DONE]\n\n").unwrap();
                sse_send(&mut sock, "").unwrap();
            }
        });
        (url, accepted)
    }

    #[test]
    fn a_connection_closed_before_any_answer_is_retried_fresh() {
        let (url, accepted) = hang_up_server(1, false);
        let (r, pieces) = run(&url, |_| {});
        r.unwrap();
        assert_eq!(pieces, ["fresh"]);
        assert_eq!(*accepted.lock().unwrap(), 2);

        // A server that always hangs up: a clear error after the retries.
        let (url, accepted) = hang_up_server(usize::MAX, false);
        let e = run(&url, |_| {}).0.unwrap_err().to_string();
        assert!(
            e.contains("dropped the connection while sending the request") && e.contains(&url),
            "{e}"
        );
        assert_eq!(*accepted.lock().unwrap(), 1 + STALE_RETRIES);
    }

    #[test]
    fn a_stream_cut_before_any_text_is_asked_once_more() {
        let (url, accepted) = hang_up_server(1, true);
        let (r, pieces) = run(&url, |_| {});
        r.unwrap();
        assert_eq!(pieces, ["fresh"]);
        assert_eq!(*accepted.lock().unwrap(), 2);

        // Cut every time: the error names the drop, after one more try.
        let (url, accepted) = hang_up_server(usize::MAX, true);
        let e = run(&url, |_| {}).0.unwrap_err().to_string();
        assert!(
            e.contains("dropped the connection while reading the stream") && e.contains(&url),
            "{e}"
        );
        assert_eq!(*accepted.lock().unwrap(), 2);
    }

    #[test]
    fn malformed_json_names_the_url() {
        let (url, _) = fake_server(|mut s| {
            sse_head(&mut s);
            sse_send(&mut s, &delta("ok")).unwrap();
            sse_send(&mut s, "data: {\"choices\": [oops\n\n").unwrap();
            sse_send(&mut s, "").unwrap();
        });
        let (r, pieces) = run(&url, |_| {});
        let e = r.unwrap_err().to_string();
        assert_eq!(pieces, ["ok"]);
        assert!(e.contains("malformed SSE data") && e.contains(&url), "{e}");
        assert!(e.contains("[oops"), "{e}");
    }

    #[test]
    fn a_stream_cut_short_is_an_error() {
        let (url, _) = fake_server(|mut s| {
            sse_head(&mut s);
            sse_send(&mut s, &delta("half")).unwrap();
            sse_send(&mut s, "").unwrap();
        });
        let e = run(&url, |_| {}).0.unwrap_err().to_string();
        assert!(
            e.contains("closed the stream before it finished") && e.contains(&url),
            "{e}"
        );
    }

    #[test]
    fn http_errors_carry_status_and_message() {
        let (url, _) = fake_server(|mut s| {
            let body =
                r#"{"error":{"message":"model 'nope' not found","type":"invalid_request_error"}}"#;
            write!(s, "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        });
        let (r, _) = run(&url, |o| o.api_key = Some("sk-hidden".into()));
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("HTTP 404") && e.contains("model 'nope' not found") && e.contains(&url),
            "{e}"
        );
        assert!(!e.contains("sk-hidden"), "{e}");
    }

    #[test]
    fn a_json_reply_to_a_stream_request_is_accepted() {
        let (url, _) = fake_server(|mut s| {
            let body = r#"{"choices":[{"message":{"role":"assistant","content":"Whole."}}],"usage":{"prompt_tokens":5,"completion_tokens":2}}"#;
            write!(s, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        });
        let (r, pieces) = run(&url, |_| {});
        let usage = r.unwrap();
        assert_eq!(pieces, ["Whole."]);
        assert_eq!((usage.input_tokens, usage.output_tokens), (5, 2));
    }

    #[test]
    fn a_silent_server_times_out_by_read_timeout() {
        let (url, _) = fake_server(|mut s| {
            sse_head(&mut s);
            std::thread::sleep(Duration::from_secs(3));
        });
        let t = Instant::now();
        let e = run(&url, |o| o.read_timeout = Duration::from_millis(300))
            .0
            .unwrap_err()
            .to_string();
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(e.contains("timed out") && e.contains(&url), "{e}");
    }

    #[test]
    fn cancel_returns_at_once_even_while_the_server_is_silent() {
        // The server answers nothing for 5 s (a long prompt being processed).
        let (url, _) = fake_server(|mut s| {
            sse_head(&mut s);
            std::thread::sleep(Duration::from_secs(5));
            let _ = sse_send(&mut s, &delta("late"));
        });
        let mut llm = RemoteLlm::new(RemoteOptions::new(&url, "m")).unwrap();
        let cancel = Arc::new(AtomicBool::new(false));
        let c2 = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            c2.store(true, Ordering::Relaxed);
        });
        let t = Instant::now();
        let usage = llm
            .generate(
                &[ChatMessage::new(Role::User, "Hi")],
                &GenerateOptions::default(),
                &cancel,
                &mut |_| true,
            )
            .unwrap();
        let took = t.elapsed();
        assert!(usage.cancelled);
        assert!(took < Duration::from_millis(400), "{took:?}");
    }

    #[test]
    fn on_text_false_stops_and_drops_the_connection() {
        let (tx, rx) = mpsc::channel();
        let (url, _) = fake_server(move |mut s| {
            sse_head(&mut s);
            // Keep streaming until the client hangs up.
            let t = Instant::now();
            let mut sent = 0;
            while t.elapsed() < Duration::from_secs(10) {
                if sse_send(&mut s, &delta("x ")).is_err() {
                    break;
                }
                sent += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            tx.send((sent, t.elapsed())).unwrap();
        });
        let mut llm = RemoteLlm::new(RemoteOptions::new(&url, "m")).unwrap();
        let mut n = 0;
        let usage = llm
            .generate(
                &[ChatMessage::new(Role::User, "Hi")],
                &GenerateOptions::default(),
                &AtomicBool::new(false),
                &mut |_| {
                    n += 1;
                    n < 3
                },
            )
            .unwrap();
        assert!(usage.cancelled);
        assert_eq!(n, 3);
        let (sent, took) = rx.recv_timeout(Duration::from_secs(15)).unwrap();
        assert!(
            took < Duration::from_secs(2),
            "server kept writing {sent} chunks for {took:?}"
        );
    }
}
