//! Voice activity detection: Silero VAD v6 through ONNX Runtime, and the
//! actor that turns its speech probabilities into the Realtime API's
//! server_vad events (`input_audio_buffer.speech_started` / `speech_stopped`).
//!
//! With `turn_detection = "semantic_vad"` the silence that ends a turn is
//! not fixed: each pause's end-of-turn score (`EndOfTurnScore`, from the
//! `end_of_turn` node downstream) sets it through the eagerness
//! ([`crate::turn::window`]), and the choice is emitted as
//! `duplex.turn.end_of_turn`. A pause never scored waits for the
//! eagerness' fallback window.
//!
//! The model is loaded once per process and shared; each session keeps its
//! own recurrent state and 64-sample context. Inference runs on the blocking
//! pool, never on the async reactor.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use ort::session::Session;
use ort::value::Tensor;
use serde::Deserialize;
use serde_json::json;

use crate::graph::{Actor, Control, Ctx, DataFrame, Payload, SystemFrame, SystemKind};
use crate::latency::Latency;
use crate::models::ModelStore;
use crate::realtime::TurnDetection;
use crate::turn::Eagerness;

/// Silero's rate, chunk and context sizes (v6, 16 kHz).
pub const VAD_RATE: u32 = 16_000;
pub const CHUNK: usize = 512;
const CONTEXT: usize = 64;
const STATE: usize = 2 * 128;

/// The shared Silero model.
pub struct SileroModel {
    session: Mutex<Session>,
}

impl SileroModel {
    pub const PACKAGE: &'static str = "silero-vad";
    pub const FILE: &'static str = "silero_vad.onnx";

    pub fn load(store: &ModelStore) -> Result<SileroModel> {
        let path = store.file(Self::PACKAGE, Self::FILE)?;
        let session = crate::onnx::load_session(store, Self::PACKAGE, &path, 1)?;
        let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        if names != ["input", "state", "sr"] {
            return Err(crate::models::corrupt_model_error(
                Self::PACKAGE,
                &path,
                format!("unexpected inputs {names:?}, expected [input, state, sr]"),
            ));
        }
        Ok(SileroModel {
            session: Mutex::new(session),
        })
    }

    /// Speech probability of one chunk (`CONTEXT + CHUNK` samples), updating
    /// the recurrent `state` in place.
    fn infer(&self, window: &[f32], state: &mut [f32; STATE]) -> Result<f32> {
        let input = Tensor::from_array(([1usize, CONTEXT + CHUNK], window.to_vec()))?;
        let state_in = Tensor::from_array(([2usize, 1, 128], state.to_vec()))?;
        let sr = Tensor::from_array(((), vec![VAD_RATE as i64]))?;
        let mut session = self
            .session
            .lock()
            .map_err(|_| anyhow!("VAD model lock poisoned"))?;
        let outputs =
            session.run(ort::inputs!["input" => input, "state" => state_in, "sr" => sr])?;
        let (_, prob) = outputs["output"].try_extract_tensor::<f32>()?;
        let (_, new_state) = outputs["stateN"].try_extract_tensor::<f32>()?;
        if new_state.len() != STATE || prob.is_empty() {
            bail!("VAD model returned unexpected shapes");
        }
        state.copy_from_slice(new_state);
        Ok(prob[0])
    }
}

/// The Realtime API's server_vad parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VadParams {
    /// Speech probability that starts speech (0..1).
    #[serde(default = "default_threshold")]
    pub threshold: f32,
    /// Audio kept before the detected start, in ms.
    #[serde(default = "default_prefix_padding_ms")]
    pub prefix_padding_ms: u64,
    /// Silence that ends speech, in ms (server_vad).
    #[serde(default = "default_silence_duration_ms")]
    pub silence_duration_ms: u64,
    /// `server_vad` (a fixed silence ends the turn) or `semantic_vad` (the
    /// silence follows how finished the words sound; needs an `end_of_turn`
    /// node after the ASR).
    #[serde(default)]
    pub turn_detection: TurnDetectionKind,
    /// semantic_vad: how eagerly the turn ends (low, medium, high, auto).
    #[serde(default)]
    pub eagerness: Eagerness,
}

/// How the VAD ends a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnDetectionKind {
    #[default]
    ServerVad,
    SemanticVad,
}

fn default_threshold() -> f32 {
    0.5
}
fn default_prefix_padding_ms() -> u64 {
    300
}
fn default_silence_duration_ms() -> u64 {
    500
}

