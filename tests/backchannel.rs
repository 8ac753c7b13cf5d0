//! A listener's backchannel while the bot speaks: "yeah", spoken by the
//! project's TTS into the real voice pipeline at real-time pace, neither
//! cancels the answer nor becomes a turn of its own. (The voice reads
//! "mhm" and "mm-hmm" letter by letter, so it cannot say them.)

mod common;

use common::of_type;

use std::path::Path;
use std::time::Instant;

use duplex::audio::{Pcm, resample};
use duplex::graph::Pipeline;
use duplex::runner::{Pace, run_pcm};
use duplex::tts::Synthesizer;

const VOICE: &str = r#"
edges = ["input -> vad -> asr -> brain -> tts -> output"]
[nodes.input]
kind = "input"
[nodes.vad]
kind = "silero_vad"
[nodes.asr]
kind = "whisper"
[nodes.brain]
kind = "controller"
max_tokens = 60
interrupt_response = true
min_interruption_words = 1
[nodes.tts]
kind = "tts"
[nodes.output]
kind = "output"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yeah_while_the_bot_speaks_neither_cancels_it_nor_becomes_a_turn() {
    let resources = common::resources();
    let mut tts = Synthesizer::new(resources.voice().unwrap()).unwrap();
    let mut speak = |text: &str| {
        let pcm = tts.synthesize(text).unwrap();
        resample(&pcm.samples, pcm.sample_rate, 16_000).unwrap()
    };
    let question = speak("Can you tell me a long story about a brave little dragon?");
    let yeah = speak("Yeah.");
    let silence = |ms: usize| vec![0.0f32; ms * 16];
    // The answer starts about a second after the question; the "yeah" comes
    // while it plays.
    let mut samples = silence(500);
    samples.extend_from_slice(&question);
    samples.extend(silence(2500));
    let yeah_at_ms = samples.len() as u64 / 16;
    samples.extend_from_slice(&yeah);
    samples.extend(silence(3000));
    let pcm = Pcm::new(samples, 16_000);

    let pipeline = Pipeline::parse(VOICE, Path::new("backchannel.toml")).unwrap();
    let pace = Pace {
        chunk_ms: 20,
        realtime: true,
    };
    // When (wall clock) the answer's first audio and each speech start came.
    let (mut first_audio, mut speech_starts) = (None, Vec::new());
    let events = run_pcm(&pipeline, &resources, &pcm, pace, |e| {
        if e["type"] == "response.output_audio.delta" && first_audio.is_none() {
            first_audio = Some(Instant::now());
        }
        if e["type"] == "input_audio_buffer.speech_started" {
            speech_starts.push(Instant::now());
        }
        Ok(())
    })
    .await
    .unwrap();
    let errors = of_type(&events, "error");
    assert!(errors.is_empty(), "{errors:?}");

    let heard: Vec<&str> = of_type(
        &events,
        "conversation.item.input_audio_transcription.completed",
    )
    .iter()
    .filter_map(|e| e["transcript"].as_str())
    .collect();
    println!("heard {heard:?}; the yeah starts at {yeah_at_ms} ms of input");
    let (Some(first_audio), Some(yeah_started)) = (first_audio, speech_starts.get(1)) else {
        panic!("no answer audio, or the yeah was not heard as speech");
    };
    assert!(
        first_audio < *yeah_started,
        "the bot was not speaking yet when the yeah came"
    );
    assert_eq!(heard.len(), 2, "the question and the yeah: {heard:?}");
    let backchannel = of_type(&events, "duplex.backchannel");
    assert_eq!(backchannel.len(), 1, "the yeah is a backchannel: {heard:?}");
    let created = of_type(&events, "response.created");
    assert_eq!(created.len(), 1, "the yeah started a response of its own");
    let done = of_type(&events, "response.done");
    assert_eq!(done.len(), 1);
    assert_eq!(
        done[0]["response"]["status"], "completed",
        "the answer was cut: {:?}",
        done[0]["response"]
    );
}
