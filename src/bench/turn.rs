//! `duplex bench turn`: turn-taking on the ten pocketsphinx-testdata clips
//! streamed at real-time pace through the voice pipeline (VAD, streaming
//! Whisper, the end-of-turn scorer, the local LLM, Piper, paced output),
//! three ways on the same clips in the same run, one after the other per
//! clip:
//!
//! - semantic VAD (eagerness auto) with speculative answers,
//! - semantic VAD without them,
//! - server VAD with its fixed 500 ms of silence (the peer).
//!
//! Reported: what scoring a pause costs (ms, median and p90 over the
//! scored pauses), the `duplex.turn.latency` waterfall medians of each way
//! (ms after the end of speech), speech end -> first audio out as ratios,
//! and how many speculations were adopted or thrown away. The clips run
//! through [`super::tts::voice_turn`], the voice-turn machinery of
//! `duplex bench tts`.
//!
//! Then, offline, how the words alone read at every natural pause inside a
//! sentence ([`score_gaps`]): each quiet gap between words of the five
//! LibriVox sentences is decoded (as a final would be) and scored as if the
//! user had paused there; a gap whose window is 800 ms or less would end
//! the turn if the user paused there that long.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::asr::{LIBRIVOX_DIR, clip_name};
use super::tts::{STAGES, Turn, med, opt_ms, voice_turn};
use crate::asr::ASR_RATE;
use crate::asr::whisper::{DecodeOptions, default_threads};
use crate::audio::{Pcm, decode_file, resample};
use crate::graph::{Pipeline, Resources};
use crate::turn::Eagerness;
use crate::turn::end_of_turn::EndOfTurnScorer;

/// The ways a turn is taken, as (name, VAD settings, controller settings).
const WAYS: [(&str, &str, &str); 3] = [
    (
        "semantic+spec",
        "turn_detection = \"semantic_vad\"\neagerness = \"auto\"",
        "speculative = true",
    ),
    (
        "semantic",
        "turn_detection = \"semantic_vad\"\neagerness = \"auto\"",
        "speculative = false",
    ),
    (
        "server 500ms",
        "silence_duration_ms = 500",
        "speculative = false",
    ),
];

fn pipeline(vad: &str, brain: &str, semantic: bool) -> Result<Pipeline> {
    let (edges, turn) = if semantic {
        (
            "input -> vad -> asr -> turn -> brain -> tts -> output",
            "[nodes.turn]\nkind = \"end_of_turn\"\n",
        )
    } else {
        ("input -> vad -> asr -> brain -> tts -> output", "")
    };
    let text = format!(
        r#"
edges = ["{edges}"]
[nodes.input]
kind = "input"
sample_rate = 16000
[nodes.vad]
kind = "silero_vad"
threshold = 0.5
prefix_padding_ms = 300
{vad}
[nodes.asr]
kind = "whisper"
partial_interval_ms = 300
{turn}
[nodes.brain]
kind = "controller"
max_tokens = 120
{brain}
[nodes.tts]
kind = "tts"
first_piece_words = 4
[nodes.output]
kind = "output"
sample_rate = 24000
lead_ms = 200
"#
    );
    Pipeline::parse(&text, Path::new("bench-turn.toml"))
}

pub struct Report {
    /// Per way: its name and one turn per clip.
    pub ways: Vec<(String, Vec<Turn>)>,
    pub load_before: Option<String>,
    /// Every natural pause inside the LibriVox sentences, and their ends.
    pub gaps: Vec<Gap>,
}

/// A place in a sentence scored as if the user paused there.
pub struct Gap {
    pub clip: String,
    /// Where the audio was cut (ms into the clip).
    pub at_ms: u64,
    /// The end of the sentence (not a pause inside it).
    pub end: bool,
    pub text: String,
    pub score: f32,
    pub window_ms: u64,
}

/// The longest window that still ends a pause inside a sentence: the test
/// set's inserted pauses are 600-800 ms.
const CUTS_OFF_MS: u64 = 800;

