//! `duplex bench tts`: streaming speech out, the avatar, and the whole
//! headless voice turn, each next to a peer measured in the same run.
//!
//! - Clause -> first audio frame: each clause of a set is sent as its own
//!   response through the real graph `input -> tts -> output` (espeak-ng,
//!   Piper, the paced output stage); the wall time from sending the `Clause`
//!   frame to its first `response.output_audio.delta` (median; target
//!   < 100 ms; a long clause opens with a short phrase, as the first clause
//!   of every response does, on the voice's quick session). Peer: the same
//!   answers' whole text sent at once and spoken whole (what a TTS that
//!   waits for the full answer would do), time to first audio.
//! - Phonemizer: the long-lived `espeak-ng` process per clause against
//!   spawning `espeak-ng` per clause (median ms).
//! - TTS real-time factor on one thread (the voice's session has one
//!   intra-op thread): synthesis wall time / audio time, over the clauses.
//! - Avatar: render ms per 256x256 frame (median) against the JPEG encode of
//!   the same frame with the `image` crate's encoder.
//! - Voice turn: `pipelines/voice.toml` (VAD, streaming Whisper, local LLM,
//!   Piper, output) on the ten pocketsphinx-testdata clips streamed at
//!   real-time pace; the `duplex.turn.latency` waterfall (ms after the end
//!   of speech: speech stopped, ASR final, LLM first token, first clause,
//!   first audio synthesized, first audio frame out), medians. Peer, in the
//!   same turn: a non-streaming cascade that waits for the LLM's whole
//!   answer and then synthesizes it at once (the answer's last transcript
//!   delta after speech end, plus the whole answer's synthesis time).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::median;
use crate::audio::{Pcm, decode_file};
use crate::avatar::{AvatarRenderer, AvatarState, LipSync, Pose, encode_jpeg};
use crate::graph::frame::ResponseSummary;
use crate::graph::{
    DataFrame, Payload, Pipeline, Resources, ResponseId, SessionGraph, SessionShared, SystemKind,
};
use crate::realtime;
use crate::runner::{Pace, run_pcm};
use crate::tts::actor::TtsParams;
use crate::tts::{ESPEAK_PROGRAM, Synthesizer};

/// Answers as an LLM streams them, clause by clause.
const ANSWERS: [&[&str]; 4] = [
    &[
        "Sure, I can help with that.",
        "The train to Chicago leaves at seven fifteen,",
        "and it takes about three hours.",
    ],
    &[
        "Good question!",
        "Paris is the capital of France,",
        "with about two million people living in the city itself.",
    ],
    &[
        "Hello Sarah, nice to meet you.",
        "I will remember that your favourite colour is green.",
    ],
    &[
        "Okay.",
        "Mix two cups of flour with one egg,",
        "then bake it for twenty minutes at one hundred and eighty degrees.",
    ],
];

/// Silence before each clip of the voice turn, and after it (long enough
/// for the answer to start while the input still streams).
const LEAD_PAD_MS: u64 = 500;
const TAIL_PAD_MS: u64 = 3000;

/// The waterfall's stages, as `duplex.turn.latency` names them.
pub const STAGES: [&str; 6] = [
    "speech_stopped",
    "asr_final",
    "llm_first_token",
    "first_clause",
    "first_audio",
    "first_audio_out",
];

#[derive(Debug, Clone)]
pub struct FirstAudio {
    /// Per clause, ms from the clause arriving to its first audio frame.
    pub clause_ms: Vec<f64>,
    /// Per answer, ms from its whole text arriving to its first audio frame.
    pub whole_answer_ms: Vec<f64>,
}

#[derive(Debug, Clone)]
pub struct Phonemizer {
    pub long_lived_ms: Vec<f64>,
    pub spawned_ms: Vec<f64>,
}

#[derive(Debug, Clone)]
pub struct Rtf {
    pub synth_ms: Vec<f64>,
    pub audio_ms: Vec<f64>,
}

