//! Turn-taking on real speech: semantic VAD (the LLM's end-of-turn score
//! sets each pause's silence window) against server VAD's fixed 500 ms.
//!
//! The test set is built from the ten pocketsphinx-testdata clips: each
//! clip whole (complete utterances), and the five LibriVox sentences split
//! mid-sentence by 700 ms of silence inserted at a word boundary (the
//! quietest 80 ms between words in the middle of the sentence). Streamed at
//! real-time pace, as a microphone would.
//!
//! Asserted: the window follows the score through the eagerness, and the
//! VAD ends each turn exactly when both the window has passed and a score is
//! known (never sooner, and no later than one VAD step after); a pause not
//! scored in time waits the eagerness' fallback; no mid-sentence pause
//! ends the turn; and the median window that ends a complete utterance is
//! under 300 ms. Printed side by side with server VAD: the delay from
//! speech end to commit on complete utterances (the window, or later when
//! the score comes later: unless a partial pass heard the speech up to the
//! pause, the pause is scored on the final decode, 150-300 ms on two
//! cores; a matter of the machine's speed, so it is printed, and
//! `duplex bench turn` measures it).

mod common;

use common::run_realtime;

use std::path::Path;

use duplex::audio::decode_file;
use duplex::graph::{Event, Pipeline};
use duplex::turn::Eagerness;

const SEMANTIC: &str = r#"
edges = ["input -> vad -> asr -> turn"]
[nodes.input]
kind = "input"
[nodes.vad]
kind = "silero_vad"
turn_detection = "semantic_vad"
eagerness = "auto"
[nodes.asr]
kind = "whisper"
[nodes.turn]
kind = "end_of_turn"
"#;

const SERVER: &str = r#"
edges = ["input -> vad -> asr"]
[nodes.input]
kind = "input"
[nodes.vad]
kind = "silero_vad"
silence_duration_ms = 500
[nodes.asr]
kind = "whisper"
"#;

/// Silence inserted into a sentence.
const PAUSE_MS: u64 = 700;

fn pipeline(text: &str) -> Pipeline {
    Pipeline::parse(text, Path::new("turn_taking.toml")).unwrap()
}

