//! The TTS actor: synthesizes each clause of a response as it arrives from
//! the orchestrator and sends its audio on in short chunks, the first of
//! which names the clause (text and duration) so the output stage can tell
//! which words were heard.
//!
//! The first clause of a response is spoken in two pieces when it is long:
//! a short opening phrase (cut at a comma or before a conjunction, else
//! after `first_piece_words` words), synthesized alone so the first audio
//! comes sooner, then the rest, synthesized while the opening plays. The
//! opening goes to the voice's quick session (more threads).
//!
//! Synthesis runs on the blocking pool, one clause at a time; the output
//! stage buffers and paces, so the next clause is synthesized while the
//! current one plays. An interrupted response's clause is dropped before it
//! is synthesized, or its audio right after (the output stage has already
//! stopped playing it).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use async_trait::async_trait;
use serde::Deserialize;

use super::Synthesizer;
use crate::graph::frame::ClauseAudio;
use crate::graph::{Actor, AudioChunk, Ctx, DataFrame, Payload};
use crate::latency::{Latency, Stage};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtsParams {
    /// Speaking rate: 1.0 is the voice's own pace, 1.2 is 20 % faster.
    #[serde(default = "default_speed")]
    pub speed: f32,
    /// Audio chunk size sent downstream, in ms.
    #[serde(default = "default_chunk_ms")]
    pub chunk_ms: u32,
    /// Words in the opening piece of a long first clause (0: never split).
    #[serde(default = "default_first_piece_words")]
    pub first_piece_words: usize,
}

fn default_first_piece_words() -> usize {
    TtsParams::default_first_piece_words()
}

impl TtsParams {
    /// Default [`TtsParams::first_piece_words`].
    pub fn default_first_piece_words() -> usize {
        4
    }
}

/// Words that start a new phrase: a good place to cut the opening piece.
const PHRASE_STARTS: &[&str] = &[
    "and", "but", "or", "because", "so", "that", "which", "who", "when", "where", "while", "if",
    "to", "with", "for", "at", "in", "on", "of", "from", "about", "into", "after", "before",
];

/// Splits a long clause into a short opening piece and the rest, or `None`
/// when it is short enough to synthesize at once. The opening has at least
/// 3 words (its audio must outlast the synthesis of the rest) and ends at a
/// comma-like mark or before a phrase word if one comes by word `words + 2`,
/// else after `words` words; the rest keeps at least 4 words.
pub fn opening_piece(clause: &str, words: usize) -> Option<(String, String)> {
    let all: Vec<&str> = clause.split_whitespace().collect();
    if words == 0 || all.len() < words.max(3) + 4 {
        return None;
    }
    let last = (words + 2).min(all.len() - 4);
    let natural = (3..=last).find(|&n| {
        all[n - 1].ends_with([',', ';', ':'])
            || PHRASE_STARTS.contains(&all[n].to_lowercase().as_str())
    });
    let n = natural.unwrap_or(words.max(3).min(last));
    Some((all[..n].join(" "), all[n..].join(" ")))
}

fn default_speed() -> f32 {
    1.0
}

fn default_chunk_ms() -> u32 {
    40
}

pub struct TtsActor {
    synth: Option<Synthesizer>,
    chunk_ms: u32,
    first_piece_words: usize,
    /// The response whose clauses are being spoken (its first is split).
    current: Option<crate::graph::ResponseId>,
    latency: Arc<Latency>,
}

impl TtsActor {
    pub fn new(mut synth: Synthesizer, params: &TtsParams, latency: Arc<Latency>) -> Result<Self> {
        if !(0.25..=4.0).contains(&params.speed) {
            anyhow::bail!("speed must be between 0.25 and 4, got {}", params.speed);
        }
        if !(10..=200).contains(&params.chunk_ms) {
            anyhow::bail!(
                "chunk_ms must be between 10 and 200, got {}",
                params.chunk_ms
            );
        }
        synth.set_speed(params.speed);
        Ok(TtsActor {
            synth: Some(synth),
            chunk_ms: params.chunk_ms,
            first_piece_words: params.first_piece_words,
            current: None,
            latency,
        })
    }

