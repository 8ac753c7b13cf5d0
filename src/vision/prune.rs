//! Training-free token pruning of EfficientNet-Lite0's late stages.
//!
//! Spatial, HiPrune-style: at the stage-4 grid (14x14 = 196 tokens) each
//! token's saliency is the L2 norm of its 80 activations; the most salient
//! tokens are anchors, their 4-neighbours buffers, and a few register tokens
//! spread over the grid keep global context, `round(ratio * 196)` in all.
//! The late stages then run only on the kept tokens ([`LatePlan`]), so their
//! multiply-accumulates fall with the ratio. Non-kept positions read by the
//! depthwise convs and the pooling take their nearest kept token's value
//! ([`Fill::Nearest`]). Measured on 70 frames of real photos (tests/vision.rs):
//! top-1 agreement with the unpruned network is only ~57 % at 0.5, ~27 % at
//! 0.33 and ~1-3 % at 0.11: a CNN's late tokens depend on wide
//! neighbourhoods, and this training-free scheme does not preserve them.
//! Keeping the 14x14 stage-5 blocks dense (`sparse_from: 11`) gives 80 % /
//! 67 % / 14 % for 87 % / 76 % / 53 % of the dense late MACs.
//!
//! Temporal, STORM-style: [`FrameEncoder`] keeps a stream's previous
//! stage-4 grid and late-stage values; kept tokens whose stage-4 feature
//! barely changed (cosine >= a threshold) reuse the cached late values
//! instead of being recomputed, and the pooled scene feature is averaged
//! over the last few frames.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, ensure};
use image::RgbImage;

use super::efficientnet::{
    EfficientNetLite0, Fill, GridMask, Late, LatePlan, LateTrace, MID_BLOCK, MID_SIDE, Macs,
    StrideRule, TokenGrid,
};

/// How many tokens to keep and how.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PruneConfig {
    /// Fraction of the 196 stage-4 tokens kept, in (0, 1].
    pub keep_ratio: f32,
    /// Fraction of the kept tokens that are spread-out registers.
    pub register_fraction: f32,
    /// How the stride-2 late layer keeps 7x7 positions.
    pub stride_rule: StrideRule,
    /// The first late block reads the real stage-4 values of its kept
    /// tokens' non-kept neighbours.
    pub real_neighbours: bool,
    /// What depthwise convs read at positions that are not kept.
    pub fill: Fill,
    /// First late block run on the kept tokens only (8: all late blocks;
    /// 11: the 14x14 stage-5 blocks stay dense).
    pub sparse_from: usize,
    /// Run the head, pooling and classifier (false: stop at the stage-7
    /// tokens, for the vision expert of [`super::tokens`]).
    pub head: bool,
}

impl PruneConfig {
    /// Keep `keep_ratio` of the tokens with the defaults measured best.
    pub fn new(keep_ratio: f32) -> PruneConfig {
        PruneConfig {
            keep_ratio,
            register_fraction: 0.1,
            stride_rule: StrideRule::Cell,
            real_neighbours: true,
            fill: Fill::Nearest,
            sparse_from: MID_BLOCK,
            head: true,
        }
    }

    /// The same, ending at the stage-7 tokens.
    pub fn without_head(self) -> PruneConfig {
        PruneConfig {
            head: false,
            ..self
        }
    }

    /// Tokens kept on the 196-token grid.
    pub fn kept_tokens(&self) -> usize {
        let n = MID_SIDE * MID_SIDE;
        ((self.keep_ratio * n as f32).round() as usize).clamp(1, n)
    }
}

/// The tokens a frame keeps on the stage-4 grid (positions `row * 14 + col`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selection {
    pub kept: Vec<bool>,
    pub anchors: Vec<usize>,
    pub buffers: Vec<usize>,
    pub registers: Vec<usize>,
}

impl Selection {
    pub fn count(&self) -> usize {
        self.anchors.len() + self.buffers.len() + self.registers.len()
    }
}

/// Per-token saliency of a grid: the L2 norm of each token's activations.
pub fn saliency(grid: &TokenGrid) -> Vec<f32> {
    grid.data
        .chunks_exact(grid.c)
        .map(|t| t.iter().map(|x| x * x).sum::<f32>().sqrt())
        .collect()
}

