//! Unit tests of the Whisper backend. The tests that need the installed
//! model (`duplex models install whisper-tiny-en`) are here too; the WER and
//! abort tests on real speech are in `tests/whisper_backend.rs`.

use super::*;
use crate::models::testutil::TempDir;

#[test]
fn audio_ctx_follows_the_audio_within_bounds() {
    let sec = SAMPLE_RATE as usize;
    assert_eq!(audio_ctx_for(sec, 0), 50 + AUDIO_CTX_MARGIN);
    assert_eq!(audio_ctx_for(sec + 1, 0), 51 + AUDIO_CTX_MARGIN);
    assert_eq!(audio_ctx_for(sec, DEFAULT_AUDIO_CTX_FLOOR), DEFAULT_AUDIO_CTX_FLOOR);
    assert_eq!(audio_ctx_for(10 * sec, 384), 500 + AUDIO_CTX_MARGIN);
    assert_eq!(audio_ctx_for(29 * sec, 384), 29 * 50 + AUDIO_CTX_MARGIN);
    assert_eq!(audio_ctx_for(30 * sec, 384), MAX_AUDIO_CTX);
    assert_eq!(audio_ctx_for(100 * sec, 384), MAX_AUDIO_CTX);
    assert_eq!(audio_ctx_for(sec, 5000), MAX_AUDIO_CTX);
    assert_eq!(auto_max_tokens(sec), 32);
}

#[test]
fn aborted_is_recognisable_through_context() {
    let e: anyhow::Error = Aborted.into();
    assert!(is_aborted(&e));
    assert!(is_aborted(&e.context("in the ASR actor")));
    assert!(!is_aborted(&anyhow!("other")));
}

#[test]
fn model_and_session_are_thread_safe() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<WhisperModel>();
    send::<WhisperSession>();
}

#[test]
fn missing_model_names_the_install_command() {
    let tmp = TempDir::new("whisper-missing");
    let store = ModelStore::new(tmp.path().to_path_buf());
    let err = WhisperModel::load(&store).expect_err("nothing installed");
    let msg = format!("{err:#}");
    assert!(msg.contains("duplex models install"), "{msg}");
    assert!(msg.contains("whisper-tiny-en"), "{msg}");
}

#[test]
fn garbage_file_fails_to_load_cleanly() {
    let tmp = TempDir::new("whisper-garbage");
    let path = tmp.path().join(GGML_FILE);
    std::fs::write(&path, b"this is not a ggml model").expect("write");
    let err = WhisperModel::load_file(&path).expect_err("garbage");
    let msg = format!("{err:#}");
    assert!(msg.contains("could not load"), "{msg}");
}

/// The CTranslate2 model of the user's cache (`duplex models install`).
fn ct2_dir() -> PathBuf {
    let store = ModelStore::from_env();
    let bin = store
        .file(ids::WHISPER_TINY_EN, "model.bin")
        .unwrap_or_else(|e| panic!("{e}"));
    bin.parent().expect("package dir").to_path_buf()
}

