//! The output stage: plays responses out to the client at real-time pace.
//!
//! Speech arrives from the TTS faster than real time; this stage buffers it,
//! resamples it to the session's output rate (24 kHz pcm16 for the Realtime
//! API), and releases it in 20 ms frames as `response.output_audio.delta`
//! events, never more than `lead_ms` ahead of the playhead. So an interrupt
//! stops the audio within one frame (what is buffered here is simply
//! dropped), the playhead says exactly what the user has heard (for
//! truncating the conversation), and a pause holds the audio in place while
//! a possible barge-in is checked.
//!
//! When a response has been played out, this stage reports it done
//! (`response.output_audio.done` ... `response.done`). It also closes the
//! turn's latency waterfall at the first frame out. Released audio goes on
//! downstream as `Playout` frames (the avatar animates from them). When the
//! input ends, everything left is released at once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::audio::{StreamResampler, pcm16_base64_encode};
use crate::graph::frame::ResponseSummary;
use crate::graph::{
    Actor, AudioChunk, Ctx, DataFrame, Payload, ResponseId, SystemFrame, SystemKind,
};
use crate::latency::{Latency, Stage};
use crate::orchestrator::heard::Heard;
use crate::realtime;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputParams {
    /// Rate of the audio sent to the client.
    #[serde(default = "default_rate")]
    pub sample_rate: u32,
    /// How far ahead of the playhead audio is sent (client jitter buffer).
    #[serde(default = "default_lead_ms")]
    pub lead_ms: u64,
    /// Size of each audio delta.
    #[serde(default = "default_frame_ms")]
    pub frame_ms: u64,
}

fn default_rate() -> u32 {
    24_000
}
fn default_lead_ms() -> u64 {
    200
}
fn default_frame_ms() -> u64 {
    20
}

/// One response being played.
struct Playing {
    response_id: ResponseId,
    item_id: String,
    resampler: Option<(u32, StreamResampler)>,
    /// Resampled audio not yet released.
    pending: VecDeque<f32>,
    /// Samples received (at the output rate): where the next clause starts.
    received: u64,
    released: u64,
    /// Ms of this response's audio the user has heard.
    playhead_ms: f64,
    paused: bool,
    summary: Option<ResponseSummary>,
}

pub struct OutputActor {
    rate: u32,
    frame: usize,
    lead_ms: u64,
    playing: VecDeque<Playing>,
    last_tick: Instant,
    heard: Arc<Heard>,
    latency: Arc<Latency>,
}

impl OutputActor {
    pub fn new(params: &OutputParams, heard: Arc<Heard>, latency: Arc<Latency>) -> Result<Self> {
        if !(8_000..=48_000).contains(&params.sample_rate) {
            bail!(
                "sample_rate must be 8000..48000, got {}",
                params.sample_rate
            );
        }
        if !(10..=100).contains(&params.frame_ms) {
            bail!("frame_ms must be 10..100, got {}", params.frame_ms);
        }
        if params.lead_ms > 5_000 {
            bail!("lead_ms must be at most 5000, got {}", params.lead_ms);
        }
        Ok(OutputActor {
            rate: params.sample_rate,
            frame: (params.sample_rate as u64 * params.frame_ms / 1000) as usize,
            lead_ms: params.lead_ms,
            playing: VecDeque::new(),
            last_tick: Instant::now(),
            heard,
            latency,
        })
    }

    fn ms(&self, samples: u64) -> f64 {
        samples as f64 * 1000.0 / self.rate as f64
    }

    fn entry(&mut self, response_id: ResponseId, item_id: &str) -> &mut Playing {
        let at = match self
            .playing
            .iter()
            .position(|p| p.response_id == response_id)
        {
            Some(at) => at,
            None => {
                self.playing.push_back(Playing {
                    response_id,
                    item_id: item_id.to_string(),
                    resampler: None,
                    pending: VecDeque::new(),
                    received: 0,
                    released: 0,
                    playhead_ms: 0.0,
                    paused: false,
                    summary: None,
                });
                self.playing.len() - 1
            }
        };
        &mut self.playing[at]
    }