impl Default for VadParams {
    fn default() -> Self {
        VadParams {
            threshold: default_threshold(),
            prefix_padding_ms: default_prefix_padding_ms(),
            silence_duration_ms: default_silence_duration_ms(),
            turn_detection: TurnDetectionKind::default(),
            eagerness: Eagerness::default(),
        }
    }
}

impl VadParams {
    /// Semantic VAD's eagerness, when it runs.
    pub fn semantic(&self) -> Option<Eagerness> {
        (self.turn_detection == TurnDetectionKind::SemanticVad).then_some(self.eagerness)
    }

    /// The silence that ends a turn when no score says otherwise.
    pub fn silence_ms(&self) -> u64 {
        match self.semantic() {
            Some(eagerness) => eagerness.fallback_ms(),
            None => self.silence_duration_ms,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.threshold > 0.0 && self.threshold < 1.0) {
            bail!("threshold must be between 0 and 1, got {}", self.threshold);
        }
        if self.silence_duration_ms > 10_000 {
            bail!(
                "silence_duration_ms {} is over 10 s",
                self.silence_duration_ms
            );
        }
        Ok(())
    }
}

/// Per-session model state: moved to the blocking pool for each batch.
struct VadCore {
    model: Arc<SileroModel>,
    state: [f32; STATE],
    /// The previous chunk's last samples, then the current chunk.
    window: Vec<f32>,
}

impl VadCore {
    /// Probabilities of each full chunk of `samples` (a multiple of CHUNK).
    fn probabilities(&mut self, samples: &[f32]) -> Result<Vec<f32>> {
        samples
            .chunks_exact(CHUNK)
            .map(|chunk| {
                self.window.truncate(CONTEXT);
                self.window.extend_from_slice(chunk);
                let p = self.model.infer(&self.window, &mut self.state)?;
                self.window.drain(..CHUNK);
                Ok(p)
            })
            .collect()
    }
}

/// Speech segmentation with server_vad semantics and Silero's hysteresis:
/// speech starts at `threshold`, and ends after `silence_duration_ms` below
/// `threshold - 0.15`.
pub struct VadActor {
    params: VadParams,
    latency: Arc<Latency>,
    core: Option<VadCore>,
    /// Samples waiting for a full chunk.
    pending: Vec<f32>,
    /// Samples already run through the model.
    consumed: u64,
    speaking: bool,
    /// Turn detection is off: the client commits turns itself.
    disabled: bool,
    /// Sample where the current run of silence began, while speaking.
    silence_from: Option<u64>,
    /// `SpeechPaused` was raised for the current run of silence.
    paused: bool,
    /// semantic_vad: the window an end-of-turn score set for the current
    /// run of silence (ms after the end of speech).
    scored_window_ms: Option<u64>,
    segments: u64,
}

/// Silence after which the VAD raises `SpeechPaused`, so the recognizer can
/// start the final early (when `silence_duration_ms` leaves room for it).
pub const PAUSE_HINT_MS: u64 = 150;

/// The same under semantic VAD, whose windows can close 150-200 ms after
/// speech: the final decode (about 150-250 ms on two cores), which the
/// pause is scored on, starts at the first VAD step of silence. A pause the
/// user speaks through costs little: its decode serves as the next partial.
/// (`duplex run` of the ten clips through VAD -> whisper -> end_of_turn,
/// two alternating runs each way, with the models on huge pages at the
/// time: median commit 352 and 352 ms after the end of speech at 32 ms, 416
/// and 384 at 64. `tests/turn_taking.rs` at 32 ms: median 416 ms, no
/// mid-sentence pause taken for the end of the turn.)
pub const SEMANTIC_PAUSE_HINT_MS: u64 = 32;

impl VadActor {
    pub fn new(
        model: Arc<SileroModel>,
        params: VadParams,
        latency: Arc<Latency>,
    ) -> Result<VadActor> {
        params.validate()?;
        Ok(VadActor {
            params,
            latency,
            core: Some(VadCore {
                model,
                state: [0.0; STATE],
                window: vec![0.0; CONTEXT],
            }),
            pending: Vec::new(),
            consumed: 0,
            speaking: false,
            disabled: false,
            silence_from: None,
            paused: false,
            scored_window_ms: None,
            segments: 0,
        })
    }

