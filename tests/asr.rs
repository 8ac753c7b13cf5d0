//! Streaming ASR through the graph on real speech: word error rate of the
//! finals over the ten pocketsphinx-testdata clips, live partials during
//! speech that agree with the final, and input at 8, 24 and 44.1 kHz.
//! Latency targets are measured by `duplex bench asr`.

mod common;

use std::path::Path;

use duplex::asr::wer::{WerTally, edit_distance, normalize};
use duplex::audio::{Pcm, decode_file, resample};
use duplex::graph::{Event, Pipeline};
use duplex::runner::{Pace, run_pcm};

/// These tests time real decoding: run them one at a time, not against
/// each other for the two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn asr_pipeline() -> Pipeline {
    Pipeline::load(Path::new("pipelines/asr.toml")).unwrap()
}

async fn transcribe(pipeline: &Pipeline, pcm: &Pcm, pace: Pace) -> Vec<Event> {
    let events = run_pcm(pipeline, &common::resources(), pcm, pace, |_| Ok(()))
        .await
        .unwrap();
    let errors: Vec<_> = events.iter().filter(|e| e["type"] == "error").collect();
    assert!(errors.is_empty(), "{errors:?}");
    events
}

fn finals(events: &[Event]) -> String {
    events
        .iter()
        .filter(|e| e["type"] == "conversation.item.input_audio_transcription.completed")
        .map(|e| {
            e["transcript"]
                .as_str()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_transcripts_have_at_most_15_percent_word_errors() {
    let _serial = SERIAL.lock().await;
    let pipeline = asr_pipeline();
    let mut tally = WerTally::default();
    for (clip, reference) in common::speech_with_transcripts() {
        let pcm = common::pad(&decode_file(&clip).unwrap(), 1000);
        let events = transcribe(&pipeline, &pcm, Pace::default()).await;
        let hypothesis = finals(&events);
        let wer = tally.add(&reference, &hypothesis);
        println!(
            "{:>5.1}%  {}\n        ref: {reference}\n        hyp: {hypothesis}",
            wer * 100.0,
            clip.file_name().unwrap().to_string_lossy()
        );
    }
    println!(
        "WER over 10 clips: {:.1}% ({} errors / {} words)",
        tally.rate() * 100.0,
        tally.errors,
        tally.words
    );
    assert!(
        tally.rate() <= 0.15,
        "WER {:.1}% > 15%",
        tally.rate() * 100.0
    );
}

/// Partials stream while the user speaks and what they commit is what the
/// final says. (How soon the first one comes is a speed target: `duplex
/// bench asr` measures it; here it is only printed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partials_stream_during_speech_and_agree_with_the_final() {
    let _serial = SERIAL.lock().await;
    let pipeline = asr_pipeline();
    let pace = Pace {
        chunk_ms: 20,
        realtime: true,
    };
    let mut lags = Vec::new();
    let mut failures = Vec::new();
    let mut without_partials = Vec::new();
    for (clip, _) in common::speech_with_transcripts() {
        let name = clip.file_name().unwrap().to_string_lossy().to_string();
        let pcm = common::pad(&decode_file(&clip).unwrap(), 500);
        let events = transcribe(&pipeline, &pcm, pace).await;
        let started = events
            .iter()
            .find(|e| e["type"] == "input_audio_buffer.speech_started")
            .unwrap_or_else(|| panic!("{name}: no speech detected"));
        let detected_ms = started["t_ms"].as_u64().unwrap();
        let deltas: Vec<&Event> = events
            .iter()
            .filter(|e| e["type"] == "conversation.item.input_audio_transcription.delta")
            .collect();
        let Some(first) = deltas.first() else {
            // A short phrase can end before two passes agree when the
            // machine is busy; sentences never should.
            without_partials.push(name.clone());
            if pcm.samples.len() > 3 * pcm.sample_rate as usize {
                failures.push(format!("{name}: no partials during a sentence"));
            }
            continue;
        };
        let first_ms = first["t_ms"].as_u64().unwrap();
        let committed: String = deltas
            .iter()
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        let final_text = finals(&events);
        println!(
            "{name}: speech at {detected_ms} ms, first partial at {first_ms} ms (+{} ms), {} partials\n    committed: {committed}\n    final:     {final_text}",
            first_ms - detected_ms,
            deltas.len()
        );
        lags.push(first_ms - detected_ms);
        let stopped_ms = events
            .iter()
            .find(|e| e["type"] == "input_audio_buffer.speech_stopped")
            .and_then(|e| e["t_ms"].as_u64())
            .unwrap_or_else(|| panic!("{name}: speech never stopped"));
        if first_ms >= stopped_ms {
            failures.push(format!(
                "{name}: the first partial ({first_ms} ms) came only after speech stopped ({stopped_ms} ms)"
            ));
        }
        // Deltas only ever append; and what they committed is what the final
        // says too: the committed text is (nearly) a start of the final,
        // compared letter by letter so "coldhearted" = "cold-hearted".
        let letters = |text: &str| -> Vec<String> {
            normalize(text).concat().chars().map(String::from).collect()
        };
        let committed_letters = letters(&committed);
        let final_letters = letters(&final_text);
        let differing = (0..=final_letters.len())
            .map(|k| edit_distance(&committed_letters, &final_letters[..k]))
            .min()
            .unwrap_or(committed_letters.len());
        if differing * 10 > committed_letters.len().max(1) {
            failures.push(format!(
                "{name}: committed partials \"{committed}\" disagree with the final \"{final_text}\" ({differing} letters of {})",
                committed_letters.len()
            ));
        }
    }
    lags.sort_unstable();
    println!(
        "first partial after speech start: median {} ms, max {} ms over {} clips",
        lags[lags.len() / 2],
        lags[lags.len() - 1],
        lags.len()
    );
    assert!(
        without_partials.len() <= 2,
        "no partials on {without_partials:?}"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telephone_and_other_input_rates_transcribe_as_well() {
    let _serial = SERIAL.lock().await;
    let pipeline = asr_pipeline();
    let (clip, reference) = common::speech_with_transcripts().remove(0);
    let original = common::pad(&decode_file(&clip).unwrap(), 1000);
    for rate in [8_000, 24_000, 44_100] {
        let pcm = Pcm {
            samples: resample(&original.samples, original.sample_rate, rate).unwrap(),
            sample_rate: rate,
        };
        let events = transcribe(&pipeline, &pcm, Pace::default()).await;
        let mut tally = WerTally::default();
        let hypothesis = finals(&events);
        let wer = tally.add(&reference, &hypothesis);
        println!("{rate} Hz: WER {:.1}%: {hypothesis}", wer * 100.0);
        assert!(
            wer <= 0.15,
            "{rate} Hz: WER {:.1}%: {hypothesis}",
            wer * 100.0
        );
    }
}