    fn take_speech(
        &mut self,
        response_id: ResponseId,
        item_id: &str,
        chunk: &AudioChunk,
        clause: Option<(String, u64)>,
    ) -> Result<()> {
        let rate = self.rate;
        let p = self.entry(response_id, item_id);
        if let Some((text, duration_ms)) = clause {
            let start_ms = p.received * 1000 / rate as u64;
            self.heard.clause(response_id, &text, start_ms, duration_ms);
        }
        let p = self.entry(response_id, item_id);
        let samples = if chunk.sample_rate == rate {
            chunk.samples.to_vec()
        } else {
            let from = chunk.sample_rate;
            let resampler = match &mut p.resampler {
                Some((r, resampler)) if *r == from => resampler,
                slot => &mut slot.insert((from, StreamResampler::new(from, rate)?)).1,
            };
            resampler.process(&chunk.samples)
        };
        p.received += samples.len() as u64;
        p.pending.extend(samples);
        Ok(())
    }

    /// Releases what the playhead allows (everything when `flush`), and
    /// finishes responses that have been played out.
    async fn pump(&mut self, elapsed_ms: f64, flush: bool, ctx: &Ctx) {
        let Some(p) = self.playing.front_mut() else {
            return;
        };
        if flush && let Some((_, r)) = &mut p.resampler {
            let tail = r.flush();
            p.received += tail.len() as u64;
            p.pending.extend(tail);
        }
        let released_ms = p.released as f64 * 1000.0 / self.rate as f64;
        if flush {
            p.playhead_ms = f64::INFINITY;
        } else if !p.paused {
            p.playhead_ms = (p.playhead_ms + elapsed_ms).min(released_ms);
        }
        let finished_input = p.summary.is_some();
        let frame = self.frame;
        let rate = self.rate as f64;
        let lead_ms = self.lead_ms as f64;
        let mut out = Vec::new();
        loop {
            let p = &mut self.playing[0];
            let ahead = p.released as f64 * 1000.0 / rate - p.playhead_ms;
            let room = flush || (!p.paused && ahead < lead_ms);
            let have = p.pending.len() >= frame || (finished_input && !p.pending.is_empty());
            if !room || !have {
                break;
            }
            let n = frame.min(p.pending.len());
            let samples: Vec<f32> = p.pending.drain(..n).collect();
            let offset_ms = (p.released as f64 * 1000.0 / rate) as u64;
            p.released += n as u64;
            out.push((offset_ms, samples));
        }
        let (response_id, item_id) = {
            let p = &self.playing[0];
            (p.response_id, p.item_id.clone())
        };
        for (offset_ms, samples) in out {
            // An interrupt raised while a burst goes out (the first lead, or
            // a catch-up after a stall) stops it here; `on_system` then drops
            // the response.
            if ctx.is_dead(response_id) {
                return;
            }
            if offset_ms == 0 {
                self.first_audio_out(ctx);
            }
            ctx.events().emit(
                "response.output_audio.delta",
                offset_ms,
                json!({
                    "response_id": realtime::response_id(response_id),
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "delta": pcm16_base64_encode(&samples),
                }),
            );
            ctx.send(DataFrame {
                t_ms: offset_ms,
                response_id,
                payload: Payload::Playout {
                    item_id: item_id.clone(),
                    offset_ms,
                    chunk: AudioChunk::new(samples, self.rate),
                },
            })
            .await;
        }
        if ctx.is_dead(response_id) {
            return;
        }
        let p = &self.playing[0];
        if !flush {
            self.heard.played(response_id, p.playhead_ms as u64);
        } else {
            self.heard.played(response_id, self.ms(p.released) as u64);
        }
        let played_out = p.pending.is_empty() && p.playhead_ms >= self.ms(p.released);
        if finished_input && played_out {
            let p = self.playing.pop_front();
            self.heard.finish(response_id);
            if let Some(summary) = p.and_then(|p| p.summary) {
                self.report_done(&summary, ctx);
            }
        }
    }

