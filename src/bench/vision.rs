//! `duplex bench vision`: EfficientNet-Lite0 with training-free token
//! pruning on real photos (scikit-image's test photos, `scripts/setup
//! --dev`), per keep ratio against the unpruned run measured in the same
//! run: median ms per frame for preprocessing, early stages, pruning
//! selection and late stages + head, top-1 agreement and late-stage MACs;
//! then temporal reuse on a still and a panning clip made from one photo,
//! against the same clip encoded frame by frame.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use image::RgbImage;

use crate::models::ModelStore;
use crate::vision::analyzer::sightings;
use crate::vision::efficientnet::{EfficientNetLite0, argmax};
use crate::vision::expert::{Analysis, ExpertSettings, VisionExpert};
use crate::vision::prune::{FrameEncoder, PruneConfig, TemporalConfig};
use crate::vision::sampler::{Activity, FrameSampler, SamplerSettings, Thumbnail};
use crate::vision::tokens::{Reduction, Saliency, select_tokens};

use super::median;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Folder of test photos (`target/test-photos`).
    pub photos: PathBuf,
    /// Keep ratios; 1.0 (the reference) is always measured first.
    pub ratios: Vec<f32>,
    /// Frames per temporal clip.
    pub clip_frames: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            photos: PathBuf::from("target/test-photos"),
            ratios: vec![1.0, 0.5, 0.33, 0.11],
            clip_frames: 16,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct RatioResult {
    pub ratio: f32,
    pub kept_tokens: usize,
    pub preprocess_ms: f64,
    pub early_ms: f64,
    pub select_ms: f64,
    pub late_ms: f64,
    pub total_ms: f64,
    /// Top-1 agreement with ratio 1.0 on the same frames.
    pub agreement: f64,
    /// Mean late-stage MACs per frame (blocks and head).
    pub late_macs: f64,
}

#[derive(Debug, Clone)]
pub struct ClipResult {
    pub clip: String,
    pub ratio: f32,
    pub reuse: bool,
    pub late_ms: f64,
    pub late_macs: f64,
    /// Kept stage-4 tokens reused from the previous frame.
    pub reused_share: f64,
    /// Frames whose scene top-1 equals the frame-by-frame top-1.
    pub same_top1: usize,
    pub frames: usize,
}

/// Visual-token pruning for the expert at one keep ratio.
#[derive(Debug, Clone)]
pub struct TokenResult {
    pub ratio: f32,
    pub reduction: Reduction,
    pub saliency: Saliency,
    /// Output tokens kept (of 49): what a VLM's LLM would prefill.
    pub kept_tokens: usize,
    /// Median ms: selection (and merging), head and classifier on the kept
    /// tokens, labels, places.
    pub expert_ms: f64,
    /// Median ms of the encoder up to the stage-7 tokens (the same for
    /// every ratio).
    pub encoder_ms: f64,
    pub expert_macs: f64,
    /// Top-1 of the kept tokens' weighted mean logits equal to the dense
    /// network's.
    pub agreement: f64,
    /// Median prompt tokens of the vision context ("Camera: ...").
    pub prompt_tokens: f64,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub frames: usize,
    pub photos: usize,
    /// Median ms per camera frame of the sampler (decode a 640x480 JPEG,
    /// thumbnail, verdict).
    pub sampling_ms: f64,
    pub ratios: Vec<RatioResult>,
    pub tokens: Vec<TokenResult>,
    pub clips: Vec<ClipResult>,
}

fn photos(dir: &Path) -> Result<Vec<(String, RgbImage)>> {
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!(
            "{}: no test photos (run `scripts/setup --dev`)",
            dir.display()
        )
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "png" || x == "jpg"))
        .collect();
    paths.sort();
    ensure!(
        !paths.is_empty(),
        "{}: no .png/.jpg photos (run `scripts/setup --dev`)",
        dir.display()
    );
    paths
        .into_iter()
        .map(|p| {
            let img = image::open(&p).with_context(|| format!("decoding {}", p.display()))?;
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok((name, img.to_rgb8()))
        })
        .collect()
}

