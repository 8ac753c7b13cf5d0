//! Visual-token reduction: which of the encoder's output tokens the vision
//! expert works on (the place where a vision-language model's LLM would
//! prefill them), after HiPrune, PruMerge and STORM.
//!
//! The encoder's output is the 7x7 grid of 320-d stage-7 tokens. The expert
//! runs the rest of the network on each token it keeps: the 1x1 head conv
//! (320 -> 1280, ReLU6) and the ImageNet classifier, 1.69 M multiply-adds a
//! token; the scene's labels come from the tokens' weighted mean logits, and
//! each label is placed by its per-token logits. So the expert's work, and
//! the visual tokens a VLM would prefill, fall with the keep ratio.
//! [`select_tokens`] keeps `round(keep_ratio * 49)` tokens, training-free:
//! - [`Reduction::Merge`] (default, PruMerge/ToMe-style): seeds spread over
//!   the tokens' feature space (farthest-point, from the most salient
//!   token); every token joins its nearest seed and each group, refined by
//!   one k-means step, is merged into one token (the mean of its members,
//!   weighted by how many it stands for, placed at their centre). Nothing
//!   the camera sees is dropped, only summarised; because the head is
//!   non-linear the merged tokens' logits are not the dense ones.
//! - [`Reduction::Prune`] (HiPrune-style): anchors by saliency, their
//!   4-neighbours as buffers, a few registers spread over the grid (see
//!   [`super::prune::select_scored`]); the rest is dropped.
//!
//! Saliency is training-free:
//! - [`Saliency::Global`] (default): a token's cosine with the mean of all
//!   tokens, the way [CLS]-attention pruning keeps the tokens the global
//!   representation draws on;
//! - [`Saliency::Middle`]: the L2 norm of the stage-4 activations under the
//!   token (HiPrune's middle-layer cue).
//!
//! Pruning inside the encoder's late stages ([`super::prune`]) is the other
//! place to cut, but a CNN's late tokens depend on wide neighbourhoods and
//! top-1 agreement collapses there.
//!
//! STORM-style temporal pooling: [`TokenPooler`] averages the kept tokens'
//! mean logits over the last few frames, so a label flickering for one frame
//! does not move the scene.

use std::collections::VecDeque;

use anyhow::{Result, ensure};
use serde::Serialize;

use super::efficientnet::{EfficientNetLite0, FEATURE_DIM, FINAL_SIDE, STAGE7_CHANNELS, TokenGrid};
use super::imagenet::NUM_CLASSES;
use super::prune::{PruneConfig, select_scored};

/// Multiply-adds of the expert per token: head conv and classifier.
pub const EXPERT_MACS_PER_TOKEN: u64 =
    (STAGE7_CHANNELS * FEATURE_DIM + FEATURE_DIM * NUM_CLASSES) as u64;

/// How token saliency is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Saliency {
    /// Cosine with the mean token.
    Global,
    /// L2 norm of the stage-4 activations under the token.
    Middle,
}

/// What happens to the tokens that are not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reduction {
    /// Merged into the nearest kept token.
    Merge,
    /// Dropped.
    Prune,
}

