//! EfficientNet-Lite0 on the CPU: weights from the legacy `.pth`, batch norm
//! folded into the convolutions at load, inference over token sets.
//!
//! Activations are channels-last maps (`[h * w * c]`, one token per grid
//! position). Pointwise (1x1) convolutions are candle matmuls over the rows
//! of the positions they compute; depthwise convolutions read a dense map in
//! which positions that are not kept are zero (submanifold-style), so the
//! same code runs the dense network (every position kept) and the pruned
//! late stages (`prune.rs` decides which positions). Blocks 0..[`MID_BLOCK`]
//! (stem to the 14x14x80 stage-4 output) are the early part, always dense;
//! blocks [`MID_BLOCK`].. (14x14x112, 7x7x192, 7x7x320), the 1280-channel
//! head and the classifier are the late part.
//!
//! Preprocessing: the shorter side resized to 224 (bilinear), centre crop
//! 224x224, RGB (x - 127) / 128; batch-norm epsilon 1e-3. Padding is
//! PyTorch-symmetric (`(k-1)/2`) everywhere, stride-2 layers included: with
//! it the real test photos are classified confidently and correctly
//! (`tests/vision.rs`: chelsea a cat, coffee espresso 0.92, camera tripod
//! 0.96), so TF "same" padding is not used.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use candle_core::{Device, Tensor};
use image::RgbImage;
use rayon::prelude::*;

use super::imagenet;
use super::pth::PthTensors;

/// Input side in pixels.
pub const INPUT: usize = 224;
/// First late block: the early part ends with stage 4 (14x14x80).
pub const MID_BLOCK: usize = 8;
/// The late stride-2 block (14x14 to 7x7).
pub const STRIDE_BLOCK: usize = 11;
/// Side of the middle grid (stage 4 output), where spatial pruning happens.
pub const MID_SIDE: usize = 14;
/// Channels of the stage-4 output.
pub const MID_CHANNELS: usize = 80;
/// Side of the final grid (stages 6-7, head).
pub const FINAL_SIDE: usize = 7;
/// Channels of a stage-7 token (what the head takes).
pub const STAGE7_CHANNELS: usize = 320;
/// Channels of the head (the final per-token feature).
pub const FEATURE_DIM: usize = 1280;
/// Block index after which each reported feature grid is taken: stage 3
/// (28x28x40), stage 5 (14x14x112), stage 7 (7x7x320).
pub const FEATURE_BLOCKS: [usize; 3] = [4, 10, 15];

const BN_EPS: f32 = 1e-3;
const MEAN: f32 = 127.0;
const STD: f32 = 128.0;
/// (repeats, kernel, stride, expand ratio, in, out) per stage, EfficientNet-Lite0.
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

/// A channels-last grid of tokens.
#[derive(Clone, Debug)]
pub struct TokenGrid {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    /// `[h * w * c]`, row-major positions.
    pub data: Vec<f32>,
}

impl TokenGrid {
    /// The feature of the token at (`row`, `col`).
    pub fn token(&self, row: usize, col: usize) -> &[f32] {
        let at = (row * self.w + col) * self.c;
        &self.data[at..at + self.c]
    }
}

/// Which positions of a grid take part (kept) and which of those are
/// computed now (the others reuse cached values).
#[derive(Clone, Debug, PartialEq)]
pub struct GridMask {
    pub h: usize,
    pub w: usize,
    pub kept: Vec<bool>,
    pub compute: Vec<bool>,
}

impl GridMask {
    /// Every position kept and computed.
    pub fn full(h: usize, w: usize) -> GridMask {
        GridMask {
            h,
            w,
            kept: vec![true; h * w],
            compute: vec![true; h * w],
        }
    }

    /// `kept` positions, all computed.
    pub fn from_kept(h: usize, w: usize, kept: Vec<bool>) -> GridMask {
        GridMask {
            h,
            w,
            compute: kept.clone(),
            kept,
        }
    }

    pub fn kept_count(&self) -> usize {
        self.kept.iter().filter(|k| **k).count()
    }

    pub fn compute_count(&self) -> usize {
        self.compute.iter().filter(|k| **k).count()
    }

    fn compute_positions(&self) -> Vec<usize> {
        (0..self.kept.len()).filter(|&p| self.compute[p]).collect()
    }
}

/// How a stride-2 late layer decides which output positions it keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StrideRule {
    /// The input at the centre of the output's window is kept.
    Centre,
    /// Any input of the output's 2x2 stride cell is kept.
    Cell,
}

