//! The avatar on real Piper speech, through the real graph
//! `input -> tts -> output -> avatar`: frames at 25 fps (±1) stamped on the
//! audio clock for a ~3 s answer, a mouth (measured from the decoded JPEG
//! pixels) that follows the envelope of the audio actually sent (Pearson
//! r > 0.5), and a switch from speaking to listening on barge-in with nothing
//! of the cut answer drawn after it.
//!
//! For a person to look at, it writes `target/avatar/contact-sheet.png` (one
//! second of the answer, 25 frames tiled 5x5) and
//! `target/avatar/barge-in.png` (the last speaking frames and the first
//! listening ones). Needs the installed models (`duplex models install`) and
//! the Debian `espeak-ng`.

mod common;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use duplex::audio::{pcm16_base64_decode, rms};
use duplex::avatar::{contact_sheet, mouth_open_measure, save_png};
use duplex::graph::{Event, Pipeline, SystemKind};
use duplex::realtime;
use image::RgbImage;
use serde_json::json;

const OUTPUT_RATE: usize = 24_000;
const FPS: f64 = 25.0;
const FRAME_MS: u64 = 40;
const SIZE: u32 = 256;
const MARKER: &str = "test.barge_in";

/// About three seconds of speech, in two clauses.
const UTTERANCE: [&str; 2] = [
    "The weather is lovely today,",
    "so let us walk by the river.",
];

/// A longer answer, cut by the user.
const CUT_ANSWER: [&str; 2] = [
    "Let me tell you the whole story of how the old bridge was built.",
    "It took eleven years, four engineers and a great deal of patience.",
];