/// Each photo whole, mirrored, zoomed and panned (70 % crops).
fn frames(photos: &[(String, RgbImage)]) -> Vec<RgbImage> {
    let mut out = Vec::new();
    for (_, img) in photos {
        let (w, h) = img.dimensions();
        let (cw, ch) = ((w * 7 / 10).max(1), (h * 7 / 10).max(1));
        let crop = |x: u32, y: u32| image::imageops::crop_imm(img, x, y, cw, ch).to_image();
        out.push(img.clone());
        out.push(image::imageops::flip_horizontal(img));
        out.push(crop((w - cw) / 2, (h - ch) / 2));
        out.push(crop(0, (h - ch) / 3));
        out.push(crop(w - cw, (h - ch) * 2 / 3));
    }
    out
}

/// Square views of `img` shifted by `step` pixels per frame, with a little
/// deterministic sensor noise (a still camera when `step` is 0).
pub fn clip(img: &RgbImage, frames: usize, step: u32) -> Vec<RgbImage> {
    let (w, h) = img.dimensions();
    let side = h.min(w) * 8 / 10;
    let mut seed = 12345u32;
    (0..frames as u32)
        .map(|i| {
            let x = (i * step).min(w - side);
            let mut f = image::imageops::crop_imm(img, x, (h - side) / 2, side, side).to_image();
            for p in f.pixels_mut() {
                for ch in p.0.iter_mut() {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    let noise = ((seed >> 16) % 5) as i16 - 2;
                    *ch = (*ch as i16 + noise).clamp(0, 255) as u8;
                }
            }
            f
        })
        .collect()
}

/// Runs the benchmark (blocking CPU work: call from `spawn_blocking`).
pub fn run(store: &ModelStore, options: &BenchOptions) -> Result<Report> {
    let model = Arc::new(EfficientNetLite0::from_store(store)?);
    let photos = photos(&options.photos)?;
    let frames = frames(&photos);
    let mut ratios = vec![1.0f32];
    ratios.extend(options.ratios.iter().copied().filter(|r| *r != 1.0));
    let mut reference = Vec::new();
    let mut results = Vec::new();
    for &ratio in &ratios {
        let config = PruneConfig::new(ratio);
        let mut enc = FrameEncoder::new(model.clone(), config, TemporalConfig::off());
        let (mut pre, mut early, mut sel, mut late, mut total) =
            (vec![], vec![], vec![], vec![], vec![]);
        let (mut agree, mut macs) = (0usize, 0u64);
        for (i, f) in frames.iter().enumerate() {
            let out = enc.encode(f)?;
            let t = out.times;
            pre.push(t.preprocess_ms);
            early.push(t.early_ms);
            sel.push(t.select_ms);
            late.push(t.late_ms);
            total.push(t.preprocess_ms + t.early_ms + t.select_ms + t.late_ms);
            let top = argmax(&out.late.logits);
            if ratio == 1.0 {
                reference.push(top);
            }
            agree += usize::from(reference[i] == top);
            macs += out.macs.late;
        }
        results.push(RatioResult {
            ratio,
            kept_tokens: config.kept_tokens(),
            preprocess_ms: median(&mut pre),
            early_ms: median(&mut early),
            select_ms: median(&mut sel),
            late_ms: median(&mut late),
            total_ms: median(&mut total),
            agreement: agree as f64 / frames.len() as f64,
            late_macs: macs as f64 / frames.len() as f64,
        });
    }
    let tokens = token_pruning(store, &model, &frames, &ratios, &reference)?;
    let sampling_ms = sampling(&frames)?;
    let source = photos
        .iter()
        .find(|(n, _)| n == "chelsea.png")
        .unwrap_or(&photos[0]);
    let mut clips = Vec::new();
    for (what, step) in [("still", 0u32), ("pan 4 px/frame", 4)] {
        let clip_frames = clip(&source.1, options.clip_frames.max(2), step);
        for ratio in [1.0f32, 0.33] {
            let mut fresh_top = Vec::new();
            for reuse in [false, true] {
                let temporal = if reuse {
                    TemporalConfig::default()
                } else {
                    TemporalConfig::off()
                };
                let mut enc = FrameEncoder::new(model.clone(), PruneConfig::new(ratio), temporal);
                let (mut late, mut macs, mut reused, mut kept, mut same) =
                    (vec![], 0u64, 0usize, 0usize, 0usize);
                for (i, f) in clip_frames.iter().enumerate() {
                    let out = enc.encode(f)?;
                    late.push(out.times.late_ms);
                    macs += out.macs.late;
                    reused += out.reused_tokens;
                    kept += out.reused_tokens + out.computed_tokens;
                    if reuse {
                        same += usize::from(argmax(&out.scene_logits) == fresh_top[i]);
                    } else {
                        fresh_top.push(argmax(&out.late.logits));
                        same += 1;
                    }
                }
                clips.push(ClipResult {
                    clip: format!("{what} ({})", source.0),
                    ratio,
                    reuse,
                    late_ms: median(&mut late),
                    late_macs: macs as f64 / clip_frames.len() as f64,
                    reused_share: reused as f64 / kept.max(1) as f64,
                    same_top1: same,
                    frames: clip_frames.len(),
                });
            }
        }
    }
    Ok(Report {
        frames: frames.len(),
        photos: photos.len(),
        sampling_ms,
        ratios: results,
        tokens,
        clips,
    })
}

