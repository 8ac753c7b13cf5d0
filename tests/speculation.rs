//! Speculative answers on real speech through the real voice pipeline
//! (semantic VAD, streaming Whisper, the end-of-turn scorer, the local LLM,
//! Piper, paced output), streamed at real-time pace.
//!
//! - A LibriVox sentence split mid-sentence by a pause: the controller
//!   starts answering the first half during the pause, the user speaks on,
//!   and the held answer must leave no trace: not in any client event (its
//!   words, its response number), not in the conversation, not in the audio.
//! - A complete utterance: the answer adopted from the speculation is the
//!   one the controller gives without speculation (greedy), and its first
//!   token is there as the turn is committed.

mod common;

use common::{of_type, run_realtime};

use std::path::Path;
use std::sync::atomic::AtomicBool;

use duplex::audio::decode_file;
use duplex::graph::{Event, Pipeline, Resources};
use duplex::llm::{ChatMessage, GenerateOptions, Llm, Role};
use duplex::orchestrator::controller::DEFAULT_INSTRUCTIONS;

const MAX_TOKENS: usize = 40;

/// The voice pipeline under semantic VAD; `brain` is the controller's extra
/// settings, `eagerness` the VAD's.
fn voice(eagerness: &str, brain: &str) -> Pipeline {
    let text = format!(
        r#"
edges = ["input -> vad -> asr -> turn -> brain -> tts -> output"]
[nodes.input]
kind = "input"
[nodes.vad]
kind = "silero_vad"
turn_detection = "semantic_vad"
eagerness = "{eagerness}"
[nodes.asr]
kind = "whisper"
[nodes.turn]
kind = "end_of_turn"
[nodes.brain]
kind = "controller"
max_tokens = {MAX_TOKENS}
{brain}
[nodes.tts]
kind = "tts"
[nodes.output]
kind = "output"
"#
    );
    Pipeline::parse(&text, Path::new("speculation.toml")).unwrap()
}

fn speculation<'a>(events: &'a [Event], state: &str) -> Vec<&'a Event> {
    of_type(events, "duplex.turn.speculation")
        .into_iter()
        .filter(|e| e["state"] == state)
        .collect()
}

/// The user's final transcripts.
fn finals(events: &[Event]) -> Vec<String> {
    of_type(
        events,
        "conversation.item.input_audio_transcription.completed",
    )
    .iter()
    .filter_map(|e| e["transcript"].as_str().map(String::from))
    .collect()
}

/// The answer as the client saw it: the transcript deltas, joined.
fn answer_deltas(events: &[Event]) -> String {
    of_type(events, "response.output_audio_transcript.delta")
        .iter()
        .filter_map(|e| e["delta"].as_str())
        .collect::<String>()
        .trim()
        .to_string()
}

/// What the controller answers to `user` as the first turn: the local LLM,
/// greedy, outside any pipeline.
fn greedy_answer(resources: &Resources, user: &str) -> String {
    let mut llm = resources.local_llm().unwrap().session();
    let messages = [
        ChatMessage::new(Role::System, DEFAULT_INSTRUCTIONS),
        ChatMessage::new(Role::User, user),
    ];
    let options = GenerateOptions {
        max_tokens: MAX_TOKENS,
        temperature: 0.0,
        seed: 1,
    };
    let mut text = String::new();
    llm.generate(&messages, &options, &AtomicBool::new(false), &mut |p| {
        text.push_str(p);
        true
    })
    .unwrap();
    text.trim().to_string()
}