#[derive(Debug, Clone)]
pub struct AvatarCost {
    pub size: u32,
    pub render_ms: Vec<f64>,
    pub jpeg_ms: Vec<f64>,
    pub jpeg_bytes: Vec<f64>,
}

/// One clip's voice turn.
#[derive(Debug, Clone)]
pub struct Turn {
    pub name: String,
    /// The last waterfall of the clip (ms after the end of speech, by stage).
    pub stages: Vec<(String, f64)>,
    /// Turns the clip made (the VAD may split an utterance).
    pub turns: usize,
    /// The answer's text.
    pub answer: String,
    /// Ms after the end of speech of the answer's last transcript delta.
    pub llm_done_ms: Option<f64>,
    /// Synthesis of the whole answer at once, ms.
    pub whole_synth_ms: Option<f64>,
    /// What scoring each pause took (semantic VAD), ms.
    pub scoring_ms: Vec<f64>,
    /// The states of the clip's speculative answers (started, adopted,
    /// discarded), in order.
    pub speculation: Vec<String>,
}

impl Turn {
    pub fn stage(&self, name: &str) -> Option<f64> {
        self.stages
            .iter()
            .find(|(s, _)| s == name)
            .map(|(_, ms)| *ms)
    }

    /// The non-streaming cascade's first audio: the whole answer, then its
    /// whole synthesis.
    pub fn peer_ms(&self) -> Option<f64> {
        Some(self.llm_done_ms? + self.whole_synth_ms?)
    }
}

#[derive(Debug, Clone)]
pub struct Report {
    pub first_audio: FirstAudio,
    pub phonemizer: Phonemizer,
    pub rtf: Rtf,
    pub avatar: AvatarCost,
    pub pipeline: Option<PathBuf>,
    pub turns: Vec<Turn>,
    /// The 1-minute load average when the voice turns began (the turn's
    /// ASR and LLM slow down a lot when other work shares the cores).
    pub load_before_turns: Option<String>,
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// `input -> tts -> output`, as voice.toml has them; `first_piece_words`
/// 0 makes the TTS speak each text whole (the peer).
fn speech_pipeline(first_piece_words: usize) -> Result<Pipeline> {
    let toml = format!(
        r#"
edges = ["input -> tts -> output"]
[nodes.input]
kind = "input"
sample_rate = 16000
[nodes.tts]
kind = "tts"
speed = 1.0
first_piece_words = {first_piece_words}
[nodes.output]
kind = "output"
sample_rate = 24000
lead_ms = 200
"#
    );
    Pipeline::parse(&toml, Path::new("bench-tts.toml"))
}

/// Sends `text` as response `response_id` and waits for its first audio
/// frame; then interrupts it (the audio is not needed). Returns the ms.
async fn first_audio_ms(
    graph: &mut SessionGraph,
    response_id: ResponseId,
    text: &str,
) -> Result<f64> {
    let rid = realtime::response_id(response_id);
    let item_id = realtime::assistant_item_id(response_id);
    let input = graph.input.as_ref().context("the session has ended")?;
    let summary = ResponseSummary {
        response_id: rid.clone(),
        item_id: item_id.clone(),
        transcript: text.to_string(),
        modalities: vec!["audio".into()],
        ..ResponseSummary::default()
    };
    let sent = Instant::now();
    for payload in [
        Payload::Clause {
            item_id,
            text: text.to_string(),
        },
        Payload::ResponseEnd(Box::new(summary)),
    ] {
        let frame = DataFrame {
            t_ms: 0,
            response_id,
            payload,
        };
        if !input.send_data(frame).await {
            bail!("the TTS graph stopped taking input");
        }
    }
    loop {
        let event = tokio::time::timeout(Duration::from_secs(60), graph.events.recv())
            .await
            .context("no audio for 60 s")?
            .context("the TTS graph ended")?;
        if event["type"] == "error" {
            bail!("the TTS graph reported {event:?}");
        }
        if event["type"] == "response.output_audio.delta" && event["response_id"] == rid.as_str() {
            let ms = ms_since(sent);
            graph.raise(0, SystemKind::Interrupt { response_id });
            return Ok(ms);
        }
    }
}

/// Clause -> first audio frame through the graph, and the whole-answer peer.
pub async fn first_audio(resources: &Arc<Resources>) -> Result<FirstAudio> {
    let shared = SessionShared::new("bench-tts");
    let pipeline = speech_pipeline(TtsParams::default_first_piece_words())?;
    let mut graph = SessionGraph::start(&pipeline, resources, &shared)?;
    let mut whole = SessionGraph::start(&speech_pipeline(0)?, resources, &shared)?;
    let mut next: ResponseId = 1;
    // Warm-up: espeak-ng's first lines and the ONNX session's first runs.
    for _ in 0..2 {
        first_audio_ms(&mut graph, next, "Warming up the voice.").await?;
        first_audio_ms(&mut whole, next, "Warming up the voice.").await?;
        next += 1;
    }
    let mut clause_ms = Vec::new();
    let mut whole_answer_ms = Vec::new();
    for answer in ANSWERS {
        for clause in answer.iter() {
            clause_ms.push(first_audio_ms(&mut graph, next, clause).await?);
            next += 1;
        }
        whole_answer_ms.push(first_audio_ms(&mut whole, next, &answer.join(" ")).await?);
        next += 1;
    }
    for mut graph in [graph, whole] {
        graph.end_input();
        while graph.events.recv().await.is_some() {}
    }
    Ok(FirstAudio {
        clause_ms,
        whole_answer_ms,
    })
}

fn clauses() -> impl Iterator<Item = &'static str> {
    ANSWERS.iter().flat_map(|a| a.iter().copied())
}