/// What the late stages compute: the kept/computed positions of the 14x14
/// and 7x7 grids.
#[derive(Clone, Debug)]
pub struct LatePlan {
    pub mid: GridMask,
    pub fin: GridMask,
    /// The first late block's expand conv also runs on the (real, dense)
    /// stage-4 values of positions that are not kept but lie in the windows
    /// of kept ones, so its depthwise conv sees real neighbours.
    pub real_neighbours: bool,
    /// What depthwise convs read at positions that are not kept.
    pub fill: Fill,
    /// First late block that runs on the kept tokens only ([`MID_BLOCK`]
    /// to [`STRIDE_BLOCK`]); the blocks before it run dense.
    pub sparse_from: usize,
    /// Run the head, pooling and classifier too; without them the late part
    /// ends at the 7x7x320 stage-7 tokens (what the vision expert takes).
    pub head: bool,
}

/// What a depthwise conv of the pruned late stages reads at a position that
/// is not kept (no multiply-accumulates are spent on it either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// Zero (submanifold sparse convolution).
    Zero,
    /// The value of the nearest kept position.
    Nearest,
    /// The mean of the kept positions.
    Mean,
}

/// Fills the positions of `map` that are not kept, per `fill`.
fn fill_missing(map: &mut [f32], c: usize, w: usize, kept: &[bool], fill: Fill) {
    let missing: Vec<usize> = (0..kept.len()).filter(|&p| !kept[p]).collect();
    if missing.is_empty() || missing.len() == kept.len() {
        return;
    }
    match fill {
        Fill::Zero => {}
        Fill::Mean => {
            let mut mean = vec![0f32; c];
            let n = (kept.len() - missing.len()) as f32;
            for p in (0..kept.len()).filter(|&p| kept[p]) {
                for (m, x) in mean.iter_mut().zip(&map[p * c..(p + 1) * c]) {
                    *m += x / n;
                }
            }
            for p in missing {
                map[p * c..(p + 1) * c].copy_from_slice(&mean);
            }
        }
        Fill::Nearest => {
            let kept_at: Vec<usize> = (0..kept.len()).filter(|&p| kept[p]).collect();
            for p in missing {
                let (r, q) = ((p / w) as isize, (p % w) as isize);
                let near = kept_at
                    .iter()
                    .copied()
                    .min_by_key(|&k| {
                        let (kr, kq) = ((k / w) as isize, (k % w) as isize);
                        (kr - r).pow(2) + (kq - q).pow(2)
                    })
                    .unwrap_or(p);
                map.copy_within(near * c..(near + 1) * c, p * c);
            }
        }
    }
}

impl LatePlan {
    /// The unpruned network.
    pub fn dense() -> LatePlan {
        LatePlan {
            mid: GridMask::full(MID_SIDE, MID_SIDE),
            fin: GridMask::full(FINAL_SIDE, FINAL_SIDE),
            real_neighbours: true,
            fill: Fill::Zero,
            sparse_from: MID_BLOCK,
            head: true,
        }
    }
}

/// Multiply-accumulates computed, by part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Macs {
    pub early: u64,
    /// Late blocks and head (the classifier is counted apart).
    pub late: u64,
    pub classifier: u64,
}

/// The early part's output for one frame.
#[derive(Clone, Debug)]
pub struct Mid {
    /// Stage 3 output, 28x28x40.
    pub stage3: TokenGrid,
    /// Stage 4 output, 14x14x80: what pruning scores.
    pub stage4: TokenGrid,
    pub macs: u64,
}

/// Per-layer values of one late run, reused by the next frame's run.
#[derive(Clone, Debug)]
pub struct LateTrace {
    /// Per late block: the expanded map (dense over its input grid, zero off
    /// the kept positions) and the output map.
    pub blocks: Vec<(Vec<f32>, Vec<f32>)>,
    /// The head features, dense 7x7x1280 (zero off the kept positions).
    pub head: Vec<f32>,
    pub fin_kept: Vec<bool>,
    pub mid_kept: Vec<bool>,
}

/// A kept token of the final grid.
#[derive(Clone, Debug)]
pub struct Token {
    pub row: usize,
    pub col: usize,
    /// The 1280-d head feature.
    pub feature: Vec<f32>,
}

/// The late part's output.
#[derive(Clone, Debug)]
pub struct Late {
    /// Kept tokens of the 7x7 grid with their head features (empty when the
    /// plan ran no head, as are `pooled` and `logits`).
    pub tokens: Vec<Token>,
    /// Mean of the kept tokens' head features.
    pub pooled: Vec<f32>,
    /// ImageNet-1k logits of `pooled`.
    pub logits: Vec<f32>,
    /// Stage 5 output, 14x14x112 (zero off the kept positions).
    pub stage5: TokenGrid,
    /// Stage 7 output, 7x7x320 (zero off the kept positions).
    pub stage7: TokenGrid,
    pub trace: LateTrace,
    /// Late MACs computed (blocks and head).
    pub macs: u64,
    pub classifier_macs: u64,
}

/// A class with its probability.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    pub class: usize,
    pub label: &'static str,
    pub probability: f32,
}

struct Pointwise {
    /// `[cin, cout]`.
    w: Tensor,
    /// `[cout]`.
    b: Tensor,
    cin: usize,
    cout: usize,
}

