//! The vision actor (`vision` node): camera frames in, what the camera shows
//! out to the controller.
//!
//! Each `Video` frame (JPEG or PNG from the client) is decoded, judged by the
//! [`FrameSampler`] (content change, and more often while the user speaks)
//! and, when kept, encoded and its tokens pruned ([`FrameAnalyzer`]); the
//! [`VisionExpert`] turns the labels into a [`Scene`] the actor sends
//! downstream (`Payload::Scene`), with the labels that came into view as
//! observations for memory. Every other frame passes straight through.
//!
//! Decoding and encoding run on the blocking pool, one frame at a time, and
//! never hold up the audio behind them: the actor starts a job and goes on;
//! `on_tick` collects it. A frame arriving while a job runs waits in a
//! one-frame slot, replaced by any newer frame (a camera is only as fresh as
//! its latest frame). Each analysed frame is reported as a
//! `duplex.vision.frame` event with its labels and timings.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;
use tokio::task::JoinHandle;

use super::analyzer::{AnalyzerSettings, FrameAnalyzer};
use super::expert::{Analysis, ExpertSettings, VisionExpert};
use super::sampler::{Activity, FrameSampler, SamplerSettings, Thumbnail, Verdict};
use super::tokens::{Reduction, Saliency};
use crate::graph::{Actor, Ctx, DataFrame, INPUT, Payload, SystemFrame, SystemKind};
use crate::vision::efficientnet::EfficientNetLite0;

/// Largest camera frame side decoded, in pixels.
const MAX_FRAME_SIDE: u32 = 4096;

/// How often finished jobs are collected.
const POLL: Duration = Duration::from_millis(10);

/// Parameters of the `vision` node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisionParams {
    /// Fraction of the encoder's 7x7 output tokens the vision expert works
    /// on (training-free visual-token reduction); 1 keeps them all.
    #[serde(default = "default_keep_ratio")]
    pub keep_ratio: f32,
    /// How kept tokens are chosen: "global" (cosine with the mean token) or
    /// "middle" (stage-4 activation norm).
    #[serde(default = "default_saliency")]
    pub saliency: Saliency,
    /// What becomes of the other tokens: "merge" (into the nearest kept
    /// one, PruMerge-style) or "prune" (dropped, HiPrune-style).
    #[serde(default = "default_reduction")]
    pub reduction: Reduction,
    /// Fraction of the 14x14 stage-4 tokens the encoder's late stages run
    /// on; 1 runs the whole network (below 1 top-1 agreement collapses:
    /// `duplex bench vision`).
    #[serde(default = "default_encoder_keep_ratio")]
    pub encoder_keep_ratio: f32,
    /// Reuse the later stages' values where the picture did not change
    /// (STORM-style temporal reuse).
    #[serde(default = "default_true")]
    pub temporal_reuse: bool,
    /// Never encode two frames closer than this.
    #[serde(default = "default_min_interval_ms")]
    pub min_interval_ms: u64,
    /// While the user speaks, look at least this often.
    #[serde(default = "default_speaking_interval_ms")]
    pub speaking_interval_ms: u64,
    /// Otherwise, look at least this often.
    #[serde(default = "default_idle_interval_ms")]
    pub idle_interval_ms: u64,
    /// Thumbnail difference (0..1) from which a frame counts as changed.
    #[serde(default = "default_change_threshold")]
    pub change_threshold: f32,
    /// Labels under this probability are not tracked.
    #[serde(default = "default_min_confidence")]
    pub min_confidence: f32,
    /// A label coming into view at this probability is remembered.
    #[serde(default = "default_observe_confidence")]
    pub observe_confidence: f32,
}

