//! The vision encoder on real photos: classification, the `.pth` loader's
//! errors, spatial and temporal token pruning, and the vision expert's
//! token reduction.

mod common;

use std::sync::{Arc, OnceLock};

use duplex::models::ModelStore;
use duplex::vision::efficientnet::EfficientNetLite0;

fn model() -> Arc<EfficientNetLite0> {
    static MODEL: OnceLock<Arc<EfficientNetLite0>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            Arc::new(
                EfficientNetLite0::from_store(&ModelStore::from_env())
                    .expect("EfficientNet-Lite0 (duplex models install)"),
            )
        })
        .clone()
}

const PHOTOS: [&str; 14] = [
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "astronaut.png",
    "camera.png",
    "coins.png",
    "moon.png",
    "horse.png",
    "hubble_deep_field.jpg",
    "grass.png",
    "gravel.png",
    "brick.png",
];

#[test]
fn real_photos_are_classified_sensibly() {
    let model = model();
    for name in PHOTOS {
        let top = model
            .classify(&common::test_photo_rgb(name), 3)
            .expect("classify");
        let shown: Vec<String> = top
            .iter()
            .map(|p| format!("{} {:.2}", p.label, p.probability))
            .collect();
        println!("{name:24} {}", shown.join(", "));
    }
}

fn top3(name: &str) -> Vec<&'static str> {
    let top = model()
        .classify(&common::test_photo_rgb(name), 3)
        .expect("classify");
    top.iter().map(|p| p.label).collect()
}

#[test]
fn what_the_real_model_sees() {
    // What EfficientNet-Lite0 really answers (printed by the test above).
    let cat = top3("chelsea.png");
    assert!(
        ["tabby", "tiger cat", "Egyptian cat"].contains(&cat[0]),
        "{cat:?}"
    );
    let coffee = top3("coffee.png");
    assert!(
        coffee
            .iter()
            .any(|l| ["espresso", "cup", "coffee mug"].contains(l)),
        "{coffee:?}"
    );
    assert_eq!(coffee[0], "espresso");
    let rocket = top3("rocket.jpg");
    assert!(["missile", "projectile"].contains(&rocket[0]), "{rocket:?}");
    for bike in ["motorcycle_left.png", "motorcycle_right.png"] {
        let top = top3(bike);
        assert!(
            ["moped", "motor scooter"].contains(&top[0]),
            "{bike}: {top:?}"
        );
    }
    assert_eq!(top3("camera.png")[0], "tripod");
}

#[test]
fn loader_errors_say_what_is_wrong() {
    use duplex::vision::pth::PthTensors;
    let path = ModelStore::from_env()
        .file(
            duplex::models::ids::EFFICIENTNET_LITE0,
            duplex::models::files::EFFICIENTNET_LITE0_PTH,
        )
        .expect("model installed");
    let bytes = std::fs::read(&path).expect("read .pth");
    // Cut in the state dict pickle, and in the storages.
    for cut in [2_000, bytes.len() / 2, bytes.len() - 10] {
        let err = PthTensors::parse(&bytes[..cut]).expect_err("truncated");
        let msg = format!("{err:#}");
        assert!(msg.contains("truncated"), "cut at {cut}: {msg}");
    }
    // A real zip file (the newer torch format) is refused with the reason.
    let mut zip_bytes = Vec::new();
    {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(&mut zip_bytes));
        zip.start_file("archive/data.pkl", zip::write::SimpleFileOptions::default())
            .expect("zip");
        std::io::Write::write_all(&mut zip, b"\x80\x02}q\x00.").expect("zip");
        zip.finish().expect("zip");
    }
    let err = PthTensors::parse(&zip_bytes).expect_err("zip");
    assert!(format!("{err:#}").contains("zip-format"), "{err:#}");
    // A missing tensor is named.
    let weights = PthTensors::parse(&bytes).expect("whole file");
    assert_eq!(weights.len(), 296);
    let err = weights
        .get("_blocks.99._expand_conv.weight")
        .expect_err("missing");
    assert!(
        format!("{err:#}").contains("_blocks.99._expand_conv.weight"),
        "{err:#}"
    );
    let dir = common::TempDir::new("pth");
    let cut = dir.path().join("cut.pth");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).expect("write");
    let err = EfficientNetLite0::load(&cut)
        .err()
        .expect("truncated file refused");
    assert!(format!("{err:#}").contains("cut.pth"), "{err:#}");
}