/// The long-lived phonemizer against a process spawned per clause.
pub fn phonemizer(resources: &Resources) -> Result<Phonemizer> {
    let voice = resources.voice()?;
    let espeak_voice = voice.espeak_voice().to_string();
    let mut synth = Synthesizer::new(voice)?;
    let phonemizer = synth.phonemizer();
    phonemizer.phonemize("Warm up.")?;
    let mut long_lived_ms = Vec::new();
    let mut spawned_ms = Vec::new();
    for clause in clauses() {
        let t0 = Instant::now();
        let ipa = phonemizer.phonemize(clause)?;
        long_lived_ms.push(ms_since(t0));

        let t0 = Instant::now();
        let out = Command::new(ESPEAK_PROGRAM)
            .args(["-q", "--ipa", "-v", &espeak_voice, "--", clause])
            .output()
            .with_context(|| format!("running {ESPEAK_PROGRAM} (apt-get install espeak-ng)"))?;
        spawned_ms.push(ms_since(t0));
        if !out.status.success() || out.stdout.is_empty() || ipa.is_empty() {
            bail!("{ESPEAK_PROGRAM} gave no phonemes for {clause:?}");
        }
    }
    Ok(Phonemizer {
        long_lived_ms,
        spawned_ms,
    })
}

/// Synthesis time against audio time, clause by clause, on one thread.
pub fn rtf(resources: &Resources) -> Result<Rtf> {
    let mut synth = Synthesizer::new(resources.voice()?)?;
    synth.synthesize("Warm up.")?;
    let mut synth_ms = Vec::new();
    let mut audio_ms = Vec::new();
    for clause in clauses() {
        let t0 = Instant::now();
        let pcm = synth.synthesize(clause)?;
        synth_ms.push(ms_since(t0));
        audio_ms.push(pcm.duration_secs() * 1000.0);
    }
    Ok(Rtf { synth_ms, audio_ms })
}

