//! The headless runner: streams an audio file through a pipeline, as fast as
//! possible or at real-time pace, and collects every event the session emits
//! (exactly what a socket client would see).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use base64::Engine as _;

use crate::audio::Pcm;
use crate::graph::{
    AudioChunk, DataFrame, Event, INPUT, Pipeline, Resources, SessionGraph, SessionShared,
};

/// How to feed the input.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Size of each input frame, in ms.
    pub chunk_ms: u32,
    /// Sleep between frames to match wall-clock time.
    pub realtime: bool,
}

impl Default for Pace {
    fn default() -> Self {
        Pace {
            chunk_ms: 20,
            realtime: false,
        }
    }
}

/// Streams `pcm` through a new session of `pipeline` and returns its events.
/// `on_event` sees each event as it arrives (the CLI writes it out).
pub async fn run_pcm(
    pipeline: &Pipeline,
    resources: &Arc<Resources>,
    pcm: &Pcm,
    pace: Pace,
    mut on_event: impl FnMut(&Event) -> Result<()>,
) -> Result<Vec<Event>> {
    let shared = SessionShared::new("headless");
    let mut session = SessionGraph::start(pipeline, resources, &shared)?;
    let input = session.input.take().context("session has no input")?;
    let chunk = (pcm.sample_rate as usize * pace.chunk_ms.max(1) as usize / 1000).max(1);
    let rate = pcm.sample_rate;
    let samples = pcm.samples.clone();
    let feeder = tokio::spawn(async move {
        let started = Instant::now();
        for (i, piece) in samples.chunks(chunk).enumerate() {
            if pace.realtime {
                let due = Duration::from_secs_f64((i * chunk) as f64 / rate as f64);
                tokio::time::sleep_until((started + due).into()).await;
            }
            let frame = DataFrame::audio(0, INPUT, AudioChunk::new(piece.to_vec(), rate));
            if !input.send_data(frame).await {
                break;
            }
        }
    });
    let mut events = Vec::new();
    while let Some(event) = session.events.recv().await {
        on_event(&event)?;
        events.push(event);
    }
    feeder.await.context("input feeder failed")?;
    session.finish().await;
    Ok(events)
}

/// The response audio in `events` (`response.output_audio.delta`), joined.
pub fn response_audio(events: &[Event]) -> Result<Vec<f32>> {
    let mut samples = Vec::new();
    for event in events {
        if event["type"] == "response.output_audio.delta" {
            let delta = event["delta"].as_str().unwrap_or_default();
            samples.extend(crate::audio::pcm16_base64_decode(delta)?);
        }
    }
    Ok(samples)
}

/// Writes the avatar frames in `events` as numbered JPEG files
/// (`00001-speaking-resp_000001-000040ms.jpg`); returns how many.
pub fn write_avatar_frames(events: &[Event], dir: &Path) -> Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut n = 0;
    for event in events.iter().filter(|e| e["type"] == "duplex.avatar.frame") {
        n += 1;
        let state = event["state"].as_str().unwrap_or("idle");
        let response = event["response_id"].as_str().unwrap_or("none");
        let offset = event["offset_ms"].as_u64().unwrap_or(0);
        let image = base64::engine::general_purpose::STANDARD
            .decode(event["image"].as_str().unwrap_or_default())
            .context("an avatar frame is not valid base64")?;
        let path = dir.join(format!("{n:05}-{state}-{response}-{offset:06}ms.jpg"));
        std::fs::write(&path, image).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(n)
}

/// Where `duplex run` writes what it produced besides events.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outputs<'a> {
    /// The events as JSON lines (stdout when absent).
    pub events: Option<&'a Path>,
    /// The spoken answer as a WAV file, at the given rate.
    pub wav: Option<(&'a Path, u32)>,
    /// The avatar frames as JPEG files.
    pub avatar_dir: Option<&'a Path>,
}

/// `duplex run`: decode `input`, stream it, write events as JSON lines and,
/// when asked, the spoken answer as a WAV file and the avatar frames.
pub async fn run_file(
    pipeline: &Pipeline,
    resources: &Arc<Resources>,
    input: &Path,
    outputs: Outputs<'_>,
    pace: Pace,
) -> Result<Vec<Event>> {
    let events_out = outputs.events;
    let output_wav = outputs.wav;
    let pcm = crate::audio::decode_file(input)?;
    tracing::info!(
        input = %input.display(),
        rate = pcm.sample_rate,
        seconds = pcm.samples.len() as f64 / pcm.sample_rate as f64,
        "streaming"
    );
    let mut writer: Box<dyn Write + Send> = match events_out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create events file {}", path.display()))?,
        )),
        None => Box::new(std::io::stdout()),
    };
    let events = run_pcm(pipeline, resources, &pcm, pace, |event| {
        serde_json::to_writer(&mut writer, event)?;
        writer.write_all(b"\n")?;
        Ok(())
    })
    .await?;
    writer.flush().context("writing events")?;
    if let Some((path, rate)) = output_wav {
        let pcm = Pcm {
            samples: response_audio(&events)?,
            sample_rate: rate,
        };
        crate::audio::write_wav(path, &pcm)
            .with_context(|| format!("writing {}", path.display()))?;
        tracing::info!(path = %path.display(), seconds = pcm.duration_secs(), "wrote the spoken answer");
    }
    if let Some(dir) = outputs.avatar_dir {
        let n = write_avatar_frames(&events, dir)?;
        tracing::info!(dir = %dir.display(), frames = n, "wrote the avatar frames");
    }
    Ok(events)
}