struct Depthwise {
    /// `[k * k * c]`, taps major.
    w: Vec<f32>,
    b: Vec<f32>,
    k: usize,
    stride: usize,
    c: usize,
}

struct Block {
    expand: Option<Pointwise>,
    dw: Depthwise,
    project: Pointwise,
    residual: bool,
    cin: usize,
    cout: usize,
}

/// EfficientNet-Lite0 with folded batch norm; `Send + Sync`, inference by
/// `&self` (blocking CPU work).
pub struct EfficientNetLite0 {
    /// Stem as a `[27, 32]` matmul over 3x3x3 patches.
    stem: Pointwise,
    blocks: Vec<Block>,
    head: Pointwise,
    /// `[1280, 1000]`.
    fc_w: Tensor,
    fc_b: Vec<f32>,
    /// Row-major `[1000][1280]` copy, for per-class dot products.
    fc_rows: Vec<f32>,
}

fn relu6(x: &mut [f32]) {
    for v in x {
        *v = v.clamp(0.0, 6.0);
    }
}

/// How many rows of `width` values `values` holds; an error naming `what`
/// when they do not split evenly.
fn rows_of(values: &[f32], width: usize, what: &str) -> Result<usize> {
    ensure!(
        values.len().is_multiple_of(width),
        "{what} have {} values, not a multiple of {width}",
        values.len()
    );
    Ok(values.len() / width)
}

fn vec_of(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// (scale, shift) of a batch norm folded into the preceding conv.
fn bn(w: &PthTensors, prefix: &str) -> Result<(Vec<f32>, Vec<f32>)> {
    let gamma = vec_of(w.get(&format!("{prefix}.weight"))?)?;
    let beta = vec_of(w.get(&format!("{prefix}.bias"))?)?;
    let mean = vec_of(w.get(&format!("{prefix}.running_mean"))?)?;
    let var = vec_of(w.get(&format!("{prefix}.running_var"))?)?;
    ensure!(
        gamma.len() == beta.len() && beta.len() == mean.len() && mean.len() == var.len(),
        "{prefix}: batch norm parameters differ in length"
    );
    let scale: Vec<f32> = gamma
        .iter()
        .zip(&var)
        .map(|(g, v)| g / (v + BN_EPS).sqrt())
        .collect();
    let shift = beta
        .iter()
        .zip(&mean)
        .zip(&scale)
        .map(|((b, m), s)| b - m * s)
        .collect();
    Ok((scale, shift))
}

/// A `[cout, cin, kh, kw]` conv (flattened to `[cout, cin*kh*kw]`) with its
/// batch norm, as a `[cin*kh*kw, cout]` matmul. `perm` maps the matmul row
/// order to torch's `(cin, kh, kw)` order.
fn pointwise(
    w: &PthTensors,
    conv: &str,
    bn_prefix: &str,
    cin: usize,
    cout: usize,
) -> Result<Pointwise> {
    let t = w.get(&format!("{conv}.weight"))?;
    let dims = t.dims().to_vec();
    ensure!(
        dims.first() == Some(&cout) && dims.iter().skip(1).product::<usize>() == cin,
        "{conv}.weight has shape {dims:?}, expected [{cout}, {cin} in total]"
    );
    let raw = vec_of(t)?;
    let (scale, shift) = bn(w, bn_prefix)?;
    ensure!(
        scale.len() == cout,
        "{bn_prefix}: {} channels, expected {cout}",
        scale.len()
    );
    let mut folded = vec![0f32; cin * cout];
    for o in 0..cout {
        for i in 0..cin {
            folded[i * cout + o] = raw[o * cin + i] * scale[o];
        }
    }
    Ok(Pointwise {
        w: Tensor::from_vec(folded, (cin, cout), &Device::Cpu)?,
        b: Tensor::from_vec(shift, cout, &Device::Cpu)?,
        cin,
        cout,
    })
}

impl Pointwise {
    /// `rows` (`[n, cin]`) times the weights, plus bias, optionally ReLU6.
    fn apply(&self, rows: Vec<f32>, n: usize, act: bool, macs: &mut u64) -> Result<Vec<f32>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        *macs += (n * self.cin * self.cout) as u64;
        let x = Tensor::from_vec(rows, (n, self.cin), &Device::Cpu)?;
        let y = x.matmul(&self.w)?.broadcast_add(&self.b)?;
        let mut y = vec_of(&y)?;
        if act {
            relu6(&mut y);
        }
        Ok(y)
    }
}

impl Depthwise {
    fn pad(&self) -> usize {
        (self.k - 1) / 2
    }

