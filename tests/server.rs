//! The Realtime API server over real sockets: the official `openai` Python
//! SDK completes voice turns (GA and beta, server and semantic VAD), a barge-in over the socket
//! cancels the answer and keeps only what was heard, bad client input is
//! answered with error events while the session goes on, auth is enforced,
//! and many concurrent sessions all complete their turns.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use duplex::audio::{decode_file, pcm16_le_bytes, resample};
use duplex::graph::Pipeline;
use duplex::server::{App, ServerConfig};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The tests that run real voice turns take the two cores in turn.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Server {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    app: Arc<App>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn start(pipeline: &str, config: ServerConfig) -> Server {
    start_with(Pipeline::load(Path::new(pipeline)).unwrap(), config).await
}

async fn start_with(pipeline: Pipeline, config: ServerConfig) -> Server {
    let resources = common::resources();
    let app = tokio::task::spawn_blocking(move || App::new(pipeline, resources, config))
        .await
        .unwrap()
        .unwrap();
    let listener = duplex::server::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(duplex::server::serve(app.clone(), listener, async move {
        let _ = stopped.await;
    }));
    Server {
        port,
        stop: Some(stop),
        app,
    }
}

/// A LibriVox clip as raw pcm16 at 24 kHz (the Realtime API's format).
fn clip_24k(index: usize) -> PathBuf {
    let clip = &common::librivox_clips()[index];
    let pcm = decode_file(clip).unwrap();
    let samples = resample(&pcm.samples, pcm.sample_rate, 24_000).unwrap();
    let path =
        std::env::temp_dir().join(format!("duplex-clip24-{index}-{}.raw", std::process::id()));
    std::fs::write(&path, pcm16_le_bytes(&samples)).unwrap();
    path
}

fn sdk_python() -> PathBuf {
    let python = PathBuf::from("target/sdk-venv/bin/python");
    assert!(
        python.is_file(),
        "the openai SDK venv is missing: run `scripts/setup --dev`"
    );
    python
}

/// Runs tests/sdk/realtime_client.py and returns its JSON summary.
async fn sdk_turn(port: u16, args: Vec<String>) -> Value {
    let python = sdk_python();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg("tests/sdk/realtime_client.py")
            .arg(port.to_string())
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "SDK client failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("bad summary {stdout}: {e}"))
}

fn types(summary: &Value) -> Vec<String> {
    summary["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

fn position(types: &[String], name: &str) -> usize {
    types
        .iter()
        .position(|t| t == name)
        .unwrap_or_else(|| panic!("no {name} in {types:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_sdk_completes_voice_turns_ga_and_beta() {
    let _serial = SERIAL.lock().await;
    let server = start("pipelines/voice.toml", ServerConfig::default()).await;
    let clip = clip_24k(1);
    // GA and beta with server VAD, then GA with semantic VAD.
    for (mode, semantic) in [("ga", false), ("beta", false), ("ga", true)] {
        let mut args = vec![clip.display().to_string(), mode.into()];
        if semantic {
            args.push("--semantic".into());
        }
        let summary = sdk_turn(server.port, args).await;
        println!("{mode} (semantic {semantic}): {summary}");
        let t = types(&summary);
        assert_eq!(t[0], "session.created", "{mode}");
        let audio_delta = if mode == "ga" {
            "response.output_audio.delta"
        } else {
            "response.audio.delta"
        };
        let item_added = if mode == "ga" {
            "conversation.item.added"
        } else {
            "conversation.item.created"
        };
        let order = [
            position(&t, "input_audio_buffer.speech_started"),
            position(&t, "input_audio_buffer.speech_stopped"),
            position(&t, "input_audio_buffer.committed"),
            position(&t, "conversation.item.input_audio_transcription.completed"),
            position(&t, "response.created"),
            position(&t, item_added),
            position(&t, audio_delta),
            position(&t, "response.done"),
        ];
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "{mode}: out of order {order:?}"
        );
        assert!(
            summary["errors"].as_array().unwrap().is_empty(),
            "{mode}: {summary}"
        );
        let transcript = summary["transcripts"][0].as_str().unwrap().to_lowercase();
        assert!(transcript.contains("young man"), "{mode}: {transcript}");
        assert!(
            summary["audio_bytes"].as_u64().unwrap() > 24_000,
            "{mode}: under 0.5 s of reply audio"
        );
        assert_eq!(summary["responses"][0]["status"], "completed", "{mode}");
        // Semantic VAD scored the pause before it ended the turn.
        let scored = t.iter().position(|t| t == "duplex.turn.end_of_turn");
        if semantic {
            assert!(
                scored.is_some_and(|s| s < order[1]),
                "semantic VAD: no end-of-turn score before speech_stopped in {t:?}"
            );
        } else {
            assert_eq!(scored, None, "server VAD scores no pause");
        }
    }
    let metrics = server.app.metrics.render();
    assert!(metrics.contains("duplex_turns_total 3"), "{metrics}");
    assert!(metrics.contains("stage=\"first_audio_out\""), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_barge_in_over_the_socket_cancels_the_answer_and_keeps_what_was_heard() {
    let _serial = SERIAL.lock().await;
    let server = start("pipelines/voice.toml", ServerConfig::default()).await;
    let question = clip_24k(1);
    let interruption = clip_24k(4);
    let summary = sdk_turn(
        server.port,
        vec![
            question.display().to_string(),
            "ga".into(),
            "--barge-in".into(),
            interruption.display().to_string(),
        ],
    )
    .await;
    println!("{summary}");
    let t = types(&summary);
    let first_audio = position(&t, "response.output_audio.delta");
    let second_speech = t
        .iter()
        .enumerate()
        .filter(|(_, x)| *x == "input_audio_buffer.speech_started")
        .map(|(i, _)| i)
        .nth(1)
        .expect("the barge-in was heard");
    assert!(second_speech > first_audio);
    let responses = summary["responses"].as_array().unwrap();
    let cancelled = responses
        .iter()
        .find(|r| r["status"] == "cancelled")
        .unwrap_or_else(|| panic!("no cancelled response: {responses:?}"));
    assert_eq!(cancelled["reason"], "turn_detected");
    let cancelled_at = t.iter().position(|x| x == "response.done").unwrap();
    assert!(
        cancelled_at > second_speech,
        "cancelled after the user spoke"
    );
    // Audio stops: no delta of the first response after its cancellation.
    assert!(
        !summary["truncated"].as_array().unwrap().is_empty(),
        "truncate was confirmed"
    );
    assert!(
        summary["errors"].as_array().unwrap().is_empty(),
        "{summary}"
    );
    assert_eq!(responses.len(), 2, "the interruption got its own answer");
    assert_eq!(responses[1]["status"], "completed");
}

async fn ws_connect(
    port: u16,
    key: Option<&str>,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    String,
> {
    let mut request = format!("ws://127.0.0.1:{port}/v1/realtime?model=duplex")
        .into_client_request()
        .unwrap();
    if let Some(key) = key {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

/// Reads events until one of type `want` arrives (or 10 s pass).
async fn next_of<S>(ws: &mut S, want: &str) -> Value
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    next_within(ws, want, Duration::from_secs(10)).await
}

async fn next_within<S>(ws: &mut S, want: &str, limit: Duration) -> Value
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let event = next_event(ws, deadline)
            .await
            .unwrap_or_else(|| panic!("no {want} within {limit:?}"));
        if event["type"] == want {
            return event;
        }
    }
}

/// The next server event, or `None` past `deadline`.
async fn next_event<S>(ws: &mut S, deadline: tokio::time::Instant) -> Option<Value>
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let message = tokio::time::timeout_at(deadline, ws.next())
            .await
            .ok()?
            .expect("socket open")
            .expect("socket ok");
        if let Message::Text(text) = message {
            return Some(serde_json::from_str(&text).unwrap());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_input_gets_error_events_and_the_session_goes_on() {
    let _serial = SERIAL.lock().await;
    let server = start(
        "pipelines/voice.toml",
        ServerConfig {
            max_message_bytes: 64 * 1024,
            ..Default::default()
        },
    )
    .await;
    let mut ws = ws_connect(server.port, None).await.unwrap();
    next_of(&mut ws, "session.created").await;
    let odd_pcm = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [1u8, 2, 3]);
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "invalid_json"),
        (json!({"type": "no.such.event"}).to_string(), "unknown_event"),
        (json!({"type": "conversation.item.truncate", "item_id": "x"}).to_string(), "missing_field"),
        (json!({"type": "input_audio_buffer.append", "audio": "!!!not base64"}).to_string(), "invalid_audio"),
        (json!({"type": "input_audio_buffer.append", "audio": odd_pcm}).to_string(), "invalid_audio"),
        (json!({"type": "input_audio_buffer.commit"}).to_string(), "input_audio_buffer_commit_empty"),
        (json!({"type": "response.cancel"}).to_string(), "response_cancel_not_active"),
        (json!({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 7}}}}}).to_string(), "invalid_value"),
        ("[1,2,3]".into(), "invalid_json"),
        (json!({"type": "duplex.input_video.append", "image": "aGVsbG8="}).to_string(), "invalid_value"),
        (json!({"type": "duplex.input_video.append"}).to_string(), "missing_field"),
    ];
    for (text, code) in cases {
        ws.send(Message::Text(text.clone().into())).await.unwrap();
        let error = next_of(&mut ws, "error").await;
        assert_eq!(error["error"]["code"], code, "{text}: {error}");
        assert!(
            error["error"]["message"].as_str().unwrap().len() > 10,
            "{error}"
        );
    }
    // A real camera frame (a JPEG) is taken without a reply, and counted.
    let jpeg = {
        let frame =
            image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 128]));
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut bytes)
            .encode_image(&frame)
            .unwrap();
        bytes
    };
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &jpeg);
    ws.send(Message::Text(
        json!({"type": "duplex.input_video.append", "image": b64})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    // After all that, the session still answers a valid update.
    ws.send(Message::Text(
        json!({"type": "session.update", "session": {"instructions": "Be kind."}})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    assert_eq!(
        next_of(&mut ws, "session.updated").await["session"]["instructions"],
        "Be kind."
    );
    // Oversized: the socket refuses the frame and closes that session; the
    // server itself goes on serving others.
    let huge = "x".repeat(100 * 1024);
    let _ = ws.send(Message::Text(huge.into())).await;
    let mut fresh = ws_connect(server.port, None).await.unwrap();
    next_of(&mut fresh, "session.created").await;
    fresh
        .send(Message::Text(
            json!({"type": "session.update", "session": {"instructions": "Be brief."}})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    let updated = next_of(&mut fresh, "session.updated").await;
    assert_eq!(updated["session"]["instructions"], "Be brief.");
    let metrics = server.app.metrics.render();
    assert!(metrics.contains("duplex_client_errors_total"), "{metrics}");
    assert!(metrics.contains("duplex_video_frames_total 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_is_required_when_configured() {
    let _serial = SERIAL.lock().await;
    let server = start(
        "pipelines/vad.toml",
        ServerConfig {
            api_key: Some("sk-test".into()),
            ..Default::default()
        },
    )
    .await;
    let refused = ws_connect(server.port, None).await.unwrap_err();
    assert!(refused.contains("401"), "{refused}");
    let wrong = ws_connect(server.port, Some("sk-wrong")).await.unwrap_err();
    assert!(wrong.contains("401"), "{wrong}");
    let mut ok = ws_connect(server.port, Some("sk-test")).await.unwrap();
    next_of(&mut ok, "session.created").await;
    // The browser way: the key in a subprotocol; the server answers `realtime`.
    let mut request = format!("ws://127.0.0.1:{}/v1/realtime", server.port)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "realtime, openai-insecure-api-key.sk-test".parse().unwrap(),
    );
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "realtime");
    next_of(&mut ws, "session.created").await;
}

/// Resident memory of this process (the server runs in it), MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sessions_at_once_all_complete_their_turns_and_a_stalled_client_hurts_none() {
    let _serial = SERIAL.lock().await;
    // Speech recognition for every session, with partial passes spaced out
    // so twenty sessions fit two cores: this checks concurrency, not cadence.
    let pipeline = Pipeline::parse(
        &std::fs::read_to_string("pipelines/asr.toml")
            .unwrap()
            .replace("partial_interval_ms = 300", "partial_interval_ms = 5000"),
        Path::new("asr-load.toml"),
    )
    .unwrap();
    let server = start_with(pipeline, ServerConfig::default()).await;
    let pcm = {
        let clip = &common::librivox_clips()[1];
        let pcm = decode_file(clip).unwrap();
        let mut s = resample(&pcm.samples, pcm.sample_rate, 24_000).unwrap();
        s.extend(std::iter::repeat_n(0.0, 24_000)); // a second of silence ends the turn
        pcm16_le_bytes(&s)
    };
    // Warm up (models loaded, allocator pools grown) with one session, then
    // take the baseline.
    run_one_turn(server.port, &pcm).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = rss_mib();
    // A client that connects, sends audio, and never reads.
    let mut stalled = ws_connect(server.port, None).await.unwrap();
    for chunk in pcm.chunks(960).take(100) {
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, chunk);
        stalled
            .send(Message::Text(
                json!({"type": "input_audio_buffer.append", "audio": b64})
                    .to_string()
                    .into(),
            ))
            .await
            .unwrap();
    }
    let peak = twenty_at_once(&server, &pcm, baseline).await;
    drop(stalled);
    let after = all_closed(&server).await;
    println!(
        "resident memory: {baseline:.0} MiB before, {peak:.0} MiB at the peak, {after:.0} MiB after"
    );
    // What twenty sessions took is returned but for a remainder paid once
    // (allocator arenas of the worker threads, the inference libraries'
    // caches), which does not grow round after round. Measured over five
    // rounds: peaks of 840-1120 MiB, then 211, 241, 252, 268, 260 MiB from
    // a baseline of 146 MiB.
    let returned = |peak: f64, after: f64| after <= baseline + 0.2 * (peak - baseline) + 32.0;
    assert!(
        returned(peak, after),
        "memory did not come back: {baseline:.0} MiB before, {peak:.0} at the peak, {after:.0} after"
    );
    let peak2 = twenty_at_once(&server, &pcm, after).await;
    let after2 = all_closed(&server).await;
    println!("second round: {peak2:.0} MiB at the peak, {after2:.0} MiB after");
    assert!(
        returned(peak2, after2),
        "after a second round: {baseline:.0} MiB at first, {peak2:.0} at the peak, {after2:.0} after"
    );
}

/// Twenty clients at once, each through one turn; returns the peak
/// resident memory.
async fn twenty_at_once(server: &Server, pcm: &[u8], before: f64) -> f64 {
    let started = std::time::Instant::now();
    let sessions: Vec<_> = (0..20)
        .map(|_| {
            let pcm = pcm.to_vec();
            let port = server.port;
            tokio::spawn(async move { run_one_turn(port, &pcm).await })
        })
        .collect();
    // The peak, sampled every 50 ms while the sessions run.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut peak = before;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_mib());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        })
    };
    for session in sessions {
        let (transcript, after_audio) = tokio::time::timeout(Duration::from_secs(120), session)
            .await
            .expect("a session did not finish its turn in time")
            .unwrap();
        println!(
            "transcript {:.1} s after the audio ended: {transcript}",
            after_audio.as_secs_f64()
        );
        assert!(transcript.contains("young man"), "{transcript}");
    }
    println!(
        "20 sessions done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    sampler.await.unwrap()
}

/// Waits until every session has ended (they end and free themselves once
/// their clients leave); returns the resident memory then.
async fn all_closed(server: &Server) -> f64 {
    let active = || {
        server
            .app
            .metrics
            .sessions_active
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    for _ in 0..50 {
        if active() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(active(), 0, "sessions still open after their clients left");
    tokio::time::sleep(Duration::from_millis(500)).await;
    rss_mib()
}

/// One client's turn: connects, streams `pcm` (24 kHz pcm16) at real-time
/// pace in 20 ms appends, and waits for its final transcript. Returns it
/// (lower case) and how long after the last append it came.
async fn run_one_turn(port: u16, pcm: &[u8]) -> (String, Duration) {
    let pcm = pcm.to_vec();
    let mut ws = ws_connect(port, None).await.unwrap();
    next_of(&mut ws, "session.created").await;
    let started = tokio::time::Instant::now();
    let (mut tx, mut rx) = ws.split();
    let sender = tokio::spawn(async move {
        for (i, chunk) in pcm.chunks(960).enumerate() {
            let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, chunk);
            tx.send(Message::Text(
                json!({"type": "input_audio_buffer.append", "audio": b64})
                    .to_string()
                    .into(),
            ))
            .await
            .unwrap();
            tokio::time::sleep_until(started + Duration::from_millis(20 * (i as u64 + 1))).await;
        }
        (tx, tokio::time::Instant::now())
    });
    let completed = next_within(
        &mut rx,
        "conversation.item.input_audio_transcription.completed",
        Duration::from_secs(90),
    )
    .await;
    let (_tx, audio_done) = sender.await.unwrap();
    let transcript = completed["transcript"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    (transcript, audio_done.elapsed())
}

/// `pipelines/video.toml` with its memory in `dir`.
fn video_pipeline(dir: &Path) -> Pipeline {
    let toml = std::fs::read_to_string("pipelines/video.toml").unwrap();
    let db = dir.join("memory.sqlite");
    let toml = toml.replace(
        "memory_db = \"duplex-memory.sqlite\"",
        &format!("memory_db = \"{}\"", db.display()),
    );
    assert!(
        toml.contains(&db.display().to_string()),
        "video.toml names no memory_db"
    );
    Pipeline::parse(&toml, Path::new("pipelines/video.toml")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_frame_over_the_socket_is_seen_and_talked_about() {
    let _serial = SERIAL.lock().await;
    let dir = common::TempDir::new("server-vision");
    let server = start_with(video_pipeline(dir.path()), ServerConfig::default()).await;
    let mut ws = ws_connect(server.port, None).await.unwrap();
    next_of(&mut ws, "session.created").await;
    let send = |v: Value| Message::Text(v.to_string().into());
    ws.send(send(json!({"type": "session.update", "session": {
        "type": "realtime", "output_modalities": ["text"]}})))
        .await
        .unwrap();
    next_of(&mut ws, "session.updated").await;
    // A real photograph, as the browser client sends its camera.
    let photo = std::fs::read(common::test_photo("chelsea.png")).unwrap();
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &photo);
    ws.send(send(
        json!({"type": "duplex.input_video.append", "image": b64}),
    ))
    .await
    .unwrap();
    let frame = next_within(&mut ws, "duplex.vision.frame", Duration::from_secs(60)).await;
    println!("{frame}");
    let label = frame["labels"][0]["label"].as_str().unwrap().to_string();
    assert!(label.contains("cat"), "{frame}");
    assert!(frame["scene"].as_str().unwrap().contains(&label), "{frame}");
    // A broken frame is an error for that frame only.
    let broken = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &photo[..200]);
    ws.send(send(
        json!({"type": "duplex.input_video.append", "image": broken}),
    ))
    .await
    .unwrap();
    let error = next_within(&mut ws, "error", Duration::from_secs(30)).await;
    assert_eq!(error["error"]["code"], "invalid_image", "{error}");
    // A typed question about the scene.
    ws.send(send(json!({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user",
        "content": [{"type": "input_text", "text": "What do you see?"}]}})))
        .await
        .unwrap();
    ws.send(send(json!({"type": "response.create"})))
        .await
        .unwrap();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let event = next_event(&mut ws, deadline)
            .await
            .expect("no response.done");
        match event["type"].as_str().unwrap() {
            "response.output_text.delta" => text.push_str(event["delta"].as_str().unwrap()),
            "response.done" => break,
            "error" => panic!("{event}"),
            _ => {}
        }
    }
    println!("answer: {text}");
    assert!(text.to_lowercase().contains("cat"), "{text}");
}
