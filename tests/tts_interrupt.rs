//! Barge-in on real speech: an interrupt during a spoken answer stops the
//! audio within 40 ms of audio time, and nothing of the dead response
//! (audio, avatar frames, its `done` events) comes out after that.
//!
//! Drives the real graph `input -> tts -> output -> avatar` (espeak-ng,
//! Piper, the paced output stage, the avatar) with `Clause` frames as the
//! orchestrator would send them, and interrupts three answers at different
//! points: during the first burst (the output stage's lead), after 0.6 s and
//! after 1.5 s of audio. A fourth answer then plays to its end. Every
//! measure is in audio time: the output stage's playhead (what the user has
//! heard, as the orchestrator reads it to truncate history) and the lengths
//! and offsets of the `response.output_audio.delta` frames. Needs the
//! installed models (`duplex models install`) and the Debian `espeak-ng`.

mod common;

use std::path::Path;

use duplex::audio::pcm16_base64_decode;
use duplex::graph::{Event, Pipeline, ResponseId, SystemKind};
use duplex::realtime;
use serde_json::{Value, json};

/// The most audio that may leave (or be played) after an interrupt.
const STOP_WITHIN_MS: f64 = 40.0;
const OUTPUT_RATE: f64 = 24_000.0;
const MARKER: &str = "test.interrupt_raised";

/// An answer of about six seconds, in the clauses an LLM would stream.
const CLAUSES: [&str; 4] = [
    "Sure, I can help you plan the trip to Lisbon next spring.",
    "The flight leaves at seven in the morning, and it takes about three hours.",
    "You could stay near the old town, where the trams climb the hills.",
    "Remember to book the museum tickets a few days ahead.",
];

fn pipeline() -> Pipeline {
    let toml = r#"
edges = ["input -> tts -> output -> avatar"]
[nodes.input]
kind = "input"
sample_rate = 16000
[nodes.tts]
kind = "tts"
[nodes.output]
kind = "output"
sample_rate = 24000
lead_ms = 200
frame_ms = 20
[nodes.avatar]
kind = "avatar"
"#;
    Pipeline::parse(toml, Path::new("tts_interrupt.toml")).unwrap()
}

type Session = common::AnswerSession;

fn start() -> Session {
    Session::start(&pipeline(), "tts-interrupt-test")
}

/// Interrupts `response_id` as a barge-in does, and puts a marker in the
/// event stream right after (so the test can tell what came later).
fn interrupt(s: &Session, response_id: ResponseId) {
    s.graph.raise(0, SystemKind::Interrupt { response_id });
    s.graph
        .sink()
        .expect("session alive")
        .emit(MARKER, 0, json!({"response_id": response_id}));
}

fn is_delta_of(event: &Event, rid: &str) -> bool {
    event["type"] == "response.output_audio.delta" && event["response_id"] == rid
}

/// Ms of audio in a delta event.
fn delta_ms(event: &Event) -> f64 {
    let samples =
        pcm16_base64_decode(event["delta"].as_str().expect("delta")).expect("valid pcm16 base64");
    samples.len() as f64 * 1000.0 / OUTPUT_RATE
}

