//! The frame analyzer: one camera frame in, the vision expert's input out.
//!
//! [`FrameAnalyzer`] runs a stream's [`FrameEncoder`] (EfficientNet-Lite0,
//! with temporal reuse of its late stages) up to its 7x7 stage-7 tokens,
//! keeps `keep_ratio` of them ([`super::tokens`], merged by default) and runs
//! the head and classifier on those only, and turns them into an
//! [`Analysis`]: the top ImageNet labels of the kept tokens' mean logits
//! (pooled over the last few frames), grouped by kind (three cat
//! classes are one cat), each placed where it scores highest among the kept
//! tokens (a softmax-weighted centre of its per-token logits), with names a
//! listener understands ("tabby" is said "tabby cat", a dog breed gets
//! "dog").

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use image::RgbImage;
use serde::Serialize;

use super::efficientnet::{EfficientNetLite0, FINAL_SIDE, Prediction, top_k as top_k_of};
use super::expert::{Analysis, Sighting};
use super::imagenet;
use super::prune::{FrameEncoder, PruneConfig, TemporalConfig};
use super::tokens::{KeptTokens, Reduction, Saliency, TokenPooler, select_tokens};

/// ImageNet-1k classes 151..=268 are dog breeds.
const DOG_BREEDS: std::ops::RangeInclusive<usize> = 151..=268;
/// ImageNet-1k class 281, "tabby".
const TABBY: usize = 281;

/// How a stream is analysed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnalyzerSettings {
    /// Fraction of the encoder's 7x7 output tokens the expert works on.
    pub keep_ratio: f32,
    /// How the kept tokens are chosen.
    pub saliency: Saliency,
    /// What becomes of the others.
    pub reduction: Reduction,
    /// Fraction of the 14x14 stage-4 tokens the encoder's late stages run
    /// on (1: dense; lower cuts compute but loses agreement, see
    /// [`super::prune`]).
    pub encoder_keep_ratio: f32,
    /// Reuse late-stage values where the picture did not change, and pool
    /// the scene over the last few frames.
    pub temporal_reuse: bool,
    /// Labels per frame.
    pub top_k: usize,
}

impl Default for AnalyzerSettings {
    fn default() -> Self {
        AnalyzerSettings {
            keep_ratio: 0.33,
            saliency: Saliency::Global,
            reduction: Reduction::Merge,
            encoder_keep_ratio: 1.0,
            temporal_reuse: true,
            top_k: 3,
        }
    }
}

/// What one frame cost, for the `duplex.vision.frame` event and benchmarks.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct AnalysisTimings {
    pub preprocess_ms: f64,
    pub early_ms: f64,
    pub select_ms: f64,
    pub late_ms: f64,
    /// Token selection, classifying the kept tokens, labels and places.
    pub expert_ms: f64,
    /// Stage-4 tokens the late stages ran on, of them recomputed (the rest
    /// reused from the previous frame).
    pub encoder_tokens: usize,
    pub computed_tokens: usize,
    /// Output tokens the expert worked on (of 49).
    pub kept_tokens: usize,
    /// Multiply-adds of the late stages and head, and of the expert.
    pub late_macs: u64,
    pub expert_macs: u64,
}

/// One camera stream's analyzer (the model is shared).
pub struct FrameAnalyzer {
    model: Arc<EfficientNetLite0>,
    encoder: FrameEncoder,
    pooler: TokenPooler,
    settings: AnalyzerSettings,
}

impl FrameAnalyzer {
    pub fn new(model: Arc<EfficientNetLite0>, settings: AnalyzerSettings) -> Self {
        let temporal = if settings.temporal_reuse {
            TemporalConfig::default()
        } else {
            TemporalConfig::off()
        };
        FrameAnalyzer {
            encoder: FrameEncoder::new(
                model.clone(),
                PruneConfig::new(settings.encoder_keep_ratio).without_head(),
                temporal,
            ),
            pooler: TokenPooler::new(temporal.window),
            model,
            settings,
        }
    }

    /// Encodes the next frame of the stream and names what it shows
    /// (blocking CPU work).
    pub fn analyze(&mut self, image: &RgbImage) -> Result<(Analysis, AnalysisTimings)> {
        let frame = self.encoder.encode(image)?;
        let started = Instant::now();
        anyhow::ensure!(
            frame.late.trace.fin_kept.iter().all(|k| *k),
            "the vision expert needs every token of the final grid (encoder_keep_ratio {} left some out)",
            self.settings.encoder_keep_ratio
        );
        let kept = select_tokens(
            &self.model,
            &frame.late.stage7,
            &frame.stage4,
            self.settings.keep_ratio,
            self.settings.saliency,
            self.settings.reduction,
        )?;
        let scene = self.pooler.push(kept.mean_logits.clone());
        let sightings = sightings(&kept, &scene, self.settings.top_k);
        let timings = AnalysisTimings {
            preprocess_ms: frame.times.preprocess_ms,
            early_ms: frame.times.early_ms,
            select_ms: frame.times.select_ms,
            late_ms: frame.times.late_ms,
            expert_ms: started.elapsed().as_secs_f64() * 1000.0,
            encoder_tokens: frame.selection.count(),
            computed_tokens: frame.computed_tokens,
            kept_tokens: kept.indices.len(),
            late_macs: frame.macs.late,
            expert_macs: kept.macs,
        };
        Ok((Analysis { sightings }, timings))
    }
}