    fn first_audio_out(&self, ctx: &Ctx) {
        self.latency.mark(Stage::FirstAudioOut);
        if let Some(waterfall) = self.latency.finish() {
            let json = waterfall.to_json();
            tracing::info!(latency = %json["since_speech_end"], item_id = %waterfall.item_id, "turn latency");
            ctx.events().emit("duplex.turn.latency", 0, json);
        }
    }

    fn report_done(&self, s: &ResponseSummary, ctx: &Ctx) {
        let audio = realtime::content_type(&s.modalities) == "output_audio";
        let ids = json!({
            "response_id": s.response_id,
            "item_id": s.item_id,
            "output_index": 0,
            "content_index": 0,
        });
        let with = |extra: Value| {
            let mut v = ids.clone();
            if let (Some(map), Value::Object(more)) = (v.as_object_mut(), extra) {
                map.extend(more);
            }
            v
        };
        if audio {
            ctx.events()
                .emit("response.output_audio.done", 0, ids.clone());
            ctx.events().emit(
                "response.output_audio_transcript.done",
                0,
                with(json!({"transcript": s.transcript})),
            );
            ctx.events().emit(
                "response.content_part.done",
                0,
                with(json!({"part": {"type": "audio", "transcript": s.transcript}})),
            );
        } else {
            ctx.events().emit(
                "response.output_text.done",
                0,
                with(json!({"text": s.transcript})),
            );
            ctx.events().emit(
                "response.content_part.done",
                0,
                with(json!({"part": {"type": "text", "text": s.transcript}})),
            );
        }
        let item = realtime::assistant_item(&s.item_id, "completed", &s.modalities, &s.transcript);
        ctx.events().emit(
            "response.output_item.done",
            0,
            json!({"response_id": s.response_id, "output_index": 0, "item": item.clone()}),
        );
        ctx.events()
            .emit("conversation.item.done", 0, json!({"item": item.clone()}));
        ctx.events().emit(
            "response.done",
            0,
            json!({"response": realtime::response_object(
                &s.response_id,
                "completed",
                Value::Null,
                vec![item],
                &s.modalities,
                Some(s.tokens),
            )}),
        );
    }
}

#[async_trait]
impl Actor for OutputActor {
    async fn on_data(&mut self, frame: DataFrame, ctx: &Ctx) -> Result<()> {
        match &frame.payload {
            Payload::Speech {
                item_id,
                chunk,
                clause,
            } => {
                let clause = clause.as_ref().map(|c| (c.text.clone(), c.duration_ms));
                self.take_speech(frame.response_id, item_id, chunk, clause)?;
            }
            Payload::ResponseEnd(summary) => {
                let p = self.entry(frame.response_id, &summary.item_id);
                p.summary = Some((**summary).clone());
                self.pump(0.0, false, ctx).await;
            }
            _ => ctx.send(frame).await,
        }
        Ok(())
    }

    async fn on_system(&mut self, frame: &SystemFrame, _ctx: &Ctx) -> Result<()> {
        match &frame.kind {
            SystemKind::Interrupt { response_id } | SystemKind::Cancel { response_id } => {
                self.playing.retain(|p| p.response_id > *response_id);
            }
            SystemKind::PauseOutput { response_id } | SystemKind::ResumeOutput { response_id } => {
                let paused = matches!(frame.kind, SystemKind::PauseOutput { .. });
                for p in self
                    .playing
                    .iter_mut()
                    .filter(|p| p.response_id == *response_id)
                {
                    p.paused = paused;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(10))
    }

    async fn on_tick(&mut self, ctx: &Ctx) -> Result<()> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last_tick).as_secs_f64() * 1000.0;
        self.last_tick = now;
        self.pump(elapsed, false, ctx).await;
        Ok(())
    }

    async fn on_end(&mut self, ctx: &Ctx) -> Result<()> {
        while !self.playing.is_empty() {
            let before = self.playing.len();
            self.pump(0.0, true, ctx).await;
            if self.playing.len() == before {
                // A response that never got its end: report nothing more.
                self.playing.pop_front();
            }
        }
        Ok(())
    }
}
