//! Unit tests of the Whisper backend. The tests that need the installed
//! model (`duplex models install whisper-tiny-en`) are here too; the WER and
//! abort tests on real speech are in `tests/whisper_backend.rs`.

use super::*;
use crate::asr::wer::WerTally;
use crate::models::testutil::TempDir;
use std::time::Instant;

#[test]
fn audio_ctx_follows_the_audio_within_bounds() {
    let sec = SAMPLE_RATE as usize;
    assert_eq!(audio_ctx_for(sec, 0), 50 + AUDIO_CTX_MARGIN);
    assert_eq!(audio_ctx_for(sec + 1, 0), 51 + AUDIO_CTX_MARGIN);
    assert_eq!(
        audio_ctx_for(sec, DEFAULT_AUDIO_CTX_FLOOR),
        DEFAULT_AUDIO_CTX_FLOOR
    );
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
            ftype: 7,
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
        let t = by_name
            .get(name)
            .unwrap_or_else(|| panic!("no tensor {name}"));
        assert_eq!((t.shape.as_slice(), t.ty), (shape, ty), "{name}");
    };
    use ggml::GgmlType::{F16, F32, Q8_0};
    check("encoder.conv1.weight", &[384, 80, 3], F16);
    check("encoder.conv1.bias", &[384, 1], F32);
    check("encoder.conv2.bias", &[384, 1], F32);
    check("encoder.positional_embedding", &[1500, 384], F32);
    check("encoder.conv2.weight", &[384, 384, 3], F16);
    check("encoder.blocks.3.attn.key.weight", &[384, 384], Q8_0);
    check("encoder.blocks.0.mlp.0.weight", &[1536, 384], Q8_0);
    check("encoder.blocks.0.mlp.2.bias", &[384], F32);
    check("encoder.ln_post.weight", &[384], F32);
    check("decoder.token_embedding.weight", &[51864, 384], Q8_0);
    check("decoder.blocks.1.cross_attn.out.weight", &[384, 384], Q8_0);
    check("decoder.positional_embedding", &[448, 384], F32);
    check("decoder.blocks.2.cross_attn.value.bias", &[384], F32);
    check("decoder.blocks.3.cross_attn_ln.bias", &[384], F32);
    check("decoder.ln.weight", &[384], F32);
    assert!(!by_name.contains_key("encoder.blocks.0.attn.key.bias"));
    assert!(!by_name.contains_key("decoder.blocks.0.cross_attn.key.bias"));

    // The split of the fused q,k,v: the key starts 384 rows into CT2's
    // `linear_0`. Compare the written key's first row (12 q8_0 blocks: an
    // f16 scale and 32 bytes each) with the source's f16 values.
    let ct2 = std::fs::read(ct2_dir().join("model.bin")).expect("read model.bin");
    let written = std::fs::read(&out).expect("read ggml");
    let key = by_name["encoder.blocks.0.attn.key.weight"];
    let key_row = &written[key.offset as usize..][..12 * 34];
    let needle = b"encoder/layer_0/self_attention/linear_0/weight\0";
    let at = ct2
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("variable in model.bin");
    // name, rank (2), shape (2 x u32), dtype, nbytes, then data.
    let data = at + needle.len() + 1 + 8 + 1 + 4;
    let source = &ct2[data + 384 * 384 * 2..][..384 * 2];
    let half = |b: &[u8]| ggml::f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    for (block, (q, src)) in key_row.chunks(34).zip(source.chunks(64)).enumerate() {
        let scale = half(q);
        let largest = src.chunks(2).map(|b| half(b).abs()).fold(0.0, f32::max);
        assert!(
            (scale - largest / 127.0).abs() <= 1e-3 * scale,
            "block {block}: scale {scale} for values up to {largest}"
        );
        for (i, (&byte, value)) in q[2..].iter().zip(src.chunks(2)).enumerate() {
            // Half a step of rounding, plus the f16 scale's own rounding
            // (2^-11 of it) times up to 127.
            let restored = scale * f32::from(byte as i8);
            assert!(
                (restored - half(value)).abs() <= 0.57 * scale,
                "block {block} value {i}: {restored} for {}",
                half(value)
            );
        }
    }
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

// ---------------------------------------------------------------------------
// Measurement: encoder-window settings on real speech

/// A clip of pocketsphinx-testdata and its reference transcript.
struct Clip {
    set: &'static str,
    audio: Vec<f32>,
    reference: String,
}