/// The `top_k` likeliest kinds in the `scene` logits, each placed where its
/// most likely class scores highest among the `kept` tokens.
pub fn sightings(kept: &KeptTokens, scene: &[f32], top_k: usize) -> Vec<Sighting> {
    let groups = group_by_kind(&top_k_of(scene, CANDIDATES), top_k.max(1));
    groups
        .into_iter()
        .map(|g| {
            let scores: Vec<f32> = (0..kept.indices.len())
                .map(|k| kept.row(k)[g.best_class])
                .collect();
            let (x, y) = centre(&kept.positions, &scores, FINAL_SIDE as f32);
            Sighting {
                label: g.label,
                kinds: g.kinds,
                confidence: g.probability,
                x,
                y,
            }
        })
        .collect()
}

/// Classes looked at per frame before grouping them by kind.
const CANDIDATES: usize = 10;

/// Likely classes of one kind.
#[derive(Debug, Clone, PartialEq)]
struct KindGroup {
    /// The class name, or the shared kind ("cat") of several.
    label: String,
    /// The classes of a shared kind, most likely first (empty for one).
    kinds: Vec<String>,
    probability: f32,
    best_class: usize,
}

/// Groups `predictions` (most likely first) by kind, the last word of their
/// spoken names ("tabby cat", "tiger cat" and "Egyptian cat" are a cat),
/// summing their probabilities; returns the `n` likeliest groups. ImageNet
/// splits one thing over near-identical classes; a listener wants the thing.
fn group_by_kind(predictions: &[Prediction], n: usize) -> Vec<KindGroup> {
    // (kind, its classes' names and probabilities, its likeliest class)
    type Kind = (String, Vec<(String, f32)>, usize);
    let mut groups: Vec<Kind> = Vec::new();
    for p in predictions {
        let name = spoken_label(p.class);
        let kind = name.rsplit(' ').next().unwrap_or(&name).to_lowercase();
        match groups.iter_mut().find(|(k, _, _)| *k == kind) {
            Some((_, members, _)) => members.push((name, p.probability)),
            None => groups.push((kind, vec![(name, p.probability)], p.class)),
        }
    }
    let mut groups: Vec<KindGroup> = groups
        .into_iter()
        .map(|(kind, members, best_class)| {
            let probability = members.iter().map(|(_, p)| p).sum();
            match members.len() {
                1 => KindGroup {
                    label: members[0].0.clone(),
                    kinds: Vec::new(),
                    probability,
                    best_class,
                },
                _ => KindGroup {
                    label: kind,
                    kinds: members.into_iter().map(|(name, _)| name).collect(),
                    probability,
                    best_class,
                },
            }
        })
        .collect();
    groups.sort_by(|a, b| b.probability.total_cmp(&a.probability));
    groups.truncate(n);
    groups
}

/// Where a label scores highest: the softmax-weighted centre (x, y in 0..1)
/// of tokens at `positions` ((row, col) on the `side` x `side` grid) by
/// their `scores` (its per-token logits).
fn centre(positions: &[(f32, f32)], scores: &[f32], side: f32) -> (f32, f32) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (mut x, mut y, mut total) = (0.0f32, 0.0f32, 0.0f32);
    for ((row, col), score) in positions.iter().zip(scores) {
        let w = (score - max).exp();
        x += w * (col + 0.5) / side;
        y += w * (row + 0.5) / side;
        total += w;
    }
    if total > 0.0 {
        (x / total, y / total)
    } else {
        (0.5, 0.5)
    }
}

/// The class's name as a listener understands it.
pub fn spoken_label(class: usize) -> String {
    let name = imagenet::class_name(class);
    if class == TABBY {
        return "tabby cat".into();
    }
    let says_dog = [
        "dog",
        "hound",
        "terrier",
        "retriever",
        "spaniel",
        "setter",
        "poodle",
    ]
    .iter()
    .any(|w| name.to_lowercase().contains(w));
    if DOG_BREEDS.contains(&class) && !says_dog {
        return format!("{name} dog");
    }
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn predicted(class: usize, probability: f32) -> Prediction {
        Prediction {
            class,
            label: imagenet::class_name(class),
            probability,
        }
    }

    #[test]
    fn classes_of_one_kind_are_one_thing() {
        // Egyptian cat, tabby, tiger cat, then a mug and a cup.
        let groups = group_by_kind(
            &[
                predicted(285, 0.2),
                predicted(TABBY, 0.18),
                predicted(504, 0.15),
                predicted(282, 0.12),
                predicted(968, 0.05),
            ],
            3,
        );
        assert_eq!(groups[0].label, "cat");
        assert_eq!(groups[0].kinds, ["Egyptian cat", "tabby cat", "tiger cat"]);
        assert!((groups[0].probability - 0.5).abs() < 1e-6);
        assert_eq!(groups[0].best_class, 285);
        assert_eq!(groups[1].label, imagenet::class_name(504));
        assert!(groups[1].kinds.is_empty());
        assert_eq!(groups.len(), 3);
    }

    #[test]
    fn labels_say_what_kind_of_thing() {
        assert_eq!(spoken_label(TABBY), "tabby cat");
        assert_eq!(imagenet::class_name(151), "Chihuahua");
        assert_eq!(spoken_label(151), "Chihuahua dog");
        // Already says it.
        assert!(!spoken_label(207).ends_with("dog dog"));
        assert_eq!(spoken_label(0), "tench");
    }
}