    async fn run_chunks(&mut self, ctx: &Ctx) -> Result<()> {
        let full = self.pending.len() / CHUNK * CHUNK;
        if full == 0 {
            return Ok(());
        }
        let batch: Vec<f32> = self.pending.drain(..full).collect();
        let mut core = self
            .core
            .take()
            .context("VAD state lost after an earlier failure")?;
        let (core, probs) = tokio::task::spawn_blocking(move || {
            let probs = core.probabilities(&batch);
            (core, probs)
        })
        .await
        .context("VAD inference task failed")?;
        self.core = Some(core);
        for p in probs? {
            let start = self.consumed;
            self.consumed += CHUNK as u64;
            self.on_probability(p, start, ctx);
        }
        Ok(())
    }

    fn on_probability(&mut self, p: f32, chunk_start: u64, ctx: &Ctx) {
        let chunk_end = chunk_start + CHUNK as u64;
        if !self.speaking {
            if p >= self.params.threshold {
                self.speaking = true;
                self.silence_from = None;
                self.segments += 1;
                let audio_start_ms = ms(chunk_start).saturating_sub(self.params.prefix_padding_ms);
                ctx.events().emit(
                    "input_audio_buffer.speech_started",
                    ms(chunk_start),
                    json!({"audio_start_ms": audio_start_ms, "item_id": self.item_id()}),
                );
                ctx.raise(
                    ms(chunk_start),
                    SystemKind::SpeechStarted {
                        item_id: self.item_id(),
                        audio_start_ms,
                        wants_scores: self.params.semantic().is_some(),
                    },
                );
            }
            return;
        }
        if p >= self.params.threshold {
            if self.paused
                && let Some(from) = self.silence_from
            {
                ctx.raise(
                    ms(chunk_start),
                    SystemKind::SpeechResumed {
                        item_id: self.item_id(),
                        speech_end_ms: ms(from),
                    },
                );
            }
            self.silence_from = None;
            self.paused = false;
            self.scored_window_ms = None;
        } else if p < self.params.threshold - 0.15 {
            let from = *self.silence_from.get_or_insert(chunk_start);
            let silent_ms = ms(chunk_end - from);
            if silent_ms >= self.window_ms() {
                self.stop(ms(from), ms(chunk_end), ctx);
            } else if silent_ms >= self.pause_hint_ms() && !self.paused {
                self.paused = true;
                ctx.raise(
                    ms(chunk_end),
                    SystemKind::SpeechPaused {
                        item_id: self.item_id(),
                        audio_end_ms: ms(chunk_end),
                        speech_end_ms: ms(from),
                        wants_score: self.params.semantic().is_some(),
                    },
                );
            }
        }
    }

    /// The silence after which `SpeechPaused` is raised.
    fn pause_hint_ms(&self) -> u64 {
        match self.params.semantic() {
            Some(_) => SEMANTIC_PAUSE_HINT_MS,
            None => PAUSE_HINT_MS,
        }
    }

    /// The silence that ends the current turn.
    fn window_ms(&self) -> u64 {
        self.scored_window_ms
            .unwrap_or_else(|| self.params.silence_ms())
    }

    /// semantic_vad: a pause was scored; sets its window, and ends the turn
    /// at once if the silence already lasts that long.
    fn on_score(
        &mut self,
        item_id: &str,
        speech_end_ms: u64,
        score: f32,
        text: &str,
        scoring_ms: u64,
        ctx: &Ctx,
    ) {
        let Some(eagerness) = self.params.semantic() else {
            return;
        };
        let pause = self.silence_from.map(ms);
        if !self.speaking || item_id != self.item_id() || pause != Some(speech_end_ms) {
            return; // the user spoke on: the score is stale
        }
        let window_ms = eagerness.window_ms(score);
        self.scored_window_ms = Some(window_ms);
        let now = ms(self.consumed);
        ctx.events().emit(
            "duplex.turn.end_of_turn",
            now,
            json!({
                "item_id": item_id,
                "speech_end_ms": speech_end_ms,
                "score": score,
                "window_ms": window_ms,
                "eagerness": eagerness.as_str(),
                "text": text,
                "scoring_ms": scoring_ms,
            }),
        );
        if now.saturating_sub(speech_end_ms) >= window_ms {
            self.stop(speech_end_ms, now, ctx);
        }
    }

