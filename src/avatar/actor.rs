//! The avatar actor: turns the speech the output stage releases into avatar
//! video frames, and shows listening and idle states between answers.
//!
//! Speaking frames are driven by the audio itself: one frame per 40 ms of
//! released speech (25 fps), each stamped with its offset in the response's
//! audio so the client draws it when that audio plays. Audio cut by an
//! interrupt is never released, so it never gets a frame. The moment the
//! user starts talking (or the bot's audio is paused or stopped for a
//! barge-in) the avatar switches to listening; it returns to idle when
//! nobody talks. Outside speech, frames come at `idle_fps`.
//!
//! Each frame is a `duplex.avatar.frame` event: `{state, image (base64
//! JPEG), response_id, item_id, offset_ms}`. Rendering and JPEG encoding run
//! on the blocking pool.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;

use super::{AvatarRenderer, AvatarState, LipSync, Pose, encode_jpeg};
use crate::graph::{Actor, Ctx, DataFrame, Payload, ResponseId, SystemFrame, SystemKind};
use crate::realtime;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AvatarParams {
    /// Frame size in pixels (square, at least 256).
    #[serde(default = "default_size")]
    pub size: u32,
    /// Frames per second while speaking.
    #[serde(default = "default_fps")]
    pub fps: u32,
    /// Frames per second while listening or idle.
    #[serde(default = "default_idle_fps")]
    pub idle_fps: u32,
    /// JPEG quality (1-100).
    #[serde(default = "default_quality")]
    pub quality: u8,
}

fn default_size() -> u32 {
    256
}
fn default_fps() -> u32 {
    25
}
fn default_idle_fps() -> u32 {
    5
}
fn default_quality() -> u8 {
    80
}

/// One frame to draw.
struct Job {
    pose: Pose,
    response_id: Option<ResponseId>,
    item_id: Option<String>,
    offset_ms: u64,
}

pub struct AvatarActor {
    params: AvatarParams,
    renderer: Option<AvatarRenderer>,
    /// Lip-sync of the response playing, and frames drawn of it so far.
    lips: Option<(ResponseId, LipSync, u64)>,
    state: AvatarState,
    /// When speech audio last arrived (speaking ends after a quiet spell).
    last_speech: Option<Instant>,
    last_idle_frame: Option<Instant>,
    started: Instant,
    /// Frames emitted (for logs and tests).
    pub frames: u64,
}

impl AvatarActor {
    pub fn new(params: AvatarParams) -> Result<AvatarActor> {
        if !(256..=1024).contains(&params.size) {
            bail!("size must be 256..1024, got {}", params.size);
        }
        if !(1..=60).contains(&params.fps) || !(1..=60).contains(&params.idle_fps) {
            bail!("fps and idle_fps must be 1..60");
        }
        if !(1..=100).contains(&params.quality) {
            bail!("quality must be 1..100, got {}", params.quality);
        }
        Ok(AvatarActor {
            renderer: Some(AvatarRenderer::new(params.size)),
            params,
            lips: None,
            state: AvatarState::Idle,
            last_speech: None,
            last_idle_frame: None,
            started: Instant::now(),
            frames: 0,
        })
    }