/// Anchors (most salient), buffers (their 4-neighbours) and registers
/// (spread over the grid), `config.kept_tokens()` in all.
pub fn select(grid: &TokenGrid, config: &PruneConfig) -> Result<Selection> {
    select_scored(&saliency(grid), grid.h, grid.w, config)
}

/// [`select`] on an `h` x `w` grid with the given per-token `scores`.
pub fn select_scored(
    scores: &[f32],
    h: usize,
    w: usize,
    config: &PruneConfig,
) -> Result<Selection> {
    ensure!(
        config.keep_ratio > 0.0 && config.keep_ratio <= 1.0,
        "keep ratio {} is not in (0, 1]",
        config.keep_ratio
    );
    let n = h * w;
    ensure!(
        scores.len() == n,
        "{} scores for a {h}x{w} grid",
        scores.len()
    );
    let keep = ((config.keep_ratio * n as f32).round() as usize).clamp(1, n);
    let mut sel = Selection {
        kept: vec![false; n],
        ..Selection::default()
    };
    if keep == n {
        sel.kept = vec![true; n];
        sel.anchors = (0..n).collect();
        return Ok(sel);
    }
    let registers = if keep >= 4 {
        ((keep as f32 * config.register_fraction).round() as usize).max(1)
    } else {
        0
    };
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]));
    let budget = keep - registers;
    for &p in &order {
        if sel.anchors.len() + sel.buffers.len() >= budget {
            break;
        }
        if sel.kept[p] {
            continue;
        }
        sel.kept[p] = true;
        sel.anchors.push(p);
        let (r, c) = (p / w, p % w);
        let neighbours = [
            (r.wrapping_sub(1), c),
            (r + 1, c),
            (r, c.wrapping_sub(1)),
            (r, c + 1),
        ];
        for (nr, nc) in neighbours {
            if sel.anchors.len() + sel.buffers.len() >= budget {
                break;
            }
            if nr < h && nc < w && !sel.kept[nr * w + nc] {
                sel.kept[nr * w + nc] = true;
                sel.buffers.push(nr * w + nc);
            }
        }
    }
    // Registers: a lattice over the grid, each point taking the nearest
    // position not kept yet.
    let g = (registers as f32).sqrt().ceil() as usize;
    let mut lattice = Vec::new();
    for i in 0..g {
        for j in 0..g {
            let r = ((i as f32 + 0.5) * h as f32 / g as f32) as usize;
            let c = ((j as f32 + 0.5) * w as f32 / g as f32) as usize;
            lattice.push((r.min(h - 1), c.min(w - 1)));
        }
    }
    // Alternate corners of the lattice first so that a partial lattice is
    // still spread out.
    lattice.sort_by_key(|&(r, c)| ((r * 7 + c * 3) % 5, r, c));
    for (r, c) in lattice {
        if sel.registers.len() >= registers || sel.count() >= keep {
            break;
        }
        let nearest = (0..n).filter(|&p| !sel.kept[p]).min_by_key(|&p| {
            let (pr, pc) = ((p / w) as isize, (p % w) as isize);
            (pr - r as isize).pow(2) + (pc - c as isize).pow(2)
        });
        if let Some(p) = nearest {
            sel.kept[p] = true;
            sel.registers.push(p);
        }
    }
    Ok(sel)
}

/// The late plan of a selection: the kept 14x14 tokens, the 7x7 positions
/// they lead to, all computed.
pub fn plan(model: &EfficientNetLite0, sel: &Selection, config: &PruneConfig) -> LatePlan {
    let mut fin = model.downsample(&sel.kept, config.stride_rule);
    if !fin.iter().any(|k| *k) {
        fin = model.downsample(&sel.kept, StrideRule::Cell);
    }
    let side = super::efficientnet::FINAL_SIDE;
    LatePlan {
        mid: GridMask::from_kept(MID_SIDE, MID_SIDE, sel.kept.clone()),
        fin: GridMask::from_kept(side, side, fin),
        real_neighbours: config.real_neighbours,
        fill: config.fill,
        sparse_from: config.sparse_from,
        head: config.head,
    }
}

