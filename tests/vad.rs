//! The VAD pipeline on real speech: each LibriVox clip, padded with 1 s of
//! silence at both ends, gives exactly one speech segment that contains all
//! of the clip's speech and starts no earlier than 400 ms before it; at
//! 16 kHz, and at 8 kHz resampled by the pipeline.

mod common;

use std::path::Path;

use duplex::audio::{Pcm, decode_file, resample};
use duplex::graph::{Event, Pipeline};
use duplex::runner::{Pace, run_pcm};

const PAD_MS: u64 = 1000;

fn field(event: &Event, name: &str) -> u64 {
    event[name]
        .as_u64()
        .unwrap_or_else(|| panic!("event without {name}: {event:?}"))
}

async fn check_clip(pipeline: &Pipeline, clip: &Path, rate: u32) {
    let original = decode_file(clip).unwrap();
    let (speech_start, speech_end) = common::energy_speech_span(&original);
    let clip16 = common::pad(&original, PAD_MS);
    let input = if rate == clip16.sample_rate {
        clip16
    } else {
        Pcm {
            samples: resample(&clip16.samples, clip16.sample_rate, rate).unwrap(),
            sample_rate: rate,
        }
    };
    let events = run_pcm(
        pipeline,
        &common::resources(),
        &input,
        Pace::default(),
        |_| Ok(()),
    )
    .await
    .unwrap();
    let of_type = |t: &str| -> Vec<&Event> { events.iter().filter(|e| e["type"] == t).collect() };
    let name = clip.file_name().unwrap().to_string_lossy();
    assert!(of_type("error").is_empty(), "{name}: errors {events:?}");
    let started = of_type("input_audio_buffer.speech_started");
    let stopped = of_type("input_audio_buffer.speech_stopped");
    assert_eq!(started.len(), 1, "{name} @ {rate} Hz: segments {started:?}");
    assert_eq!(stopped.len(), 1, "{name} @ {rate} Hz: segments {stopped:?}");

    let truth_start = speech_start + PAD_MS;
    let truth_end = speech_end + PAD_MS;
    let start = field(started[0], "audio_start_ms");
    let end = field(stopped[0], "audio_end_ms");
    let voiced_end = field(stopped[0], "speech_end_ms");
    println!(
        "{name} @ {rate} Hz: speech {truth_start}-{truth_end} ms, VAD segment {start}-{end} ms (voice until {voiced_end})"
    );
    assert!(
        start <= truth_start,
        "{name}: starts after speech ({start} > {truth_start})"
    );
    assert!(
        start + 400 >= truth_start,
        "{name}: starts more than 400 ms early ({start} vs {truth_start})"
    );
    assert!(
        end >= truth_end,
        "{name}: ends before speech ({end} < {truth_end})"
    );
    // The energy measure also counts breaths and fricative tails that Silero
    // rightly calls silence, so the last voiced chunk may precede it a little.
    assert!(
        voiced_end + 250 >= truth_end,
        "{name}: last voice {voiced_end} ms well before speech end {truth_end}"
    );
    assert_eq!(stopped[0]["item_id"], started[0]["item_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_segment_per_librivox_clip_at_16k() {
    let pipeline = Pipeline::load(Path::new("pipelines/vad.toml")).unwrap();
    for clip in common::librivox_clips() {
        check_clip(&pipeline, &clip, 16_000).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_segment_per_librivox_clip_at_8k_telephone_rate() {
    let pipeline = Pipeline::load(Path::new("pipelines/vad.toml")).unwrap();
    for clip in common::librivox_clips() {
        check_clip(&pipeline, &clip, 8_000).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_gives_no_segment() {
    let pipeline = Pipeline::load(Path::new("pipelines/vad.toml")).unwrap();
    let silence = Pcm {
        samples: vec![0.0; 16_000 * 3],
        sample_rate: 16_000,
    };
    let events = run_pcm(
        &pipeline,
        &common::resources(),
        &silence,
        Pace::default(),
        |_| Ok(()),
    )
    .await
    .unwrap();
    assert!(events.is_empty(), "{events:?}");
}

/// Copies an installed package folder (files and stamp) into another store.
fn copy_package(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[test]
fn a_corrupt_vad_model_names_the_install_command() {
    use duplex::audio::vad::SileroModel;
    use duplex::models::ModelStore;
    let real = ModelStore::from_env();
    let root = std::env::temp_dir().join(format!("duplex-corrupt-{}", std::process::id()));
    let store = ModelStore::new(root.clone());
    for id in ["onnxruntime", "silero-vad"] {
        copy_package(&real.package_dir(id), &store.package_dir(id));
    }
    // Same size as the real model (so the cheap size check passes), garbage inside.
    let model = store.file(SileroModel::PACKAGE, SileroModel::FILE).unwrap();
    let size = std::fs::metadata(&model).unwrap().len() as usize;
    std::fs::write(&model, vec![0x5a; size]).unwrap();
    let error = format!(
        "{:#}",
        SileroModel::load(&store)
            .err()
            .expect("garbage must not load")
    );
    let _ = std::fs::remove_dir_all(&root);
    assert!(error.contains("duplex models install"), "{error}");
    assert!(error.contains("silero"), "{error}");
}
