//! The cache-aware streaming Conformer (NeMo's FastConformer with
//! `chunked_limited` attention, "Stateful Conformer with Cache-based
//! Inference for Streaming ASR") as a [`StreamingAsr`] backend.
//!
//! A [`ConformerModel`] (weights, front end, CTC head, tokenizer) is loaded
//! once and shared; each session's [`ConformerAsr`] keeps its own stream:
//! audio becomes mel frames as it arrives ([`features`]), complete frames
//! are subsampled, and every complete chunk of `right + 1` encoder frames
//! runs through the encoder once, with the caches of the chunks before it
//! ([`cache`]); nothing of the past is recomputed. The greedy CTC text of
//! every chunk so far is the partial; the final flushes the last partial
//! chunk with the end-of-utterance padding.
//!
//! Modules: [`config`] (model_config.yaml), [`features`] (log-mel),
//! [`encoder`] (subsampling and blocks, offline and streaming), [`cache`],
//! [`ctc`], [`tokenizer`], [`nemo`] (.nemo archives).

pub mod cache;
pub mod config;
pub mod ctc;
pub mod encoder;
pub mod features;
pub mod nemo;
pub mod tokenizer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use candle_core::Tensor;

use self::cache::EncoderCache;
use self::config::ModelConfig;
use self::ctc::CtcHead;
use self::encoder::{
    AttContext, Encoder, Weights, subsampled_len, subsampled_ready, subsampling_window,
};
use self::features::{MelFrontend, MelStream};
use self::tokenizer::Tokenizer;
use super::StreamingAsr;

/// A loaded model, shared by sessions.
pub struct ConformerModel {
    pub config: ModelConfig,
    pub encoder: Encoder,
    pub ctc: CtcHead,
    pub tokenizer: Tokenizer,
    pub frontend: MelFrontend,
}

impl ConformerModel {
    /// Builds the model from a config, NeMo-named weights and a tokenizer.
    pub fn new(
        config: ModelConfig,
        weights: &Weights,
        tokenizer: Tokenizer,
    ) -> Result<ConformerModel> {
        let encoder = Encoder::load(&config.encoder, weights).context("loading the encoder")?;
        let classes = weights
            .raw(&format!("{}.decoder_layers.0.weight", config.ctc_prefix))
            .map(|t| t.dims()[0])
            .with_context(|| {
                format!(
                    "the checkpoint has no {}.decoder_layers.0.weight",
                    config.ctc_prefix
                )
            })?;
        if classes != tokenizer.len() + 1 {
            bail!(
                "the CTC head has {classes} classes but the tokenizer {} pieces (+1 blank expected)",
                tokenizer.len()
            );
        }
        let ctc = CtcHead::load(weights, &config.ctc_prefix, config.encoder.d_model, classes)?;
        let fb = match weights.raw("preprocessor.featurizer.fb") {
            Some(t) => Some(
                t.flatten_all()?
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1::<f32>()?,
            ),
            None => None,
        };
        let window = match weights.raw("preprocessor.featurizer.window") {
            Some(t) => Some(
                t.flatten_all()?
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1::<f32>()?,
            ),
            None => None,
        };
        let frontend =
            MelFrontend::new(config.features.clone(), fb, window).context("the mel front end")?;
        Ok(ConformerModel {
            config,
            encoder,
            ctc,
            tokenizer,
            frontend,
        })
    }

    /// The attention context for a look-ahead in frames (`None`: the
    /// model's default, its first `att_context_size`).
    pub fn context(&self, lookahead: Option<usize>) -> Result<AttContext> {
        let enc = &self.config.encoder;
        let pair = match lookahead {
            Some(frames) => enc.context_for_lookahead(frames)?,
            None => enc.att_context_sizes[0],
        };
        Ok(AttContext::new(pair))
    }

    /// Offline reference: the whole utterance with the limited-context
    /// masks (`frames x d_model` encoder output).
    pub fn encode_offline(&self, audio: &[f32], ctx: AttContext) -> Result<Tensor> {
        let feats = self.frontend.offline(audio);
        let frames = feats.len() / self.frontend.n_mels();
        let x = self.encoder.subsample(&feats, frames)?;
        self.encoder.forward_offline(&x, ctx)
    }