/// The sampler's cost per camera frame: each frame as a 640x480 JPEG (what
/// a browser sends), decoded, thumbnailed and judged.
fn sampling(frames: &[RgbImage]) -> Result<f64> {
    let mut sampler = FrameSampler::new(SamplerSettings::default());
    let mut ms = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let f = image::imageops::resize(f, 640, 480, image::imageops::FilterType::Triangle);
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 70).encode_image(&f)?;
        let started = Instant::now();
        let decoded = image::load_from_memory(&jpeg)?.to_rgb8();
        sampler.consider(i as u64 * 100, Thumbnail::of(&decoded), Activity::Idle);
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(median(&mut ms))
}

/// Visual-token pruning on the dense encoder's output, per ratio and
/// saliency: the expert's cost, agreement with the dense top-1
/// (`reference`, per frame), and the prompt tokens of the vision context
/// (SmolLM2's tokenizer, when the model is installed).
fn token_pruning(
    store: &ModelStore,
    model: &Arc<EfficientNetLite0>,
    frames: &[RgbImage],
    ratios: &[f32],
    reference: &[usize],
) -> Result<Vec<TokenResult>> {
    let llm = crate::llm::local::LocalModel::load(store).ok();
    let mut dense = FrameEncoder::new(model.clone(), PruneConfig::new(1.0), TemporalConfig::off());
    let encoded = frames
        .iter()
        .map(|f| dense.encode(f))
        .collect::<Result<Vec<_>>>()?;
    // What the vision node's encoder costs: the dense network up to the
    // stage-7 tokens (the head is the expert's).
    let mut headless = FrameEncoder::new(
        model.clone(),
        PruneConfig::new(1.0).without_head(),
        TemporalConfig::off(),
    );
    let mut encoder_ms = Vec::new();
    for f in frames {
        let t = headless.encode(f)?.times;
        encoder_ms.push(t.preprocess_ms + t.early_ms + t.select_ms + t.late_ms);
    }
    let encoder_ms = median(&mut encoder_ms);
    let mut results = Vec::new();
    for &ratio in ratios {
        for (reduction, saliency) in [
            (Reduction::Merge, Saliency::Global),
            (Reduction::Prune, Saliency::Global),
            (Reduction::Prune, Saliency::Middle),
        ] {
            if ratio == 1.0 && (reduction, saliency) != (Reduction::Merge, Saliency::Global) {
                continue; // the same tokens
            }
            let (mut ms, mut prompt, mut agree, mut macs, mut kept_n) =
                (vec![], vec![], 0usize, 0u64, 0usize);
            for (frame, &want) in encoded.iter().zip(reference) {
                let started = Instant::now();
                let kept = select_tokens(
                    model,
                    &frame.late.stage7,
                    &frame.stage4,
                    ratio,
                    saliency,
                    reduction,
                )?;
                let seen = sightings(&kept, &kept.mean_logits, 3);
                ms.push(started.elapsed().as_secs_f64() * 1000.0);
                agree += usize::from(argmax(&kept.mean_logits) == want);
                macs += kept.macs;
                kept_n = kept.indices.len();
                let mut expert = VisionExpert::new(ExpertSettings::default());
                expert.observe(0, &Analysis { sightings: seen });
                let context = format!("Camera: {}\n", expert.scene().describe(0));
                if let Some(llm) = &llm {
                    prompt.push(llm.tokenize(&context)?.len() as f64);
                }
            }
            results.push(TokenResult {
                ratio,
                encoder_ms,
                reduction,
                saliency,
                kept_tokens: kept_n,
                expert_ms: median(&mut ms),
                expert_macs: macs as f64 / frames.len() as f64,
                agreement: agree as f64 / frames.len() as f64,
                prompt_tokens: median(&mut prompt),
            });
        }
    }
    Ok(results)
}

