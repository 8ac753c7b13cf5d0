//! Visual-token pruning: which of the encoder's output tokens the vision
//! expert works on (the place where a vision-language model's LLM would
//! prefill them), after HiPrune and STORM.
//!
//! The encoder's output is a 7x7 grid of 1280-d tokens. [`select_tokens`]
//! keeps `keep_ratio` of them, HiPrune-style: anchors by saliency, their
//! 4-neighbours as buffers, a few registers spread over the grid (see
//! [`super::prune::select_scored`]). Saliency is training-free:
//! - [`Saliency::Global`] (default): a token's cosine with the mean of all
//!   tokens, the way [CLS]-attention pruning keeps the tokens the global
//!   representation draws on;
//! - [`Saliency::Middle`]: the L2 norm of the stage-4 activations under the
//!   token (HiPrune's middle-layer cue).
//!
//! The expert then classifies only the kept tokens (1.28 M multiply-adds a
//! token: the scene's labels from their mean logits, where each label is from
//! its per-token logits), so its work and the visual tokens a VLM would
//! prefill fall with the ratio. Pruning inside the encoder's late stages
//! ([`super::prune`]) is the other place to cut, but a CNN's late tokens
//! depend on wide neighbourhoods and top-1 agreement collapses there.
//!
//! STORM-style temporal pooling: [`TokenPooler`] averages the kept tokens'
//! mean logits over the last few frames, so a label flickering for one frame
//! does not move the scene.

use std::collections::VecDeque;

use anyhow::Result;
use serde::Serialize;

use super::efficientnet::{EfficientNetLite0, FEATURE_DIM, FINAL_SIDE, Token, TokenGrid};
use super::imagenet::NUM_CLASSES;
use super::prune::{PruneConfig, Selection, select_scored};

/// How token saliency is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Saliency {
    /// Cosine with the mean token.
    Global,
    /// L2 norm of the stage-4 activations under the token.
    Middle,
}