    fn stop(&mut self, speech_end_ms: u64, audio_end_ms: u64, ctx: &Ctx) {
        self.speaking = false;
        self.silence_from = None;
        self.paused = false;
        self.scored_window_ms = None;
        let silence = std::time::Duration::from_millis(audio_end_ms - speech_end_ms);
        self.latency.start(&self.item_id(), silence);
        ctx.events().emit(
            "input_audio_buffer.speech_stopped",
            audio_end_ms,
            json!({
                "audio_end_ms": audio_end_ms,
                "speech_end_ms": speech_end_ms,
                "item_id": self.item_id(),
            }),
        );
        ctx.events().emit(
            "input_audio_buffer.committed",
            audio_end_ms,
            json!({"previous_item_id": null, "item_id": self.item_id()}),
        );
        ctx.raise(
            audio_end_ms,
            SystemKind::SpeechStopped {
                item_id: self.item_id(),
                audio_end_ms,
                speech_end_ms,
            },
        );
    }

    /// Applies a session.update's turn detection (`None`: turned off).
    fn configure(&mut self, turn: Option<&TurnDetection>, t_ms: u64, ctx: &Ctx) -> Result<()> {
        match turn {
            None => {
                if self.speaking {
                    self.stop(t_ms, t_ms, ctx);
                }
                self.disabled = true;
            }
            Some(turn) => {
                let params = VadParams {
                    threshold: turn.threshold,
                    prefix_padding_ms: turn.prefix_padding_ms,
                    silence_duration_ms: turn.silence_duration_ms,
                    turn_detection: match turn.semantic {
                        Some(_) => TurnDetectionKind::SemanticVad,
                        None => TurnDetectionKind::ServerVad,
                    },
                    eagerness: turn.semantic.unwrap_or_default(),
                };
                params.validate()?;
                self.params = params;
                if self.disabled {
                    // Start afresh: the audio that went by unexamined is gone.
                    self.disabled = false;
                    self.pending.clear();
                    self.consumed = samples_at(t_ms);
                }
            }
        }
        Ok(())
    }

    fn item_id(&self) -> String {
        format!("item_{:04}", self.segments)
    }
}

fn ms(samples: u64) -> u64 {
    samples * 1000 / VAD_RATE as u64
}

fn samples_at(ms: u64) -> u64 {
    ms * VAD_RATE as u64 / 1000
}

#[async_trait]
impl Actor for VadActor {
    async fn on_data(&mut self, frame: DataFrame, ctx: &Ctx) -> Result<()> {
        if let Payload::Control(control) = &frame.payload
            && let Control::Configure(settings) = control.as_ref()
            && let Some(turn_detection) = &settings.turn_detection
        {
            self.configure(turn_detection.as_ref(), frame.t_ms, ctx)?;
        }
        if self.disabled {
            ctx.send(frame).await;
            return Ok(());
        }
        if let Payload::Audio(chunk) = &frame.payload {
            if chunk.sample_rate != VAD_RATE {
                bail!(
                    "silero_vad needs {VAD_RATE} Hz audio but got {} Hz: set sample_rate = {VAD_RATE} on the input node",
                    chunk.sample_rate
                );
            }
            self.pending.extend_from_slice(&chunk.samples);
            // The audio goes on once it is classified: a pause reaches the
            // recognizer before the silence that shows it, so no partial
            // pass starts on that silence only to be stopped at the pause
            // (whisper.cpp stops after its encoder: up to ~100 ms lost).
            let classified = self.run_chunks(ctx).await;
            ctx.send(frame).await;
            classified?;
        } else {
            ctx.send(frame).await;
        }
        Ok(())
    }

    async fn on_system(&mut self, frame: &SystemFrame, ctx: &Ctx) -> Result<()> {
        if let SystemKind::EndOfTurnScore {
            item_id,
            speech_end_ms,
            score,
            text,
            scoring_ms,
            ..
        } = &frame.kind
        {
            self.on_score(item_id, *speech_end_ms, *score, text, *scoring_ms, ctx);
        }
        Ok(())
    }

    async fn on_end(&mut self, ctx: &Ctx) -> Result<()> {
        let tail = self.pending.len();
        if tail > 0 {
            self.pending.resize(CHUNK, 0.0);
            self.run_chunks(ctx).await?;
            self.consumed -= (CHUNK - tail) as u64;
        }
        if self.speaking {
            let end = ms(self.consumed);
            let speech_end = self.silence_from.map(ms).unwrap_or(end);
            self.stop(speech_end, end, ctx);
        }
        Ok(())
    }
}
