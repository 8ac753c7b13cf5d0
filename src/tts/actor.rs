//! The TTS actor: synthesizes each clause of a response as it arrives from
//! the orchestrator and sends its audio on in short chunks, the first of
//! which names the clause (text and duration) so the output stage can tell
//! which words were heard.
//!
//! Synthesis runs on the blocking pool, one clause at a time; the output
//! stage buffers and paces, so the next clause is synthesized while the
//! current one plays. An interrupted response's clause is dropped before it
//! is synthesized, or its audio right after (the output stage has already
//! stopped playing it).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use async_trait::async_trait;
use serde::Deserialize;

use super::Synthesizer;
use crate::graph::frame::ClauseAudio;
use crate::graph::{Actor, AudioChunk, Ctx, DataFrame, Payload};
use crate::latency::{Latency, Stage};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtsParams {
    /// Speaking rate: 1.0 is the voice's own pace, 1.2 is 20 % faster.
    #[serde(default = "default_speed")]
    pub speed: f32,
    /// Audio chunk size sent downstream, in ms.
    #[serde(default = "default_chunk_ms")]
    pub chunk_ms: u32,
}

fn default_speed() -> f32 {
    1.0
}

fn default_chunk_ms() -> u32 {
    40
}

pub struct TtsActor {
    synth: Option<Synthesizer>,
    chunk_ms: u32,
    latency: Arc<Latency>,
}

impl TtsActor {
    pub fn new(mut synth: Synthesizer, params: &TtsParams, latency: Arc<Latency>) -> Result<Self> {
        if !(0.25..=4.0).contains(&params.speed) {
            anyhow::bail!("speed must be between 0.25 and 4, got {}", params.speed);
        }
        if !(10..=200).contains(&params.chunk_ms) {
            anyhow::bail!(
                "chunk_ms must be between 10 and 200, got {}",
                params.chunk_ms
            );
        }
        synth.set_speed(params.speed);
        Ok(TtsActor {
            synth: Some(synth),
            chunk_ms: params.chunk_ms,
            latency,
        })
    }

    async fn speak(
        &mut self,
        frame: &DataFrame,
        item_id: &str,
        text: &str,
        ctx: &Ctx,
    ) -> Result<()> {
        if ctx.is_dead(frame.response_id) {
            return Ok(());
        }
        let mut synth = self
            .synth
            .take()
            .context("synthesizer lost after an earlier failure")?;
        let clause = text.to_string();
        let started = Instant::now();
        let (synth, result) = tokio::task::spawn_blocking(move || {
            let result = synth.synthesize(&clause);
            (synth, result)
        })
        .await
        .context("synthesis task failed")?;
        self.synth = Some(synth);
        let pcm = result.with_context(|| format!("synthesizing \"{text}\""))?;
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            text,
            "clause synthesized"
        );
        if ctx.is_dead(frame.response_id) || pcm.samples.is_empty() {
            return Ok(());
        }
        self.latency.mark(Stage::FirstAudio);
        let per_chunk = (pcm.sample_rate as usize * self.chunk_ms as usize / 1000).max(1);
        let duration_ms = pcm.duration_ms();
        for (i, piece) in pcm.samples.chunks(per_chunk).enumerate() {
            let clause = (i == 0).then(|| ClauseAudio {
                text: text.to_string(),
                duration_ms,
            });
            ctx.send(DataFrame {
                t_ms: frame.t_ms,
                response_id: frame.response_id,
                payload: Payload::Speech {
                    item_id: item_id.to_string(),
                    chunk: AudioChunk::new(piece.to_vec(), pcm.sample_rate),
                    clause,
                },
            })
            .await;
        }
        Ok(())
    }
}

#[async_trait]
impl Actor for TtsActor {
    async fn on_data(&mut self, frame: DataFrame, ctx: &Ctx) -> Result<()> {
        if let Payload::Clause { item_id, text } = &frame.payload {
            let (item_id, text) = (item_id.clone(), text.clone());
            return self.speak(&frame, &item_id, &text, ctx).await;
        }
        ctx.send(frame).await;
        Ok(())
    }
}