/// (speech_end_ms, audio_end_ms) of each turn the VAD ended.
fn turns(events: &[Event]) -> Vec<(u64, u64)> {
    events
        .iter()
        .filter(|e| e["type"] == "input_audio_buffer.speech_stopped")
        .map(|e| {
            (
                e["speech_end_ms"].as_u64().unwrap(),
                e["audio_end_ms"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn scores(events: &[Event]) -> String {
    events
        .iter()
        .filter(|e| e["type"] == "duplex.turn.end_of_turn")
        .map(|e| {
            format!(
                "[{:.4} -> {} ms: \"{}\"]",
                e["score"].as_f64().unwrap(),
                e["window_ms"],
                e["text"].as_str().unwrap()
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The window of the score that ended the last turn (the fallback when its
/// pause was not scored in time).
fn last_window(events: &[Event]) -> Option<u64> {
    let &(speech_end, commit) = turns(events).last()?;
    let window = events
        .iter()
        .filter(|e| e["type"] == "duplex.turn.end_of_turn")
        .rfind(|e| {
            e["speech_end_ms"].as_u64() == Some(speech_end) && e["t_ms"].as_u64().unwrap() <= commit
        })
        .map_or(Eagerness::Auto.fallback_ms(), |e| {
            e["window_ms"].as_u64().unwrap()
        });
    Some(window)
}

/// Checks that each turn ended as its scores said; returns what is wrong.
fn turns_follow_their_scores(name: &str, events: &[Event]) -> Vec<String> {
    let mut wrong = Vec::new();
    let scored: Vec<&Event> = events
        .iter()
        .filter(|e| e["type"] == "duplex.turn.end_of_turn")
        .collect();
    for e in &scored {
        let score = e["score"].as_f64().unwrap() as f32;
        let window = e["window_ms"].as_u64().unwrap();
        if !(0.0..=1.0).contains(&score) || window != Eagerness::Auto.window_ms(score) {
            wrong.push(format!("{name}: score {score} got window {window}"));
        }
    }
    for (speech_end, commit) in turns(events) {
        // The last score of this pause before the commit rules.
        let Some(last) = scored.iter().rfind(|e| {
            e["speech_end_ms"].as_u64() == Some(speech_end) && e["t_ms"].as_u64().unwrap() <= commit
        }) else {
            // Not scored in time (a busy machine): the fallback window rules.
            let fallback = Eagerness::Auto.fallback_ms();
            if commit < speech_end + fallback {
                wrong.push(format!(
                    "{name}: the unscored pause at {speech_end} ms ended at {commit} ms, before the {fallback} ms fallback"
                ));
            }
            continue;
        };
        let window = last["window_ms"].as_u64().unwrap();
        let known = last["t_ms"].as_u64().unwrap();
        let due = (speech_end + window).max(known);
        // One VAD step is 32 ms of audio.
        if commit < speech_end + window || commit > due + 64 {
            wrong.push(format!(
                "{name}: the turn ended at {commit} ms, the window of {window} ms after {speech_end} ms and the score at {known} ms put it at {due} ms"
            ));
        }
    }
    wrong
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semantic_vad_ends_each_turn_when_its_score_and_window_say() {
    let (semantic, server) = (pipeline(SEMANTIC), pipeline(SERVER));
    let resources = common::resources();
    let mut failures = Vec::new();
    let mut cut_offs = Vec::new();
    let (mut semantic_delays, mut server_delays) = (Vec::new(), Vec::new());
    let mut windows = Vec::new();
    println!("complete utterances: delay from speech end to commit (ms)");
    for (clip, _) in common::speech_with_transcripts() {
        let name = clip.file_name().unwrap().to_string_lossy().to_string();
        let pcm = decode_file(&clip).unwrap().padded(500, 2500);
        let ours = run_realtime(&semantic, &resources, &pcm, Vec::new()).await;
        let theirs = run_realtime(&server, &resources, &pcm, Vec::new()).await;
        failures.extend(turns_follow_their_scores(&name, &ours));
        let (Some(&(end, commit)), Some(&(base_end, base_commit))) =
            (turns(&ours).last(), turns(&theirs).last())
        else {
            failures.push(format!("{name}: a turn never ended"));
            continue;
        };
        semantic_delays.push(commit - end);
        windows.extend(last_window(&ours));
        server_delays.push(base_commit - base_end);
        println!(
            "  {name:<48} semantic {:>5}  server {:>5}  turns {}/{}  {}",
            commit - end,
            base_commit - base_end,
            turns(&ours).len(),
            turns(&theirs).len(),
            scores(&ours)
        );
    }
    println!("split mid-sentence by {PAUSE_MS} ms of silence");
    for clip in common::librivox_clips() {
        let name = clip.file_name().unwrap().to_string_lossy().to_string();
        let (pcm, cut_ms) = common::split_mid_sentence(&decode_file(&clip).unwrap(), PAUSE_MS);
        let pcm = pcm.padded(500, 2500);
        let cut_ms = cut_ms + 500;
        let ours = run_realtime(&semantic, &resources, &pcm, Vec::new()).await;
        let theirs = run_realtime(&server, &resources, &pcm, Vec::new()).await;
        failures.extend(turns_follow_their_scores(&name, &ours));
        println!(
            "  {name:<48} cut at {cut_ms} ms: semantic turns {:?}, server turns {:?}  {}",
            turns(&ours),
            turns(&theirs),
            scores(&ours)
        );
        // A turn ended in the inserted pause is a mid-sentence cut.
        let cut_off = turns(&ours)
            .iter()
            .any(|&(_, commit)| commit < cut_ms + PAUSE_MS + 200);
        if cut_off {
            cut_offs.push(name);
        }
    }
    let (ours, theirs) = (median(semantic_delays), median(server_delays));
    let window = median(windows.clone());
    println!(
        "median delay from speech end to commit (complete utterances): semantic_vad {ours} ms, server_vad {theirs} ms; \
         median window {window} ms {windows:?}; mid-sentence pauses taken as the end of the turn: {} of 5 {cut_offs:?}",
        cut_offs.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        cut_offs.is_empty(),
        "mid-sentence pauses taken as the end of the turn: {cut_offs:?}"
    );
    assert!(
        window < 300,
        "complete utterances wait a median window of {window} ms: {windows:?}"
    );
}

/// The scorer reads the user's words as an answer to what they last heard
/// the assistant say: a short answer to a question is a whole turn, a
/// fragment is still not.
#[test]
fn an_answer_to_the_assistants_question_reads_as_a_whole_turn() {
    use duplex::turn::end_of_turn::EndOfTurnScorer;
    let model = common::resources().local_llm().expect("the local LLM");
    let mut scorer = EndOfTurnScorer::new(&model).expect("scorer");
    let question = Some("Which card did you draw?");
    let score =
        |scorer: &mut EndOfTurnScorer, said, words| scorer.score(said, words).expect("score").score;
    let alone = score(&mut scorer, None, "The seven of clubs");
    let answer = score(&mut scorer, question, "The seven of clubs");
    let fragment = score(&mut scorer, question, "I drew the seven of");
    println!("alone {alone:.4}, after the question {answer:.4}, fragment {fragment:.4}");
    let auto = Eagerness::Auto;
    assert!(
        answer > 1.5 * alone,
        "the question makes the answer read as more finished: {answer} vs {alone} alone"
    );
    assert_eq!(
        auto.window_ms(answer),
        auto.window_ms(1.0),
        "a plain answer ends the turn soon: {answer}"
    );
    assert_eq!(
        auto.window_ms(fragment),
        auto.window_ms(0.0),
        "a fragment waits the longest: {fragment}"
    );
}

/// Words committed while the user speaks are cached in the scorer (and
/// warmed when the pause begins): scoring the pause then computes only the
/// words heard after them, and gives the same score as scoring everything
/// afresh.
#[test]
fn words_cached_while_the_user_speaks_are_not_computed_again_at_the_pause() {
    use duplex::turn::end_of_turn::EndOfTurnScorer;
    let model = common::resources().local_llm().expect("the local LLM");
    let said = Some("Where would you like to eat?");
    let heard = "I want to book a table for two at the Italian place";
    let mut fresh = EndOfTurnScorer::new(&model).expect("scorer");
    let whole = fresh.score(said, heard).expect("score");

    let mut prepared = EndOfTurnScorer::new(&model).expect("scorer");
    prepared
        .prepare(said, "I want to book a table.")
        .expect("prepare");
    prepared
        .prepare(said, "I want to book a table for two at the")
        .expect("prepare");
    // The pause begins: its last word is computed again to warm the model.
    prepared
        .warm(said, "I want to book a table for two at the")
        .expect("warm");
    let at_pause = prepared.score(said, heard).expect("score");
    println!("afresh {whole:?}, after caching {at_pause:?}");
    assert!(
        (whole.score - at_pause.score).abs() < 1e-4,
        "same words, same score: {} afresh, {} after caching",
        whole.score,
        at_pause.score
    );
    assert!(
        at_pause.prefilled <= 3,
        "only \"Italian place\" is left to compute: {at_pause:?} (afresh {whole:?})"
    );
    assert!(
        whole.prefilled > 20,
        "afresh the whole prompt is computed: {whole:?}"
    );
}
