//! The headless runner: streams an audio file through a pipeline, as fast as
//! possible or at real-time pace, and collects every event the session emits
//! (exactly what a socket client would see).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::audio::Pcm;
use crate::graph::{AudioChunk, DataFrame, Event, INPUT, Pipeline, Resources, SessionGraph};

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
    let mut session = SessionGraph::start(pipeline, resources)?;
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

/// `duplex run`: decode `input`, stream it, write events as JSON lines.
pub async fn run_file(
    pipeline: &Pipeline,
    resources: &Arc<Resources>,
    input: &Path,
    events_out: Option<&Path>,
    pace: Pace,
) -> Result<Vec<Event>> {
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
    Ok(events)
}
