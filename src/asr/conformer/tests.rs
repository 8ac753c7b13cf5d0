//! The paper's correctness property on small random models: streaming chunk
//! by chunk with caches gives the offline limited-context result; and a
//! generated `.nemo` loads and runs.

use std::sync::Arc;

use super::config::{ConvNorm, EncoderConfig, FeatureConfig, ModelConfig};
use super::encoder::{AttContext, Weights, random_weights};
use super::nemo;
use super::tokenizer::Tokenizer;
use super::*;

fn model(encoder: EncoderConfig, seed: u64) -> ConformerModel {
    let pieces = nemo::toy_pieces();
    let config = ModelConfig {
        features: FeatureConfig::nemo_default(encoder.feat_in),
        encoder,
        ctc_prefix: "decoder".into(),
        vocabulary: None,
    };
    let mut weights = random_weights(&config.encoder, "decoder", pieces.len(), seed).unwrap();
    super::encoder::make_talkative(&mut weights, "decoder").unwrap();
    let tokenizer =
        Tokenizer::from_sentencepiece(&Tokenizer::sentencepiece_bytes(&pieces)).unwrap();
    ConformerModel::new(config, &Weights::new(weights), tokenizer).unwrap()
}

/// 6.4 s of a chirp with noise: speech-like energy in every band.
fn audio() -> Vec<f32> {
    crate::bench::conformer::chirp(102_400, 400.0, 12345)
}

