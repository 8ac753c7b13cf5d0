//! `duplex bench asr`: streaming speech recognition on the ten transcribed
//! clips of pocketsphinx-testdata (five LibriVox sentences, five "cards"
//! phrases), each padded with 0.5 s of silence and fed through an ASR
//! pipeline (default `pipelines/asr.toml`) at real-time pace, as a
//! microphone would.
//!
//! Per clip: the first partial's lag after speech start (audio time of the
//! first `...transcription.delta` minus that of `speech_started`), the final
//! transcript's latency after the end of speech (wall clock from the
//! `speech_stopped` event to the `...transcription.completed` event), and the
//! final's word error rate. Then the real-time factor of a final decode on
//! one core (one thread, wall time / audio time, median of 3), against
//! whisper.cpp's default full 30 s encoder window on the same clips: the
//! peer, measured in the same run, that also gives the ratio for the final's
//! latency. And the final decode alone with the pipeline's threads: the
//! quick final (a 320-position window first, redone at 512 when it loops)
//! against a plain decode at the 512 floor.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::asr::wer::WerTally;
use crate::asr::whisper::{DecodeOptions, MAX_AUDIO_CTX, WhisperSession};
use crate::audio::decode_file;
use crate::graph::{NodeKind, Pipeline, Resources};
use crate::runner::{Pace, run_pcm};

use super::median;

/// Where Debian's pocketsphinx-testdata puts its five LibriVox sentences.
pub const LIBRIVOX_DIR: &str = "/usr/share/pocketsphinx/test/data/librivox";

/// Where Debian's pocketsphinx-testdata puts its clips, and the file that
/// lists each set's transcriptions.
const SETS: [(&str, &str); 2] = [
    (LIBRIVOX_DIR, "transcription"),
    (
        "/usr/share/pocketsphinx/test/data/cards",
        "cards.transcription",
    ),
];

/// Silence added before and after each clip.
const PAD_MS: u64 = 500;

/// A real utterance and what was said.
#[derive(Debug, Clone)]
pub struct ReferenceClip {
    pub path: PathBuf,
    pub transcript: String,
}

/// The ten transcribed clips of pocketsphinx-testdata (LibriVox first), in
/// file order.
pub fn reference_clips() -> Result<Vec<ReferenceClip>> {
    let mut clips = Vec::new();
    for (dir, list) in SETS {
        let path = Path::new(dir).join(list);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (apt-get install pocketsphinx-testdata)",
                path.display()
            )
        })?;
        for (n, line) in text.lines().enumerate() {
            // "<s> words </s> (id)"
            let Some((words, id)) = line.rsplit_once('(') else {
                bail!("{}:{}: no `(id)` in {line:?}", path.display(), n + 1);
            };
            let id = id.trim().trim_end_matches(')');
            let words = words.replace("<s>", "").replace("</s>", "");
            clips.push(ReferenceClip {
                path: Path::new(dir).join(format!("{id}.wav")),
                transcript: words.split_whitespace().collect::<Vec<_>>().join(" "),
            });
        }
    }
    Ok(clips)
}

/// One clip through the pipeline.
#[derive(Debug, Clone)]
pub struct ClipResult {
    pub name: String,
    pub audio_ms: f64,
    /// Audio ms from speech_started to the first delta (`None`: no partial).
    pub first_partial_ms: Option<f64>,
    /// Wall ms from speech_stopped to the completed transcript.
    pub final_after_stop_ms: Option<f64>,
    pub partials: usize,
    pub wer: f64,
    pub transcript: String,
}

/// Final decode on one core, per clip (wall ms, median of 3).
#[derive(Debug, Clone)]
pub struct DecodeCost {
    pub window: &'static str,
    pub ms: Vec<f64>,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub pipeline: PathBuf,
    pub clips: Vec<ClipResult>,
    pub wer: f64,
    pub audio_ms: Vec<f64>,
    pub duplex: DecodeCost,
    pub full_window: DecodeCost,
    /// The full-window final decode with the pipeline's threads (what a
    /// final would cost after the end of speech without the sized window).
    pub full_window_final_ms: Vec<f64>,
    /// The pipeline's final decode (`transcribe_final`) with its threads.
    pub quick_final_ms: Vec<f64>,
    /// A plain decode at the 512 floor with the pipeline's threads.
    pub floor_final_ms: Vec<f64>,
}

/// A clip's file name, for reports.
pub fn clip_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

