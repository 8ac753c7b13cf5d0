//! The agent sees the camera, headless and end to end: real photographs (the
//! scikit-image samples) as camera frames and questions spoken by the
//! project's TTS, through the video pipeline at real-time pace (VAD, vision,
//! Whisper, the controller with SmolLM2 and memory, Piper, output).
//!
//! A spoken "what do you see?" gets an answer naming the animal in view;
//! later, in a new session without a camera, a question about what the
//! camera showed is answered from the memory the first session wrote.

mod common;

use common::{of_type, run_realtime};

use std::path::Path;
use std::sync::Arc;

use duplex::audio::{Pcm, resample};
use duplex::graph::{Event, Pipeline};
use duplex::runner::VideoFrames;
use duplex::tts::Synthesizer;

fn pipeline(db: &Path) -> Pipeline {
    let toml = format!(
        r#"
edges = ["input -> vad -> vision -> asr -> brain -> tts -> output"]
[nodes.input]
kind = "input"
[nodes.vad]
kind = "silero_vad"
[nodes.vision]
kind = "vision"
keep_ratio = 0.33
[nodes.asr]
kind = "whisper"
[nodes.brain]
kind = "controller"
max_tokens = 40
memory_db = "{}"
user = "viewer"
[nodes.tts]
kind = "tts"
[nodes.output]
kind = "output"
"#,
        db.display()
    );
    Pipeline::parse(&toml, Path::new("vision-dialogue.toml")).unwrap()
}

/// The assistant's answers (`response.done` transcripts), lower-cased.
fn answers(events: &[Event]) -> Vec<String> {
    of_type(events, "response.done")
        .iter()
        .map(|e| {
            e["response"]["output"][0]["content"][0]["transcript"]
                .as_str()
                .unwrap_or_default()
                .to_lowercase()
        })
        .collect()
}

/// `photo` shown at 4 frames a second from `from_ms` to `to_ms`.
fn camera(photo: &str, from_ms: u64, to_ms: u64) -> VideoFrames {
    let bytes: Arc<[u8]> = std::fs::read(common::test_photo(photo)).unwrap().into();
    (from_ms..to_ms)
        .step_by(250)
        .map(|t| (t, bytes.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoken_question_about_the_scene_is_answered_and_remembered() {
    let resources = common::resources();
    let mut tts = Synthesizer::new(resources.voice().unwrap()).unwrap();
    let mut speak = |text: &str| {
        let pcm = tts.synthesize(text).unwrap();
        resample(&pcm.samples, pcm.sample_rate, 16_000).unwrap()
    };
    let dir = common::TempDir::new("vision-dialogue");
    let db = dir.path().join("memory.sqlite");
    let pipeline = pipeline(&db);
    let silence = |ms: usize| vec![0.0f32; ms * 16];

    // Session 1: the cat is in view; two seconds later the user asks.
    let mut samples = silence(2000);
    samples.extend(speak("What do you see?"));
    samples.extend(silence(6000));
    let end_ms = samples.len() as u64 / 16;
    let pcm = Pcm::new(samples, 16_000);
    let video = camera("chelsea.png", 0, end_ms);
    let events = run_realtime(&pipeline, &resources, &pcm, video).await;
    let frames = of_type(&events, "duplex.vision.frame");
    assert!(!frames.is_empty(), "no camera frame was analysed");
    // A still camera: the sampler keeps the first frame and few others.
    let sent = (end_ms / 250) as usize;
    assert!(
        frames.len() * 4 < sent,
        "{} of {sent} frames encoded",
        frames.len()
    );
    let first_labels = frames[0]["labels"].to_string();
    println!("first frame labels: {first_labels}");
    assert!(first_labels.contains("cat"), "{first_labels}");
    let context = of_type(&events, "duplex.vision.context");
    assert_eq!(context.len(), 1, "the question was routed to vision");
    println!("vision context: {}", context[0]["text"]);
    let said = answers(&events);
    println!("answer: {said:?}");
    assert_eq!(said.len(), 1);
    assert!(
        said[0].contains("cat"),
        "the answer names the cat: {said:?}"
    );

    // Session 2, no camera: what did the camera show? Memory knows.
    let mut samples = silence(1000);
    samples.extend(speak("What animal did you see on the camera earlier?"));
    samples.extend(silence(6000));
    let pcm = Pcm::new(samples, 16_000);
    let events = run_realtime(&pipeline, &resources, &pcm, Vec::new()).await;
    let recalled = of_type(&events, "duplex.memory.recalled");
    assert_eq!(recalled.len(), 1);
    let items = recalled[0]["items"].as_array().unwrap();
    println!("recalled: {items:?}");
    assert!(
        items
            .iter()
            .any(|i| i["modality"] == "vision" && i["text"].as_str().unwrap().contains("cat")),
        "the camera's observation is recalled: {items:?}"
    );
    assert!(of_type(&events, "duplex.vision.context").is_empty());
    let said = answers(&events);
    println!("answer from memory: {said:?}");
    assert_eq!(said.len(), 1);
    assert!(said[0].contains("cat"), "{said:?}");
}