/// The five LibriVox clips, then the five "cards" clips.
fn test_clips() -> Vec<Clip> {
    let mut clips = Vec::new();
    for (set, dir, list) in [
        (
            "librivox",
            "/usr/share/pocketsphinx/test/data/librivox",
            "transcription",
        ),
        (
            "cards",
            "/usr/share/pocketsphinx/test/data/cards",
            "cards.transcription",
        ),
    ] {
        let text = std::fs::read_to_string(Path::new(dir).join(list)).expect("transcription");
        let mut set_clips: Vec<(String, Clip)> = text
            .lines()
            .filter_map(|line| {
                let open = line.rfind('(')?;
                let id = line[open + 1..].trim().trim_end_matches(')').to_string();
                let reference = line[..open].replace("<s>", "").replace("</s>", "");
                let pcm = crate::audio::decode_file(&Path::new(dir).join(format!("{id}.wav")))
                    .expect("decode");
                Some((
                    id,
                    Clip {
                        set,
                        audio: pcm.samples,
                        reference: reference.trim().into(),
                    },
                ))
            })
            .collect();
        set_clips.sort_by(|a, b| a.0.cmp(&b.0));
        clips.extend(set_clips.into_iter().map(|(_, c)| c));
    }
    assert_eq!(clips.len(), 10);
    clips
}

/// CPU time of the calling thread (ms), from /proc (Linux); with
/// `threads = 1` whisper.cpp computes on the calling thread, so this is the
/// work done regardless of other load on the machine.
fn thread_cpu_ms() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|ns| ns / 1e6)
        .unwrap_or(0.0)
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Speed/accuracy over encoder-window settings (floor, margin), greedy vs
/// beam, fallback on/off. Prints a table; asserts nothing. Each clip runs
/// `SWEEP_REPS` (default 3) times on one session, the second pass in
/// reverse order: errors of the first and the reversed pass (order effects),
/// and the fastest time per clip (robust to other load on the machine).
/// `SWEEP=text,...` runs only configs whose label contains one of them;
/// `SWEEP_THREADS` sets the thread count (default 2).
#[test]
#[ignore = "measurement: cargo test --release --lib sweep_audio_ctx -- --ignored --nocapture"]
fn sweep_audio_ctx_settings() {
    let model = WhisperModel::load(&ModelStore::from_env()).expect("model");
    let clips = test_clips();
    let mut configs: Vec<(String, DecodeOptions)> = Vec::new();
    let base = DecodeOptions {
        threads: 2,
        ..DecodeOptions::default()
    };
    let only = std::env::var("SWEEP").unwrap_or_default();
    let reps: usize = std::env::var("SWEEP_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let threads: usize = std::env::var("SWEEP_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let base = DecodeOptions { threads, ..base };
    let set = std::env::var("SWEEP_SET").unwrap_or_default();
    let pairs: &[(usize, usize)] = if set == "wide" {
        &[
            (1500, 0),
            (0, 32),
            (0, 64),
            (256, 32),
            (320, 32),
            (384, 0),
            (384, 16),
            (384, 32),
            (384, 64),
            (448, 32),
            (512, 32),
            (512, 64),
        ]
    } else {
        &[
            (1500, 0),
            (448, 32),
            (512, 0),
            (512, 32),
            (576, 32),
            (640, 32),
            (768, 32),
        ]
    };
    for &(floor, margin) in pairs {
        configs.push((
            format!("floor {floor:4} margin {margin:2} greedy"),
            DecodeOptions {
                audio_ctx_floor: floor,
                audio_ctx_margin: margin,
                ..base.clone()
            },
        ));
        configs.push((
            format!("floor {floor:4} margin {margin:2} greedy no-fallback"),
            DecodeOptions {
                audio_ctx_floor: floor,
                audio_ctx_margin: margin,
                temperature_fallback: false,
                ..base.clone()
            },
        ));
    }
    for floor in [384, 512] {
        configs.push((
            format!("floor {floor:4} margin 32 beam 5"),
            DecodeOptions {
                audio_ctx_floor: floor,
                beam: Some(5),
                ..base.clone()
            },
        ));
    }
    for (label, o) in &configs {
        if !only.is_empty() && !only.split(',').any(|w| label.contains(w)) {
            continue;
        }
        let mut session = model.session().expect("session");
        session.transcribe(&clips[0].audio, o).expect("warm-up");
        let mut best = vec![f64::INFINITY; clips.len()];
        let mut best_cpu = vec![f64::INFINITY; clips.len()];
        let mut errors = Vec::new();
        for round in 0..reps.max(2) {
            let mut order: Vec<usize> = (0..clips.len()).collect();
            if round == 1 {
                order.reverse();
            }
            let (mut lib, mut cards) = (WerTally::default(), WerTally::default());
            let mut hyps = Vec::new();
            for &i in &order {
                let c = &clips[i];
                let t0 = Instant::now();
                let c0 = thread_cpu_ms();
                let hyp = session.transcribe(&c.audio, o).expect("transcribe");
                best_cpu[i] = best_cpu[i].min(thread_cpu_ms() - c0);
                best[i] = best[i].min(ms(t0.elapsed()));
                if c.set == "librivox" {
                    lib.add(&c.reference, &hyp);
                } else {
                    cards.add(&c.reference, &hyp);
                }
                hyps.push(hyp);
            }
            if round <= 1 {
                errors.push((lib.errors, cards.errors));
            }
            if round == 0 && std::env::var("SWEEP_VERBOSE").is_ok() {
                eprintln!("  {hyps:?}");
            }
        }
        let lib_ms: f64 = best[..5].iter().sum::<f64>() / 5.0;
        let cards_ms: f64 = best[5..].iter().sum::<f64>() / 5.0;
        let worst = best.iter().cloned().fold(0.0, f64::max);
        let cpu_lib: f64 = best_cpu[..5].iter().sum::<f64>() / 5.0;
        let cpu_cards: f64 = best_cpu[5..].iter().sum::<f64>() / 5.0;
        let cpu_worst = best_cpu.iter().cloned().fold(0.0, f64::max);
        eprintln!(
            "{label:<40} errors librivox {:2}/71 cards {:2}/21 (reversed {:2} {:2}) | best wall ms: librivox avg {:4.0} cards avg {:4.0} worst {:5.0} | calling-thread cpu ms: {:4.0} {:4.0} worst {:5.0}",
            errors[0].0,
            errors[0].1,
            errors[1].0,
            errors[1].1,
            lib_ms,
            cards_ms,
            worst,
            cpu_lib,
            cpu_cards,
            cpu_worst
        );
    }
}

/// What tiny.en makes of silence and faint noise (0.5-5 s). Measured: "you"
/// for digital silence, "You" / "♪ ♪" for noise. whisper.cpp's no-speech
/// probability is always ~0 in this mode (it reads it after
/// `<|notimestamps|>`, OpenAI at `<|startoftranscript|>`), so it cannot
/// filter these: gate Whisper with the VAD.
#[test]
#[ignore = "measurement: cargo test --release --lib silence_and_noise -- --ignored --nocapture"]
fn silence_and_noise_outputs() {
    let model = WhisperModel::load(&ModelStore::from_env()).expect("model");
    let mut s = model.session().expect("session");
    let o = DecodeOptions {
        threads: 2,
        ..DecodeOptions::default()
    };
    for secs in [0.5f32, 1.0, 2.0, 5.0] {
        let silence = vec![0.0f32; (secs * 16000.0) as usize];
        eprintln!(
            "{secs} s silence: {:?}",
            s.transcribe(&silence, &o).expect("silence")
        );
        let noise: Vec<f32> = (0..(secs * 16000.0) as usize)
            .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.01)
            .collect();
        eprintln!(
            "{secs} s noise: {:?}",
            s.transcribe(&noise, &o).expect("noise")
        );
    }
}

