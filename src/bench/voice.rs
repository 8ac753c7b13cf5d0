//! `duplex bench voice`: voice-to-voice latency over the Realtime API socket
//! and how many concurrent sessions this machine keeps real-time.
//!
//! The server runs in this process on a loopback port with the voice
//! pipeline (default `pipelines/voice.toml`). Each of the ten
//! pocketsphinx-testdata clips, padded with 0.5 s of silence before and
//! 2 s after, is sent by a WebSocket client as 20 ms `input_audio_buffer.append`
//! events at real-time pace. Voice-to-voice latency: from the moment the
//! audio at the end of the user's speech (found by energy) was sent to the
//! first `response.output_audio.delta` received. The peer, measured in the
//! same run, is the same pipeline driven in-process without a socket (the
//! headless runner), so the ratio is the cost of the server around the graph.
//!
//! Capacity: N sessions at once, each streaming the same clip, for N = 1, 2,
//! 4, ... A session stays real-time when its `speech_stopped` comes within
//! 300 ms of the VAD's own silence window, its first answer audio within
//! 3 s of the speech end, and its answer audio arrives at playback pace
//! (the span of its deltas is at most their duration plus 0.5 s).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::asr::{ReferenceClip, reference_clips};
use super::median;
use crate::audio::{Pcm, decode_file, pcm::pcm16_le_bytes, resample};
use crate::graph::{Pipeline, Resources};
use crate::runner::{Pace, run_pcm};
use crate::server::{App, ServerConfig};

/// The Realtime API's audio rate.
const RATE: u32 = 24_000;
const LEAD_MS: u64 = 500;
const TAIL_MS: u64 = 2_000;
/// Longest wait for a turn's answer.
const TURN_LIMIT: Duration = Duration::from_secs(60);

/// One clip ready to send: 24 kHz samples and where the speech ends in them.
struct Prepared {
    name: String,
    samples: Vec<f32>,
    speech_end_ms: u64,
}

fn prepare(clip: &ReferenceClip) -> Result<Prepared> {
    let pcm = decode_file(&clip.path)?;
    let speech = Pcm::new(resample(&pcm.samples, pcm.sample_rate, RATE)?, RATE);
    let (_, end_ms) = speech
        .energy_speech_span()
        .with_context(|| format!("{} holds no speech", clip.path.display()))?;
    Ok(Prepared {
        name: super::asr::clip_name(&clip.path),
        speech_end_ms: LEAD_MS + end_ms,
        samples: speech.padded(LEAD_MS, TAIL_MS).samples,
    })
}

/// What one client saw of its turn.
#[derive(Debug, Clone, Default)]
pub struct TurnTiming {
    /// Speech end sent -> first answer audio received, ms.
    pub voice_to_voice_ms: Option<f64>,
    /// Speech end sent -> speech_stopped received, ms.
    pub stopped_ms: Option<f64>,
    /// First to last answer delta received, ms, and the audio they carry, ms.
    pub delta_span_ms: f64,
    pub delta_audio_ms: f64,
    /// The turn's `duplex.turn.latency` marks (since speech end), if any.
    pub waterfall: Option<Value>,
}