/// Test frames from the photos: the whole photo, a mirror, a zoom and two
/// pans (crops of 70 % of each side), as a camera would see them.
fn test_frames() -> Vec<(String, image::RgbImage)> {
    let mut frames = Vec::new();
    for name in PHOTOS {
        let img = common::test_photo_rgb(name);
        let (w, h) = img.dimensions();
        let (cw, ch) = (w * 7 / 10, h * 7 / 10);
        let crop = |x: u32, y: u32| image::imageops::crop_imm(&img, x, y, cw, ch).to_image();
        frames.push((name.to_string(), img.clone()));
        frames.push((
            format!("{name} mirrored"),
            image::imageops::flip_horizontal(&img),
        ));
        frames.push((format!("{name} zoom"), crop((w - cw) / 2, (h - ch) / 2)));
        frames.push((format!("{name} pan left"), crop(0, (h - ch) / 3)));
        frames.push((format!("{name} pan right"), crop(w - cw, (h - ch) * 2 / 3)));
    }
    frames
}

#[test]
fn pruning_keeps_the_answer_and_cuts_late_work() {
    use duplex::vision::efficientnet::{Fill, LatePlan, StrideRule, argmax};
    use duplex::vision::prune::{PruneConfig, encode_pruned, plan, select};
    let model = model();
    let frames = test_frames();
    assert!(frames.len() >= 60);
    // Early part once per frame; the late part per configuration.
    let mids: Vec<_> = frames
        .iter()
        .map(|(_, img)| {
            model
                .early(&model.preprocess(img).expect("preprocess"))
                .expect("early")
        })
        .collect();
    let dense: Vec<_> = mids
        .iter()
        .map(|mid| model.late(mid, &LatePlan::dense(), None).expect("late"))
        .collect();
    let reference: Vec<usize> = dense.iter().map(|l| argmax(&l.logits)).collect();
    let dense_macs = dense[0].macs;
    println!("variant                          ratio  agree  late MACs");

    for (rule, real, fill, sparse_from) in [
        (StrideRule::Cell, true, Fill::Zero, 8),
        (StrideRule::Cell, true, Fill::Nearest, 8),
        (StrideRule::Cell, true, Fill::Mean, 8),
        (StrideRule::Cell, false, Fill::Nearest, 8),
        (StrideRule::Centre, true, Fill::Nearest, 8),
        (StrideRule::Cell, true, Fill::Nearest, 11),
        (StrideRule::Cell, true, Fill::Zero, 11),
    ] {
        for ratio in [0.5f32, 0.33, 0.11] {
            let cfg = PruneConfig {
                stride_rule: rule,
                real_neighbours: real,
                fill,
                sparse_from,
                ..PruneConfig::new(ratio)
            };
            let mut agree = 0;
            let mut macs = 0;
            for (mid, want) in mids.iter().zip(&reference) {
                let sel = select(&mid.stage4, &cfg).expect("select");
                let late = model
                    .late(mid, &plan(&model, &sel, &cfg), None)
                    .expect("late");
                agree += usize::from(argmax(&late.logits) == *want);
                macs += late.macs;
            }
            let share = agree as f64 / frames.len() as f64;
            let macs = macs as f64 / frames.len() as f64;
            println!(
                "{:32} {ratio:5.2} {:5.1}% {:6.1} M ({:4.1}% of dense)",
                format!("{rule:?}, real {real}, {fill:?}, from {sparse_from}"),
                share * 100.0,
                macs / 1e6,
                macs / dense_macs as f64 * 100.0
            );
        }
    }
    // Diagnostic: the dense features pooled over the kept 7x7 positions only.
    for ratio in [0.5f32, 0.33, 0.11] {
        let cfg = PruneConfig::new(ratio);
        let mut agree = 0;
        for ((mid, full), want) in mids.iter().zip(&dense).zip(&reference) {
            let sel = select(&mid.stage4, &cfg).expect("select");
            let p = plan(&model, &sel, &cfg);
            let mut pooled = vec![0f32; 1280];
            let n = p.fin.kept_count() as f32;
            for (q, t) in full.tokens.iter().enumerate() {
                if p.fin.kept[q] {
                    for (a, x) in pooled.iter_mut().zip(&t.feature) {
                        *a += x / n;
                    }
                }
            }
            agree += usize::from(argmax(&model.logits(&pooled).expect("logits")) == *want);
        }
        println!(
            "dense features, kept-only pooling {ratio:5.2} {:5.1}%",
            agree as f64 * 100.0 / frames.len() as f64
        );
    }
    // The defaults, end to end with timing (other engineers share the cores).
    println!(
        "\ndefault config, {} frames: ratio, top-1 agreement, median encoder ms/frame, late MACs",
        frames.len()
    );
    for ratio in [1.0f32, 0.33, 0.11] {
        let cfg = PruneConfig::new(ratio);
        let mut ms = Vec::new();
        let mut agree = 0;
        let mut late_macs = 0u64;
        for ((_, img), want) in frames.iter().zip(&reference) {
            let frame = encode_pruned(&model, img, &cfg).expect("encode");
            let t = frame.times;
            ms.push(t.preprocess_ms + t.early_ms + t.select_ms + t.late_ms);
            agree += usize::from(argmax(&frame.late.logits) == *want);
            late_macs += frame.macs.late;
            assert_eq!(frame.selection.count(), cfg.kept_tokens());
        }
        let share = agree as f64 / frames.len() as f64;
        let late_macs = late_macs / frames.len() as u64;
        println!(
            "{ratio:5.2} {:5.1}% {:6.1} ms  {:6.1} M late MACs",
            share * 100.0,
            duplex::bench::median(&mut ms),
            late_macs as f64 / 1e6
        );
        if ratio == 1.0 {
            assert_eq!(agree, frames.len(), "ratio 1.0 is the unpruned network");
            assert_eq!(late_macs, dense_macs);
        } else {
            assert!(
                late_macs < dense_macs,
                "pruning at {ratio} computes fewer late MACs"
            );
            // Measured (2026-11-29, 70 frames): 27 % at 0.33, 1-3 % at 0.11;
            // the goals (95 %, 90 %) are NOT met by this CNN pruning.
            if ratio > 0.3 {
                assert!(share >= 0.2, "agreement at {ratio}: {share}");
            }
        }
    }
}