/// The quiet gaps between words inside `pcm`'s speech (ms): each 80 ms run
/// of 10 ms frames at most 8% as loud as the speech's average 80 ms,
/// quietest within 100 ms around it, at least 300 ms from the start and
/// 200 ms from the end of speech, and 250 ms or more from the last gap.
pub fn word_gaps(pcm: &Pcm) -> Vec<u64> {
    let Some((start_ms, end_ms)) = pcm.energy_speech_span() else {
        return Vec::new();
    };
    let energy = pcm.frame_energy();
    let (start, end) = ((start_ms / 10) as usize, (end_ms / 10) as usize);
    let run = |i: usize| energy[i..i + 8].iter().sum::<f32>();
    if end < start + 60 || end > energy.len() {
        return Vec::new();
    }
    let last = end - 8;
    let average = (start..last).map(run).sum::<f32>() / (last - start) as f32;
    let mut gaps = Vec::new();
    let mut i = start + 30;
    while i + 20 < last {
        let quiet = run(i);
        let quietest = (i.saturating_sub(10)..(i + 10).min(last)).all(|j| run(j) >= quiet);
        if quietest && quiet < 0.08 * average {
            gaps.push((i as u64 + 4) * 10);
            i += 25;
        } else {
            i += 1;
        }
    }
    gaps
}

/// Decodes and scores every gap of [`word_gaps`] in the five LibriVox
/// sentences, and each sentence's end (no assistant words before them).
/// Blocks: run it on the blocking pool.
pub fn score_gaps(resources: &Resources) -> Result<Vec<Gap>> {
    let whisper = resources.whisper()?;
    let llm = resources.local_llm()?;
    let mut session = whisper.session()?;
    let mut scorer = EndOfTurnScorer::new(&llm)?;
    let options = DecodeOptions {
        threads: default_threads(),
        ..DecodeOptions::default()
    };
    let mut gaps = Vec::new();
    for clip in super::asr::reference_clips()? {
        if !clip.path.starts_with(LIBRIVOX_DIR) {
            continue;
        }
        let name = clip_name(&clip.path);
        let pcm = decode_file(&clip.path)?;
        let pcm = Pcm::new(resample(&pcm.samples, pcm.sample_rate, ASR_RATE)?, ASR_RATE);
        let (_, end_ms) = pcm.energy_speech_span().context("a silent clip")?;
        let cuts = word_gaps(&pcm).into_iter().map(|ms| (ms, false));
        for (at_ms, end) in cuts.chain([(end_ms, true)]) {
            let cut = at_ms as usize * ASR_RATE as usize / 1000;
            let audio = &pcm.samples[..cut.min(pcm.samples.len())];
            let text = session.transcribe_final(audio, &options, &mut |_| {})?;
            let score = scorer.score(None, &text)?.score;
            gaps.push(Gap {
                clip: name.clone(),
                at_ms,
                end,
                text,
                score,
                window_ms: Eagerness::Auto.window_ms(score),
            });
        }
    }
    Ok(gaps)
}

pub async fn run(resources: &Arc<Resources>) -> Result<Report> {
    let mut ways = Vec::new();
    for (name, vad, brain) in WAYS {
        let p = pipeline(vad, brain, vad.contains("semantic"))
            .with_context(|| format!("the {name} pipeline"))?;
        for node in &p.nodes {
            node.kind
                .prepare(resources)
                .with_context(|| format!("node `{}`", node.name))?;
        }
        ways.push((name.to_string(), p, Vec::new()));
    }
    let load_before = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string));
    let mut synth = None;
    for clip in super::asr::reference_clips()? {
        for (_, p, turns) in &mut ways {
            turns.push(voice_turn(p, resources, &mut synth, &clip.path).await?);
        }
    }
    let gaps = {
        let resources = resources.clone();
        tokio::task::spawn_blocking(move || score_gaps(&resources))
            .await
            .context("the gap scoring task failed")??
    };
    Ok(Report {
        ways: ways.into_iter().map(|(n, _, t)| (n, t)).collect(),
        load_before,
        gaps,
    })
}

fn percentile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn out_ms(turns: &[Turn]) -> Vec<f64> {
    turns
        .iter()
        .filter_map(|t| t.stage("first_audio_out"))
        .collect()
}