/// Streams `clip` over a new session and times the answer.
async fn socket_turn(port: u16, clip: &Prepared) -> Result<TurnTiming> {
    let url = format!("ws://127.0.0.1:{port}/v1/realtime");
    let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let (mut tx, mut rx) = ws.split();
    let bytes = pcm16_le_bytes(&clip.samples);
    let chunk = (RATE as usize / 50) * 2; // 20 ms of pcm16
    let started = Instant::now();
    let speech_end_at = started + Duration::from_millis(clip.speech_end_ms);
    let sender = tokio::spawn(async move {
        for (i, piece) in bytes.chunks(chunk).enumerate() {
            let audio = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, piece);
            let event = json!({"type": "input_audio_buffer.append", "audio": audio});
            if tx
                .send(Message::Text(event.to_string().into()))
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep_until((started + Duration::from_millis(20 * (i as u64 + 1))).into())
                .await;
        }
        tx
    });
    let mut timing = TurnTiming::default();
    let mut first_delta: Option<Instant> = None;
    let deadline = speech_end_at + TURN_LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, rx.next())
            .await
            .map_err(|_| anyhow!("{}: no response.done within {TURN_LIMIT:?}", clip.name))?;
        let Some(message) = message else {
            bail!("{}: the server closed the session", clip.name);
        };
        let Message::Text(text) = message.context("reading the socket")? else {
            continue;
        };
        let now = Instant::now();
        let since_end =
            |at: Instant| at.saturating_duration_since(speech_end_at).as_secs_f64() * 1e3;
        let event: Value = serde_json::from_str(&text).context("parsing a server event")?;
        match event["type"].as_str().unwrap_or_default() {
            "input_audio_buffer.speech_stopped" => timing.stopped_ms = Some(since_end(now)),
            "response.output_audio.delta" => {
                let first = *first_delta.get_or_insert(now);
                timing.voice_to_voice_ms.get_or_insert(since_end(first));
                timing.delta_span_ms = now.duration_since(first).as_secs_f64() * 1e3;
                let b64 = event["delta"].as_str().unwrap_or_default();
                timing.delta_audio_ms += (b64.len() * 3 / 4) as f64 / 2.0 / RATE as f64 * 1e3;
            }
            "duplex.turn.latency" => timing.waterfall = Some(event["since_speech_end"].clone()),
            "response.done" => break,
            "error" => bail!("{}: error event {event}", clip.name),
            _ => {}
        }
    }
    let tx = sender.await.context("sender task")?;
    drop(tx);
    Ok(timing)
}

/// The peer: the same clip through the pipeline in-process (no socket).
async fn in_process_turn(
    pipeline: &Pipeline,
    resources: &Arc<Resources>,
    clip: &Prepared,
) -> Result<Option<f64>> {
    let pcm = Pcm::new(clip.samples.clone(), RATE);
    let started = Instant::now();
    let speech_end_at = started + Duration::from_millis(clip.speech_end_ms);
    let mut first = None;
    let pace = Pace {
        chunk_ms: 20,
        realtime: true,
    };
    run_pcm(pipeline, resources, &pcm, pace, |event| {
        if first.is_none() && event["type"] == "response.output_audio.delta" {
            first = Some(
                Instant::now()
                    .saturating_duration_since(speech_end_at)
                    .as_secs_f64()
                    * 1e3,
            );
        }
        Ok(())
    })
    .await?;
    Ok(first)
}

/// Whether every one of `n` concurrent sessions stays real-time.
async fn sessions_keep_up(
    port: u16,
    clip: &Arc<Prepared>,
    n: usize,
    silence_ms: f64,
) -> Result<(bool, Vec<TurnTiming>)> {
    let turns: Vec<_> = (0..n)
        .map(|_| {
            let clip = clip.clone();
            tokio::spawn(async move { socket_turn(port, &clip).await })
        })
        .collect();
    let mut timings = Vec::new();
    for turn in turns {
        timings.push(turn.await.context("session task")??);
    }
    let real_time = timings.iter().all(|t| {
        t.stopped_ms.is_some_and(|ms| ms <= silence_ms + 300.0)
            && t.voice_to_voice_ms.is_some_and(|ms| ms <= 3_000.0)
            && t.delta_span_ms <= t.delta_audio_ms + 500.0
    });
    Ok((real_time, timings))
}

#[derive(Debug, Clone)]
pub struct Report {
    pub pipeline: PathBuf,
    pub clips: Vec<(String, TurnTiming, Option<f64>)>,
    /// (sessions, all real-time, median voice-to-voice ms) per step.
    pub capacity: Vec<(usize, bool, f64)>,
}