/// The expert's tokens on the test frames: merging keeps the dense
/// network's top-1 label far better than dropping, with the expert's work
/// falling with the ratio.
#[test]
fn merged_tokens_keep_the_answer_with_a_third_and_a_ninth_of_the_work() {
    use duplex::vision::efficientnet::argmax;
    use duplex::vision::prune::{FrameEncoder, PruneConfig, TemporalConfig};
    use duplex::vision::tokens::{EXPERT_MACS_PER_TOKEN, Reduction, Saliency, select_tokens};
    let model = model();
    let frames = test_frames();
    let mut dense = FrameEncoder::new(model.clone(), PruneConfig::new(1.0), TemporalConfig::off());
    let encoded: Vec<_> = frames
        .iter()
        .map(|(_, img)| dense.encode(img).expect("encode"))
        .collect();
    let agreement = |ratio: f32, reduction: Reduction| {
        let (mut agree, mut macs) = (0usize, 0u64);
        for frame in &encoded {
            let kept = select_tokens(
                &model,
                &frame.late.stage7,
                &frame.stage4,
                ratio,
                Saliency::Global,
                reduction,
            )
            .expect("select tokens");
            assert_eq!(kept.indices.len(), ((ratio * 49.0).round() as usize));
            assert_eq!(
                kept.weights.iter().sum::<f32>() as usize,
                match reduction {
                    Reduction::Merge => 49,
                    Reduction::Prune => kept.indices.len(),
                }
            );
            agree += usize::from(argmax(&kept.mean_logits) == argmax(&frame.late.logits));
            macs += kept.macs;
        }
        let share = agree as f64 / encoded.len() as f64;
        let macs = macs as f64 / encoded.len() as f64;
        println!(
            "{reduction:?} {ratio:4.2}: top-1 agreement {:5.1}%, expert {:5.1} M MACs",
            share * 100.0,
            macs / 1e6
        );
        (share, macs)
    };
    let (all, all_macs) = agreement(1.0, Reduction::Merge);
    assert_eq!(all, 1.0, "keeping every token is the dense network");
    assert!(all_macs >= 49.0 * EXPERT_MACS_PER_TOKEN as f64);
    let (third, third_macs) = agreement(0.33, Reduction::Merge);
    let (ninth, ninth_macs) = agreement(0.11, Reduction::Merge);
    let (pruned, _) = agreement(0.33, Reduction::Prune);
    // Measured on these 70 frames (2026-11-29): merged 97 % at 0.33 and
    // 90 % at 0.11 (`duplex bench vision`, 130 frames: 97.7 % and 90.0 %);
    // dropped 83 % at 0.33.
    assert!(third >= 0.95, "merged at 0.33: {third}");
    assert!(ninth >= 0.87, "merged at 0.11: {ninth}");
    assert!(third > pruned, "merging keeps more than dropping");
    assert!(third_macs < all_macs * 0.36 && ninth_macs < all_macs * 0.13);
}