/// Streams `audio` in uneven pieces and returns the encoder output of every
/// chunk, concatenated, and the chunk sizes.
fn streamed(model: &ConformerModel, ctx: AttContext, audio: &[f32]) -> (Tensor, Vec<usize>) {
    let mut stream = Stream::new(model).unwrap();
    let mut outs = Vec::new();
    let mut at = 0;
    for (i, size) in [160usize, 2_000, 77, 5_120, 1_280, 9_999, 640]
        .iter()
        .cycle()
        .enumerate()
    {
        if at >= audio.len() {
            break;
        }
        let end = (at + size).min(audio.len());
        outs.extend(stream.push(model, ctx, &audio[at..end], None).unwrap());
        at = end;
        assert!(i < 10_000);
    }
    outs.extend(stream.finish(model, ctx).unwrap());
    let sizes = outs.iter().map(|t| t.dims()[0]).collect();
    (Tensor::cat(&outs, 0).unwrap(), sizes)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn check_equivalence(encoder: EncoderConfig, lookaheads: &[usize], seed: u64) {
    let model = model(encoder, seed);
    let audio = audio();
    for &lookahead in lookaheads {
        let ctx = model.context(Some(lookahead)).unwrap();
        let offline = model.encode_offline(&audio, ctx).unwrap();
        let (stream, sizes) = streamed(&model, ctx, &audio);
        let frames = offline.dims()[0];
        assert_eq!(
            frames,
            1 + (102_400 / 160) / 8 + 1 - 1,
            "encoder frames of 6.4 s"
        );
        // Every chunk but the last is exactly right + 1 frames.
        assert!(
            sizes[..sizes.len() - 1].iter().all(|&s| s == lookahead + 1),
            "{sizes:?}"
        );
        assert!(sizes.len() >= frames / (lookahead + 1));
        let diff = max_abs_diff(&offline, &stream);
        println!(
            "look-ahead {lookahead}: {frames} frames, {} chunks, max |offline - streamed| = {diff:e}",
            sizes.len()
        );
        assert!(diff < 1e-4, "look-ahead {lookahead}: max abs diff {diff}");
        // The attention really is limited: with a different left context the
        // output changes, so the test would see a wrong mask.
        let wider = model
            .encoder
            .forward_offline(
                &model
                    .encoder
                    .subsample(
                        &model.frontend.offline(&audio),
                        model.frontend.frames_for(audio.len()),
                    )
                    .unwrap(),
                AttContext {
                    left: ctx.left + 4 * ctx.chunk(),
                    right: ctx.right,
                },
            )
            .unwrap();
        assert!(
            max_abs_diff(&offline, &wider) > 1e-3,
            "left context had no effect"
        );
    }
}

#[test]
fn streaming_with_caches_equals_offline_with_masks() {
    // Left contexts of 16/14 frames against an 80-frame utterance, so the
    // caches fill and the limit applies; [16, 13] also leaves cache frames
    // the mask must hide (16 cached, one 14-frame chunk visible).
    let contexts = vec![[16, 13], [14, 6], [14, 1], [14, 0]];
    check_equivalence(EncoderConfig::tiny(contexts), &[0, 1, 13], 7);
}

#[test]
fn streaming_equals_offline_with_layer_norm_and_symmetric_subsampling() {
    let mut cfg = EncoderConfig::tiny(vec![[12, 1], [12, 0], [16, 13]]);
    cfg.conv_norm = ConvNorm::LayerNorm;
    cfg.causal_downsampling = false;
    cfg.use_bias = false;
    cfg.n_layers = 2;
    check_equivalence(cfg, &[0, 1, 13], 11);
}

#[test]
fn partials_grow_chunk_by_chunk_and_final_matches_offline_text() {
    let model = Arc::new(model(EncoderConfig::tiny(vec![[14, 1], [14, 0]]), 3));
    let ctx = model.context(Some(1)).unwrap();
    let audio = audio();
    let offline = model.encode_offline(&audio, ctx).unwrap();
    let offline_text = model.text(&model.ctc.best(&offline).unwrap());
    assert!(!offline_text.is_empty(), "random weights still emit tokens");

    let mut asr = ConformerAsr::new(model.clone(), ctx).unwrap();
    let mut frames = Vec::new();
    let mut partials: Vec<String> = Vec::new();
    for piece in audio.chunks(3_200) {
        partials.push(asr.partial(piece).unwrap());
        frames.push(asr.frames_encoded());
    }
    // Partials only grow, word by word, and are a start of the final.
    for pair in partials.windows(2) {
        assert!(pair[1].starts_with(&pair[0]), "{pair:?}");
    }
    let last = partials.last().unwrap();
    assert!(!last.is_empty());
    assert!(
        offline_text.starts_with(&format!("{last} ")),
        "{last:?} / {offline_text:?}"
    );
    // 200 ms pieces, 160 ms chunks: the encoder advances on nearly every call.
    let advancing = frames.windows(2).filter(|w| w[1] > w[0]).count();
    assert!(advancing >= frames.len() * 3 / 4, "{frames:?}");
    let speculated = asr.speculate(&[], &mut |_| {}).unwrap();
    assert_eq!(speculated, offline_text);
    let fin = asr.finalize(&[]).unwrap();
    assert_eq!(fin, offline_text);
    // After finalize the next utterance starts fresh.
    assert_eq!(asr.frames_encoded(), 0);
    assert_eq!(asr.finalize(&audio).unwrap(), offline_text);
}

#[test]
fn a_written_nemo_loads_and_runs() {
    let dir = std::env::temp_dir().join(format!("duplex-conformer-nemo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.nemo");
    let pieces = nemo::toy_pieces();
    let config = ModelConfig {
        features: FeatureConfig::nemo_default(80),
        encoder: EncoderConfig::tiny(vec![[14, 6], [14, 1]]),
        ctc_prefix: "decoder".into(),
        vocabulary: None,
    };
    let weights = random_weights(&config.encoder, "decoder", pieces.len(), 5).unwrap();
    nemo::write(&path, &config, &weights, &pieces).unwrap();

    let loaded = nemo::load(&path).unwrap();
    assert_eq!(loaded.config, config);
    assert_eq!(loaded.tokenizer.len(), pieces.len());
    // Same weights as the in-memory model: same output.
    let direct = ConformerModel::new(
        config.clone(),
        &Weights::new(weights),
        Tokenizer::from_sentencepiece(&Tokenizer::sentencepiece_bytes(&pieces)).unwrap(),
    )
    .unwrap();
    let audio = &audio()[..32_000];
    let ctx = loaded.context(None).unwrap();
    assert_eq!(ctx, AttContext { left: 14, right: 6 });
    let a = loaded.encode_offline(audio, ctx).unwrap();
    let b = direct.encode_offline(audio, ctx).unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    let mut asr = ConformerAsr::new(Arc::new(loaded), ctx).unwrap();
    asr.partial(audio).unwrap();
    assert!(asr.frames_encoded() > 0);

    // Older .nemo files are gzipped tars.
    let gz_path = dir.join("tiny-gz.nemo");
    {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz_path).unwrap(),
            flate2::Compression::fast(),
        );
        gz.write_all(&std::fs::read(&path).unwrap()).unwrap();
        gz.finish().unwrap();
    }
    let from_gz = nemo::load(&gz_path).unwrap();
    assert_eq!(
        max_abs_diff(&from_gz.encode_offline(audio, ctx).unwrap(), &b),
        0.0
    );

    // A checkpoint missing a tensor names it.
    let mut missing = random_weights(&config.encoder, "decoder", pieces.len(), 5).unwrap();
    missing.remove("encoder.layers.1.self_attn.linear_pos.weight");
    nemo::write(&path, &config, &missing, &pieces).unwrap();
    let err = format!("{:#}", nemo::load(&path).err().unwrap());
    assert!(
        err.contains("encoder.layers.1.self_attn.linear_pos.weight"),
        "{err}"
    );
    // Not a .nemo at all.
    std::fs::write(&path, b"hello").unwrap();
    assert!(nemo::load(&path).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_large_configuration_has_about_114m_parameters() {
    let cfg = EncoderConfig::large();
    let n: usize = super::encoder::parameter_shapes(&cfg, "decoder", 1024)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    println!("large: {n} parameters");
    assert!((105_000_000..125_000_000).contains(&n), "{n}");
}