/// Margin after the audio for utterances longer than the floor's window:
/// LibriVox clips joined into 9-25 s utterances, margins 0-128, fallback
/// on and off. Prints errors and calling-thread CPU time (1 thread).
#[test]
#[ignore = "measurement: cargo test --release --lib sweep_long_audio -- --ignored --nocapture"]
fn sweep_long_audio_margin() {
    let model = WhisperModel::load(&ModelStore::from_env()).expect("model");
    let clips = test_clips();
    let joins: [&[usize]; 5] = [&[0, 1], &[2, 3], &[3, 4], &[0, 1, 2], &[0, 1, 2, 3, 4]];
    let inputs: Vec<(Vec<f32>, String)> = joins
        .iter()
        .map(|idx| {
            let audio: Vec<f32> = idx.iter().flat_map(|&i| clips[i].audio.clone()).collect();
            let reference = idx
                .iter()
                .map(|&i| clips[i].reference.as_str())
                .collect::<Vec<_>>()
                .join(" ");
            (audio, reference)
        })
        .collect();
    for margin in [0usize, 16, 32, 64, 128] {
        for fallback in [false, true] {
            let o = DecodeOptions {
                threads: 1,
                audio_ctx_margin: margin,
                temperature_fallback: fallback,
                ..DecodeOptions::default()
            };
            let mut session = model.session().expect("session");
            let mut line = format!("margin {margin:3} fallback {fallback:5}:");
            let mut total = WerTally::default();
            for (audio, reference) in &inputs {
                let c0 = thread_cpu_ms();
                let hyp = session.transcribe(audio, &o).expect("transcribe");
                let cpu = thread_cpu_ms() - c0;
                let mut t = WerTally::default();
                t.add(reference, &hyp);
                total.add(reference, &hyp);
                line += &format!(
                    "  {:4.1}s ctx {:4}: {:2}/{:2} err {:5.0} ms",
                    audio.len() as f64 / 16000.0,
                    o.audio_ctx(audio.len()),
                    t.errors,
                    t.words,
                    cpu
                );
                if std::env::var("SWEEP_VERBOSE").is_ok() {
                    eprintln!("    {hyp:?}");
                }
            }
            eprintln!("{line}  total {}/{}", total.errors, total.words);
        }
    }
}

