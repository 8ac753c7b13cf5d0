//! `duplex bench conformer`: the cache-aware streaming Conformer's encoder
//! cost on one core, for a FastConformer-Large configuration (17 layers,
//! d_model 512, 8 heads, feed-forward x4, conv kernel 9, 80 mels; random
//! weights: timing does not depend on them), for each look-ahead.
//!
//! Per look-ahead, over the same audio: streaming with caches (every chunk
//! encoded once, the past never recomputed) against the offline buffered
//! approach measured in the same run (at every chunk, re-encode the whole
//! utterance so far, the way a non-streaming encoder gives partials). It
//! prints the median encoder time per chunk and the real-time factor of
//! each, and their ratio.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::asr::conformer::config::{EncoderConfig, FeatureConfig, ModelConfig};
use crate::asr::conformer::encoder::{Weights, parameter_shapes, random_weights};
use crate::asr::conformer::tokenizer::Tokenizer;
use crate::asr::conformer::{ConformerModel, Stream, thread_pool};

use super::median;

/// Buffered passes timed per look-ahead.
const MAX_PASSES: usize = 12;

/// Tokens of the benchmark model's CTC head (a NeMo-sized vocabulary).
const VOCAB: usize = 1024;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Seconds of audio per pass.
    pub seconds: f64,
    /// Look-aheads (encoder frames) to measure.
    pub lookaheads: Vec<usize>,
    /// Threads (1: one core).
    pub threads: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            seconds: 10.0,
            lookaheads: vec![0, 1, 6, 13],
            threads: 1,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LookaheadResult {
    pub lookahead: usize,
    pub chunk_ms: f64,
    pub chunks: usize,
    /// Median encoder time per chunk, streaming with caches (ms).
    pub cached_ms: f64,
    /// Total cached encoder time over audio time.
    pub cached_rtf: f64,
    /// Median time of one buffered re-encode (ms).
    pub buffered_ms: f64,
    pub buffered_rtf: f64,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub parameters: usize,
    pub seconds: f64,
    pub threads: usize,
    pub results: Vec<LookaheadResult>,
}

/// `n` samples at 16 kHz of a chirp rising from 150 Hz by `sweep` Hz a
/// second, with a little noise (`seed`): speech-like energy in every band.
pub fn chirp(n: usize, sweep: f32, seed: u32) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|i| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
            let t = i as f32 / 16_000.0;
            0.3 * (2.0 * std::f32::consts::PI * (150.0 + sweep * t) * t).sin() + 0.05 * noise
        })
        .collect()
}

pub fn run(options: &BenchOptions) -> Result<Report> {
    let encoder = EncoderConfig::large();
    let config = ModelConfig {
        features: FeatureConfig::nemo_default(encoder.feat_in),
        encoder,
        ctc_prefix: "decoder".into(),
        vocabulary: None,
    };
    let parameters = parameter_shapes(&config.encoder, "decoder", VOCAB)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    let weights = random_weights(&config.encoder, "decoder", VOCAB, 1)?;
    let pieces: Vec<String> = (0..VOCAB).map(|i| format!("▁t{i}")).collect();
    let piece_refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
    let tokenizer = Tokenizer::from_sentencepiece(&Tokenizer::sentencepiece_bytes(&piece_refs))?;
    let model = Arc::new(ConformerModel::new(
        config,
        &Weights::new(weights),
        tokenizer,
    )?);
    drop(piece_refs);
    let pool = thread_pool(options.threads)?;
    let audio = chirp((options.seconds * 16_000.0) as usize, 30.0, 7);
    let mut results = Vec::new();
    for &lookahead in &options.lookaheads {
        let ctx = model
            .context(Some(lookahead))
            .with_context(|| format!("look-ahead {lookahead}"))?;
        let chunk_samples = ctx.chunk() * 8 * 160;
        let result = pool.install(|| -> Result<LookaheadResult> {
            // Streaming with caches: audio arrives a chunk at a time.
            let mut stream = Stream::new(&model)?;
            let mut per_chunk = Vec::new();
            let mut cached_total = 0.0;
            let mut chunks = 0;
            for piece in audio.chunks(chunk_samples) {
                let start = Instant::now();
                let outs = stream.push(&model, ctx, piece, None)?;
                let ms = start.elapsed().as_secs_f64() * 1e3;
                cached_total += ms;
                if !outs.is_empty() {
                    per_chunk.push(ms / outs.len() as f64);
                    chunks += outs.len();
                }
            }
            let start = Instant::now();
            chunks += stream.finish(&model, ctx)?.len();
            cached_total += start.elapsed().as_secs_f64() * 1e3;

            // Buffered: re-encode everything so far at every chunk. Its
            // cost grows with the square of the utterance, so at most
            // MAX_PASSES passes, evenly spread over the chunk boundaries,
            // are timed and the total is their mean times the boundaries.
            let boundaries = audio.len().div_ceil(chunk_samples);
            let stride = boundaries.div_ceil(MAX_PASSES).max(1);
            let mut per_pass = Vec::new();
            for i in (1..=boundaries).rev().step_by(stride) {
                let end = (i * chunk_samples).min(audio.len());
                let start = Instant::now();
                let out = model.encode_offline(&audio[..end], ctx)?;
                model.ctc.best(&out)?;
                per_pass.push(start.elapsed().as_secs_f64() * 1e3);
            }
            let measured = per_pass.len();
            let buffered_total =
                per_pass.iter().sum::<f64>() / measured.max(1) as f64 * boundaries as f64;
            let audio_ms = options.seconds * 1e3;
            Ok(LookaheadResult {
                lookahead,
                chunk_ms: ctx.chunk() as f64 * 80.0,
                chunks,
                cached_ms: median(&mut per_chunk),
                cached_rtf: cached_total / audio_ms,
                buffered_ms: median(&mut per_pass),
                buffered_rtf: buffered_total / audio_ms,
            })
        })?;
        eprintln!(
            "look-ahead {lookahead}: cached {:.1} ms/chunk, buffered {:.1} ms/pass",
            result.cached_ms, result.buffered_ms
        );
        results.push(result);
    }
    Ok(Report {
        parameters,
        seconds: options.seconds,
        threads: options.threads,
        results,
    })
}

pub fn print(report: &Report) {
    println!(
        "Cache-aware streaming Conformer, FastConformer-Large configuration: {:.1} M parameters (encoder + 1024-token CTC head), random weights",
        report.parameters as f64 / 1e6
    );
    println!(
        "{:.1} s of audio, {} thread(s); cached = each chunk encoded once with caches, buffered = whole utterance re-encoded at every chunk",
        report.seconds, report.threads
    );
    println!(
        "(buffered RTF: mean of up to {MAX_PASSES} timed passes spread over the utterance x the number of chunk boundaries)"
    );
    println!(
        "{:>9} {:>9} {:>7} {:>16} {:>11} {:>18} {:>13} {:>9}",
        "lookahead",
        "chunk",
        "chunks",
        "cached ms/chunk",
        "cached RTF",
        "buffered ms/pass",
        "buffered RTF",
        "ratio"
    );
    for r in &report.results {
        println!(
            "{:>6} fr {:>6.0}ms {:>7} {:>16.1} {:>11.3} {:>18.1} {:>13.3} {:>8.1}x",
            r.lookahead,
            r.chunk_ms,
            r.chunks,
            r.cached_ms,
            r.cached_rtf,
            r.buffered_ms,
            r.buffered_rtf,
            r.buffered_rtf / r.cached_rtf.max(1e-9)
        );
    }
}
