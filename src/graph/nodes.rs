//! The registry of node kinds: what a pipeline may name, each kind's
//! parameters (checked at load), and how each becomes an actor.
//!
//! Shared models live in [`Resources`], loaded once per process and handed to
//! every session's actors behind an `Arc`. What the stages of one session
//! share with each other (what the user has heard, the latency waterfall)
//! lives in [`SessionShared`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use serde::Deserialize;

use super::actor::{Actor, Ctx};
use super::frame::{AudioChunk, DataFrame, Payload};
use crate::asr::actor::AsrActor;
use crate::asr::conformer::encoder::AttContext;
use crate::asr::conformer::{ConformerAsr, ConformerModel};
use crate::asr::whisper::{DecodeOptions, WhisperModel, WhisperSession};
use crate::asr::{Redecode, UtteranceRecognizer};
use crate::audio::StreamResampler;
use crate::audio::vad::{SileroModel, VadActor, VadParams};
use crate::avatar::actor::{AvatarActor, AvatarParams};
use crate::latency::Latency;
use crate::llm::local::LocalModel;
use crate::llm::remote::{RemoteLlm, RemoteOptions};
use crate::llm::{Llm, LlmConfig};
use crate::models::ModelStore;
use crate::orchestrator::controller::{Controller, ControllerParams};
use crate::orchestrator::embed::Embedder;
use crate::orchestrator::heard::Heard;
use crate::orchestrator::memory::{Memory, MemoryStore};
use crate::tts::actor::{TtsActor, TtsParams};
use crate::tts::playout::{OutputActor, OutputParams};
use crate::tts::{PiperVoice, Synthesizer};
use crate::turn::actor::TurnActor;
use crate::turn::end_of_turn::EndOfTurnScorer;
use crate::vision::actor::{VisionActor, VisionParams};
use crate::vision::efficientnet::EfficientNetLite0;

