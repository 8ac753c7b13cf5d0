//! Sentence embeddings: all-MiniLM-L6-v2 in candle, as sentence-transformers
//! computes them.
//!
//! [`Embedder`] loads the `minilm` model package (BERT, 6 layers, 384-d, from
//! `model.safetensors`, `config.json`, `tokenizer.json` and
//! `1_Pooling/config.json`) and turns texts into L2-normalised 384-d vectors:
//! WordPiece tokens (lower-cased, `[CLS] ... [SEP]`, truncated to
//! [`MAX_TOKENS`] = 256 tokens like sentence-transformers' `max_seq_length`),
//! the BERT encoder, mean pooling over the real (non-padding) tokens, then
//! division by the L2 norm. The dot product of two vectors is therefore their
//! cosine similarity ([`cosine`]).
//!
//! `embed` takes a batch: texts are sorted by token count and run in chunks of
//! at most [`MAX_BATCH`] with padding to the longest text in the chunk and an
//! attention mask, so padding changes nothing but float rounding (about 1e-6).
//! The embedder holds no mutable state: it is `Send + Sync` and one instance
//! is meant to be shared by all sessions behind an `Arc`.

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::models::{ModelStore, corrupt_model_error, files, ids};

/// Longest input in tokens (with `[CLS]` and `[SEP]`); longer texts are cut,
/// as sentence-transformers does for all-MiniLM-L6-v2 (`max_seq_length`).
pub const MAX_TOKENS: usize = 256;

/// Most texts run through the encoder in one forward pass.
pub const MAX_BATCH: usize = 32;

/// The model's name as the memory records it next to each vector.
pub const MODEL_NAME: &str = "all-MiniLM-L6-v2";

/// `1_Pooling/config.json` of a sentence-transformers model.
#[derive(Debug, Deserialize)]
struct PoolingConfig {
    word_embedding_dimension: usize,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

/// all-MiniLM-L6-v2 sentence embedder (CPU, f32). See the module docs.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    dim: usize,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("model", &MODEL_NAME)
            .field("dim", &self.dim)
            .finish()
    }
}

/// Reads and parses one JSON file of the `minilm` package; a file that does
/// not parse is reported as corrupt (with the fix).
fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| corrupt_model_error(ids::MINILM, path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| corrupt_model_error(ids::MINILM, path, e))
}