/// Runs both measurements; `max_sessions` bounds the capacity ramp.
pub async fn run(
    resources: &Arc<Resources>,
    pipeline_path: &Path,
    max_sessions: usize,
) -> Result<Report> {
    let pipeline = Pipeline::load(pipeline_path)?;
    let silence_ms = pipeline
        .nodes
        .iter()
        .find_map(|n| match &n.kind {
            crate::graph::NodeKind::SileroVad(p) => Some(p.silence_duration_ms as f64),
            _ => None,
        })
        .with_context(|| format!("{} has no silero_vad node", pipeline_path.display()))?;
    let clips: Vec<Prepared> = reference_clips()?
        .iter()
        .map(prepare)
        .collect::<Result<_>>()?;

    let app = {
        let (pipeline, resources) = (pipeline.clone(), resources.clone());
        tokio::task::spawn_blocking(move || App::new(pipeline, resources, ServerConfig::default()))
            .await
            .context("server start-up task")??
    };
    let listener = crate::server::bind("127.0.0.1:0".parse()?).await?;
    let port = listener.local_addr()?.port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::server::serve(app, listener, async move {
        let _ = stopped.await;
    }));

    let mut results = Vec::new();
    for clip in &clips {
        let socket = socket_turn(port, clip).await?;
        let peer = in_process_turn(&pipeline, resources, clip).await?;
        results.push((clip.name.clone(), socket, peer));
    }

    let mut capacity = Vec::new();
    let probe = Arc::new(prepare(&reference_clips()?[1])?);
    let mut n = 1;
    while n <= max_sessions.max(1) {
        let (real_time, timings) = sessions_keep_up(port, &probe, n, silence_ms).await?;
        let mut v2v: Vec<f64> = timings.iter().filter_map(|t| t.voice_to_voice_ms).collect();
        capacity.push((n, real_time, median(&mut v2v)));
        if !real_time {
            break;
        }
        n = if n < 4 { n * 2 } else { n + 4 };
    }
    let _ = stop.send(());
    let _ = server.await;
    Ok(Report {
        pipeline: pipeline_path.to_path_buf(),
        clips: results,
        capacity,
    })
}

fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * q).round() as usize]
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

pub fn print(report: &Report) {
    println!(
        "voice: {} over the Realtime API socket (loopback), 10 clips at real-time pace, 20 ms appends",
        report.pipeline.display()
    );
    println!(
        "  {:<48} {:>14} {:>14} {:>12} {:>11} {:>11} {:>12}",
        "clip",
        "v2v socket ms",
        "v2v in-proc ms",
        "asr final",
        "llm token",
        "1st clause",
        "1st audio"
    );
    let mark = |w: &Option<Value>, key: &str| w.as_ref().and_then(|w| w[key].as_f64());
    for (name, t, peer) in &report.clips {
        println!(
            "  {:<48} {:>14} {:>14} {:>12} {:>11} {:>11} {:>12}",
            name,
            opt(t.voice_to_voice_ms),
            opt(*peer),
            opt(mark(&t.waterfall, "asr_final_ms")),
            opt(mark(&t.waterfall, "llm_first_token_ms")),
            opt(mark(&t.waterfall, "first_clause_ms")),
            opt(mark(&t.waterfall, "first_audio_ms")),
        );
    }
    let mut socket: Vec<f64> = report
        .clips
        .iter()
        .filter_map(|c| c.1.voice_to_voice_ms)
        .collect();
    let mut peer: Vec<f64> = report.clips.iter().filter_map(|c| c.2).collect();
    let (s_med, s_p95) = (median(&mut socket.clone()), percentile(&mut socket, 0.95));
    let (p_med, p_p95) = (median(&mut peer.clone()), percentile(&mut peer, 0.95));
    println!(
        "  voice-to-voice (speech end sent -> first answer audio received): median {s_med:.0} ms, p95 {s_p95:.0} ms; in-process peer median {p_med:.0} ms, p95 {p_p95:.0} ms; ratio {:.2}x",
        s_med / p_med.max(1e-9)
    );
    println!(
        "  (the VAD's silence window is part of it: the turn ends only after that much silence)"
    );
    for (n, ok, v2v) in &report.capacity {
        println!(
            "  {n:>3} concurrent sessions: {} (median voice-to-voice {v2v:.0} ms)",
            if *ok {
                "all real-time"
            } else {
                "NOT all real-time"
            }
        );
    }
    let best = report
        .capacity
        .iter()
        .filter(|c| c.1)
        .map(|c| c.0)
        .max()
        .unwrap_or(0);
    println!("  largest number of concurrent real-time sessions: {best}");
}