/// Per-token saliency of the 7x7 stage-7 `tokens` (row-major).
pub fn saliency(tokens: &[&[f32]], stage4: &TokenGrid, how: Saliency) -> Vec<f32> {
    match how {
        Saliency::Global => {
            let mean = mean_of(tokens.iter().copied(), STAGE7_CHANNELS);
            tokens.iter().map(|t| cosine(t, &mean)).collect()
        }
        Saliency::Middle => {
            // Each final token covers (stage4.h / 7)^2 stage-4 positions.
            let f = (stage4.h / FINAL_SIDE).max(1);
            (0..tokens.len())
                .map(|p| {
                    let (row, col) = (p / FINAL_SIDE, p % FINAL_SIDE);
                    let mut sum = 0.0;
                    for r in row * f..(row + 1) * f {
                        for c in col * f..(col + 1) * f {
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

fn mean_of<'a>(rows: impl Iterator<Item = &'a [f32]>, dim: usize) -> Vec<f32> {
    let mut sum = vec![0f32; dim];
    let mut n = 0usize;
    for row in rows {
        for (s, x) in sum.iter_mut().zip(row) {
            *s += x;
        }
        n += 1;
    }
    if n > 0 {
        for s in &mut sum {
            *s /= n as f32;
        }
    }
    sum
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

fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// The tokens the expert worked on and their ImageNet logits.
#[derive(Debug, Clone)]
pub struct KeptTokens {
    /// Grid positions (row-major) of the kept tokens: the anchors, buffers
    /// and registers, or the seeds the merged tokens grew from.
    pub indices: Vec<usize>,
    /// Where each kept token sits: (row, col) on the 7x7 grid, the centre of
    /// the positions it stands for.
    pub positions: Vec<(f32, f32)>,
    /// How many of the 49 grid tokens each kept token stands for.
    pub weights: Vec<f32>,
    /// `[indices.len() * 1000]` logits, row per kept token.
    pub logits: Vec<f32>,
    /// The rows' mean, weighted: the scene as the kept tokens see it.
    pub mean_logits: Vec<f32>,
    /// Multiply-adds of choosing and merging the tokens, and of the head and
    /// classifier on the kept ones.
    pub macs: u64,
}

impl KeptTokens {
    /// The logits row of the `k`-th kept token.
    pub fn row(&self, k: usize) -> &[f32] {
        &self.logits[k * NUM_CLASSES..(k + 1) * NUM_CLASSES]
    }
}

/// Keeps `keep_ratio` of the encoder's 7x7 stage-7 tokens (`stage7`,
/// 7x7x320, every position computed) by `reduction`, and runs the head and
/// classifier on those only.
pub fn select_tokens(
    model: &EfficientNetLite0,
    stage7: &TokenGrid,
    stage4: &TokenGrid,
    keep_ratio: f32,
    how: Saliency,
    reduction: Reduction,
) -> Result<KeptTokens> {
    let n = FINAL_SIDE * FINAL_SIDE;
    ensure!(
        stage7.h == FINAL_SIDE && stage7.w == FINAL_SIDE && stage7.c == STAGE7_CHANNELS,
        "token reduction needs the {FINAL_SIDE}x{FINAL_SIDE}x{STAGE7_CHANNELS} stage-7 grid, got {}x{}x{}",
        stage7.h,
        stage7.w,
        stage7.c
    );
    ensure!(
        keep_ratio > 0.0 && keep_ratio <= 1.0,
        "keep ratio {keep_ratio} is not in (0, 1]"
    );
    let tokens: Vec<&[f32]> = (0..n)
        .map(|p| stage7.token(p / FINAL_SIDE, p % FINAL_SIDE))
        .collect();
    let scores = saliency(&tokens, stage4, how);
    let mut reduced = match reduction {
        Reduction::Prune => prune(&tokens, &scores, keep_ratio)?,
        Reduction::Merge => merge(&tokens, &scores, keep_ratio),
    };
    let features: Vec<f32> = reduced.features.concat();
    let head = model.head_features(&features)?;
    let logits = model.token_logits(&head)?;
    let total: f32 = reduced.weights.iter().sum();
    let mut mean_logits = vec![0f32; NUM_CLASSES];
    for (row, w) in logits.chunks_exact(NUM_CLASSES).zip(&reduced.weights) {
        for (m, x) in mean_logits.iter_mut().zip(row) {
            *m += x * w / total;
        }
    }
    reduced.macs += reduced.features.len() as u64 * EXPERT_MACS_PER_TOKEN;
    Ok(KeptTokens {
        indices: reduced.indices,
        positions: reduced.positions,
        weights: reduced.weights,
        logits,
        mean_logits,
        macs: reduced.macs,
    })
}

/// Kept tokens before the head: their features and where they stand.
struct Reduced {
    indices: Vec<usize>,
    positions: Vec<(f32, f32)>,
    weights: Vec<f32>,
    features: Vec<Vec<f32>>,
    /// Multiply-adds spent choosing (and merging) them.
    macs: u64,
}

fn grid_position(p: usize) -> (f32, f32) {
    ((p / FINAL_SIDE) as f32, (p % FINAL_SIDE) as f32)
}

/// HiPrune-style: anchors, buffers and registers kept, the rest dropped.
fn prune(tokens: &[&[f32]], scores: &[f32], keep_ratio: f32) -> Result<Reduced> {
    let selection = select_scored(
        scores,
        FINAL_SIDE,
        FINAL_SIDE,
        &PruneConfig::new(keep_ratio),
    )?;
    let indices: Vec<usize> = (0..tokens.len()).filter(|&i| selection.kept[i]).collect();
    Ok(Reduced {
        positions: indices.iter().map(|&p| grid_position(p)).collect(),
        weights: vec![1.0; indices.len()],
        features: indices.iter().map(|&p| tokens[p].to_vec()).collect(),
        indices,
        macs: 0,
    })
}

/// PruMerge/ToMe-style: `round(keep_ratio * n)` seeds chosen farthest-point
/// (by cosine, from the most salient token), every token assigned to its
/// nearest seed, one k-means step, each group merged into its mean.
fn merge(tokens: &[&[f32]], scores: &[f32], keep_ratio: f32) -> Reduced {
    let n = tokens.len();
    let keep = ((keep_ratio * n as f32).round() as usize).clamp(1, n);
    let dim = tokens.first().map_or(0, |t| t.len()) as u64;
    let mut macs = 0u64;
    // Farthest-point seeds: each next seed is the token least like any seed
    // so far, so the seeds cover what the frame shows.
    let first = (0..n)
        .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
        .unwrap_or(0);
    // Unit vectors once, so a cosine is one dot product.
    let units: Vec<Vec<f32>> = tokens
        .iter()
        .map(|t| {
            let norm = t.iter().map(|x| x * x).sum::<f32>().sqrt();
            let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
            t.iter().map(|x| x * scale).collect()
        })
        .collect();
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let mut seeds = vec![first];
    let mut likeness: Vec<f32> = units.iter().map(|u| dot(u, &units[first])).collect();
    macs += 2 * n as u64 * dim;
    while seeds.len() < keep {
        let Some(next) = (0..n)
            .filter(|p| !seeds.contains(p))
            .min_by(|&a, &b| likeness[a].total_cmp(&likeness[b]))
        else {
            break;
        };
        seeds.push(next);
        for (l, u) in likeness.iter_mut().zip(&units) {
            *l = l.max(dot(u, &units[next]));
        }
        macs += n as u64 * dim;
    }
    // Assign to the nearest seed, merge, then once more to the nearest
    // merged token (one k-means step).
    let mut centres: Vec<Vec<f32>> = seeds.iter().map(|&p| tokens[p].to_vec()).collect();
    let mut groups = Vec::new();
    for _ in 0..2 {
        groups = vec![Vec::new(); centres.len()];
        for (p, t) in tokens.iter().enumerate() {
            let nearest = centres
                .iter()
                .map(|c| squared_distance(t, c))
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map_or(0, |(k, _)| k);
            groups[nearest].push(p);
        }
        macs += (n * centres.len()) as u64 * dim;
        for (centre, group) in centres.iter_mut().zip(&groups) {
            if !group.is_empty() {
                *centre = mean_of(group.iter().map(|&p| tokens[p]), dim as usize);
            }
        }
    }
    let mut reduced = Reduced {
        indices: Vec::new(),
        positions: Vec::new(),
        weights: Vec::new(),
        features: Vec::new(),
        macs,
    };
    for ((seed, centre), group) in seeds.into_iter().zip(centres).zip(groups) {
        if group.is_empty() {
            continue;
        }
        let count = group.len() as f32;
        let (rows, cols) = group
            .iter()
            .map(|&p| grid_position(p))
            .fold((0.0, 0.0), |(r, c), (pr, pc)| (r + pr, c + pc));
        reduced.indices.push(seed);
        reduced.positions.push((rows / count, cols / count));
        reduced.weights.push(count);
        reduced.features.push(centre);
    }
    reduced
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

    fn grid4() -> TokenGrid {
        TokenGrid {
            h: 14,
            w: 14,
            c: 1,
            data: vec![1.0; 196],
        }
    }

    #[test]
    fn global_saliency_favours_tokens_like_the_mean() {
        let same = vec![1.0f32; STAGE7_CHANNELS];
        // One odd token pointing elsewhere.
        let odd: Vec<f32> = (0..STAGE7_CHANNELS)
            .map(|k| if k % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let mut tokens: Vec<&[f32]> = vec![&same; 49];
        tokens[10] = &odd;
        let s = saliency(&tokens, &grid4(), Saliency::Global);
        assert!(s[10] < s[0], "{} vs {}", s[10], s[0]);
        let m = saliency(&tokens, &grid4(), Saliency::Middle);
        assert_eq!(m.len(), 49);
        assert!(
            (m[0] - 4.0).abs() < 1e-5,
            "2x2 stage-4 norms of 1: {}",
            m[0]
        );
    }

    #[test]
    fn merging_keeps_every_token_in_some_group() {
        // Two kinds of token: the left three columns and the rest.
        let left = vec![1.0f32; STAGE7_CHANNELS];
        let right: Vec<f32> = (0..STAGE7_CHANNELS).map(|k| (k % 3) as f32).collect();
        let tokens: Vec<&[f32]> = (0..49)
            .map(|p| {
                if p % 7 < 3 {
                    left.as_slice()
                } else {
                    right.as_slice()
                }
            })
            .collect();
        let scores = saliency(&tokens, &grid4(), Saliency::Global);
        let merged = merge(&tokens, &scores, 2.0 / 49.0);
        assert_eq!(merged.features.len(), 2);
        let mut weights = merged.weights.clone();
        weights.sort_by(f32::total_cmp);
        assert_eq!(weights, [21.0, 28.0]);
        for ((row, col), w) in merged.positions.iter().zip(&merged.weights) {
            assert!((row - 3.0).abs() < 1e-5);
            let want = if *w == 21.0 { 1.0 } else { 4.5 };
            assert!((col - want).abs() < 1e-5, "{col} for {w} tokens");
        }
        // Every token its own group when all are kept.
        let all = merge(&tokens, &scores, 1.0);
        assert_eq!(all.weights.iter().sum::<f32>(), 49.0);
        // Pruning drops instead.
        let pruned = prune(&tokens, &scores, 16.0 / 49.0).unwrap();
        assert_eq!(pruned.features.len(), 16);
        assert!(pruned.weights.iter().all(|w| *w == 1.0));
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