fn default_keep_ratio() -> f32 {
    AnalyzerSettings::default().keep_ratio
}
fn default_saliency() -> Saliency {
    AnalyzerSettings::default().saliency
}
fn default_reduction() -> Reduction {
    AnalyzerSettings::default().reduction
}
fn default_encoder_keep_ratio() -> f32 {
    1.0
}
fn default_true() -> bool {
    true
}
fn default_min_interval_ms() -> u64 {
    SamplerSettings::default().min_interval_ms
}
fn default_speaking_interval_ms() -> u64 {
    SamplerSettings::default().speaking_interval_ms
}
fn default_idle_interval_ms() -> u64 {
    SamplerSettings::default().idle_interval_ms
}
fn default_change_threshold() -> f32 {
    SamplerSettings::default().change_threshold
}
fn default_min_confidence() -> f32 {
    ExpertSettings::default().min_confidence
}
fn default_observe_confidence() -> f32 {
    ExpertSettings::default().observe_confidence
}

impl VisionParams {
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("keep_ratio", self.keep_ratio),
            ("encoder_keep_ratio", self.encoder_keep_ratio),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                anyhow::bail!("{name} must be in (0, 1], got {v}");
            }
        }
        if !(0.0..=1.0).contains(&self.change_threshold) {
            anyhow::bail!(
                "change_threshold must be 0..1, got {}",
                self.change_threshold
            );
        }
        for (name, v) in [
            ("min_confidence", self.min_confidence),
            ("observe_confidence", self.observe_confidence),
        ] {
            if !(0.0..=1.0).contains(&v) {
                anyhow::bail!("{name} must be 0..1, got {v}");
            }
        }
        Ok(())
    }

    fn sampler(&self) -> SamplerSettings {
        SamplerSettings {
            min_interval_ms: self.min_interval_ms,
            speaking_interval_ms: self.speaking_interval_ms,
            idle_interval_ms: self.idle_interval_ms,
            change_threshold: self.change_threshold,
            ..SamplerSettings::default()
        }
    }

    fn expert(&self) -> ExpertSettings {
        ExpertSettings {
            min_confidence: self.min_confidence,
            observe_confidence: self.observe_confidence,
            ..ExpertSettings::default()
        }
    }
}

/// What the blocking side owns between frames.
struct Work {
    sampler: FrameSampler,
    analyzer: FrameAnalyzer,
}

/// A finished job: the sampler's verdict, and for a kept frame its analysis.
struct Outcome {
    t_ms: u64,
    verdict: Verdict,
    analysed: Option<(Analysis, serde_json::Value)>,
    decode_ms: f64,
}

pub struct VisionActor {
    /// `None` while a job runs.
    work: Option<Work>,
    job: Option<JoinHandle<(Work, Result<Outcome>)>>,
    /// The newest frame that arrived while a job ran.
    waiting: Option<(u64, Arc<[u8]>)>,
    expert: VisionExpert,
    speaking: bool,
    /// Frames skipped by the sampler or replaced in the slot since the last
    /// analysed frame.
    skipped: u64,
    replaced: u64,
}

impl VisionActor {
    pub fn new(model: Arc<EfficientNetLite0>, params: &VisionParams) -> Result<Self> {
        params.validate()?;
        let analyzer = FrameAnalyzer::new(
            model,
            AnalyzerSettings {
                keep_ratio: params.keep_ratio,
                saliency: params.saliency,
                reduction: params.reduction,
                encoder_keep_ratio: params.encoder_keep_ratio,
                temporal_reuse: params.temporal_reuse,
                ..AnalyzerSettings::default()
            },
        );
        Ok(VisionActor {
            work: Some(Work {
                sampler: FrameSampler::new(params.sampler()),
                analyzer,
            }),
            job: None,
            waiting: None,
            expert: VisionExpert::new(params.expert()),
            speaking: false,
            skipped: 0,
            replaced: 0,
        })
    }

    fn activity(&self) -> Activity {
        if self.speaking {
            Activity::UserSpeaking
        } else {
            Activity::Idle
        }
    }

    /// Starts a job on `image` if none runs, else parks it in the slot.
    fn offer(&mut self, t_ms: u64, image: Arc<[u8]>) {
        let Some(mut work) = self.work.take() else {
            if self.waiting.replace((t_ms, image)).is_some() {
                self.replaced += 1;
            }
            return;
        };
        let activity = self.activity();
        self.job = Some(tokio::task::spawn_blocking(move || {
            let outcome = look(&mut work, t_ms, &image, activity);
            (work, outcome)
        }));
    }