/// Cost of the encoder pass alone (decoding capped at one token) by window
/// size: the bound on abort latency. 1 thread: calling-thread CPU time;
/// 2 threads: best wall time of 3.
#[test]
#[ignore = "measurement: cargo test --release --lib encoder_cost -- --ignored --nocapture"]
fn encoder_cost_by_window() {
    let model = WhisperModel::load(&ModelStore::from_env()).expect("model");
    let mut session = model.session().expect("session");
    let audio = test_clips().swap_remove(0).audio;
    for floor in [192usize, 256, 384, 512, 768, 1500] {
        let one = DecodeOptions {
            threads: 1,
            audio_ctx_floor: floor,
            max_tokens: Some(1),
            temperature_fallback: false,
            ..DecodeOptions::default()
        };
        session.transcribe(&audio, &one).expect("warm-up");
        let c0 = thread_cpu_ms();
        session.transcribe(&audio, &one).expect("1 thread");
        let cpu1 = thread_cpu_ms() - c0;
        let two = DecodeOptions { threads: 2, ..one };
        let wall2 = (0..3)
            .map(|_| {
                let t0 = Instant::now();
                session.transcribe(&audio, &two).expect("2 threads");
                ms(t0.elapsed())
            })
            .fold(f64::INFINITY, f64::min);
        eprintln!("window {floor:4}: 1 thread {cpu1:5.0} ms cpu, 2 threads {wall2:5.0} ms wall");
    }
}

/// Partial passes on growing prefixes of each clip: text and wall time by
/// encoder floor (what a cheaper partial pass would give).
#[test]
#[ignore = "measurement: cargo test --release --lib partial_prefixes -- --ignored --nocapture"]
fn partial_prefixes_by_floor() {
    let model = WhisperModel::load(&ModelStore::from_env()).expect("model");
    let mut session = model.session().expect("session");
    for clip in test_clips().into_iter().take(6) {
        eprintln!("== {}: {}", clip.set, clip.reference);
        for floor in [128usize, 256, 512] {
            let mut line = format!("floor {floor:3}:");
            let mut total = 0.0;
            for ms_len in (300..=2400).step_by(300) {
                let n = (ms_len * 16).min(clip.audio.len());
                let o = DecodeOptions {
                    threads: 2,
                    audio_ctx_floor: floor,
                    temperature_fallback: false,
                    ..DecodeOptions::default()
                };
                let t0 = Instant::now();
                let text = session.transcribe(&clip.audio[..n], &o).expect("pass");
                total += ms(t0.elapsed());
                line += &format!(" | {text}");
            }
            eprintln!("{line}\n    total {total:.0} ms for 8 passes");
        }
    }
}

#[test]
fn decoding_loops_are_cut_after_their_first_round() {
    let second = SAMPLE_RATE as usize;
    let cut = |text: &str, seconds: usize| cut_runaway(text, seconds * second);
    assert_eq!(
        cut("He was not. He was not. He was not. He was not. He", 2),
        "He was not."
    );
    assert_eq!(
        cut(
            "He was not an old sp- he was not an old sp- he was not an old sp- sp- sp- sp-",
            3
        ),
        "He was not an old sp-"
    );
    assert_eq!(cut("10 of clubs clubs clubs clubs", 2), "10 of clubs");
    assert_eq!(cut(&"word ".repeat(5), 1), "word", "a repeated single word");
    assert_eq!(
        cut(
            "had he married a more amiable woman he might have been made still more respectable \
             than he was. Had he married a more amiable woman he might have been",
            6
        ),
        "had he married a more amiable woman he might have been made still more respectable \
         than he was.",
        "a sentence read again from its start"
    );
    assert_eq!(
        cut(
            "seven of hearts and two of clubs seven of hearts and two of clubs",
            4
        ),
        "seven of hearts and two of clubs",
        "a phrase of six words said twice"
    );
    assert_eq!(
        cut(
            "one two three four five six seven eight nine ten eleven twelve thirteen",
            1
        ),
        "one two three four five six seven eight",
        "no faster than 5 words a second (+3)"
    );
    // Ordinary speech, a word said twice, and punctuation only are kept.
    for text in [
        "ten of clubs",
        "no no, not that one",
        "He was not. He was not an ill-disposed young man.",
        "I said I want the red one, I said I want the blue one",
        "... ... ...",
        "",
    ] {
        assert_eq!(
            cut(text, 3),
            text.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
}