/// Render and JPEG cost of avatar frames driven by real speech.
pub fn avatar(resources: &Resources, size: u32) -> Result<AvatarCost> {
    let mut synth = Synthesizer::new(resources.voice()?)?;
    let speech = synth.synthesize(&ANSWERS.map(|a| a.join(" ")).join(" "))?;
    let mut lips = LipSync::new(speech.sample_rate, 25);
    let mouths = lips.push(&speech.samples);
    let mut renderer = AvatarRenderer::new(size);
    let mut cost = AvatarCost {
        size,
        render_ms: Vec::new(),
        jpeg_ms: Vec::new(),
        jpeg_bytes: Vec::new(),
    };
    for (i, m) in mouths.iter().enumerate() {
        let pose = Pose {
            state: AvatarState::Speaking,
            mouth_open: m.open,
            mouth_wide: m.wide,
            t_ms: 40 * i as u64,
        };
        let t0 = Instant::now();
        let img = renderer.render(&pose);
        let rendered = ms_since(t0);
        let t0 = Instant::now();
        let jpeg = encode_jpeg(&img, 80)?;
        cost.jpeg_ms.push(ms_since(t0));
        cost.render_ms.push(rendered);
        cost.jpeg_bytes.push(jpeg.len() as f64);
    }
    if cost.render_ms.is_empty() {
        bail!("the benchmark speech gave no avatar frames");
    }
    Ok(cost)
}

fn padded(pcm: &Pcm) -> Pcm {
    let ms = |ms: u64| (pcm.sample_rate as u64 * ms / 1000) as usize;
    let mut samples = vec![0.0; ms(LEAD_PAD_MS)];
    samples.extend_from_slice(&pcm.samples);
    samples.extend(std::iter::repeat_n(0.0, ms(TAIL_PAD_MS)));
    Pcm {
        samples,
        sample_rate: pcm.sample_rate,
    }
}

/// One clip through the voice pipeline at real-time pace.
pub(crate) async fn voice_turn(
    pipeline: &Pipeline,
    resources: &Arc<Resources>,
    synth: &mut Option<Synthesizer>,
    path: &Path,
) -> Result<Turn> {
    let name = super::asr::clip_name(path);
    let pcm = decode_file(path).with_context(|| format!("decoding {name}"))?;
    let pace = Pace {
        chunk_ms: 20,
        realtime: true,
    };
    // Wall time each event arrived, by its index.
    let mut arrived: Vec<Instant> = Vec::new();
    let events = run_pcm(pipeline, resources, &padded(&pcm), pace, |_| {
        arrived.push(Instant::now());
        Ok(())
    })
    .await
    .with_context(|| format!("streaming {name}"))?;
    if let Some(error) = events.iter().find(|e| e["type"] == "error") {
        bail!("{name}: the pipeline reported {error:?}");
    }
    let waterfalls: Vec<usize> = (0..events.len())
        .filter(|&i| events[i]["type"] == "duplex.turn.latency")
        .collect();
    let mut turn = Turn {
        name,
        stages: Vec::new(),
        turns: waterfalls.len(),
        answer: String::new(),
        llm_done_ms: None,
        whole_synth_ms: None,
        scoring_ms: events
            .iter()
            .filter(|e| e["type"] == "duplex.turn.end_of_turn")
            // 0: the same words scored again (the final decode's).
            .filter_map(|e| e["scoring_ms"].as_f64().filter(|ms| *ms > 0.0))
            .collect(),
        speculation: events
            .iter()
            .filter(|e| e["type"] == "duplex.turn.speculation")
            .filter_map(|e| e["state"].as_str().map(String::from))
            .collect(),
    };
    let Some(&at) = waterfalls.last() else {
        return Ok(turn);
    };
    let since = &events[at]["since_speech_end"];
    for stage in STAGES {
        if let Some(ms) = since[format!("{stage}_ms")].as_f64() {
            turn.stages.push((stage.to_string(), ms));
        }
    }
    let rid = events[at]["response_id"].clone();
    let Some(out_ms) = turn.stage("first_audio_out") else {
        return Ok(turn);
    };
    // The waterfall closes at the first frame out: that dates the end of
    // speech on the wall clock.
    let speech_end = arrived
        .get(at)
        .and_then(|t| t.checked_sub(Duration::from_secs_f64(out_ms / 1000.0)));
    let deltas: Vec<usize> = (0..events.len())
        .filter(|&i| {
            events[i]["type"] == "response.output_audio_transcript.delta"
                && events[i]["response_id"] == rid
                && rid != Value::Null
        })
        .collect();
    turn.answer = deltas
        .iter()
        .filter_map(|&i| events[i]["delta"].as_str())
        .collect::<String>()
        .trim()
        .to_string();
    if let (Some(end), Some(&last)) = (speech_end, deltas.last())
        && let Some(t) = arrived.get(last)
    {
        turn.llm_done_ms = Some(t.saturating_duration_since(end).as_secs_f64() * 1000.0);
    }
    if !turn.answer.is_empty() {
        let mut s = match synth.take() {
            Some(s) => s,
            None => Synthesizer::new(resources.voice()?)?,
        };
        let answer = turn.answer.clone();
        let (s, ms) = tokio::task::spawn_blocking(move || {
            let t0 = Instant::now();
            let result = s.synthesize(&answer).map(|_| ms_since(t0));
            (s, result)
        })
        .await
        .context("synthesis thread")?;
        *synth = Some(s);
        turn.whole_synth_ms = Some(ms?);
    }
    Ok(turn)
}