async fn stream_clip(
    pipeline: &Pipeline,
    resources: &Arc<Resources>,
    clip: &ReferenceClip,
) -> Result<ClipResult> {
    let name = clip_name(&clip.path);
    let pcm = decode_file(&clip.path).with_context(|| format!("decoding {name}"))?;
    let audio_ms = pcm.samples.len() as f64 * 1000.0 / pcm.sample_rate as f64;
    let mut stopped_at: Option<Instant> = None;
    let mut final_after_stop_ms = None;
    let pace = Pace {
        chunk_ms: 20,
        realtime: true,
    };
    let events = run_pcm(
        pipeline,
        resources,
        &pcm.padded(PAD_MS, PAD_MS),
        pace,
        |event| {
            match event["type"].as_str() {
                Some("input_audio_buffer.speech_stopped") => stopped_at = Some(Instant::now()),
                Some("conversation.item.input_audio_transcription.completed") => {
                    if let Some(at) = stopped_at.take() {
                        final_after_stop_ms = Some(at.elapsed().as_secs_f64() * 1000.0);
                    }
                }
                _ => {}
            }
            Ok(())
        },
    )
    .await
    .with_context(|| format!("streaming {name}"))?;
    if let Some(error) = events.iter().find(|e| e["type"] == "error") {
        bail!("{name}: the pipeline reported {error:?}");
    }
    let t_ms = |kind: &str| {
        events
            .iter()
            .find(|e| e["type"] == kind)
            .and_then(|e| e["t_ms"].as_f64())
    };
    let first_partial_ms = match (
        t_ms("input_audio_buffer.speech_started"),
        t_ms("conversation.item.input_audio_transcription.delta"),
    ) {
        (Some(start), Some(delta)) => Some(delta - start),
        _ => None,
    };
    let transcript = events
        .iter()
        .filter(|e| e["type"] == "conversation.item.input_audio_transcription.completed")
        .filter_map(|e| e["transcript"].as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let partials = events
        .iter()
        .filter(|e| e["type"] == "conversation.item.input_audio_transcription.delta")
        .count();
    let mut tally = WerTally::default();
    let wer = tally.add(&clip.transcript, &transcript);
    Ok(ClipResult {
        name,
        audio_ms,
        first_partial_ms,
        final_after_stop_ms,
        partials,
        wer,
        transcript,
    })
}

/// Wall ms of a final decode of each clip with `options`, median of `runs`
/// after one warm-up; `quick`: [`WhisperSession::transcribe_final`], else a
/// plain `transcribe`.
fn decode_cost(
    resources: &Resources,
    clips: &[Vec<f32>],
    options: &DecodeOptions,
    quick: bool,
    runs: usize,
) -> Result<Vec<f64>> {
    let model = resources.whisper()?;
    let mut session = model.session()?;
    let decode = |session: &mut WhisperSession, audio: &[f32]| {
        if quick {
            session.transcribe_final(audio, options, &mut |_| {})
        } else {
            session.transcribe(audio, options)
        }
    };
    let mut out = Vec::new();
    for audio in clips {
        decode(&mut session, audio)?;
        let mut times: Vec<f64> = (0..runs.max(1))
            .map(|_| {
                let t0 = Instant::now();
                decode(&mut session, audio)?;
                Ok(t0.elapsed().as_secs_f64() * 1000.0)
            })
            .collect::<Result<_>>()?;
        out.push(median(&mut times));
    }
    Ok(out)
}

/// Runs the benchmark on the pipeline at `pipeline_path` (it needs a
/// `whisper` node).
pub async fn run(resources: &Arc<Resources>, pipeline_path: &Path) -> Result<Report> {
    let pipeline = Pipeline::load(pipeline_path)?;
    let threads = pipeline
        .nodes
        .iter()
        .find_map(|n| match &n.kind {
            NodeKind::Whisper(p) => Some(p.threads),
            _ => None,
        })
        .with_context(|| format!("{} has no whisper node", pipeline_path.display()))?;
    let clips = reference_clips()?;
    let mut results = Vec::new();
    let mut tally = WerTally::default();
    for clip in &clips {
        let result = stream_clip(&pipeline, resources, clip).await?;
        tally.add(&clip.transcript, &result.transcript);
        results.push(result);
    }

    let audio: Vec<Vec<f32>> = clips
        .iter()
        .map(|c| {
            let pcm = decode_file(&c.path)?;
            crate::audio::resample(&pcm.samples, pcm.sample_rate, crate::asr::ASR_RATE)
        })
        .collect::<Result<_>>()?;
    let audio_ms: Vec<f64> = audio
        .iter()
        .map(|a| a.len() as f64 * 1000.0 / crate::asr::ASR_RATE as f64)
        .collect();
    let resources = resources.clone();
    let costs = tokio::task::spawn_blocking(move || {
        let one_core = DecodeOptions {
            threads: 1,
            ..DecodeOptions::default()
        };
        let full = DecodeOptions {
            audio_ctx_floor: MAX_AUDIO_CTX,
            ..one_core.clone()
        };
        let full_final = DecodeOptions {
            threads,
            ..full.clone()
        };
        let pipeline_final = DecodeOptions {
            threads,
            ..DecodeOptions::default()
        };
        Ok::<_, anyhow::Error>([
            decode_cost(&resources, &audio, &one_core, true, 3)?,
            decode_cost(&resources, &audio, &full, false, 3)?,
            decode_cost(&resources, &audio, &full_final, false, 1)?,
            decode_cost(&resources, &audio, &pipeline_final, true, 3)?,
            decode_cost(&resources, &audio, &pipeline_final, false, 3)?,
        ])
    })
    .await
    .context("decode benchmark thread")??;
    let [
        duplex,
        full_window,
        full_window_final_ms,
        quick_final_ms,
        floor_final_ms,
    ] = costs;
    Ok(Report {
        pipeline: pipeline_path.to_path_buf(),
        clips: results,
        wer: tally.rate(),
        audio_ms,
        duplex: DecodeCost {
            window: "quick final",
            ms: duplex,
        },
        full_window: DecodeCost {
            window: "full 30 s window",
            ms: full_window,
        },
        full_window_final_ms,
        quick_final_ms,
        floor_final_ms,
    })
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.0}"))
}