#[test]
fn a_still_camera_reuses_late_work() {
    use duplex::vision::efficientnet::argmax;
    use duplex::vision::prune::{FrameEncoder, PruneConfig, TemporalConfig};
    let model = model();
    for (what, step) in [
        ("still", 0u32),
        ("pan 4 px/frame", 4),
        ("pan 16 px/frame", 16),
    ] {
        let frames = duplex::bench::vision::clip(&common::test_photo_rgb("chelsea.png"), 8, step);
        for ratio in [1.0f32, 0.33] {
            let mut reuse = FrameEncoder::new(
                model.clone(),
                PruneConfig::new(ratio),
                TemporalConfig::default(),
            );
            let mut fresh = FrameEncoder::new(
                model.clone(),
                PruneConfig::new(ratio),
                TemporalConfig::off(),
            );
            let (mut macs_reuse, mut macs_fresh, mut reused, mut kept, mut agree) =
                (0u64, 0u64, 0, 0, 0);
            for f in &frames {
                let a = reuse.encode(f).expect("encode");
                let b = fresh.encode(f).expect("encode");
                macs_reuse += a.macs.late;
                macs_fresh += b.macs.late;
                reused += a.reused_tokens;
                kept += a.reused_tokens + a.computed_tokens;
                agree += usize::from(argmax(&a.scene_logits) == argmax(&b.late.logits));
                let first = a.late.tokens.first().expect("a kept token");
                let logit = model
                    .class_logits(&first.feature, &[281, 285])
                    .expect("class logits");
                assert_eq!(logit.len(), 2);
            }
            println!(
                "{what:16} ratio {ratio:4.2}: {:5.1}% of kept tokens reused, late MACs {:6.1} M -> {:6.1} M per frame ({:4.1}%), scene top-1 = frame top-1 {agree}/{}",
                reused as f64 * 100.0 / kept as f64,
                macs_fresh as f64 / 8e6,
                macs_reuse as f64 / 8e6,
                macs_reuse as f64 * 100.0 / macs_fresh as f64,
                frames.len()
            );
            if step == 0 {
                assert!(
                    macs_reuse * 2 < macs_fresh,
                    "a still camera halves the late work at least"
                );
                assert!(
                    agree >= frames.len() - 1,
                    "reuse keeps the answer on a still camera"
                );
            }
        }
    }
}