pub fn print(report: &Report) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "turn-taking: the ten pocketsphinx-testdata clips at real-time pace through VAD -> whisper -> (end_of_turn) -> controller -> Piper -> output; \
         load average before: {} on {cores} cores (the ASR, the scorer and the LLM share them)",
        report.load_before.as_deref().unwrap_or("?")
    );
    let scoring: Vec<f64> = report
        .ways
        .iter()
        .filter(|(n, _)| n.starts_with("semantic"))
        .flat_map(|(_, turns)| turns.iter().flat_map(|t| t.scoring_ms.iter().copied()))
        .collect();
    println!(
        "  end-of-turn scoring per pause: median {:.0} ms, p90 {:.0} ms over {} scored pauses",
        med(&scoring),
        percentile(&scoring, 0.9),
        scoring.len()
    );
    println!(
        "  {:<44} {}",
        "speech end -> first audio out (ms)",
        report
            .ways
            .iter()
            .map(|(n, _)| format!("{n:>14}"))
            .collect::<String>()
    );
    if let Some((_, first)) = report.ways.first() {
        for (i, t) in first.iter().enumerate() {
            let row: String = report
                .ways
                .iter()
                .map(|(_, turns)| {
                    let t = &turns[i];
                    let spec = if t.speculation.iter().any(|s| s == "adopted") {
                        "*"
                    } else {
                        " "
                    };
                    format!("{:>13}{spec}", opt_ms(t.stage("first_audio_out")))
                })
                .collect();
            println!("  {:<44} {row}", t.name);
        }
    }
    println!("  (* the answer was adopted from a speculation)");
    for (name, turns) in &report.ways {
        let medians: Vec<String> = STAGES
            .iter()
            .map(|s| {
                let v: Vec<f64> = turns.iter().filter_map(|t| t.stage(s)).collect();
                format!("{s} {:.0}", med(&v))
            })
            .collect();
        let count = |state: &str| {
            turns
                .iter()
                .map(|t| t.speculation.iter().filter(|s| *s == state).count())
                .sum::<usize>()
        };
        println!(
            "  {name:<14} waterfall medians ({}/{} answered): {}; speculations started {}, adopted {}, thrown away {}",
            out_ms(turns).len(),
            turns.len(),
            medians.join(", "),
            count("started"),
            count("adopted"),
            count("discarded"),
        );
    }
    let medians: Vec<f64> = report.ways.iter().map(|(_, t)| med(&out_ms(t))).collect();
    if let [spec, semantic, server] = medians[..] {
        println!(
            "  speech end -> first audio out, medians: semantic+speculation {spec:.0} ms, semantic {semantic:.0} ms, server_vad 500 ms {server:.0} ms; \
             ratios: semantic+spec/server {:.2}x, semantic/server {:.2}x, semantic+spec/semantic {:.2}x",
            spec / server.max(1e-9),
            semantic / server.max(1e-9),
            spec / semantic.max(1e-9),
        );
    }
    print_gaps(&report.gaps);
}

fn print_gaps(gaps: &[Gap]) {
    println!(
        "the words alone at every natural pause in the five LibriVox sentences (decoded up to the gap, scored without assistant words):"
    );
    for g in gaps {
        let place = if g.end { "end" } else { "gap" };
        println!(
            "  {:<44} {place} {:>5} ms  score {:.4} -> {:>4} ms  {}",
            g.clip, g.at_ms, g.score, g.window_ms, g.text
        );
    }
    let (ends, inside): (Vec<&Gap>, Vec<&Gap>) = gaps.iter().partition(|g| g.end);
    let within = |v: &[&Gap], ms: u64| v.iter().filter(|g| g.window_ms <= ms).count();
    println!(
        "  pauses inside a sentence: {} of {} get a window of {CUTS_OFF_MS} ms or less (a pause that long there ends the turn), {} the shortest; \
         sentence ends: {} of {} the shortest",
        within(&inside, CUTS_OFF_MS),
        inside.len(),
        within(&inside, Eagerness::Auto.window_ms(1.0)),
        within(&ends, Eagerness::Auto.window_ms(1.0)),
        ends.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_found_between_words_not_inside_them() {
        // Three 400 ms "words" of noise with 150 ms and 200 ms of silence
        // between them, and silence around.
        let rate = 16_000;
        let noise = |ms: usize| -> Vec<f32> {
            (0..ms * 16)
                .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.5)
                .collect()
        };
        let silence = |ms: usize| vec![0.0f32; ms * 16];
        let samples: Vec<f32> = [
            silence(300),
            noise(400),
            silence(150),
            noise(400),
            silence(200),
            noise(400),
            silence(300),
        ]
        .concat();
        let gaps = word_gaps(&Pcm::new(samples, rate));
        assert_eq!(gaps.len(), 2, "{gaps:?}");
        assert!(
            (700..850).contains(&gaps[0]),
            "first gap at 700-850 ms: {gaps:?}"
        );
        assert!(
            (1250..1450).contains(&gaps[1]),
            "second gap at 1250-1450 ms: {gaps:?}"
        );
        assert!(word_gaps(&Pcm::new(silence(1000), rate)).is_empty());
    }
}