fn pipeline() -> Pipeline {
    let toml = format!(
        r#"
edges = ["input -> tts -> output -> avatar"]
[nodes.input]
kind = "input"
sample_rate = 16000
[nodes.tts]
kind = "tts"
[nodes.output]
kind = "output"
sample_rate = {OUTPUT_RATE}
lead_ms = 200
[nodes.avatar]
kind = "avatar"
size = {SIZE}
fps = 25
idle_fps = 5
"#
    );
    Pipeline::parse(&toml, Path::new("avatar.toml")).unwrap()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

type Session = common::AnswerSession;

fn is_frame(e: &Event) -> bool {
    e["type"] == "duplex.avatar.frame"
}

fn decode_frame(e: &Event) -> RgbImage {
    let jpeg = base64::engine::general_purpose::STANDARD
        .decode(e["image"].as_str().expect("image"))
        .expect("base64 image");
    let img = image::load_from_memory(&jpeg)
        .expect("a JPEG frame")
        .to_rgb8();
    assert_eq!(img.dimensions(), (SIZE, SIZE));
    img
}

fn pearson(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let ma = a.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
    let mb = b.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    sab / (saa * sbb).sqrt().max(1e-12)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avatar_follows_real_speech_and_listens_on_barge_in() {
    let mut s = Session::start(&pipeline(), "avatar-test");

    // 1. A ~3 s answer played to its end.
    let rid = realtime::response_id(1);
    s.answer(1, &UTTERANCE).await;
    s.until(|e| e["type"] == "response.done" && e["response"]["id"] == rid)
        .await;
    let audio: Vec<f32> = s
        .events
        .iter()
        .filter(|e| e["type"] == "response.output_audio.delta" && e["response_id"] == rid)
        .flat_map(|e| pcm16_base64_decode(e["delta"].as_str().unwrap()).unwrap())
        .collect();
    let audio_s = audio.len() as f64 / OUTPUT_RATE as f64;
    let frames: Vec<&Event> = s
        .events
        .iter()
        .filter(|e| is_frame(e) && e["response_id"] == rid)
        .collect();
    assert!(
        frames.iter().all(|e| e["state"] == "speaking"),
        "frames of an answer show the avatar speaking"
    );
    let fps = frames.len() as f64 / audio_s;
    println!(
        "{} speaking frames for {audio_s:.2} s of speech: {fps:.2} fps",
        frames.len()
    );
    assert!((2.5..=4.0).contains(&audio_s), "{audio_s} s of speech");
    assert!((FPS - 1.0..=FPS + 1.0).contains(&fps), "{fps} fps");
    // Stamped on the audio clock: frame k shows the audio from 40k ms.
    let offsets: Vec<u64> = frames
        .iter()
        .map(|e| e["offset_ms"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (0..frames.len() as u64).map(|k| k * FRAME_MS).collect();
    assert_eq!(offsets, expected);

    // The mouth, measured from the pixels, against the audio envelope.
    let images: Vec<RgbImage> = frames.iter().map(|e| decode_frame(e)).collect();
    let mouth: Vec<f32> = images
        .iter()
        .map(|img| mouth_open_measure(img, SIZE))
        .collect();
    let per_frame = OUTPUT_RATE * FRAME_MS as usize / 1000;
    let envelope: Vec<f32> = audio.chunks_exact(per_frame).map(rms).collect();
    assert_eq!(envelope.len(), mouth.len());
    let r = pearson(&envelope, &mouth);
    let open_frames = mouth.iter().filter(|&&m| m > 0.2).count();
    let closed_frames = mouth.iter().filter(|&&m| m < 0.05).count();
    println!(
        "corr(audio rms, mouth pixels) = {r:.3} over {} frames; {open_frames} open, {closed_frames} closed",
        mouth.len()
    );
    assert!(r > 0.5, "Pearson r = {r}");
    assert!(open_frames >= 10 && closed_frames >= 1, "the mouth moves");

    let sheet = contact_sheet(&images[25..50], 5);
    assert_eq!(sheet.dimensions(), (5 * SIZE, 5 * SIZE));
    let path = target_dir().join("avatar").join("contact-sheet.png");
    save_png(&sheet, &path).expect("writing the contact sheet");
    println!("wrote {}", path.display());

    // 2. Barge-in: the user cuts the next answer 0.6 s in.
    let cut = realtime::response_id(2);
    s.answer(2, &CUT_ANSWER).await;
    s.until(|e| is_frame(e) && e["response_id"] == cut && e["offset_ms"].as_u64().unwrap() >= 600)
        .await;
    s.graph.raise(0, SystemKind::Interrupt { response_id: 2 });
    s.graph
        .sink()
        .expect("session alive")
        .emit(MARKER, 0, json!({}));
    // The listening face, and a few of its idle-rate frames after it.
    s.until(|e| e["type"] == MARKER).await;
    for _ in 0..3 {
        s.until(|e| is_frame(e) && e["state"] == "listening").await;
    }
    let events = s.finish().await;
    let marker = events.iter().position(|e| e["type"] == MARKER).unwrap();
    let listening = marker
        + events[marker..]
            .iter()
            .position(|e| is_frame(e) && e["state"] == "listening")
            .expect("a listening frame after the barge-in");
    let before = events[..listening]
        .iter()
        .rposition(is_frame)
        .expect("frames before the barge-in");
    assert_eq!(
        events[before]["state"], "speaking",
        "speaking -> listening directly"
    );
    assert_eq!(events[before]["response_id"], cut.as_str());
    let after: Vec<&Event> = events[listening..].iter().filter(|e| is_frame(e)).collect();
    assert!(after.len() >= 3);
    for e in &after {
        assert_eq!(e["state"], "listening");
        assert!(
            e["response_id"].is_null(),
            "a frame of the cut answer: {e:?}"
        );
    }
    assert!(
        !events[listening..]
            .iter()
            .any(|e| e["type"] == "response.output_audio.delta"),
        "audio after the barge-in"
    );
    let cut_frames = events
        .iter()
        .filter(|e| is_frame(e) && e["response_id"] == cut)
        .count();
    println!(
        "barge-in: {cut_frames} speaking frames of the cut answer, then {} listening",
        after.len()
    );

    let mut shots: Vec<RgbImage> = events[..listening]
        .iter()
        .filter(|e| is_frame(e))
        .rev()
        .take(4)
        .map(decode_frame)
        .collect();
    shots.reverse();
    shots.extend(after.iter().take(4).map(|e| decode_frame(e)));
    let path = target_dir().join("avatar").join("barge-in.png");
    save_png(&contact_sheet(&shots, 4), &path).expect("writing the barge-in sheet");
    println!("wrote {}", path.display());
}