/// Whether an event belongs to the response `rid` (its id, or its item's).
fn mentions(event: &Event, rid: &str) -> bool {
    // Base64 has no '_', so an image or audio payload cannot match by chance.
    Value::Object(event.clone()).to_string().contains(rid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_stops_audio_within_40_ms_and_nothing_dead_follows() {
    let mut s = start();
    // (response, audio released before the interrupt, ms)
    let cuts: [(ResponseId, f64); 3] = [(1, 0.0), (2, 600.0), (3, 1500.0)];
    let mut heard_at_interrupt = Vec::new();
    for &(response_id, cut_ms) in &cuts {
        let rid = realtime::response_id(response_id);
        s.answer(response_id, &CLAUSES).await;
        s.until(|e| is_delta_of(e, &rid) && e["t_ms"].as_f64().unwrap() >= cut_ms)
            .await;
        let heard = s.shared.heard.played_ms(response_id);
        interrupt(&s, response_id);
        // The LLM's next clause, arriving late, must be dropped too.
        s.answer(response_id, &["And one more thing about the weather."])
            .await;
        heard_at_interrupt.push(heard);
    }
    // A fresh answer after the barge-ins plays to its end.
    let last = 4;
    let last_rid = realtime::response_id(last);
    s.answer(last, &CLAUSES[..2]).await;
    s.until(|e| e["type"] == "response.done" && e["response"]["id"] == last_rid)
        .await;
    let heard_after: Vec<u64> = cuts
        .iter()
        .map(|&(r, _)| s.shared.heard.played_ms(r))
        .collect();
    let last_heard = s.shared.heard.played_ms(last);
    let events = s.finish().await;

    for (i, &(response_id, cut_ms)) in cuts.iter().enumerate() {
        let rid = realtime::response_id(response_id);
        let marker = events
            .iter()
            .position(|e| e["type"] == MARKER && e["response_id"] == response_id)
            .expect("marker");
        let before: Vec<&Event> = events[..marker]
            .iter()
            .filter(|e| is_delta_of(e, &rid))
            .collect();
        let after: Vec<&Event> = events[marker..]
            .iter()
            .filter(|e| is_delta_of(e, &rid))
            .collect();
        let sent_ms: f64 = before.iter().map(|e| delta_ms(e)).sum::<f64>() + 0.0;
        let after_ms: f64 = after.iter().map(|e| delta_ms(e)).sum::<f64>() + 0.0;
        // Offsets stay on the audio clock: contiguous 20 ms frames from 0.
        let offsets: Vec<u64> = before
            .iter()
            .chain(&after)
            .map(|e| e["t_ms"].as_u64().unwrap())
            .collect();
        let expected: Vec<u64> = (0..offsets.len() as u64).map(|k| k * 20).collect();
        assert_eq!(offsets, expected, "{rid}: delta offsets");
        let advance = heard_after[i].saturating_sub(heard_at_interrupt[i]);
        eprintln!(
            "{rid}: interrupted after {sent_ms:.0} ms sent (asked >= {cut_ms:.0}), playhead {} ms \
             (client buffer {:.0} ms); after the interrupt: {after_ms:.0} ms of audio sent, \
             playhead +{advance} ms",
            heard_at_interrupt[i],
            sent_ms - heard_at_interrupt[i] as f64,
        );
        assert!(sent_ms >= cut_ms, "{rid}: cut at {sent_ms} ms");
        assert!(
            after_ms <= STOP_WITHIN_MS,
            "{rid}: {after_ms} ms of audio went out after the interrupt"
        );
        assert!(
            advance as f64 <= STOP_WITHIN_MS,
            "{rid}: the playhead moved {advance} ms after the interrupt"
        );
        // The whole answer was ~6 s: it really was cut.
        assert!(sent_ms + after_ms < 4000.0, "{rid}: {sent_ms} ms sent");

        // After the marker only the <= 40 ms of audio above and their avatar
        // frames (at most one 40 ms frame) may name the dead response; and
        // nothing at all once the next answer has begun.
        let late: Vec<&Event> = events[marker..]
            .iter()
            .filter(|e| mentions(e, &rid))
            .collect();
        for e in &late {
            let kind = e["type"].as_str().unwrap_or_default();
            assert!(
                kind == "response.output_audio.delta" || kind == "duplex.avatar.frame",
                "{rid}: {kind} after the interrupt"
            );
        }
        let late_frames = late
            .iter()
            .filter(|e| e["type"] == "duplex.avatar.frame")
            .count();
        assert!(late_frames <= 1, "{rid}: {late_frames} avatar frames late");
        let next_rid = realtime::response_id(response_id + 1);
        let next_start = events
            .iter()
            .position(|e| is_delta_of(e, &next_rid))
            .expect("the next answer was heard");
        assert!(
            events[next_start..].iter().all(|e| !mentions(e, &rid)),
            "{rid}: emitted after the next answer began"
        );
        // A dead answer is never reported done.
        for kind in ["response.output_audio.done", "response.done"] {
            assert!(
                !events
                    .iter()
                    .any(|e| e["type"] == kind && mentions(e, &rid)),
                "{rid}: {kind}"
            );
        }
        // Its avatar frames only show audio that was sent.
        for e in events
            .iter()
            .filter(|e| e["type"] == "duplex.avatar.frame" && e["response_id"] == rid.as_str())
        {
            let offset = e["offset_ms"].as_f64().unwrap();
            assert!(
                offset + 40.0 <= sent_ms + after_ms,
                "{rid}: frame at {offset}"
            );
        }
    }

    // The answer after the barge-ins: all of it, in order, then done.
    let deltas: Vec<&Event> = events
        .iter()
        .filter(|e| is_delta_of(e, &last_rid))
        .collect();
    let played: f64 = deltas.iter().map(|e| delta_ms(e)).sum();
    let offsets: Vec<u64> = deltas.iter().map(|e| e["t_ms"].as_u64().unwrap()).collect();
    assert_eq!(
        offsets,
        (0..deltas.len() as u64).map(|k| k * 20).collect::<Vec<_>>()
    );
    assert!(played > 2500.0, "{played} ms");
    assert!(
        (last_heard as f64 - played).abs() <= 20.0,
        "played out {last_heard} of {played} ms"
    );
    let done = events
        .iter()
        .position(|e| e["type"] == "response.done" && e["response"]["id"] == last_rid)
        .expect("response.done");
    assert_eq!(events[done]["response"]["status"], "completed");
    let last_delta = events
        .iter()
        .rposition(|e| is_delta_of(e, &last_rid))
        .unwrap();
    assert!(last_delta < done);
}
