//! The ASR actor: follows the VAD's speech segments, runs partial passes at a
//! steady cadence of audio while the user speaks, commits words with
//! LocalAgreement, and decodes the final transcript the moment speech stops.
//!
//! Events (OpenAI Realtime API): `conversation.item.input_audio_transcription.delta`
//! with the newly committed words, and `...completed` with the final
//! `transcript`. Downstream it sends `Transcript` data frames.
//!
//! Passes run on the blocking pool. A partial pass in flight never delays the
//! final: on speech stop its abort flag is raised, it returns at once, and the
//! final decode starts. Audio keeps flowing into the actor while a partial
//! pass runs; its result is collected at the next frame.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use serde_json::json;
use tokio::task::JoinHandle;

use super::agreement::LocalAgreement;
use super::{ASR_RATE, StreamingAsr, arm};
use crate::graph::{Actor, Control, Ctx, DataFrame, INPUT, Payload, SystemFrame, SystemKind};

/// Audio kept from before speech starts, to cover the VAD's prefix padding.
const RECENT_MS: u64 = 2_000;

type Pass = JoinHandle<(Box<dyn StreamingAsr>, Result<String>)>;

struct Utterance {
    item_id: String,
    /// Sample index where the utterance starts (the VAD's audio_start_ms).
    start: u64,
    /// Audio not yet handed to the engine.
    unsent: Vec<f32>,
    /// Clock (samples) when the last partial pass started.
    last_pass: Option<u64>,
    agreement: LocalAgreement,
    /// Set when the VAD says speech stopped: (audio_end sample, speech_end_ms).
    stop_at: Option<u64>,
}

pub struct AsrActor {
    /// The engine, or `None` while a pass has it on the blocking pool.
    engine: Option<Box<dyn StreamingAsr>>,
    abort: Arc<AtomicBool>,
    pass: Option<Pass>,
    partial_interval: u64,
    /// Samples received so far (the session clock at 16 kHz).
    clock: u64,
    recent: VecDeque<f32>,
    utterance: Option<Utterance>,
}

fn samples(ms: u64) -> u64 {
    ms * ASR_RATE as u64 / 1000
}

fn ms(samples: u64) -> u64 {
    samples * 1000 / ASR_RATE as u64
}

impl AsrActor {
    pub fn new(engine: Box<dyn StreamingAsr>, partial_interval_ms: u64) -> Result<AsrActor> {
        if !(50..=5_000).contains(&partial_interval_ms) {
            bail!("partial_interval_ms must be between 50 and 5000, got {partial_interval_ms}");
        }
        Ok(AsrActor {
            abort: engine.abort_flag(),
            engine: Some(engine),
            pass: None,
            partial_interval: samples(partial_interval_ms),
            clock: 0,
            recent: VecDeque::new(),
            utterance: None,
        })
    }

    fn take_audio(&mut self, chunk: &[f32]) {
        let first = self.clock;
        self.clock += chunk.len() as u64;
        match &mut self.utterance {
            Some(u) => {
                let skip = u.start.saturating_sub(first).min(chunk.len() as u64) as usize;
                u.unsent.extend_from_slice(&chunk[skip..]);
            }
            None => {
                self.recent.extend(chunk);
                let keep = samples(RECENT_MS) as usize;
                if self.recent.len() > keep {
                    self.recent.drain(..self.recent.len() - keep);
                }
            }
        }
    }

    fn start_utterance(&mut self, item_id: String, audio_start_ms: u64) {
        let start = samples(audio_start_ms);
        let recent_start = self.clock - self.recent.len() as u64;
        let from = start
            .saturating_sub(recent_start)
            .min(self.recent.len() as u64) as usize;
        let unsent: Vec<f32> = self.recent.iter().skip(from).copied().collect();
        self.recent.clear();
        self.utterance = Some(Utterance {
            item_id,
            start,
            unsent,
            last_pass: None,
            agreement: LocalAgreement::new(),
            stop_at: None,
        });
    }

    /// Drops the user's unfinished utterance (input_audio_buffer.clear).
    async fn clear_input(&mut self, ctx: &Ctx) -> Result<()> {
        self.abort.store(true, Ordering::SeqCst);
        self.collect(true, ctx).await?;
        self.utterance = None;
        self.recent.clear();
        if let Some(engine) = &mut self.engine {
            engine.reset();
        }
        Ok(())
    }