/// Runs every part; the voice turn when `pipeline` is given.
pub async fn run(resources: &Arc<Resources>, pipeline: Option<&Path>) -> Result<Report> {
    resources.voice()?;
    let first_audio = first_audio(resources).await?;
    let r = resources.clone();
    let (phonemizer, rtf, avatar) = tokio::task::spawn_blocking(move || {
        Ok::<_, anyhow::Error>((phonemizer(&r)?, rtf(&r)?, avatar(&r, 256)?))
    })
    .await
    .context("TTS benchmark thread")??;
    let mut turns = Vec::new();
    let load_before_turns = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string));
    if let Some(path) = pipeline {
        let voice = Pipeline::load(path)?;
        for node in &voice.nodes {
            node.kind
                .prepare(resources)
                .with_context(|| format!("node `{}`", node.name))?;
        }
        let mut synth = None;
        for clip in super::asr::reference_clips()? {
            turns.push(voice_turn(&voice, resources, &mut synth, &clip.path).await?);
        }
    }
    Ok(Report {
        first_audio,
        phonemizer,
        rtf,
        avatar,
        pipeline: pipeline.map(Path::to_path_buf),
        turns,
        load_before_turns,
    })
}

pub(crate) fn med(values: &[f64]) -> f64 {
    median(&mut values.to_vec())
}

fn ratio(a: f64, b: f64) -> f64 {
    a / b.max(1e-9)
}

pub(crate) fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.0}"))
}