    /// Takes a finished job's outcome and starts the waiting frame.
    async fn collect(&mut self, wait: bool, ctx: &Ctx) -> Result<()> {
        let Some(job) = self.job.take_if(|j| wait || j.is_finished()) else {
            return Ok(());
        };
        let (work, outcome) = job.await.context("vision task failed")?;
        self.work = Some(work);
        if let Some((t_ms, image)) = self.waiting.take() {
            self.offer(t_ms, image);
        }
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                ctx.events()
                    .error(0, "invalid_image", &format!("camera frame: {e:#}"));
                return Ok(());
            }
        };
        let Some((analysis, timings)) = outcome.analysed else {
            self.skipped += 1;
            return Ok(());
        };
        let observations = self.expert.observe(outcome.t_ms, &analysis);
        let scene = self.expert.scene();
        ctx.events().emit(
            "duplex.vision.frame",
            outcome.t_ms,
            json!({
                "t_ms": outcome.t_ms,
                "verdict": outcome.verdict,
                "activity": self.activity(),
                "labels": analysis.sightings,
                "decode_ms": outcome.decode_ms,
                "timings": timings,
                "skipped_before": std::mem::take(&mut self.skipped),
                "replaced_before": std::mem::take(&mut self.replaced),
                "observations": observations,
                "scene": scene.describe(outcome.t_ms),
            }),
        );
        ctx.send(DataFrame {
            t_ms: outcome.t_ms,
            response_id: INPUT,
            payload: Payload::Scene {
                scene: Arc::new(scene),
                observations,
            },
        })
        .await;
        Ok(())
    }
}

/// The blocking part of one frame: decode, sample, and encode if kept.
fn look(work: &mut Work, t_ms: u64, bytes: &[u8], activity: Activity) -> Result<Outcome> {
    let started = Instant::now();
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .context("reading the camera frame")?;
    // A camera frame, not a decompression bomb.
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_FRAME_SIDE);
    limits.max_image_height = Some(MAX_FRAME_SIDE);
    limits.max_alloc = Some(256 << 20);
    reader.limits(limits);
    let image = reader
        .decode()
        .context("not a decodable JPEG or PNG image (at most 4096x4096)")?
        .to_rgb8();
    let decode_ms = started.elapsed().as_secs_f64() * 1000.0;
    let verdict = work.sampler.consider(t_ms, Thumbnail::of(&image), activity);
    let analysed = if verdict.keep() {
        let (analysis, timings) = work.analyzer.analyze(&image)?;
        Some((analysis, serde_json::to_value(timings)?))
    } else {
        None
    };
    Ok(Outcome {
        t_ms,
        verdict,
        analysed,
        decode_ms,
    })
}

#[async_trait]
impl Actor for VisionActor {
    async fn on_data(&mut self, frame: DataFrame, ctx: &Ctx) -> Result<()> {
        if let Payload::Video(image) = &frame.payload {
            self.offer(frame.t_ms, image.clone());
            return self.collect(false, ctx).await;
        }
        ctx.send(frame).await;
        Ok(())
    }

    async fn on_system(&mut self, frame: &SystemFrame, _ctx: &Ctx) -> Result<()> {
        match frame.kind {
            SystemKind::SpeechStarted { .. } => self.speaking = true,
            SystemKind::SpeechStopped { .. } => self.speaking = false,
            _ => {}
        }
        Ok(())
    }

    async fn on_end(&mut self, ctx: &Ctx) -> Result<()> {
        // The last frames of a file count too.
        while self.job.is_some() {
            self.collect(true, ctx).await?;
        }
        Ok(())
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(POLL)
    }

    async fn on_tick(&mut self, ctx: &Ctx) -> Result<()> {
        self.collect(false, ctx).await
    }
}