/// Per-token saliency of the final `tokens` (a full 7x7 grid, row-major).
pub fn saliency(tokens: &[Token], stage4: &TokenGrid, how: Saliency) -> Vec<f32> {
    match how {
        Saliency::Global => {
            let mut mean = vec![0f32; FEATURE_DIM];
            for t in tokens {
                for (m, x) in mean.iter_mut().zip(&t.feature) {
                    *m += x / tokens.len() as f32;
                }
            }
            tokens.iter().map(|t| cosine(&t.feature, &mean)).collect()
        }
        Saliency::Middle => {
            // Each final token covers (stage4.h / 7)^2 stage-4 positions.
            let f = (stage4.h / FINAL_SIDE).max(1);
            tokens
                .iter()
                .map(|t| {
                    let mut sum = 0.0;
                    for r in t.row * f..(t.row + 1) * f {
                        for c in t.col * f..(t.col + 1) * f {
                            if r < stage4.h && c < stage4.w {
                                sum += stage4.token(r, c).iter().map(|x| x * x).sum::<f32>().sqrt();
                            }
                        }
                    }
                    sum
                })
                .collect()
        }
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

/// The kept tokens of a frame and their ImageNet logits.
#[derive(Debug, Clone)]
pub struct KeptTokens {
    pub selection: Selection,
    /// Indices into the frame's tokens.
    pub indices: Vec<usize>,
    /// `[indices.len() * 1000]` logits, row per kept token.
    pub logits: Vec<f32>,
    /// Mean of the rows: the scene as the kept tokens see it.
    pub mean_logits: Vec<f32>,
    /// Multiply-adds spent classifying the kept tokens.
    pub macs: u64,
}

impl KeptTokens {
    /// The logits row of the `k`-th kept token.
    pub fn row(&self, k: usize) -> &[f32] {
        &self.logits[k * NUM_CLASSES..(k + 1) * NUM_CLASSES]
    }
}

/// Keeps `keep_ratio` of the encoder's output `tokens` (a full 7x7 grid)
/// and classifies only those.
pub fn select_tokens(
    model: &EfficientNetLite0,
    tokens: &[Token],
    stage4: &TokenGrid,
    keep_ratio: f32,
    how: Saliency,
) -> Result<KeptTokens> {
    anyhow::ensure!(
        tokens.len() == FINAL_SIDE * FINAL_SIDE,
        "token pruning needs the full {FINAL_SIDE}x{FINAL_SIDE} grid, got {} tokens (prune the encoder less)",
        tokens.len()
    );
    let scores = saliency(tokens, stage4, how);
    let selection = select_scored(
        &scores,
        FINAL_SIDE,
        FINAL_SIDE,
        &PruneConfig::new(keep_ratio),
    )?;
    let indices: Vec<usize> = (0..tokens.len()).filter(|&i| selection.kept[i]).collect();
    let features: Vec<f32> = indices
        .iter()
        .flat_map(|&i| tokens[i].feature.iter().copied())
        .collect();
    let logits = model.token_logits(&features)?;
    let mut mean_logits = vec![0f32; NUM_CLASSES];
    for row in logits.chunks_exact(NUM_CLASSES) {
        for (m, x) in mean_logits.iter_mut().zip(row) {
            *m += x / indices.len() as f32;
        }
    }
    Ok(KeptTokens {
        selection,
        macs: (indices.len() * FEATURE_DIM * NUM_CLASSES) as u64,
        indices,
        logits,
        mean_logits,
    })
}

/// STORM-style temporal pooling of the kept tokens' scene logits.
#[derive(Debug, Clone)]
pub struct TokenPooler {
    window: usize,
    recent: VecDeque<Vec<f32>>,
}

impl TokenPooler {
    /// Averages over the last `window` frames (1: no pooling).
    pub fn new(window: usize) -> Self {
        TokenPooler {
            window: window.max(1),
            recent: VecDeque::new(),
        }
    }

    /// Adds a frame's mean logits; returns the pooled scene logits.
    pub fn push(&mut self, mean_logits: Vec<f32>) -> Vec<f32> {
        self.recent.push_back(mean_logits);
        while self.recent.len() > self.window {
            self.recent.pop_front();
        }
        let mut pooled = vec![0f32; NUM_CLASSES];
        for frame in &self.recent {
            for (p, x) in pooled.iter_mut().zip(frame) {
                *p += x / self.recent.len() as f32;
            }
        }
        pooled
    }

    pub fn reset(&mut self) {
        self.recent.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(i: usize, value: f32) -> Token {
        Token {
            row: i / FINAL_SIDE,
            col: i % FINAL_SIDE,
            feature: vec![value; FEATURE_DIM],
        }
    }

    #[test]
    fn global_saliency_favours_tokens_like_the_mean() {
        let mut tokens: Vec<Token> = (0..49).map(|i| token(i, 1.0)).collect();
        // One odd token pointing elsewhere.
        tokens[10].feature = (0..FEATURE_DIM)
            .map(|k| if k % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let grid = TokenGrid {
            h: 14,
            w: 14,
            c: 1,
            data: vec![1.0; 196],
        };
        let s = saliency(&tokens, &grid, Saliency::Global);
        assert!(s[10] < s[0], "{} vs {}", s[10], s[0]);
        let m = saliency(&tokens, &grid, Saliency::Middle);
        assert_eq!(m.len(), 49);
        assert!(
            (m[0] - 4.0).abs() < 1e-5,
            "2x2 stage-4 norms of 1: {}",
            m[0]
        );
    }

    #[test]
    fn pooling_averages_the_last_frames() {
        let mut p = TokenPooler::new(2);
        let frame = |v: f32| vec![v; NUM_CLASSES];
        assert_eq!(p.push(frame(1.0))[0], 1.0);
        assert_eq!(p.push(frame(3.0))[0], 2.0);
        assert_eq!(p.push(frame(5.0))[0], 4.0);
        p.reset();
        assert_eq!(p.push(frame(7.0))[0], 7.0);
    }
}