pub fn print(report: &Report) {
    let fa = &report.first_audio;
    let ours = med(&fa.clause_ms);
    let peer = med(&fa.whole_answer_ms);
    let max = fa.clause_ms.iter().copied().fold(0.0, f64::max);
    println!(
        "tts: espeak-ng + Piper (joe; a response opens on the 2-thread quick session, the rest on 1 thread) through input -> tts -> output (24 kHz, 20 ms frames)"
    );
    println!(
        "  clause -> first audio frame: median {ours:.0} ms, max {max:.0} ms over {} clauses (target: median < 100 ms); \
         whole answer at once: median {peer:.0} ms over {} answers; ratio {:.2}x",
        fa.clause_ms.len(),
        fa.whole_answer_ms.len(),
        ratio(ours, peer)
    );
    let ph = &report.phonemizer;
    let (ours, peer) = (med(&ph.long_lived_ms), med(&ph.spawned_ms));
    println!(
        "  phonemize a clause: long-lived espeak-ng median {ours:.2} ms; espeak-ng spawned per clause median {peer:.2} ms; ratio {:.2}x",
        ratio(ours, peer)
    );
    let rtf = &report.rtf;
    let synth: f64 = rtf.synth_ms.iter().sum();
    let audio: f64 = rtf.audio_ms.iter().sum();
    let per_clause: Vec<f64> = rtf
        .synth_ms
        .iter()
        .zip(&rtf.audio_ms)
        .map(|(s, a)| ratio(*s, *a))
        .collect();
    println!(
        "  real-time factor, one thread: {:.3} overall ({:.1} s of speech in {:.2} s), median per clause {:.3}; synthesis median {:.0} ms per clause",
        ratio(synth, audio),
        audio / 1000.0,
        synth / 1000.0,
        med(&per_clause),
        med(&rtf.synth_ms)
    );
    let av = &report.avatar;
    let (render, jpeg) = (med(&av.render_ms), med(&av.jpeg_ms));
    println!(
        "  avatar {size}x{size}: render median {render:.2} ms/frame, JPEG encode (image crate, q80) median {jpeg:.2} ms/frame, \
         ratio render/encode {:.2}x; render + encode {:.2} ms of the 40 ms frame period ({} frames, {:.1} KB each)",
        ratio(render, jpeg),
        render + jpeg,
        av.render_ms.len(),
        med(&av.jpeg_bytes) / 1024.0,
        size = av.size,
    );
    let Some(pipeline) = &report.pipeline else {
        return;
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "voice turn: {} on {} clips at real-time pace (padded {LEAD_PAD_MS} ms before, {TAIL_PAD_MS} ms after); ms after the end of speech; \
         load average before: {} on {cores} cores",
        pipeline.display(),
        report.turns.len(),
        report.load_before_turns.as_deref().unwrap_or("?"),
    );
    println!(
        "  {:<44} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} | {:>8} {:>7}",
        "clip", "vad", "asr", "llm", "clause", "synth", "OUT", "llm done", "peer"
    );
    for t in &report.turns {
        println!(
            "  {:<44} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} | {:>8} {:>7}",
            t.name,
            opt_ms(t.stage("speech_stopped")),
            opt_ms(t.stage("asr_final")),
            opt_ms(t.stage("llm_first_token")),
            opt_ms(t.stage("first_clause")),
            opt_ms(t.stage("first_audio")),
            opt_ms(t.stage("first_audio_out")),
            opt_ms(t.llm_done_ms),
            opt_ms(t.peer_ms()),
        );
    }
    let answered = report
        .turns
        .iter()
        .filter(|t| t.stage("first_audio_out").is_some())
        .count();
    let medians: Vec<String> = STAGES
        .iter()
        .map(|s| {
            let v: Vec<f64> = report.turns.iter().filter_map(|t| t.stage(s)).collect();
            format!("{s} {:.0}", med(&v))
        })
        .collect();
    println!(
        "  waterfall medians ({answered}/{} clips answered): {}",
        report.turns.len(),
        medians.join(", ")
    );
    let tts_share: Vec<f64> = report
        .turns
        .iter()
        .filter_map(|t| Some(t.stage("first_audio_out")? - t.stage("first_clause")?))
        .collect();
    let asr_share: Vec<f64> = report
        .turns
        .iter()
        .filter_map(|t| Some(t.stage("asr_final")? - t.stage("speech_stopped")?))
        .collect();
    println!(
        "  of which: speech stopped -> ASR final median {:.0} ms; first clause -> first audio out (TTS + output) median {:.0} ms",
        med(&asr_share),
        med(&tts_share)
    );
    let pairs: Vec<(f64, f64)> = report
        .turns
        .iter()
        .filter_map(|t| Some((t.stage("first_audio_out")?, t.peer_ms()?)))
        .collect();
    let ours: Vec<f64> = pairs.iter().map(|p| p.0).collect();
    let peer: Vec<f64> = pairs.iter().map(|p| p.1).collect();
    println!(
        "  speech end -> first reply audio frame: median {:.0} ms; a cascade that waits for the whole answer, then synthesizes it: median {:.0} ms; ratio {:.2}x",
        med(&ours),
        med(&peer),
        ratio(med(&ours), med(&peer))
    );
    let split = report.turns.iter().filter(|t| t.turns > 1).count();
    if split > 0 {
        println!("  ({split} clips made more than one turn: the last turn's waterfall is shown)");
    }
}
