//! The registry of node kinds: what a pipeline may name, each kind's
//! parameters (checked at load), and how each becomes an actor.
//!
//! Shared models live in [`Resources`], loaded once per process and handed to
//! every session's actors behind an `Arc`.

use std::sync::{Arc, OnceLock};

use anyhow::Result;
use async_trait::async_trait;
use serde::Deserialize;

use super::actor::{Actor, Ctx};
use super::frame::{AudioChunk, DataFrame, Payload};
use crate::audio::StreamResampler;
use crate::audio::vad::{SileroModel, VadActor, VadParams};
use crate::models::ModelStore;

/// A node of a pipeline: its kind (the `kind` key) and parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NodeKind {
    /// Where session audio enters; resamples it to the pipeline's rate and
    /// stamps the session clock.
    Input(InputParams),
    /// Silero VAD v6 with the Realtime API's server_vad parameters.
    SileroVad(VadParams),
    /// Forwards every frame unchanged (tests, benchmarks, taps).
    Passthrough(PassthroughParams),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputParams {
    /// Rate of the audio the pipeline's stages receive.
    #[serde(default = "default_pipeline_rate")]
    pub sample_rate: u32,
}

fn default_pipeline_rate() -> u32 {
    16_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassthroughParams {}

/// Models shared by every session of the process.
pub struct Resources {
    pub store: ModelStore,
    silero: OnceLock<Arc<SileroModel>>,
}

impl Resources {
    pub fn new(store: ModelStore) -> Arc<Resources> {
        Arc::new(Resources {
            store,
            silero: OnceLock::new(),
        })
    }

    /// The Silero VAD model, loaded on first use.
    pub fn silero(&self) -> Result<Arc<SileroModel>> {
        if let Some(model) = self.silero.get() {
            return Ok(model.clone());
        }
        let model = Arc::new(SileroModel::load(&self.store)?);
        Ok(self.silero.get_or_init(|| model).clone())
    }
}

impl NodeKind {
    /// Loads the models this node needs, so the first session does not pay
    /// for it and a missing model fails at start-up.
    pub fn prepare(&self, resources: &Resources) -> Result<()> {
        match self {
            NodeKind::SileroVad(_) => resources.silero().map(drop),
            NodeKind::Input(_) | NodeKind::Passthrough(_) => Ok(()),
        }
    }

    /// A fresh actor with this node's per-session state.
    pub fn build(&self, resources: &Resources) -> Result<Box<dyn Actor>> {
        Ok(match self {
            NodeKind::Input(p) => Box::new(InputActor::new(p.sample_rate)),
            NodeKind::SileroVad(p) => Box::new(VadActor::new(resources.silero()?, p.clone())?),
            NodeKind::Passthrough(_) => Box::new(Passthrough),
        })
    }
}

/// Resamples incoming audio to the pipeline rate and stamps the session clock
/// (ms of input audio) on every frame.
pub struct InputActor {
    rate: u32,
    resampler: Option<(u32, StreamResampler)>,
    samples_out: u64,
}

impl InputActor {
    pub fn new(rate: u32) -> Self {
        InputActor {
            rate,
            resampler: None,
            samples_out: 0,
        }
    }

    async fn emit(&mut self, samples: Vec<f32>, ctx: &Ctx) {
        if samples.is_empty() {
            return;
        }
        let t_ms = self.samples_out * 1000 / self.rate as u64;
        self.samples_out += samples.len() as u64;
        ctx.send(DataFrame::audio(
            t_ms,
            super::frame::INPUT,
            AudioChunk::new(samples, self.rate),
        ))
        .await;
    }
}

#[async_trait]
impl Actor for InputActor {
    async fn on_data(&mut self, frame: DataFrame, ctx: &Ctx) -> Result<()> {
        let Payload::Audio(chunk) = &frame.payload else {
            ctx.send(frame).await;
            return Ok(());
        };
        let from = chunk.sample_rate;
        if let Some((rate, _)) = &self.resampler
            && *rate != from
        {
            anyhow::bail!("input audio changed rate from {rate} Hz to {from} Hz mid-stream");
        }
        if from == self.rate && self.resampler.is_none() {
            self.emit(chunk.samples.to_vec(), ctx).await;
            return Ok(());
        }
        let resampler = match &mut self.resampler {
            Some((_, r)) => r,
            slot => {
                &mut slot
                    .insert((from, StreamResampler::new(from, self.rate)?))
                    .1
            }
        };
        let out = resampler.process(&chunk.samples);
        self.emit(out, ctx).await;
        Ok(())
    }

    async fn on_end(&mut self, ctx: &Ctx) -> Result<()> {
        if let Some((_, r)) = &mut self.resampler {
            let tail = r.flush();
            self.emit(tail, ctx).await;
        }
        Ok(())
    }
}

/// Forwards data unchanged.
pub struct Passthrough;

#[async_trait]
impl Actor for Passthrough {
    async fn on_data(&mut self, frame: DataFrame, ctx: &Ctx) -> Result<()> {
        ctx.send(frame).await;
        Ok(())
    }
}