    fn clock_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Renders and emits frames on the blocking pool.
    async fn emit(&mut self, jobs: Vec<Job>, ctx: &Ctx) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let mut renderer = self
            .renderer
            .take()
            .context("avatar renderer lost after an earlier failure")?;
        let quality = self.params.quality;
        let (renderer, encoded) = tokio::task::spawn_blocking(move || {
            let encoded: Result<Vec<(Job, Vec<u8>)>> = jobs
                .into_iter()
                .map(|job| {
                    let jpeg = encode_jpeg(&renderer.render(&job.pose), quality)?;
                    Ok((job, jpeg))
                })
                .collect();
            (renderer, encoded)
        })
        .await
        .context("avatar render task failed")?;
        self.renderer = Some(renderer);
        for (job, jpeg) in encoded? {
            // Drawn while an interrupt came: nothing of a dead response
            // leaves after it.
            if job.response_id.is_some_and(|r| ctx.is_dead(r)) {
                continue;
            }
            self.frames += 1;
            ctx.events().emit(
                "duplex.avatar.frame",
                job.offset_ms,
                json!({
                    "state": job.pose.state,
                    "response_id": job.response_id.map(realtime::response_id),
                    "item_id": job.item_id,
                    "offset_ms": job.offset_ms,
                    "image": base64::engine::general_purpose::STANDARD.encode(jpeg),
                }),
            );
        }
        Ok(())
    }

    fn still(&self, state: AvatarState) -> Job {
        Job {
            pose: Pose {
                state,
                t_ms: self.clock_ms(),
                ..Pose::default()
            },
            response_id: None,
            item_id: None,
            offset_ms: 0,
        }
    }

    /// Switches state and shows it at once.
    async fn switch(&mut self, state: AvatarState, ctx: &Ctx) -> Result<()> {
        if self.state == state {
            return Ok(());
        }
        self.state = state;
        if state != AvatarState::Speaking {
            self.lips = None;
        }
        self.last_idle_frame = Some(Instant::now());
        let job = self.still(state);
        self.emit(vec![job], ctx).await
    }
}

#[async_trait]
impl Actor for AvatarActor {
    async fn on_data(&mut self, frame: DataFrame, ctx: &Ctx) -> Result<()> {
        let Payload::Playout { item_id, chunk, .. } = &frame.payload else {
            ctx.send(frame).await;
            return Ok(());
        };
        if self.state == AvatarState::Listening && ctx.is_dead(frame.response_id) {
            return Ok(());
        }
        self.state = AvatarState::Speaking;
        self.last_speech = Some(Instant::now());
        let fps = self.params.fps;
        let (_, lips, drawn) = match &mut self.lips {
            Some(entry) if entry.0 == frame.response_id => entry,
            slot => slot.insert((frame.response_id, LipSync::new(chunk.sample_rate, fps), 0)),
        };
        // Frame k shows the response's audio from k * frame_ms on.
        let frame_ms = 1000 / fps as u64;
        let first = *drawn;
        let mouths = lips.push(&chunk.samples);
        *drawn += mouths.len() as u64;
        let now = self.clock_ms();
        let jobs: Vec<Job> = mouths
            .into_iter()
            .enumerate()
            .map(|(i, m)| Job {
                pose: Pose {
                    state: AvatarState::Speaking,
                    mouth_open: m.open,
                    mouth_wide: m.wide,
                    t_ms: now + i as u64 * frame_ms,
                },
                response_id: Some(frame.response_id),
                item_id: Some(item_id.clone()),
                offset_ms: (first + i as u64) * frame_ms,
            })
            .collect();
        self.emit(jobs, ctx).await
    }

    async fn on_system(&mut self, frame: &SystemFrame, ctx: &Ctx) -> Result<()> {
        match frame.kind {
            SystemKind::SpeechStarted { .. }
            | SystemKind::PauseOutput { .. }
            | SystemKind::Interrupt { .. }
            | SystemKind::Cancel { .. } => self.switch(AvatarState::Listening, ctx).await,
            SystemKind::SpeechStopped { .. } | SystemKind::ResumeOutput { .. } => {
                self.switch(AvatarState::Idle, ctx).await
            }
            _ => Ok(()),
        }
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(20))
    }

    async fn on_tick(&mut self, ctx: &Ctx) -> Result<()> {
        if self.state == AvatarState::Speaking {
            let quiet = self
                .last_speech
                .is_none_or(|t| t.elapsed() > Duration::from_millis(400));
            if quiet {
                self.switch(AvatarState::Idle, ctx).await?;
            }
            return Ok(());
        }
        let every = Duration::from_millis(1000 / self.params.idle_fps as u64);
        if self.last_idle_frame.is_none_or(|t| t.elapsed() >= every) {
            self.last_idle_frame = Some(Instant::now());
            let job = self.still(self.state);
            self.emit(vec![job], ctx).await?;
        }
        Ok(())
    }
}