impl Embedder {
    /// Loads all-MiniLM-L6-v2 from the model cache. A missing file is an
    /// error naming `duplex models install`; a file that fails to load goes
    /// through [`corrupt_model_error`].
    pub fn load(store: &ModelStore) -> Result<Embedder> {
        let config_path = store.file(ids::MINILM, files::MINILM_CONFIG)?;
        let pooling_path = store.file(ids::MINILM, files::MINILM_POOLING)?;
        let tokenizer_path = store.file(ids::MINILM, files::MINILM_TOKENIZER)?;
        let weights_path = store.file(ids::MINILM, files::MINILM_SAFETENSORS)?;

        let config: Config = read_json(&config_path)?;
        let pooling: PoolingConfig = read_json(&pooling_path)?;
        if !pooling.pooling_mode_mean_tokens
            || pooling.pooling_mode_cls_token
            || pooling.pooling_mode_max_tokens
            || pooling.pooling_mode_mean_sqrt_len_tokens
        {
            return Err(corrupt_model_error(
                ids::MINILM,
                &pooling_path,
                "only plain mean pooling is supported (pooling_mode_mean_tokens alone)",
            ));
        }
        if pooling.word_embedding_dimension != config.hidden_size {
            return Err(corrupt_model_error(
                ids::MINILM,
                &pooling_path,
                format!(
                    "word_embedding_dimension {} differs from the model's hidden_size {}",
                    pooling.word_embedding_dimension, config.hidden_size
                ),
            ));
        }
        if config.max_position_embeddings < MAX_TOKENS {
            return Err(corrupt_model_error(
                ids::MINILM,
                &config_path,
                format!(
                    "max_position_embeddings {} < {MAX_TOKENS}",
                    config.max_position_embeddings
                ),
            ));
        }

        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| corrupt_model_error(ids::MINILM, &tokenizer_path, e))?;
        // The packaged tokenizer.json pads and truncates to a fixed 128;
        // we truncate to 256 (sentence-transformers' setting) and pad per
        // chunk ourselves.
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: MAX_TOKENS,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| corrupt_model_error(ids::MINILM, &tokenizer_path, e))?;
        tokenizer.with_padding(None);

        let device = Device::Cpu;
        let weights = std::fs::read(&weights_path)
            .map_err(|e| corrupt_model_error(ids::MINILM, &weights_path, e))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)
            .map_err(|e| corrupt_model_error(ids::MINILM, &weights_path, e))?;
        let model = BertModel::load(vb, &config)
            .map_err(|e| corrupt_model_error(ids::MINILM, &weights_path, e))?;
        tracing::debug!(
            dim = config.hidden_size,
            "loaded {MODEL_NAME} sentence embedder"
        );
        Ok(Embedder {
            model,
            tokenizer,
            device,
            dim: config.hidden_size,
        })
    }

    /// Vector length (384).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Embeds one text.
    pub fn embed_one(&self, text: &str) -> Result<Vec<f32>> {
        self.embed(&[text])?
            .pop()
            .context("the embedder returned no vector")
    }

    /// Embeds texts: one L2-normalised vector of [`Embedder::dim`] floats per
    /// text, in the order given. An empty text gets the embedding of
    /// `[CLS] [SEP]` (still unit length).
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| anyhow::anyhow!("tokenizing for {MODEL_NAME}: {e}"))?;
        // Similar lengths together: less padding per chunk.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(MAX_BATCH) {
            let seqs: Vec<&[u32]> = chunk.iter().map(|&i| encodings[i].get_ids()).collect();
            let vectors = self
                .forward(&seqs)
                .with_context(|| format!("running {MODEL_NAME}"))?;
            for (&i, v) in chunk.iter().zip(vectors) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// One padded forward pass plus mean pooling and normalisation.
    fn forward(&self, seqs: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        let batch = seqs.len();
        let len = seqs.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0u32; batch * len];
        let mut mask = vec![0u32; batch * len];
        for (b, s) in seqs.iter().enumerate() {
            ids[b * len..b * len + s.len()].copy_from_slice(s);
            mask[b * len..b * len + s.len()].fill(1);
        }
        let ids = Tensor::from_vec(ids, (batch, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (batch, len), &self.device)?;
        let type_ids = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &type_ids, Some(&mask))?; // (B, L, D)
        let vectors = mean_pool_normalize(&hidden, &mask)?;
        vectors.to_vec2::<f32>()
    }
}

/// Mean over the tokens whose mask is 1, then L2 normalisation (as
/// sentence-transformers' `Pooling` + `Normalize` modules: the token count is
/// clamped at 1e-9 and the norm at 1e-12). `hidden` is (B, L, D), `mask` (B, L).
pub(crate) fn mean_pool_normalize(hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (B, L, 1)
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (B, D)
    let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?; // (B, 1)
    let mean = summed.broadcast_div(&counts)?;
    let norms = mean
        .sqr()?
        .sum_keepdim(1)?
        .sqrt()?
        .clamp(1e-12f32, f32::MAX)?;
    mean.broadcast_div(&norms)
}

/// Cosine similarity of two vectors (their dot product over both norms; for
/// the embedder's unit vectors simply the dot product). Zero when either is
/// all zeros or the lengths differ.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0.0f32, 0.0f32, 0.0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedder_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Embedder>();
    }

    #[test]
    fn mean_pooling_ignores_padding_and_normalizes() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        // Two sequences of length 3, D = 2; the second has one padding token
        // with a huge value that must not count.
        let hidden = Tensor::from_vec(
            vec![
                1f32, 0., 3., 0., 2., 0., /**/ 0., 2., 0., 4., 100., 100.,
            ],
            (2, 3, 2),
            &dev,
        )?;
        let mask = Tensor::from_vec(vec![1u32, 1, 1, 1, 1, 0], (2, 3), &dev)?;
        let v = mean_pool_normalize(&hidden, &mask)?.to_vec2::<f32>()?;
        assert_eq!(v.len(), 2);
        assert!(
            (v[0][0] - 1.0).abs() < 1e-6 && v[0][1].abs() < 1e-6,
            "{v:?}"
        );
        assert!(
            v[1][0].abs() < 1e-6 && (v[1][1] - 1.0).abs() < 1e-6,
            "{v:?}"
        );
        Ok(())
    }

    #[test]
    fn cosine_basics() {
        assert!((cosine(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-6);
        assert!(cosine(&[1.0, 0.0], &[0.0, 3.0]).abs() < 1e-6);
        assert!((cosine(&[1.0, 1.0], &[-1.0, -1.0]) + 1.0).abs() < 1e-6);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        assert_eq!(cosine(&[1.0], &[1.0, 0.0]), 0.0);
    }
}