fn words(text: &str) -> Vec<String> {
    duplex::asr::wer::normalize(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_speculated_in_a_pause_the_user_speaks_through_leaves_no_trace() {
    // Speculate on every scored pause; low eagerness waits at least 400 ms
    // (about 1-2.5 s for words that read as unfinished), so the user
    // resumes after the 900 ms pause before the turn ends.
    let pipeline = voice("low", "speculation_threshold = 0.0");
    let resources = common::resources();
    let mut checked = Vec::new();
    for clip in common::librivox_clips() {
        let name = clip.file_name().unwrap().to_string_lossy().to_string();
        let (pcm, cut_ms) = common::split_mid_sentence(&decode_file(&clip).unwrap(), 900);
        let pcm = pcm.padded(500, 3000);
        let events = run_realtime(&pipeline, &resources, &pcm, Vec::new()).await;
        let started = speculation(&events, "started");
        let resumed: Vec<&Event> = speculation(&events, "discarded")
            .into_iter()
            .filter(|e| e["reason"] == "speech_resumed")
            .collect();
        let turns = of_type(&events, "input_audio_buffer.speech_stopped").len();
        println!(
            "{name}: cut at {} ms; {} speculation(s) started, {} thrown away as the user spoke on, {turns} turn(s); finals {:?}",
            cut_ms + 500,
            started.len(),
            resumed.len(),
            finals(&events)
        );
        if resumed.is_empty() || turns != 1 {
            continue; // the pause did not hold a speculation, or it ended the turn
        }
        // What the thrown-away answer was: the greedy answer to the words
        // it was started on.
        let spoken_through = resumed[0]["speech_end_ms"].as_u64().unwrap();
        let spec = started
            .iter()
            .rfind(|e| e["speech_end_ms"].as_u64() == Some(spoken_through))
            .expect("a discarded speculation was started");
        let half = spec["text"].as_str().unwrap().to_string();
        let abandoned = greedy_answer(&resources, &half);
        let final_text = finals(&events).pop().unwrap();
        let answer = greedy_answer(&resources, &final_text);
        println!("  speculated on {half:?} -> {abandoned:?}\n  final {final_text:?} -> {answer:?}");

        // One response, numbered as if nothing had been speculated, whose
        // text is the answer to the whole sentence.
        let created = of_type(&events, "response.created");
        assert_eq!(created.len(), 1, "{name}");
        assert_eq!(created[0]["response"]["id"], "resp_000001", "{name}");
        assert_eq!(answer_deltas(&events), answer, "{name}: the answer seen");
        let done = of_type(&events, "response.done");
        assert_eq!(done.len(), 1, "{name}");
        assert_eq!(done[0]["response"]["status"], "completed", "{name}");
        assert_eq!(
            done[0]["response"]["output"][0]["content"][0]["transcript"], answer,
            "{name}: the answer filed"
        );
        // Items: the user's utterance and the answer, nothing else.
        let items: std::collections::BTreeSet<&str> = events
            .iter()
            .flat_map(|e| [e.get("item_id"), e.get("item").and_then(|i| i.get("id"))])
            .flatten()
            .filter_map(|id| id.as_str())
            .collect();
        assert_eq!(
            items.into_iter().collect::<Vec<_>>(),
            ["item_0001", "item_resp_000001"],
            "{name}: items"
        );
        // No audio before the turn was committed.
        let committed_at = events
            .iter()
            .position(|e| e["type"] == "input_audio_buffer.speech_stopped")
            .unwrap();
        let first_audio = events
            .iter()
            .position(|e| e["type"] == "response.output_audio.delta")
            .expect("the answer was spoken");
        assert!(
            first_audio > committed_at,
            "{name}: audio before the commit"
        );
        // The held answer's words appear nowhere the client can see
        // (unless the two answers happen to open alike, or the held one only
        // echoed the user's words, which the client sees in the transcript:
        // "He was not." answered "He was not.").
        let abandoned_words = words(&abandoned);
        let opening = abandoned_words[..abandoned_words.len().min(6)].join(" ");
        let echoes_the_user = words(&final_text).join(" ").contains(&opening);
        if echoes_the_user {
            println!("  (the held answer echoed the user's words: not looked for)");
        }
        if !echoes_the_user && !words(&answer).join(" ").starts_with(&opening) {
            let client_text = events
                .iter()
                .filter(|e| e["type"] != "duplex.turn.speculation")
                .map(|e| serde_json::Value::Object((*e).clone()).to_string())
                .collect::<Vec<_>>()
                .join(" ")
                + " "
                + &answer_deltas(&events);
            let seen = words(&client_text).join(" ");
            assert!(
                !seen.contains(&opening),
                "{name}: the thrown-away answer ({opening:?}) reached the client"
            );
        }
        checked.push(name);
        break;
    }
    assert!(
        !checked.is_empty(),
        "no clip had a speculation the user spoke through (see the lines above)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_speculation_answers_as_without_it_and_sooner() {
    // Speculate on every scored pause: on a busy machine the scores come
    // late, and few clips would be speculated on at the default threshold.
    let on = voice("auto", "speculative = true\nspeculation_threshold = 0.0");
    let off = voice("auto", "speculative = false");
    let resources = common::resources();
    let mut adopted = 0;
    for (clip, _) in common::speech_with_transcripts() {
        let name = clip.file_name().unwrap().to_string_lossy().to_string();
        let pcm = decode_file(&clip).unwrap().padded(500, 3000);
        let with = run_realtime(&on, &resources, &pcm, Vec::new()).await;
        let without = run_realtime(&off, &resources, &pcm, Vec::new()).await;
        assert!(
            speculation(&without, "started").is_empty(),
            "{name}: speculative = false"
        );
        let (Some(final_with), Some(final_without)) = (finals(&with).pop(), finals(&without).pop())
        else {
            panic!("{name}: no final transcript");
        };
        let waterfall = |events: &[Event]| {
            of_type(events, "duplex.turn.latency")
                .last()
                .map(|e| serde_json::Value::Object((*e).clone()))
                .unwrap_or_default()
        };
        let (w_on, w_off) = (waterfall(&with), waterfall(&without));
        println!(
            "{name}: {:?}\n  with:    {}\n  without: {}",
            of_type(&with, "duplex.turn.speculation")
                .iter()
                .map(|e| format!(
                    "{} {:?} {:?}",
                    e["state"],
                    e.get("held_ms"),
                    e.get("reason")
                ))
                .collect::<Vec<_>>(),
            w_on,
            w_off
        );
        if speculation(&with, "adopted").len() != 1 || final_with != final_without {
            continue;
        }
        assert_eq!(
            answer_deltas(&with),
            answer_deltas(&without),
            "{name}: the adopted answer differs"
        );
        assert_eq!(answer_deltas(&with), greedy_answer(&resources, &final_with));
        // The adopted answer had text ready at the commit, so its first
        // token comes with the final transcript, not a prefill after it.
        let ready = &w_on["speculation"];
        assert!(
            ready.is_object(),
            "{name}: the waterfall notes the speculation"
        );
        if ready["pieces_ready"].as_u64() == Some(0) {
            continue; // committed before the prefill was done: nothing to gain
        }
        let gap = |w: &serde_json::Value| {
            let s = &w["since_speech_end"];
            s["llm_first_token_ms"].as_u64().unwrap() - s["asr_final_ms"].as_u64().unwrap()
        };
        assert!(
            gap(&w_on) < gap(&w_off),
            "{name}: first token {} ms after the final with speculation, {} ms without",
            gap(&w_on),
            gap(&w_off)
        );
        adopted += 1;
        break;
    }
    assert!(
        adopted > 0,
        "no speculation was adopted with text ready (see the lines above)"
    );
}