/// A node of a pipeline: its kind (the `kind` key) and parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NodeKind {
    /// Where session audio enters; resamples it to the pipeline's rate and
    /// stamps the session clock.
    Input(InputParams),
    /// Silero VAD v6 with the Realtime API's server_vad parameters.
    SileroVad(VadParams),
    /// Streaming Whisper (tiny.en by default): live partials and finals.
    Whisper(WhisperParams),
    /// The cache-aware streaming Conformer from a user's NeMo `.nemo`.
    Conformer(ConformerParams),
    /// The orchestrator around the LLM: routing, memory, barge-in, clauses.
    Controller(ControllerParams),
    /// Piper text-to-speech, clause by clause.
    Tts(TtsParams),
    /// Paced playout to the client, playback position, response completion.
    Output(OutputParams),
    /// Avatar video frames lip-synced to the released speech.
    Avatar(AvatarParams),
    /// Semantic turn detection: scores each pause of the user with the
    /// local LLM for semantic VAD (between `asr` and the controller).
    EndOfTurn(EndOfTurnParams),
    /// Camera frames: sampling, EfficientNet-Lite0 with token pruning, and
    /// the vision expert's scene for the controller.
    Vision(VisionParams),
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndOfTurnParams {}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhisperParams {
    /// Re-decode the growing utterance this often (ms of audio).
    #[serde(default = "default_partial_interval_ms")]
    pub partial_interval_ms: u64,
    /// CPU threads per decode.
    #[serde(default = "default_asr_threads")]
    pub threads: usize,
    /// Beam width for finals (greedy when absent: faster).
    #[serde(default)]
    pub final_beam_size: Option<usize>,
    /// A ggml Whisper model file to use instead of the installed tiny.en.
    #[serde(default)]
    pub model: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConformerParams {
    /// A NeMo cache-aware streaming FastConformer checkpoint (`.nemo`)
    /// with a CTC head.
    pub model: PathBuf,
    /// Look-ahead in encoder frames of 80 ms (e.g. 0, 1, 6 or 13): picks
    /// the model's `att_context_size` with that right context.
    #[serde(default)]
    pub lookahead: Option<usize>,
    /// Or the `[left, right]` attention context itself.
    #[serde(default)]
    pub att_context_size: Option<[usize; 2]>,
    /// CPU threads per encoder pass.
    #[serde(default = "default_asr_threads")]
    pub threads: usize,
    /// Feed new audio to the encoder this often (ms of audio); chunks run
    /// as soon as they are complete.
    #[serde(default = "default_conformer_interval_ms")]
    pub partial_interval_ms: u64,
}

fn default_conformer_interval_ms() -> u64 {
    80
}

impl ConformerParams {
    fn context(&self, model: &ConformerModel) -> Result<AttContext> {
        match (self.lookahead, self.att_context_size) {
            (Some(_), Some(_)) => {
                anyhow::bail!("conformer: give lookahead or att_context_size, not both")
            }
            (None, Some(pair)) => {
                if !model.config.encoder.att_context_sizes.contains(&pair) {
                    anyhow::bail!(
                        "conformer: att_context_size {pair:?} is not one of the model's {:?}",
                        model.config.encoder.att_context_sizes
                    );
                }
                Ok(AttContext::new(pair))
            }
            (lookahead, None) => model.context(lookahead),
        }
    }
}

fn default_partial_interval_ms() -> u64 {
    300
}

fn default_asr_threads() -> usize {
    crate::asr::whisper::default_threads()
}

/// What the stages of one session share.
#[derive(Debug, Default)]
pub struct SessionShared {
    /// What the user has heard of the response being played.
    pub heard: Arc<Heard>,
    /// The latency waterfall of the turn in progress.
    pub latency: Arc<Latency>,
    /// The session's id (for memory and logs).
    pub session_id: String,
}

impl SessionShared {
    pub fn new(session_id: &str) -> Arc<SessionShared> {
        Arc::new(SessionShared {
            session_id: session_id.to_string(),
            ..SessionShared::default()
        })
    }
}

/// Models shared by every session of the process, each loaded on first use.
pub struct Resources {
    pub store: ModelStore,
    silero: OnceLock<Arc<SileroModel>>,
    whisper: OnceLock<Arc<WhisperModel>>,
    conformers: Mutex<HashMap<PathBuf, Arc<ConformerModel>>>,
    local_llm: OnceLock<LocalModel>,
    voice: OnceLock<Arc<PiperVoice>>,
    embedder: OnceLock<Arc<Embedder>>,
    vision: OnceLock<Arc<EfficientNetLite0>>,
}

/// Loads a model once, even when sessions race for it.
fn once<T: Clone>(cell: &OnceLock<T>, load: impl FnOnce() -> Result<T>) -> Result<T> {
    if let Some(model) = cell.get() {
        return Ok(model.clone());
    }
    let model = load()?;
    // The new weights are resident now: move them into huge pages.
    crate::huge_pages::collapse_resident_memory();
    Ok(cell.get_or_init(|| model).clone())
}

impl Resources {
    pub fn new(store: ModelStore) -> Arc<Resources> {
        Arc::new(Resources {
            store,
            silero: OnceLock::new(),
            whisper: OnceLock::new(),
            conformers: Mutex::new(HashMap::new()),
            local_llm: OnceLock::new(),
            voice: OnceLock::new(),
            embedder: OnceLock::new(),
            vision: OnceLock::new(),
        })
    }

    pub fn silero(&self) -> Result<Arc<SileroModel>> {
        once(&self.silero, || {
            Ok(Arc::new(SileroModel::load(&self.store)?))
        })
    }

    pub fn whisper(&self) -> Result<Arc<WhisperModel>> {
        once(&self.whisper, || {
            Ok(Arc::new(WhisperModel::load(&self.store)?))
        })
    }

    /// A `.nemo` Conformer, loaded once per path.
    pub fn conformer(&self, path: &std::path::Path) -> Result<Arc<ConformerModel>> {
        let mut models = self
            .conformers
            .lock()
            .map_err(|_| anyhow::anyhow!("the Conformer model cache is poisoned"))?;
        if let Some(model) = models.get(path) {
            return Ok(model.clone());
        }
        let model = Arc::new(crate::asr::conformer::nemo::load(path)?);
        crate::huge_pages::collapse_resident_memory();
        models.insert(path.to_path_buf(), model.clone());
        Ok(model)
    }

    pub fn local_llm(&self) -> Result<LocalModel> {
        once(&self.local_llm, || LocalModel::load(&self.store))
    }

    pub fn voice(&self) -> Result<Arc<PiperVoice>> {
        once(&self.voice, || Ok(Arc::new(PiperVoice::load(&self.store)?)))
    }

    pub fn embedder(&self) -> Result<Arc<Embedder>> {
        once(&self.embedder, || {
            Ok(Arc::new(Embedder::load(&self.store)?))
        })
    }

    pub fn vision(&self) -> Result<Arc<EfficientNetLite0>> {
        once(&self.vision, || {
            Ok(Arc::new(EfficientNetLite0::from_store(&self.store)?))
        })
    }
}

impl NodeKind {
    /// Loads the models this node needs, so the first session does not pay
    /// for it and a missing model fails at start-up.
    pub fn prepare(&self, resources: &Resources) -> Result<()> {
        match self {
            NodeKind::SileroVad(_) => resources.silero().map(drop),
            NodeKind::Whisper(p) => match &p.model {
                Some(path) => WhisperModel::load_file(path).map(drop),
                None => resources.whisper().map(drop),
            },
            NodeKind::Conformer(p) => {
                let model = resources.conformer(&p.model)?;
                p.context(&model).map(drop)
            }
            NodeKind::Controller(p) => {
                if matches!(p.llm, LlmConfig::Local { model: None }) {
                    resources.local_llm()?;
                }
                if p.memory_db.is_some() {
                    resources.embedder()?;
                }
                Ok(())
            }
            NodeKind::Tts(_) => resources.voice().map(drop),
            NodeKind::EndOfTurn(_) => resources.local_llm().map(drop),
            NodeKind::Vision(p) => {
                p.validate()?;
                resources.vision().map(drop)
            }
            NodeKind::Input(_)
            | NodeKind::Output(_)
            | NodeKind::Avatar(_)
            | NodeKind::Passthrough(_) => Ok(()),
        }
    }

    /// A fresh actor with this node's per-session state.
    pub fn build(&self, resources: &Resources, shared: &SessionShared) -> Result<Box<dyn Actor>> {
        Ok(match self {
            NodeKind::Input(p) => Box::new(InputActor::new(p.sample_rate)),
            NodeKind::SileroVad(p) => Box::new(VadActor::new(
                resources.silero()?,
                p.clone(),
                shared.latency.clone(),
            )?),
            NodeKind::Whisper(p) => {
                let model = match &p.model {
                    Some(path) => Arc::new(WhisperModel::load_file(path)?),
                    None => resources.whisper()?,
                };
                let recognizer = WhisperRecognizer {
                    session: model.session()?,
                    threads: p.threads.max(1),
                    final_beam: p.final_beam_size,
                };
                Box::new(AsrActor::new(
                    Box::new(Redecode::new(recognizer)),
                    p.partial_interval_ms,
                )?)
            }
            NodeKind::Conformer(p) => {
                let model = resources.conformer(&p.model)?;
                let ctx = p.context(&model)?;
                let engine = ConformerAsr::new(model, ctx)?
                    .with_pool(crate::asr::conformer::thread_pool(p.threads)?);
                Box::new(AsrActor::new(Box::new(engine), p.partial_interval_ms)?)
            }
            NodeKind::Controller(p) => {
                let llm = build_llm(&p.llm, resources)?;
                let memory = match &p.memory_db {
                    Some(path) => {
                        let store = MemoryStore::open(path)?;
                        Some(Memory::new(
                            store,
                            resources.embedder()?,
                            &p.user,
                            &shared.session_id,
                        )?)
                    }
                    None => None,
                };
                Box::new(Controller::new(
                    p.clone(),
                    llm,
                    memory,
                    shared.heard.clone(),
                    shared.latency.clone(),
                )?)
            }
            NodeKind::Tts(p) => Box::new(TtsActor::new(
                Synthesizer::new(resources.voice()?)?,
                p,
                shared.latency.clone(),
            )?),
            NodeKind::Output(p) => Box::new(OutputActor::new(
                p,
                shared.heard.clone(),
                shared.latency.clone(),
            )?),
            NodeKind::Avatar(p) => Box::new(AvatarActor::new(p.clone())?),
            NodeKind::Passthrough(_) => Box::new(Passthrough),
            NodeKind::EndOfTurn(_) => Box::new(TurnActor::new(
                EndOfTurnScorer::new(&resources.local_llm()?)?,
                shared.heard.clone(),
            )),
            NodeKind::Vision(p) => Box::new(VisionActor::new(resources.vision()?, p)?),
        })
    }
}

fn build_llm(config: &LlmConfig, resources: &Resources) -> Result<Box<dyn Llm>> {
    Ok(match config {
        LlmConfig::Local { model: None } => Box::new(resources.local_llm()?.session()),
        LlmConfig::Local { model: Some(model) } => {
            let model = LocalModel::load_gguf(model, &Default::default())
                .with_context(|| format!("loading {}", model.display()))?;
            Box::new(model.session())
        }
        LlmConfig::Remote {
            url,
            model,
            api_key_env,
            timeout_s,
        } => {
            let mut options = RemoteOptions::new(url.clone(), model.clone());
            if let Some(var) = api_key_env {
                let key = std::env::var(var).with_context(|| {
                    format!("the LLM's api_key_env names ${var}, which is not set")
                })?;
                options.api_key = Some(key);
            }
            options.read_timeout = Duration::from_secs(*timeout_s);
            Box::new(RemoteLlm::new(options)?)
        }
    })
}

/// Whisper as an utterance recognizer: fast greedy partials, finals as
/// configured; both give up at once when the abort flag is raised.
struct WhisperRecognizer {
    session: WhisperSession,
    threads: usize,
    final_beam: Option<usize>,
}

impl UtteranceRecognizer for WhisperRecognizer {
    fn transcribe_partial(&mut self, audio: &[f32], abort: &Arc<AtomicBool>) -> Result<String> {
        self.session
            .transcribe_partial(audio, self.threads, Some(abort.clone()))
    }

    fn transcribe_final(
        &mut self,
        audio: &[f32],
        abort: &Arc<AtomicBool>,
        guess: &mut dyn FnMut(&str),
    ) -> Result<String> {
        let options = DecodeOptions {
            threads: self.threads,
            beam: self.final_beam,
            abort: Some(abort.clone()),
            ..DecodeOptions::default()
        };
        self.session.transcribe_final(audio, &options, guess)
    }

    fn latest_guess(&self) -> Option<String> {
        Some(self.session.last_guess().to_string())
    }

    fn guess_is_final(&self) -> bool {
        // A beam search final is decoded differently from any partial.
        self.final_beam.is_none() && self.session.last_guess_is_final()
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