/// Temporal reuse and pooling of a stream.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TemporalConfig {
    /// Kept tokens whose stage-4 feature has at least this cosine with the
    /// previous frame's reuse their cached late values; `None`: no reuse.
    pub reuse_threshold: Option<f32>,
    /// Frames the scene feature is averaged over (1: this frame only).
    pub window: usize,
}

impl Default for TemporalConfig {
    fn default() -> TemporalConfig {
        TemporalConfig {
            reuse_threshold: Some(0.98),
            window: 4,
        }
    }
}

impl TemporalConfig {
    /// Every frame on its own.
    pub fn off() -> TemporalConfig {
        TemporalConfig {
            reuse_threshold: None,
            window: 1,
        }
    }
}

/// Milliseconds per step of one frame.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepTimes {
    pub preprocess_ms: f64,
    pub early_ms: f64,
    pub select_ms: f64,
    /// Late blocks, head, pooling and classifier.
    pub late_ms: f64,
}

/// One encoded frame.
#[derive(Debug)]
pub struct Frame {
    pub selection: Selection,
    /// The late part: kept 7x7 tokens with their 1280-d features, this
    /// frame's pooled feature and logits.
    pub late: Late,
    /// Kept stage-4 tokens recomputed / reused from the previous frame.
    pub computed_tokens: usize,
    pub reused_tokens: usize,
    /// Pooled feature averaged over the last `window` frames, and its logits.
    pub scene_pooled: Vec<f32>,
    pub scene_logits: Vec<f32>,
    /// The stage-4 grid pruning scored (14x14x80).
    pub stage4: TokenGrid,
    pub macs: Macs,
    pub times: StepTimes,
}

/// A stream's encoder: spatial pruning per frame, temporal reuse across
/// frames. One per stream; the model is shared.
pub struct FrameEncoder {
    model: Arc<EfficientNetLite0>,
    prune: PruneConfig,
    temporal: TemporalConfig,
    previous: Option<(TokenGrid, LateTrace)>,
    pooled: VecDeque<Vec<f32>>,
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        return if na == nb { 1.0 } else { 0.0 };
    }
    dot / (na * nb)
}

impl FrameEncoder {
    pub fn new(
        model: Arc<EfficientNetLite0>,
        prune: PruneConfig,
        temporal: TemporalConfig,
    ) -> FrameEncoder {
        FrameEncoder {
            model,
            prune,
            temporal,
            previous: None,
            pooled: VecDeque::new(),
        }
    }

    /// Forgets the stream's history (a cut, a new camera).
    pub fn reset(&mut self) {
        self.previous = None;
        self.pooled.clear();
    }

    /// Encodes the next frame of the stream (blocking CPU work).
    pub fn encode(&mut self, image: &RgbImage) -> Result<Frame> {
        let model = &self.model;
        let t0 = Instant::now();
        let input = model.preprocess(image)?;
        let t1 = Instant::now();
        let mid = model.early(&input)?;
        let t2 = Instant::now();
        let selection = select(&mid.stage4, &self.prune)?;
        let mut plan = plan(model, &selection, &self.prune);
        let mut cache = None;
        if let (Some(threshold), Some((prev_grid, prev_trace))) =
            (self.temporal.reuse_threshold, &self.previous)
        {
            let c = mid.stage4.c;
            let mut compute = vec![false; plan.mid.kept.len()];
            for (p, slot) in compute.iter_mut().enumerate() {
                if !plan.mid.kept[p] {
                    continue;
                }
                let now = &mid.stage4.data[p * c..(p + 1) * c];
                let then = &prev_grid.data[p * c..(p + 1) * c];
                *slot = !prev_trace.mid_kept[p] || cosine(now, then) < threshold;
            }
            let fin_changed = model.downsample(&compute, self.prune.stride_rule);
            let fin_compute: Vec<bool> = (0..plan.fin.kept.len())
                .map(|q| plan.fin.kept[q] && (fin_changed[q] || !prev_trace.fin_kept[q]))
                .collect();
            plan.mid.compute = compute;
            plan.fin.compute = fin_compute;
            cache = Some(prev_trace);
        }
        let t3 = Instant::now();
        let late = model.late(&mid, &plan, cache)?;
        let computed_tokens = plan.mid.compute_count();
        let reused_tokens = plan.mid.kept_count() - computed_tokens;
        self.pooled.push_back(late.pooled.clone());
        while self.pooled.len() > self.temporal.window.max(1) {
            self.pooled.pop_front();
        }
        let mut scene_pooled = vec![0f32; late.pooled.len()];
        for p in &self.pooled {
            for (a, x) in scene_pooled.iter_mut().zip(p) {
                *a += x / self.pooled.len() as f32;
            }
        }
        let scene_logits = if late.pooled.is_empty() {
            Vec::new()
        } else {
            model.logits(&scene_pooled)?
        };
        let t4 = Instant::now();
        let macs = Macs {
            early: mid.macs,
            late: late.macs,
            classifier: late.classifier_macs,
        };
        self.previous = Some((mid.stage4.clone(), late.trace.clone()));
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        Ok(Frame {
            selection,
            late,
            computed_tokens,
            reused_tokens,
            scene_pooled,
            scene_logits,
            stage4: mid.stage4,
            macs,
            times: StepTimes {
                preprocess_ms: ms(t0, t1),
                early_ms: ms(t1, t2),
                select_ms: ms(t2, t3),
                late_ms: ms(t3, t4),
            },
        })
    }
}