    /// Output rows (`[outputs.len(), c]`, ReLU6) at `outputs` (positions of
    /// the `ow`-wide output grid) over the dense `h x w` map.
    fn apply(
        &self,
        map: &[f32],
        h: usize,
        w: usize,
        ow: usize,
        outputs: &[usize],
        macs: &mut u64,
    ) -> Vec<f32> {
        let (c, k, s, pad) = (self.c, self.k, self.stride, self.pad() as isize);
        *macs += (outputs.len() * k * k * c) as u64;
        let mut out = vec![0f32; outputs.len() * c];
        out.par_chunks_mut(c)
            .zip(outputs.par_iter())
            .with_min_len(16)
            .for_each(|(row, &q)| {
                let (oy, ox) = ((q / ow) as isize, (q % ow) as isize);
                row.copy_from_slice(&self.b);
                for ky in 0..k {
                    let iy = oy * s as isize - pad + ky as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    for kx in 0..k {
                        let ix = ox * s as isize - pad + kx as isize;
                        if ix < 0 || ix >= w as isize {
                            continue;
                        }
                        let at = (iy as usize * w + ix as usize) * c;
                        let src = &map[at..at + c];
                        let wt = &self.w[(ky * k + kx) * c..][..c];
                        for ((o, x), wv) in row.iter_mut().zip(src).zip(wt) {
                            *o += x * wv;
                        }
                    }
                }
                relu6(row);
            });
        out
    }

    /// Input positions read by the windows of `outputs`.
    fn window_inputs(&self, h: usize, w: usize, ow: usize, outputs: &[usize]) -> Vec<bool> {
        let (k, s, pad) = (self.k as isize, self.stride as isize, self.pad() as isize);
        let mut need = vec![false; h * w];
        for &q in outputs {
            let (oy, ox) = ((q / ow) as isize, (q % ow) as isize);
            for iy in (oy * s - pad)..(oy * s - pad + k) {
                for ix in (ox * s - pad)..(ox * s - pad + k) {
                    if iy >= 0 && ix >= 0 && iy < h as isize && ix < w as isize {
                        need[iy as usize * w + ix as usize] = true;
                    }
                }
            }
        }
        need
    }
}

fn gather_rows(map: &[f32], c: usize, positions: &[usize]) -> Vec<f32> {
    let mut rows = Vec::with_capacity(positions.len() * c);
    for &p in positions {
        rows.extend_from_slice(&map[p * c..(p + 1) * c]);
    }
    rows
}

fn scatter_rows(map: &mut [f32], c: usize, positions: &[usize], rows: &[f32]) {
    for (i, &p) in positions.iter().enumerate() {
        map[p * c..(p + 1) * c].copy_from_slice(&rows[i * c..(i + 1) * c]);
    }
}

/// Copies the rows of positions kept but not computed from `cached`.
fn fill_reused(
    map: &mut [f32],
    c: usize,
    mask: &GridMask,
    cached: Option<&[f32]>,
    what: &str,
) -> Result<()> {
    for p in 0..mask.kept.len() {
        if mask.kept[p] && !mask.compute[p] {
            let cached = cached
                .with_context(|| format!("{what}: position {p} is reused but there is no cache"))?;
            map[p * c..(p + 1) * c].copy_from_slice(&cached[p * c..(p + 1) * c]);
        }
    }
    Ok(())
}

impl EfficientNetLite0 {
    /// Loads the legacy `.pth` state dict.
    pub fn load(path: &Path) -> Result<EfficientNetLite0> {
        let w = PthTensors::read(path)?;
        EfficientNetLite0::from_tensors(&w)
            .with_context(|| format!("{}: not EfficientNet-Lite0 weights", path.display()))
    }

    /// Loads from the model cache (`duplex models install`).
    pub fn from_store(store: &crate::models::ModelStore) -> Result<EfficientNetLite0> {
        let path = store.file(
            crate::models::ids::EFFICIENTNET_LITE0,
            crate::models::files::EFFICIENTNET_LITE0_PTH,
        )?;
        EfficientNetLite0::load(&path)
    }