fn stats(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let mut v: Vec<f64> = values.collect();
    let max = v.iter().copied().fold(0.0, f64::max);
    (median(&mut v), max)
}

/// Prints the per-clip table, the medians against their targets and the
/// ratios against the full-window peer.
pub fn print(report: &Report) {
    println!(
        "asr: {} on {} clips, padded {PAD_MS} ms, fed at real-time pace in 20 ms chunks",
        report.pipeline.display(),
        report.clips.len()
    );
    println!(
        "  {:<48} {:>8} {:>14} {:>17} {:>8} {:>6}",
        "clip", "audio ms", "1st partial ms", "final after stop", "partials", "WER %"
    );
    for c in &report.clips {
        println!(
            "  {:<48} {:>8.0} {:>14} {:>17} {:>8} {:>6.1}",
            c.name,
            c.audio_ms,
            opt_ms(c.first_partial_ms),
            opt_ms(c.final_after_stop_ms),
            c.partials,
            c.wer * 100.0
        );
    }
    let (partial_median, partial_max) =
        stats(report.clips.iter().filter_map(|c| c.first_partial_ms));
    let within = report
        .clips
        .iter()
        .filter(|c| c.first_partial_ms.is_some_and(|ms| ms <= 1000.0))
        .count();
    println!(
        "  first partial after speech start (audio time): median {partial_median:.0} ms, max {partial_max:.0} ms; within 1 s on {within}/{} clips (target: all)",
        report.clips.len()
    );
    let (final_median, final_max) =
        stats(report.clips.iter().filter_map(|c| c.final_after_stop_ms));
    let (peer_final, _) = stats(report.full_window_final_ms.iter().copied());
    println!(
        "  final after speech stop (wall): median {final_median:.0} ms, max {final_max:.0} ms (target: median < 300 ms); a full-window final decode alone: median {peer_final:.0} ms; ratio {:.2}x",
        final_median / peer_final.max(1e-9)
    );
    println!("  final WER over all clips: {:.1} %", report.wer * 100.0);
    let (quick, _) = stats(report.quick_final_ms.iter().copied());
    let (floor, _) = stats(report.floor_final_ms.iter().copied());
    println!(
        "  final decode alone (pipeline threads): quick final (320 window, redone at 512 on a loop) median {quick:.0} ms, a decode at the 512 floor {floor:.0} ms; ratio {:.2}x",
        quick / floor.max(1e-9)
    );
    let audio: f64 = report.audio_ms.iter().sum();
    let rtf = |cost: &DecodeCost| cost.ms.iter().sum::<f64>() / audio.max(1e-9);
    println!(
        "  real-time factor on one core (final decode, 1 thread): {} {:.3}, whisper.cpp {} {:.3}; ratio {:.2}x",
        report.duplex.window,
        rtf(&report.duplex),
        report.full_window.window,
        rtf(&report.full_window),
        rtf(&report.duplex) / rtf(&report.full_window).max(1e-9)
    );
}
