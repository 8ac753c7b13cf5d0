//! The cache-aware Conformer through the graph: a tiny random-weight model
//! written as a `.nemo`, a pipeline `input -> vad -> asr` using it, run on
//! real speech. Random weights give gibberish, so the test checks structure
//! and timing: committed partials arrive chunk by chunk during speech, and
//! they are the start of the final transcript (the streamed encoder never
//! revises the past).

mod common;

use common::{of_type, run_realtime};

use std::path::Path;

use duplex::asr::conformer::config::{EncoderConfig, FeatureConfig, ModelConfig};
use duplex::asr::conformer::{encoder, nemo};
use duplex::audio::decode_file;
use duplex::graph::{Event, Pipeline};

fn write_tiny_nemo(path: &Path) {
    let pieces = nemo::toy_pieces();
    let config = ModelConfig {
        features: FeatureConfig::nemo_default(80),
        encoder: EncoderConfig::tiny(vec![[70, 13], [70, 6], [70, 1], [70, 0]]),
        ctc_prefix: "decoder".into(),
        vocabulary: None,
    };
    let mut weights =
        encoder::random_weights(&config.encoder, "decoder", pieces.len(), 42).unwrap();
    encoder::make_talkative(&mut weights, "decoder").unwrap();
    nemo::write(path, &config, &weights, &pieces).unwrap();
}

fn pipeline(model: &Path, lookahead: usize) -> Pipeline {
    let text = format!(
        r#"
edges = ["input -> vad -> asr"]
[nodes.input]
kind = "input"
sample_rate = 16000
[nodes.vad]
kind = "silero_vad"
threshold = 0.5
prefix_padding_ms = 300
silence_duration_ms = 500
[nodes.asr]
kind = "conformer"
model = "{}"
lookahead = {lookahead}
threads = 1
partial_interval_ms = 80
"#,
        model.display()
    );
    Pipeline::parse(&text, Path::new("conformer-test.toml")).unwrap()
}

/// The words of text field `field` of `events`, in order.
fn words(events: &[&Event], field: &str) -> Vec<String> {
    events
        .iter()
        .flat_map(|e| e[field].as_str().unwrap().split_whitespace())
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partials_arrive_per_chunk_during_speech() {
    let dir = common::TempDir::new("conformer");
    let model = dir.path().join("tiny.nemo");
    write_tiny_nemo(&model);
    let clip = &common::librivox_clips()[0];
    let pcm = common::pad(&decode_file(clip).unwrap(), 500);
    let resources = common::resources();
    for lookahead in [1usize, 6] {
        let events = run_realtime(&pipeline(&model, lookahead), &resources, &pcm, Vec::new()).await;
        let started = of_type(&events, "input_audio_buffer.speech_started");
        let stopped = of_type(&events, "input_audio_buffer.speech_stopped");
        assert!(
            !started.is_empty() && !stopped.is_empty(),
            "the VAD found no speech"
        );
        let start_ms = started[0]["t_ms"].as_u64().unwrap();
        let stop_ms = stopped[0]["t_ms"].as_u64().unwrap();
        let deltas = of_type(&events, "conversation.item.input_audio_transcription.delta");
        let during: Vec<u64> = deltas
            .iter()
            .map(|e| e["t_ms"].as_u64().unwrap())
            .filter(|t| (start_ms..=stop_ms).contains(t))
            .collect();
        let mut times = during.clone();
        times.dedup();
        println!(
            "look-ahead {lookahead}: speech {start_ms}-{stop_ms} ms, {} deltas during speech at {times:?}",
            during.len()
        );
        let committed = words(&deltas, "delta");
        let completed = of_type(
            &events,
            "conversation.item.input_audio_transcription.completed",
        );
        let final_words = words(&completed, "transcript");
        assert!(
            final_words.len() >= committed.len() && final_words[..committed.len()] == committed[..],
            "committed partials {committed:?} are not the start of the final {final_words:?}"
        );
        // A chunk is (lookahead + 1) x 80 ms; a clip of several seconds has
        // many, and committed words follow them through the utterance.
        let speech_ms = stop_ms - start_ms;
        let chunk_ms = (lookahead as u64 + 1) * 80;
        assert!(
            times.len() as u64 >= (speech_ms / chunk_ms / 4).max(3),
            "look-ahead {lookahead}: only {} partial times over {speech_ms} ms of speech",
            times.len()
        );
        assert!(
            times[0] < start_ms + speech_ms / 2,
            "the first partial came late: {times:?}"
        );
    }
}