    /// Collects the partial pass in flight: if it has finished, or always
    /// when `wait` is set.
    async fn collect(&mut self, wait: bool, ctx: &Ctx) -> Result<()> {
        let Some(pass) = &self.pass else {
            return Ok(());
        };
        if !wait && !pass.is_finished() {
            return Ok(());
        }
        let pass = self.pass.take().context("no pass in flight")?;
        let (engine, result) = pass.await.context("ASR pass task failed")?;
        self.engine = Some(engine);
        let aborted = self.abort.load(Ordering::SeqCst);
        let text = match result {
            Ok(text) => text,
            Err(_) if aborted => return Ok(()),
            Err(e) => return Err(e.context("partial transcription failed")),
        };
        let Some(u) = &mut self.utterance else {
            return Ok(());
        };
        let fresh = u.agreement.update(&text);
        if fresh.is_empty() {
            return Ok(());
        }
        let first = u.agreement.committed().len() == fresh.len();
        let delta = format!("{}{}", if first { "" } else { " " }, fresh.join(" "));
        let item_id = u.item_id.clone();
        ctx.events().emit(
            "conversation.item.input_audio_transcription.delta",
            ms(self.clock),
            json!({"item_id": item_id, "content_index": 0, "delta": delta}),
        );
        ctx.send(DataFrame {
            t_ms: ms(self.clock),
            response_id: INPUT,
            payload: Payload::Transcript {
                item_id,
                text: delta,
                is_final: false,
            },
        })
        .await;
        Ok(())
    }

    /// Starts a partial pass if the engine is free and enough new audio came.
    fn maybe_start_partial(&mut self) {
        let Some(u) = &mut self.utterance else {
            return;
        };
        if u.stop_at.is_some() || self.pass.is_some() {
            return;
        }
        if u.last_pass
            .is_some_and(|at| self.clock < at + self.partial_interval)
        {
            return;
        }
        let Some(mut engine) = self.engine.take() else {
            return;
        };
        u.last_pass = Some(self.clock);
        let audio = std::mem::take(&mut u.unsent);
        arm(&self.abort);
        self.pass = Some(tokio::task::spawn_blocking(move || {
            let result = engine.partial(&audio);
            (engine, result)
        }));
    }

    /// Finishes the utterance if speech has stopped and its audio is in.
    async fn maybe_finalize(&mut self, at_end: bool, ctx: &Ctx) -> Result<()> {
        let ready = match &self.utterance {
            Some(u) => at_end || u.stop_at.is_some_and(|end| self.clock >= end),
            None => false,
        };
        if !ready {
            return Ok(());
        }
        // Never wait behind a partial pass: stop it, then decode the final.
        self.abort.store(true, Ordering::SeqCst);
        self.collect(true, ctx).await?;
        let mut u = self.utterance.take().context("no utterance")?;
        let mut engine = self
            .engine
            .take()
            .context("ASR engine lost after an earlier failure")?;
        let audio = std::mem::take(&mut u.unsent);
        arm(&self.abort);
        let started = Instant::now();
        let (engine, result) = tokio::task::spawn_blocking(move || {
            let result = engine.finalize(&audio);
            (engine, result)
        })
        .await
        .context("ASR final task failed")?;
        self.engine = Some(engine);
        let transcript = result.context("final transcription failed")?;
        tracing::debug!(
            item_id = %u.item_id,
            decode_ms = started.elapsed().as_millis() as u64,
            "final transcript"
        );
        ctx.events().emit(
            "conversation.item.input_audio_transcription.completed",
            ms(self.clock),
            json!({"item_id": u.item_id, "content_index": 0, "transcript": transcript}),
        );
        ctx.send(DataFrame {
            t_ms: ms(self.clock),
            response_id: INPUT,
            payload: Payload::Transcript {
                item_id: u.item_id,
                text: transcript,
                is_final: true,
            },
        })
        .await;
        Ok(())
    }
}

#[async_trait]
impl Actor for AsrActor {
    async fn on_data(&mut self, frame: DataFrame, ctx: &Ctx) -> Result<()> {
        let Payload::Audio(chunk) = &frame.payload else {
            if let Payload::Control(control) = &frame.payload
                && **control == Control::ClearInput
            {
                self.clear_input(ctx).await?;
            }
            ctx.send(frame).await;
            return Ok(());
        };
        if chunk.sample_rate != ASR_RATE {
            bail!(
                "ASR needs {ASR_RATE} Hz audio but got {} Hz: set sample_rate = {ASR_RATE} on the input node",
                chunk.sample_rate
            );
        }
        self.take_audio(&chunk.samples);
        self.collect(false, ctx).await?;
        self.maybe_finalize(false, ctx).await?;
        self.maybe_start_partial();
        Ok(())
    }

    async fn on_system(&mut self, frame: &SystemFrame, ctx: &Ctx) -> Result<()> {
        match &frame.kind {
            SystemKind::SpeechStarted {
                item_id,
                audio_start_ms,
            } => {
                if self.utterance.is_some() {
                    // A new segment before the last one was stopped: finish it.
                    self.maybe_finalize(true, ctx).await?;
                }
                self.start_utterance(item_id.clone(), *audio_start_ms);
                self.maybe_start_partial();
            }
            SystemKind::SpeechStopped { audio_end_ms, .. } => {
                if let Some(u) = &mut self.utterance {
                    u.stop_at = Some(samples(*audio_end_ms));
                }
                self.maybe_finalize(false, ctx).await?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn on_end(&mut self, ctx: &Ctx) -> Result<()> {
        self.maybe_finalize(true, ctx).await?;
        self.abort.store(true, Ordering::SeqCst);
        self.collect(true, ctx).await
    }
}