/// One frame pruned spatially, no history.
pub fn encode_pruned(
    model: &Arc<EfficientNetLite0>,
    image: &RgbImage,
    config: &PruneConfig,
) -> Result<Frame> {
    FrameEncoder::new(model.clone(), *config, TemporalConfig::off()).encode(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(values: &[f32]) -> TokenGrid {
        TokenGrid {
            h: MID_SIDE,
            w: MID_SIDE,
            c: 1,
            data: values.to_vec(),
        }
    }

    #[test]
    fn selection_keeps_the_budget_with_anchors_buffers_registers() {
        let mut v = vec![0.1f32; 196];
        v[5 * 14 + 5] = 10.0;
        v[9 * 14 + 9] = 9.0;
        for ratio in [0.11f32, 0.33, 0.5] {
            let cfg = PruneConfig::new(ratio);
            let sel = select(&grid(&v), &cfg).unwrap();
            assert_eq!(sel.count(), cfg.kept_tokens(), "ratio {ratio}");
            assert_eq!(sel.kept.iter().filter(|k| **k).count(), cfg.kept_tokens());
            assert_eq!(sel.anchors[0], 5 * 14 + 5);
            assert_eq!(sel.anchors[1], 9 * 14 + 9);
            assert!(
                sel.buffers.contains(&(4 * 14 + 5)),
                "the anchor's neighbour is a buffer"
            );
            assert!(!sel.registers.is_empty());
        }
        let all = select(&grid(&v), &PruneConfig::new(1.0)).unwrap();
        assert!(all.kept.iter().all(|k| *k));
        assert!(select(&grid(&v), &PruneConfig::new(0.0)).is_err());
        assert!(select(&grid(&v), &PruneConfig::new(1.5)).is_err());
    }

    #[test]
    fn registers_spread_over_the_grid() {
        let v: Vec<f32> = (0..196).map(|i| if i < 14 { 5.0 } else { 0.0 }).collect();
        let sel = select(
            &grid(&v),
            &PruneConfig {
                register_fraction: 0.25,
                ..PruneConfig::new(0.33)
            },
        )
        .unwrap();
        let rows: Vec<usize> = sel.registers.iter().map(|p| p / 14).collect();
        assert!(
            rows.iter().any(|r| *r >= 7),
            "some register in the lower half: {rows:?}"
        );
        assert!(
            rows.iter().any(|r| *r < 7),
            "some register in the upper half: {rows:?}"
        );
    }

    #[test]
    fn cosine_of_equal_and_opposite() {
        assert!((cosine(&[1.0, 2.0], &[1.0, 2.0]) - 1.0).abs() < 1e-6);
        assert!((cosine(&[1.0, 0.0], &[-1.0, 0.0]) + 1.0).abs() < 1e-6);
        assert_eq!(cosine(&[0.0], &[0.0]), 1.0);
    }
}