    /// Speaks a clause: in two pieces when it opens a response and is long.
    async fn speak_clause(
        &mut self,
        frame: &DataFrame,
        item_id: &str,
        text: &str,
        ctx: &Ctx,
    ) -> Result<()> {
        let opens = self.current != Some(frame.response_id);
        self.current = Some(frame.response_id);
        match opens
            .then(|| opening_piece(text, self.first_piece_words))
            .flatten()
        {
            Some((opening, rest)) => {
                self.speak(frame, item_id, &opening, true, ctx).await?;
                self.speak(frame, item_id, &rest, false, ctx).await
            }
            None => self.speak(frame, item_id, text, opens, ctx).await,
        }
    }

    /// Synthesizes `text` and sends its audio on; `opening` marks the first
    /// audio of a response, synthesized on the voice's quick session.
    async fn speak(
        &mut self,
        frame: &DataFrame,
        item_id: &str,
        text: &str,
        opening: bool,
        ctx: &Ctx,
    ) -> Result<()> {
        if ctx.is_dead(frame.response_id) {
            return Ok(());
        }
        let mut synth = self
            .synth
            .take()
            .context("synthesizer lost after an earlier failure")?;
        let clause = text.to_string();
        let started = Instant::now();
        let (synth, result) = tokio::task::spawn_blocking(move || {
            let result = if opening {
                synth.synthesize_quick(&clause)
            } else {
                synth.synthesize(&clause)
            };
            (synth, result)
        })
        .await
        .context("synthesis task failed")?;
        self.synth = Some(synth);
        let pcm = result.with_context(|| format!("synthesizing \"{text}\""))?;
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            text,
            "clause synthesized"
        );
        if ctx.is_dead(frame.response_id) || pcm.samples.is_empty() {
            return Ok(());
        }
        self.latency.mark(Stage::FirstAudio);
        let per_chunk = (pcm.sample_rate as usize * self.chunk_ms as usize / 1000).max(1);
        let duration_ms = pcm.duration_ms();
        for (i, piece) in pcm.samples.chunks(per_chunk).enumerate() {
            let clause = (i == 0).then(|| ClauseAudio {
                text: text.to_string(),
                duration_ms,
            });
            ctx.send(DataFrame {
                t_ms: frame.t_ms,
                response_id: frame.response_id,
                payload: Payload::Speech {
                    item_id: item_id.to_string(),
                    chunk: AudioChunk::new(piece.to_vec(), pcm.sample_rate),
                    clause,
                },
            })
            .await;
        }
        Ok(())
    }
}

#[async_trait]
impl Actor for TtsActor {
    async fn on_data(&mut self, frame: DataFrame, ctx: &Ctx) -> Result<()> {
        if let Payload::Clause { item_id, text } = &frame.payload {
            let (item_id, text) = (item_id.clone(), text.clone());
            return self.speak_clause(&frame, &item_id, &text, ctx).await;
        }
        ctx.send(frame).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::opening_piece;

    fn split(text: &str) -> Option<(String, String)> {
        opening_piece(text, 4)
    }

    fn pair(a: &str, b: &str) -> Option<(String, String)> {
        Some((a.into(), b.into()))
    }

    #[test]
    fn long_first_clauses_open_with_a_short_phrase() {
        // At a comma.
        assert_eq!(
            split("I went to the market, and bought some apples and pears for the pie."),
            pair(
                "I went to the market,",
                "and bought some apples and pears for the pie."
            )
        );
        // Before a phrase word.
        assert_eq!(
            split("The flight leaves at seven in the morning and takes three hours."),
            pair(
                "The flight leaves",
                "at seven in the morning and takes three hours."
            )
        );
        // Neither by word 6: after 4 words.
        assert_eq!(
            split("Sure, I can help you plan the trip next spring."),
            pair("Sure, I can help", "you plan the trip next spring.")
        );
    }

    #[test]
    fn short_clauses_and_zero_words_are_left_whole() {
        assert_eq!(split("Hello there, how are you?"), None);
        assert_eq!(split("One two three four five six seven"), None);
        assert_eq!(opening_piece("a b c d e f g h i j k l", 0), None);
        // The rest always keeps at least four words.
        let (_, rest) = split("one two three four five six seven eight").unwrap();
        assert_eq!(rest.split_whitespace().count(), 4);
    }
}