    /// Greedy CTC text of encoder output.
    pub fn text(&self, best: &[u32]) -> String {
        self.tokenizer.decode(&ctc::collapse(best, self.ctc.blank))
    }
}

/// One utterance's streaming state. Cloning it is cheap apart from the
/// utterance's mel frames (the caches are shared tensors).
#[derive(Clone)]
pub struct Stream {
    mel: MelStream,
    /// Mel frames of the utterance so far, `frames x n_mels`.
    feats: Vec<f32>,
    /// Encoder input frames produced by the subsampling.
    subsampled: usize,
    /// Subsampled frames waiting for their chunk to complete.
    pending: Option<Tensor>,
    cache: EncoderCache,
    /// Best CTC class of every encoded frame.
    best: Vec<u32>,
}

impl Stream {
    pub fn new(model: &ConformerModel) -> Result<Stream> {
        let e = &model.config.encoder;
        Ok(Stream {
            mel: MelStream::new(&model.frontend),
            feats: Vec::new(),
            subsampled: 0,
            pending: None,
            cache: EncoderCache::new(e.n_layers, e.d_model, e.conv_kernel_size)?,
            best: Vec::new(),
        })
    }

    /// Encoder frames run so far.
    pub fn frames_encoded(&self) -> usize {
        self.cache.frames_done
    }

    /// Subsamples the feature frames up to `ready` encoder outputs.
    fn subsample_until(&mut self, model: &ConformerModel, ready: usize, last: bool) -> Result<()> {
        if ready <= self.subsampled {
            return Ok(());
        }
        let n_mels = model.frontend.n_mels();
        let (from, drop) = subsampling_window(self.subsampled);
        let frames = self.feats.len() / n_mels - from;
        let out = model
            .encoder
            .subsample(&self.feats[from * n_mels..], frames)
            .context("subsampling")?;
        let count = ready - self.subsampled;
        if !last && out.dims()[0] < drop + count {
            bail!("subsampling window too short");
        }
        let count = count.min(out.dims()[0] - drop);
        let new = out.narrow(0, drop, count)?;
        self.pending = Some(match self.pending.take() {
            Some(p) => Tensor::cat(&[&p, &new], 0)?,
            None => new,
        });
        self.subsampled += count;
        Ok(())
    }

    /// Runs the encoder on complete chunks (and, when `last`, the rest):
    /// returns the encoder output of each chunk run. Stops between chunks
    /// when `abort` is raised.
    fn run_chunks(
        &mut self,
        model: &ConformerModel,
        ctx: AttContext,
        last: bool,
        abort: Option<&AtomicBool>,
    ) -> Result<Vec<Tensor>> {
        let mut outputs = Vec::new();
        while let Some(pending) = self.pending.take() {
            let n = pending.dims()[0];
            let take = if n >= ctx.chunk() {
                ctx.chunk()
            } else if last && n > 0 {
                n
            } else {
                self.pending = Some(pending);
                break;
            };
            if abort.is_some_and(|a| a.load(Ordering::SeqCst)) {
                self.pending = Some(pending);
                break;
            }
            let chunk = pending.narrow(0, 0, take)?;
            let (out, cache) = model.encoder.forward_chunk(&chunk, ctx, &self.cache)?;
            self.cache = cache;
            self.best.extend(model.ctc.best(&out)?);
            outputs.push(out);
            if take < n {
                self.pending = Some(pending.narrow(0, take, n - take)?);
            }
        }
        Ok(outputs)
    }

    /// Adds audio; encodes every chunk now complete.
    pub fn push(
        &mut self,
        model: &ConformerModel,
        ctx: AttContext,
        audio: &[f32],
        abort: Option<&AtomicBool>,
    ) -> Result<Vec<Tensor>> {
        let new = self.mel.push(&model.frontend, audio);
        self.feats.extend(new);
        let frames = self.feats.len() / model.frontend.n_mels();
        let ready = subsampled_ready(&model.config.encoder, frames);
        self.subsample_until(model, ready, false)?;
        self.run_chunks(model, ctx, false, abort)
    }