pub fn print(report: &Report) {
    println!(
        "EfficientNet-Lite0, training-free token pruning at the 14x14 stage-4 grid (196 tokens); {} frames from {} real photos (whole, mirrored, zoomed, two pans)",
        report.frames, report.photos
    );
    println!(
        "median ms per frame; agreement = top-1 equal to ratio 1.0's on the same frame; MACs = late blocks + head per frame"
    );
    println!(
        "{:>5} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>10} {:>7} {:>8}",
        "ratio",
        "kept",
        "prep",
        "early",
        "select",
        "late",
        "total",
        "x1.0",
        "late MACs",
        "x1.0",
        "agree"
    );
    let base = report.ratios.first().cloned().unwrap_or_default();
    for r in &report.ratios {
        println!(
            "{:>5.2} {:>5} {:>8.2} {:>8.2} {:>8.3} {:>8.2} {:>8.2} {:>6.2}x {:>8.1} M {:>6.2}x {:>7.1}%",
            r.ratio,
            r.kept_tokens,
            r.preprocess_ms,
            r.early_ms,
            r.select_ms,
            r.late_ms,
            r.total_ms,
            r.total_ms / base.total_ms,
            r.late_macs / 1e6,
            r.late_macs / base.late_macs,
            r.agreement * 100.0
        );
    }
    println!(
        "\nvisual-token reduction for the expert: the dense encoder's 7x7 stage-7 tokens; head + classifier run on the kept ones (what a VLM's LLM would prefill); MACs include choosing and merging"
    );
    println!(
        "{:>5} {:>6} {:>8} {:>5} {:>10} {:>7} {:>13} {:>12} {:>7} {:>7} {:>14}",
        "ratio",
        "reduce",
        "saliency",
        "kept",
        "expert ms",
        "x1.0",
        "enc+expert ms",
        "expert MACs",
        "x1.0",
        "agree",
        "prompt tokens"
    );
    let base = report.tokens.first().cloned();
    for t in &report.tokens {
        let (ms0, macs0) = base
            .as_ref()
            .map_or((1.0, 1.0), |b| (b.expert_ms, b.expert_macs));
        println!(
            "{:>5.2} {:>6} {:>8} {:>5} {:>10.2} {:>6.2}x {:>13.2} {:>10.1} M {:>6.2}x {:>6.1}% {:>14.0}",
            t.ratio,
            format!("{:?}", t.reduction).to_lowercase(),
            format!("{:?}", t.saliency).to_lowercase(),
            t.kept_tokens,
            t.expert_ms,
            t.expert_ms / ms0,
            t.encoder_ms + t.expert_ms,
            t.expert_macs / 1e6,
            t.expert_macs / macs0,
            t.agreement * 100.0,
            t.prompt_tokens
        );
    }
    println!(
        "\nsampling a camera frame (decode a 640x480 JPEG, 16x16 thumbnail, verdict): {:.2} ms median",
        report.sampling_ms
    );
    println!(
        "\ntemporal reuse (cosine >= 0.98 at stage 4, scene pooled over 4 frames) against frame by frame, same clip:"
    );
    println!(
        "{:28} {:>5} {:>6} {:>9} {:>10} {:>8} {:>8} {:>10}",
        "clip", "ratio", "reuse", "late ms", "late MACs", "x off", "reused", "same top1"
    );
    for pair in report.clips.chunks(2) {
        let off = &pair[0];
        for c in pair {
            println!(
                "{:28} {:>5.2} {:>6} {:>9.2} {:>8.1} M {:>7.2}x {:>7.1}% {:>6}/{}",
                c.clip,
                c.ratio,
                if c.reuse { "on" } else { "off" },
                c.late_ms,
                c.late_macs / 1e6,
                c.late_macs / off.late_macs,
                c.reused_share * 100.0,
                c.same_top1,
                c.frames
            );
        }
    }
}
