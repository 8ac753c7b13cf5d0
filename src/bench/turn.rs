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

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::tts::{STAGES, Turn, med, opt_ms, voice_turn};
use crate::graph::{Pipeline, Resources};

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
    Ok(Report {
        ways: ways.into_iter().map(|(n, _, t)| (n, t)).collect(),
        load_before,
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
}