    /// Ends the utterance: pads, subsamples and encodes the rest.
    pub fn finish(&mut self, model: &ConformerModel, ctx: AttContext) -> Result<Vec<Tensor>> {
        let new = self.mel.finish(&model.frontend);
        self.feats.extend(new);
        let frames = self.feats.len() / model.frontend.n_mels();
        let total = subsampled_len(&model.config.encoder, frames);
        self.subsample_until(model, total, true)?;
        self.run_chunks(model, ctx, true, None)
    }

    /// Greedy CTC text so far.
    pub fn text(&self, model: &ConformerModel) -> String {
        model.text(&self.best)
    }
}

/// One session's recognizer.
pub struct ConformerAsr {
    model: Arc<ConformerModel>,
    ctx: AttContext,
    stream: Stream,
    abort: Arc<AtomicBool>,
    /// Where the encoder's kernels run (`threads` workers).
    pool: Option<Arc<rayon::ThreadPool>>,
}

/// A thread pool of `threads` workers for encoder passes.
pub fn thread_pool(threads: usize) -> Result<Arc<rayon::ThreadPool>> {
    Ok(Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("conformer-{i}"))
            .build()
            .context("starting the Conformer thread pool")?,
    ))
}

impl ConformerAsr {
    /// A recognizer with the look-ahead of `ctx` (see
    /// [`ConformerModel::context`]), on candle's global pool.
    pub fn new(model: Arc<ConformerModel>, ctx: AttContext) -> Result<ConformerAsr> {
        Ok(ConformerAsr {
            stream: Stream::new(&model)?,
            model,
            ctx,
            abort: Arc::new(AtomicBool::new(false)),
            pool: None,
        })
    }

    /// Runs encoder passes on `pool` (its size bounds the threads a pass
    /// uses).
    pub fn with_pool(mut self, pool: Arc<rayon::ThreadPool>) -> ConformerAsr {
        self.pool = Some(pool);
        self
    }

    fn run<T: Send>(&mut self, f: impl FnOnce(&mut Self) -> T + Send) -> T {
        match self.pool.clone() {
            Some(pool) => pool.install(|| f(self)),
            None => f(self),
        }
    }

    /// Encoder frames run in the current utterance.
    pub fn frames_encoded(&self) -> usize {
        self.stream.frames_encoded()
    }
}

impl StreamingAsr for ConformerAsr {
    /// The words of every chunk so far except the last, which the next
    /// chunk may still extend (a piece without a word-start mark): what is
    /// returned only ever grows.
    fn partial(&mut self, new_audio: &[f32]) -> Result<String> {
        self.run(|me| {
            me.stream
                .push(&me.model, me.ctx, new_audio, Some(&me.abort))?;
            let text = me.stream.text(&me.model);
            Ok(match text.rsplit_once(' ') {
                Some((complete, _)) => complete.to_string(),
                None => String::new(),
            })
        })
    }

    fn finalize(&mut self, new_audio: &[f32]) -> Result<String> {
        let result = self.run(|me| {
            me.stream.push(&me.model, me.ctx, new_audio, None)?;
            me.stream.finish(&me.model, me.ctx)?;
            Ok(me.stream.text(&me.model))
        });
        self.reset();
        result
    }

    fn speculate(&mut self, new_audio: &[f32], _guess: &mut dyn FnMut(&str)) -> Result<String> {
        self.run(|me| {
            me.stream
                .push(&me.model, me.ctx, new_audio, Some(&me.abort))?;
            if me.abort.load(Ordering::SeqCst) {
                return Ok(me.stream.text(&me.model));
            }
            let mut ahead = me.stream.clone();
            ahead.finish(&me.model, me.ctx)?;
            Ok(ahead.text(&me.model))
        })
    }

    fn reset(&mut self) {
        match Stream::new(&self.model) {
            Ok(stream) => self.stream = stream,
            Err(e) => tracing::error!("conformer: resetting the stream failed: {e:#}"),
        }
    }

    fn abort_flag(&self) -> Arc<AtomicBool> {
        self.abort.clone()
    }
}

#[cfg(test)]
mod tests;
