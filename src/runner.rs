//! The headless runner: streams an audio file (and, optionally, camera frames
//! from image files) through a pipeline, as fast as possible or at real-time
//! pace, and collects every event the session emits (exactly what a socket
//! client would see).

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

/// Camera frames (encoded JPEG or PNG), each with the session time in ms
/// at which it is shown, in time order.
pub type VideoFrames = Vec<(u64, Arc<[u8]>)>;

/// Streams `pcm` through a new session of `pipeline` and returns its events.
/// `on_event` sees each event as it arrives (the CLI writes it out).
pub async fn run_pcm(
    pipeline: &Pipeline,
    resources: &Arc<Resources>,
    pcm: &Pcm,
    pace: Pace,
    on_event: impl FnMut(&Event) -> Result<()>,
) -> Result<Vec<Event>> {
    run_av(pipeline, resources, pcm, Vec::new(), pace, on_event).await
}

/// [`run_pcm`] with camera frames interleaved with the audio by time.
pub async fn run_av(
    pipeline: &Pipeline,
    resources: &Arc<Resources>,
    pcm: &Pcm,
    video: VideoFrames,
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
        let mut video = video.into_iter().peekable();
        for (i, piece) in samples.chunks(chunk).enumerate() {
            let at = Duration::from_secs_f64((i * chunk) as f64 / rate as f64);
            if pace.realtime {
                tokio::time::sleep_until((started + at).into()).await;
            }
            while let Some((t_ms, image)) = video.next_if(|(t, _)| *t <= at.as_millis() as u64) {
                input.send_data(video_frame(t_ms, image)).await;
            }
            let frame = DataFrame::audio(0, INPUT, AudioChunk::new(piece.to_vec(), rate));
            if !input.send_data(frame).await {
                break;
            }
        }
        for (t_ms, image) in video {
            input.send_data(video_frame(t_ms, image)).await;
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

fn video_frame(t_ms: u64, image: Arc<[u8]>) -> DataFrame {
    DataFrame {
        t_ms,
        response_id: INPUT,
        payload: crate::graph::Payload::Video(image),
    }
}

/// Camera frames from `path` for `duration_ms` of session: an image file is
/// a still camera, sent `fps` times a second; a folder holds one frame per
/// image file (JPEG or PNG), in name order, `fps` a second.
pub fn load_video(path: &Path, fps: f64, duration_ms: u64) -> Result<VideoFrames> {
    anyhow::ensure!(
        fps > 0.0 && fps <= 60.0,
        "--video-fps must be in (0, 60], got {fps}"
    );
    let step_ms = 1000.0 / fps;
    let read = |p: &Path| -> Result<Arc<[u8]>> {
        let bytes = std::fs::read(p)
            .with_context(|| format!("cannot read camera frame {}", p.display()))?;
        image::guess_format(&bytes)
            .ok()
            .filter(|f| matches!(f, image::ImageFormat::Jpeg | image::ImageFormat::Png))
            .with_context(|| format!("{} is not a JPEG or PNG image", p.display()))?;
        Ok(bytes.into())
    };
    if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .with_context(|| format!("cannot list {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png")
                })
            })
            .collect();
        files.sort();
        anyhow::ensure!(
            !files.is_empty(),
            "no JPEG or PNG files in {}",
            path.display()
        );
        return files
            .iter()
            .enumerate()
            .map(|(i, p)| Ok(((i as f64 * step_ms) as u64, read(p)?)))
            .collect();
    }
    let image = read(path)?;
    let count = (duration_ms as f64 / step_ms).floor() as usize + 1;
    Ok((0..count)
        .map(|i| ((i as f64 * step_ms) as u64, image.clone()))
        .collect())
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
    /// Camera frames to send with the audio: an image file or a folder of
    /// them, and frames per second.
    pub video: Option<(&'a Path, f64)>,
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
    let video = match outputs.video {
        Some((path, fps)) => load_video(path, fps, (pcm.duration_secs() * 1000.0) as u64)?,
        None => Vec::new(),
    };
    let events = run_av(pipeline, resources, &pcm, video, pace, |event| {
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