#[test]
fn converts_the_installed_ct2_model() {
    let tmp = TempDir::new("whisper-convert");
    let out = tmp.path().join(GGML_FILE);
    let t0 = std::time::Instant::now();
    convert_ct2_to_ggml(&ct2_dir(), &out).expect("convert");
    eprintln!("converted in {:.2} s", t0.elapsed().as_secs_f64());
    assert!(!tmp.path().join(format!("{GGML_FILE}.partial")).exists());

    let info = ggml::inspect_ggml(&out).expect("readable ggml");
    let hp = info.hparams;
    assert_eq!(
        hp,
        ggml::GgmlHparams {
            n_vocab: 51864,
            n_audio_ctx: 1500,
            n_audio_state: 384,
            n_audio_head: 6,
            n_audio_layer: 4,
            n_text_ctx: 448,
            n_text_state: 384,
            n_text_head: 6,
            n_text_layer: 4,
            n_mels: 80,
            ftype: 1,
        }
    );
    assert_eq!(info.mel_dims, (80, 201));
    assert_eq!(info.mel_filters, mel::whisper_mel_filters());
    assert_eq!(info.vocab.len(), 50256);
    assert_eq!(info.vocab[0], b"!");
    assert_eq!(info.vocab[220], b" ");
    assert_eq!(info.vocab[262], b" the");
    assert_eq!(info.vocab[50255], b" gazed");

    assert_eq!(info.tensors.len(), 167);
    let by_name: std::collections::HashMap<&str, &ggml::GgmlTensorInfo> =
        info.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    assert_eq!(by_name.len(), 167, "tensor names are unique");
    let check = |name: &str, shape: &[usize], ty: ggml::GgmlType| {
        let t = by_name.get(name).unwrap_or_else(|| panic!("no tensor {name}"));
        assert_eq!((t.shape.as_slice(), t.ty), (shape, ty), "{name}");
    };
    use ggml::GgmlType::{F16, F32};
    check("encoder.conv1.weight", &[384, 80, 3], F16);
    check("encoder.conv1.bias", &[384, 1], F32);
    check("encoder.conv2.bias", &[384, 1], F32);
    check("encoder.positional_embedding", &[1500, 384], F32);
    check("encoder.blocks.3.attn.key.weight", &[384, 384], F16);
    check("encoder.blocks.0.mlp.0.weight", &[1536, 384], F16);
    check("encoder.blocks.0.mlp.2.bias", &[384], F32);
    check("encoder.ln_post.weight", &[384], F32);
    check("decoder.token_embedding.weight", &[51864, 384], F16);
    check("decoder.positional_embedding", &[448, 384], F32);
    check("decoder.blocks.2.cross_attn.value.bias", &[384], F32);
    check("decoder.blocks.3.cross_attn_ln.bias", &[384], F32);
    check("decoder.ln.weight", &[384], F32);
    assert!(!by_name.contains_key("encoder.blocks.0.attn.key.bias"));
    assert!(!by_name.contains_key("decoder.blocks.0.cross_attn.key.bias"));

    // The split of the fused q,k,v: the key starts 384 rows into CT2's
    // `linear_0`. Compare the first f16 of the written key with the source.
    let ct2 = std::fs::read(ct2_dir().join("model.bin")).expect("read model.bin");
    let written = std::fs::read(&out).expect("read ggml");
    let key = by_name["encoder.blocks.0.attn.key.weight"];
    let key_bytes = &written[key.offset as usize..][..384 * 384 * 2];
    let needle = b"encoder/layer_0/self_attention/linear_0/weight\0";
    let at = ct2
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("variable in model.bin");
    // name, rank (2), shape (2 x u32), dtype, nbytes, then data.
    let data = at + needle.len() + 1 + 8 + 1 + 4;
    assert_eq!(&ct2[data + 384 * 384 * 2..][..384 * 384 * 2], key_bytes);
    // And it loads in whisper.cpp.
    WhisperModel::load_file(&out).expect("whisper.cpp loads the converted file");
}

#[test]
fn convert_errors_name_the_file() {
    let tmp = TempDir::new("whisper-convert-bad");
    let out = tmp.path().join("out.bin");
    let err = convert_ct2_to_ggml(tmp.path(), &out).expect_err("no model.bin");
    let msg = format!("{err:#}");
    assert!(msg.contains("model.bin"), "{msg}");

    std::fs::write(tmp.path().join("model.bin"), b"\x06\0\0\0\x04\0abc\0").expect("write");
    let err = convert_ct2_to_ggml(tmp.path(), &out).expect_err("wrong spec");
    let msg = format!("{err:#}");
    assert!(msg.contains("model.bin") && msg.contains("`abc`"), "{msg}");
    assert!(!out.exists());
}