    /// Builds the network from a state dict (lukemelas' layout, Lite0).
    pub fn from_tensors(w: &PthTensors) -> Result<EfficientNetLite0> {
        let stem = {
            let t = w.get("_conv_stem.weight")?;
            ensure!(
                t.dims() == [32, 3, 3, 3],
                "_conv_stem.weight has shape {:?}",
                t.dims()
            );
            // torch order (cin, ky, kx); the patch rows are (ky, kx, cin).
            let raw = vec_of(t)?;
            let (scale, shift) = bn(w, "_bn0")?;
            let mut folded = vec![0f32; 27 * 32];
            for o in 0..32 {
                for ci in 0..3 {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let row = (ky * 3 + kx) * 3 + ci;
                            folded[row * 32 + o] = raw[((o * 3 + ci) * 3 + ky) * 3 + kx] * scale[o];
                        }
                    }
                }
            }
            Pointwise {
                w: Tensor::from_vec(folded, (27, 32), &Device::Cpu)?,
                b: Tensor::from_vec(shift, 32, &Device::Cpu)?,
                cin: 27,
                cout: 32,
            }
        };
        let mut blocks = Vec::new();
        for &(repeats, k, stride, expand, cin0, cout) in &STAGES {
            for r in 0..repeats {
                let i = blocks.len();
                let cin = if r == 0 { cin0 } else { cout };
                let stride = if r == 0 { stride } else { 1 };
                let cexp = cin * expand;
                let p = format!("_blocks.{i}");
                let expand = if expand == 1 {
                    None
                } else {
                    Some(pointwise(
                        w,
                        &format!("{p}._expand_conv"),
                        &format!("{p}._bn0"),
                        cin,
                        cexp,
                    )?)
                };
                let t = w.get(&format!("{p}._depthwise_conv.weight"))?;
                ensure!(
                    t.dims() == [cexp, 1, k, k],
                    "{p}._depthwise_conv.weight has shape {:?}, expected [{cexp}, 1, {k}, {k}]",
                    t.dims()
                );
                let raw = vec_of(t)?;
                let (scale, shift) = bn(w, &format!("{p}._bn1"))?;
                let mut dw = vec![0f32; k * k * cexp];
                for ch in 0..cexp {
                    for tap in 0..k * k {
                        dw[tap * cexp + ch] = raw[ch * k * k + tap] * scale[ch];
                    }
                }
                let project = pointwise(
                    w,
                    &format!("{p}._project_conv"),
                    &format!("{p}._bn2"),
                    cexp,
                    cout,
                )?;
                blocks.push(Block {
                    expand,
                    dw: Depthwise {
                        w: dw,
                        b: shift,
                        k,
                        stride,
                        c: cexp,
                    },
                    project,
                    residual: stride == 1 && cin == cout,
                    cin,
                    cout,
                });
            }
        }
        if w.get("_blocks.16._depthwise_conv.weight").is_ok() {
            bail!("more than 16 blocks: not Lite0");
        }
        let head = pointwise(w, "_conv_head", "_bn1", STAGE7_CHANNELS, FEATURE_DIM)?;
        let fc = w.get("_fc.weight")?;
        ensure!(
            fc.dims() == [imagenet::NUM_CLASSES, FEATURE_DIM],
            "_fc.weight has shape {:?}",
            fc.dims()
        );
        let fc_rows = vec_of(fc)?;
        let fc_b = vec_of(w.get("_fc.bias")?)?;
        ensure!(
            fc_b.len() == imagenet::NUM_CLASSES,
            "_fc.bias has {} values",
            fc_b.len()
        );
        Ok(EfficientNetLite0 {
            stem,
            blocks,
            head,
            fc_w: fc.t()?.contiguous()?,
            fc_b,
            fc_rows,
        })
    }

    /// The 224x224 input: shorter side resized to 224, centre crop,
    /// normalized; channels-last `[224 * 224 * 3]`.
    pub fn preprocess(&self, image: &RgbImage) -> Result<Vec<f32>> {
        let (w, h) = image.dimensions();
        ensure!(w > 0 && h > 0, "empty image");
        let short = w.min(h) as f64;
        let scale = INPUT as f64 / short;
        let nw = ((w as f64 * scale).round() as u32).max(INPUT as u32);
        let nh = ((h as f64 * scale).round() as u32).max(INPUT as u32);
        let resized = image::imageops::resize(image, nw, nh, image::imageops::FilterType::Triangle);
        let x0 = (nw - INPUT as u32) / 2;
        let y0 = (nh - INPUT as u32) / 2;
        let mut out = Vec::with_capacity(INPUT * INPUT * 3);
        for y in 0..INPUT as u32 {
            for x in 0..INPUT as u32 {
                let p = resized.get_pixel(x0 + x, y0 + y);
                for ch in 0..3 {
                    out.push((p[ch] as f32 - MEAN) / STD);
                }
            }
        }
        Ok(out)
    }

    /// Stem and blocks 0..[`MID_BLOCK`], dense.
    pub fn early(&self, input: &[f32]) -> Result<Mid> {
        ensure!(
            input.len() == INPUT * INPUT * 3,
            "input has {} values, expected 224*224*3",
            input.len()
        );
        let mut macs = 0u64;
        // Stem: 3x3 stride 2, symmetric padding 1, as patches x [27, 32].
        let side = INPUT / 2;
        let mut patches = vec![0f32; side * side * 27];
        patches
            .par_chunks_mut(side * 27)
            .enumerate()
            .for_each(|(oy, row)| {
                for ox in 0..side {
                    for ky in 0..3 {
                        let iy = (oy * 2 + ky) as isize - 1;
                        if iy < 0 || iy >= INPUT as isize {
                            continue;
                        }
                        for kx in 0..3 {
                            let ix = (ox * 2 + kx) as isize - 1;
                            if ix < 0 || ix >= INPUT as isize {
                                continue;
                            }
                            let src = (iy as usize * INPUT + ix as usize) * 3;
                            let dst = ox * 27 + (ky * 3 + kx) * 3;
                            row[dst..dst + 3].copy_from_slice(&input[src..src + 3]);
                        }
                    }
                }
            });
        let mut map = self.stem.apply(patches, side * side, true, &mut macs)?;
        let (mut h, mut w) = (side, side);
        let mut stage3 = None;
        for bi in 0..MID_BLOCK {
            let block = &self.blocks[bi];
            let (oh, ow) = (h.div_ceil(block.dw.stride), w.div_ceil(block.dw.stride));
            let in_mask = GridMask::full(h, w);
            let out_mask = GridMask::full(oh, ow);
            let (_, out) = self.run_block(
                bi,
                &map,
                &in_mask,
                &out_mask,
                true,
                Fill::Zero,
                None,
                &mut macs,
            )?;
            map = out;
            (h, w) = (oh, ow);
            if bi == FEATURE_BLOCKS[0] {
                stage3 = Some(TokenGrid {
                    h,
                    w,
                    c: block.cout,
                    data: map.clone(),
                });
            }
        }
        let stage3 = stage3.context("stage 3 output missing")?;
        Ok(Mid {
            stage3,
            stage4: TokenGrid {
                h,
                w,
                c: MID_CHANNELS,
                data: map,
            },
            macs,
        })
    }

    /// One block over masks; returns (expanded map, output map).
    #[allow(clippy::too_many_arguments)]
    fn run_block(
        &self,
        bi: usize,
        input: &[f32],
        in_mask: &GridMask,
        out_mask: &GridMask,
        real_input: bool,
        fill: Fill,
        cache: Option<&(Vec<f32>, Vec<f32>)>,
        macs: &mut u64,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let block = &self.blocks[bi];
        let (h, w) = (in_mask.h, in_mask.w);
        let ow = out_mask.w;
        ensure!(input.len() == h * w * block.cin, "block {bi}: input size");
        let outputs = out_mask.compute_positions();
        let cexp = block.dw.c;
        let expanded = match &block.expand {
            None => input.to_vec(),
            Some(expand) => {
                let need: Vec<usize> = if real_input {
                    let need = block.dw.window_inputs(h, w, ow, &outputs);
                    (0..h * w).filter(|&p| need[p]).collect()
                } else {
                    in_mask.compute_positions()
                };
                let rows =
                    expand.apply(gather_rows(input, block.cin, &need), need.len(), true, macs)?;
                let mut map = vec![0f32; h * w * cexp];
                scatter_rows(&mut map, cexp, &need, &rows);
                if !real_input {
                    fill_reused(
                        &mut map,
                        cexp,
                        in_mask,
                        cache.map(|c| c.0.as_slice()),
                        "expand",
                    )?;
                    fill_missing(&mut map, cexp, w, &in_mask.kept, fill);
                }
                map
            }
        };
        let dw = block.dw.apply(&expanded, h, w, ow, &outputs, macs);
        let mut rows = block.project.apply(dw, outputs.len(), false, macs)?;
        if block.residual {
            for (i, &q) in outputs.iter().enumerate() {
                let src = &input[q * block.cin..(q + 1) * block.cin];
                for (o, x) in rows[i * block.cout..(i + 1) * block.cout]
                    .iter_mut()
                    .zip(src)
                {
                    *o += x;
                }
            }
        }
        let mut out = vec![0f32; out_mask.h * ow * block.cout];
        scatter_rows(&mut out, block.cout, &outputs, &rows);
        fill_reused(
            &mut out,
            block.cout,
            out_mask,
            cache.map(|c| c.1.as_slice()),
            "block output",
        )?;
        Ok((expanded, out))
    }

    /// The 7x7 kept mask that a 14x14 kept mask leads to under `rule`.
    pub fn downsample(&self, mid_kept: &[bool], rule: StrideRule) -> Vec<bool> {
        let k = self.blocks[STRIDE_BLOCK].dw.k;
        let pad = (k - 1) / 2;
        let mut fin = vec![false; FINAL_SIDE * FINAL_SIDE];
        for oy in 0..FINAL_SIDE {
            for ox in 0..FINAL_SIDE {
                fin[oy * FINAL_SIDE + ox] = match rule {
                    StrideRule::Centre => {
                        let (cy, cx) = (oy * 2 + k / 2 - pad, ox * 2 + k / 2 - pad);
                        mid_kept[cy * MID_SIDE + cx]
                    }
                    StrideRule::Cell => (0..2).any(|dy| {
                        (0..2).any(|dx| mid_kept[(oy * 2 + dy) * MID_SIDE + ox * 2 + dx])
                    }),
                };
            }
        }
        fin
    }

    /// Blocks [`MID_BLOCK`].., head, pooling and classifier over `plan`;
    /// positions kept but not computed reuse `cache` (the previous frame's
    /// trace).
    pub fn late(&self, mid: &Mid, plan: &LatePlan, cache: Option<&LateTrace>) -> Result<Late> {
        ensure!(
            mid.stage4.data.len() == MID_SIDE * MID_SIDE * MID_CHANNELS,
            "stage-4 map size"
        );
        ensure!(
            plan.fin.kept_count() > 0,
            "the plan keeps no token of the final grid"
        );
        let mut macs = 0u64;
        let mut blocks: Vec<(Vec<f32>, Vec<f32>)> =
            Vec::with_capacity(self.blocks.len() - MID_BLOCK);
        let mut stage5 = None;
        let full_mid = GridMask::full(MID_SIDE, MID_SIDE);
        let first_sparse = plan.sparse_from.clamp(MID_BLOCK, STRIDE_BLOCK);
        for bi in MID_BLOCK..self.blocks.len() {
            let block = &self.blocks[bi];
            // Blocks before `sparse_from` run dense on the 14x14 grid.
            let in_mask = if bi < first_sparse {
                &full_mid
            } else if bi <= STRIDE_BLOCK {
                &plan.mid
            } else {
                &plan.fin
            };
            let out_mask = if bi < first_sparse && bi < STRIDE_BLOCK {
                &full_mid
            } else if bi < STRIDE_BLOCK {
                &plan.mid
            } else {
                &plan.fin
            };
            let input: &[f32] = match blocks.last() {
                None => &mid.stage4.data,
                Some((_, out)) => out.as_slice(),
            };
            let real = bi < first_sparse || (bi == first_sparse && plan.real_neighbours);
            let cached = cache.map(|c| &c.blocks[bi - MID_BLOCK]);
            let io = self.run_block(
                bi, input, in_mask, out_mask, real, plan.fill, cached, &mut macs,
            )?;
            if bi == FEATURE_BLOCKS[1] {
                stage5 = Some(TokenGrid {
                    h: MID_SIDE,
                    w: MID_SIDE,
                    c: block.cout,
                    data: io.1.clone(),
                });
            }
            blocks.push(io);
        }
        let last = &blocks.last().context("no late block")?.1;
        let fin = &plan.fin;
        let stage7 = TokenGrid {
            h: FINAL_SIDE,
            w: FINAL_SIDE,
            c: STAGE7_CHANNELS,
            data: last.clone(),
        };
        let stage5 = stage5.context("stage 5 output missing")?;
        if !plan.head {
            return Ok(Late {
                tokens: Vec::new(),
                pooled: Vec::new(),
                logits: Vec::new(),
                stage5,
                stage7,
                trace: LateTrace {
                    blocks,
                    head: Vec::new(),
                    fin_kept: fin.kept.clone(),
                    mid_kept: plan.mid.kept.clone(),
                },
                macs,
                classifier_macs: 0,
            });
        }
        let outputs = fin.compute_positions();
        let rows = self.head.apply(
            gather_rows(last, STAGE7_CHANNELS, &outputs),
            outputs.len(),
            true,
            &mut macs,
        )?;
        let mut head = vec![0f32; FINAL_SIDE * FINAL_SIDE * FEATURE_DIM];
        scatter_rows(&mut head, FEATURE_DIM, &outputs, &rows);
        fill_reused(
            &mut head,
            FEATURE_DIM,
            fin,
            cache.map(|c| c.head.as_slice()),
            "head",
        )?;
        let tokens: Vec<Token> = (0..fin.kept.len())
            .filter(|&p| fin.kept[p])
            .map(|p| Token {
                row: p / FINAL_SIDE,
                col: p % FINAL_SIDE,
                feature: head[p * FEATURE_DIM..(p + 1) * FEATURE_DIM].to_vec(),
            })
            .collect();
        // Global average pooling: over the kept tokens, or (with a fill)
        // over the whole grid with the missing positions filled, i.e. each
        // kept token weighted by the area it stands for.
        let mut pooled = vec![0f32; FEATURE_DIM];
        if plan.fill == Fill::Zero {
            for t in &tokens {
                for (a, x) in pooled.iter_mut().zip(&t.feature) {
                    *a += x / tokens.len() as f32;
                }
            }
        } else {
            let mut filled = head.clone();
            fill_missing(&mut filled, FEATURE_DIM, FINAL_SIDE, &fin.kept, plan.fill);
            let n = fin.kept.len() as f32;
            for row in filled.chunks_exact(FEATURE_DIM) {
                for (a, x) in pooled.iter_mut().zip(row) {
                    *a += x / n;
                }
            }
        }
        let mut classifier_macs = 0;
        let logits = self.classify_pooled(&pooled, &mut classifier_macs)?;
        Ok(Late {
            tokens,
            pooled,
            logits,
            stage5,
            stage7,
            trace: LateTrace {
                blocks,
                head,
                fin_kept: fin.kept.clone(),
                mid_kept: plan.mid.kept.clone(),
            },
            macs,
            classifier_macs,
        })
    }

    fn classify_pooled(&self, pooled: &[f32], macs: &mut u64) -> Result<Vec<f32>> {
        *macs += (FEATURE_DIM * imagenet::NUM_CLASSES) as u64;
        let x = Tensor::from_slice(pooled, (1, FEATURE_DIM), &Device::Cpu)?;
        let mut y = vec_of(&x.matmul(&self.fc_w)?)?;
        for (v, b) in y.iter_mut().zip(&self.fc_b) {
            *v += b;
        }
        Ok(y)
    }

    /// ImageNet-1k logits of a pooled 1280-d feature.
    pub fn logits(&self, pooled: &[f32]) -> Result<Vec<f32>> {
        ensure!(
            pooled.len() == FEATURE_DIM,
            "pooled feature has {} values",
            pooled.len()
        );
        self.classify_pooled(pooled, &mut 0)
    }

    /// The head (1x1 conv 320 -> 1280 with ReLU6) of each of `n` stage-7
    /// tokens (`[n * 320]`, row-major): `[n * 1280]`.
    pub fn head_features(&self, stage7: &[f32]) -> Result<Vec<f32>> {
        let n = rows_of(stage7, STAGE7_CHANNELS, "stage-7 tokens")?;
        if n == 0 {
            return Ok(Vec::new());
        }
        self.head.apply(stage7.to_vec(), n, true, &mut 0)
    }

    /// ImageNet-1k logits of each of `n` token features (`[n * 1280]`,
    /// row-major): `[n * 1000]`, one matmul.
    pub fn token_logits(&self, features: &[f32]) -> Result<Vec<f32>> {
        let n = rows_of(features, FEATURE_DIM, "token features")?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let x = Tensor::from_slice(features, (n, FEATURE_DIM), &Device::Cpu)?;
        let mut y = vec_of(&x.matmul(&self.fc_w)?)?;
        for row in y.chunks_exact_mut(imagenet::NUM_CLASSES) {
            for (v, b) in row.iter_mut().zip(&self.fc_b) {
                *v += b;
            }
        }
        Ok(y)
    }

    /// Logits of `classes` for one 1280-d token feature (a dot product per
    /// class: cheap enough per token to say where a label is).
    pub fn class_logits(&self, feature: &[f32], classes: &[usize]) -> Result<Vec<f32>> {
        ensure!(
            feature.len() == FEATURE_DIM,
            "feature has {} values",
            feature.len()
        );
        classes
            .iter()
            .map(|&c| {
                ensure!(c < imagenet::NUM_CLASSES, "class {c} out of range");
                let row = &self.fc_rows[c * FEATURE_DIM..(c + 1) * FEATURE_DIM];
                Ok(row.iter().zip(feature).map(|(a, b)| a * b).sum::<f32>() + self.fc_b[c])
            })
            .collect()
    }

    /// The unpruned network on `image`: (early, late).
    pub fn encode(&self, image: &RgbImage) -> Result<(Mid, Late)> {
        let input = self.preprocess(image)?;
        let mid = self.early(&input)?;
        let late = self.late(&mid, &LatePlan::dense(), None)?;
        Ok((mid, late))
    }

    /// The top `k` ImageNet-1k classes of `image` (unpruned).
    pub fn classify(&self, image: &RgbImage, k: usize) -> Result<Vec<Prediction>> {
        let (_, late) = self.encode(image)?;
        Ok(top_k(&late.logits, k))
    }

    /// Feature grids at three depths: 28x28x40, 14x14x112, 7x7x320.
    pub fn feature_grids(&self, image: &RgbImage) -> Result<[TokenGrid; 3]> {
        let (mid, late) = self.encode(image)?;
        Ok([mid.stage3, late.stage5, late.stage7])
    }
}

/// Softmax of `logits`, top `k` by probability.
pub fn top_k(logits: &[f32], k: usize) -> Vec<Prediction> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|x| (x - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]));
    order
        .into_iter()
        .take(k)
        .map(|class| Prediction {
            class,
            label: imagenet::class_name(class),
            probability: exp[class] / sum,
        })
        .collect()
}

/// Index of the largest logit.
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in logits.iter().enumerate() {
        if *x > logits[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_can_be_shared_across_sessions() {
        fn shared<T: Send + Sync>() {}
        shared::<EfficientNetLite0>();
        shared::<std::sync::Arc<EfficientNetLite0>>();
    }

    #[test]
    fn top_k_is_sorted_softmax() {
        let logits = vec![0.0, 2.0, 1.0];
        let top = top_k(&logits, 2);
        assert_eq!(top[0].class, 1);
        assert_eq!(top[1].class, 2);
        assert!(top[0].probability > top[1].probability);
        assert_eq!(argmax(&logits), 1);
    }
}
