//! The ASR actor: follows the VAD's speech segments, runs partial passes at a
//! steady cadence of audio while the user speaks (three times as often until
//! the first word is committed), commits words with LocalAgreement, and decodes
//! the final transcript the moment speech stops.
//!
//! Events (OpenAI Realtime API): `conversation.item.input_audio_transcription.delta`
//! with the newly committed words, and `...completed` with the final
//! `transcript`. Downstream it sends `Transcript` data frames, and each
//! partial pass's whole hypothesis (`Hypothesis`) for the turn detector.
//!
//! Passes run on the blocking pool. A partial pass in flight when speech
//! stops has its abort flag raised and returns soon (Whisper: after its
//! encoder pass), and the final decode starts. Audio keeps flowing into the
//! actor while a partial pass runs; its result is collected at the next
//! frame.
//!
//! The final is decoded speculatively when the VAD reports a pause
//! (`SpeechPaused`, 150 ms into the silence, 32 ms under semantic VAD): if
//! the VAD then stops the turn with the same end of speech, the transcript
//! is ready (or nearly) when `speech_stopped` arrives, instead of a whole
//! decode later. Until the user speaks again no partial pass runs (the
//! speculative final heard everything); when they do, the speculation is
//! dropped and partials go on.
//!
//! Under semantic VAD the pause is scored on what was heard up to it, as
//! soon as something has heard it all:
//! - the last partial's words, when that pass's audio reached the end of
//!   speech (within [`GUESS_SLACK_MS`]); a partial in flight at the pause
//!   whose audio reaches it is let finish rather than stopped, and when the
//!   engine decoded it just as a final (`guess_is_final`), its words stand
//!   as the speculative final and no other decode runs;
//! - the guess a speculative final hands over before decoding again (the
//!   words before a Whisper decoding loop);
//! - the speculative final's words.
//!
//! Words that stop short are held back: "... in his power to do" reads as
//! finished where the speaker went on "for them". (`duplex run` of the ten
//! clips through VAD -> whisper -> end_of_turn, two runs each way: the
//! clips given the 200 ms window commit a median 256 and 224 ms after the
//! end of speech with the partial in flight let finish and the loop
//! guesses scored, 352 and 320 ms without.)

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use serde_json::json;
use tokio::task::JoinHandle;

use super::agreement::LocalAgreement;
use super::{ASR_RATE, StreamingAsr, arm};
use crate::graph::{Actor, Control, Ctx, DataFrame, INPUT, Payload, SystemFrame, SystemKind};

/// Audio kept from before speech starts, to cover the VAD's prefix padding.
const RECENT_MS: u64 = 2_000;

/// How far short of a pause's end of speech the last partial's audio may
/// stop for its words to be scored at the pause (two VAD steps).
const GUESS_SLACK_MS: u64 = 64;

/// Whether audio that ends at `audio_end_ms` heard the speech up to a pause
/// whose speech ended at `speech_end_ms` (within [`GUESS_SLACK_MS`]).
fn reaches_pause(audio_end_ms: u64, speech_end_ms: u64) -> bool {
    audio_end_ms + GUESS_SLACK_MS >= speech_end_ms
}

type Pass = JoinHandle<(Box<dyn StreamingAsr>, Result<String>)>;

/// What the pass in flight is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PassKind {
    Partial,
    /// A final decoded early, valid while the end of speech stays at
    /// `speech_end_ms`.
    Speculative {
        speech_end_ms: u64,
    },
}

struct Utterance {
    item_id: String,
    /// Sample index where the utterance starts (the VAD's audio_start_ms).
    start: u64,
    /// Audio not yet handed to the engine.
    unsent: Vec<f32>,
    /// Clock (samples) when the last partial pass started.
    last_pass: Option<u64>,
    agreement: LocalAgreement,
    /// Set when the VAD says speech stopped: the audio_end sample and the
    /// speech_end_ms it reported.
    stop_at: Option<(u64, u64)>,
    /// Set when the VAD reports a pause: the sample the pause was seen at
    /// and the end of speech (ms); the speculative final starts once the
    /// audio up to that sample is in.
    pause_at: Option<(u64, u64)>,
    /// A speculative final that finished: (speech_end_ms, transcript).
    /// While it stands the user is silent: no partial pass runs.
    speculation: Option<(u64, String)>,
    /// The end of speech of the last pause the user spoke through.
    resumed_from: Option<u64>,
    /// The last partial pass's whole hypothesis (for the turn detector).
    guess: String,
    /// Where the audio of `guess` ends (ms, session clock).
    guess_until_ms: u64,
    /// The VAD waits for an end-of-turn score of the current pause.
    wants_score: bool,
}

pub struct AsrActor {
    /// The engine, or `None` while a pass has it on the blocking pool.
    engine: Option<Box<dyn StreamingAsr>>,
    abort: Arc<AtomicBool>,
    pass: Option<(PassKind, Pass)>,
    /// When the pass in flight started, and the utterance audio it covers (ms).
    pass_started: (Instant, u64),
    /// Sends the speculative final's guess, if it gives one, downstream.
    guess_forward: Option<JoinHandle<()>>,
    partial_interval: u64,
    /// Samples received so far (the session clock at 16 kHz).
    clock: u64,
    recent: VecDeque<f32>,
    utterance: Option<Utterance>,
}

fn samples(ms: u64) -> u64 {
    ms * ASR_RATE as u64 / 1000
}

fn ms(samples: u64) -> u64 {
    samples * 1000 / ASR_RATE as u64
}

impl AsrActor {
    pub fn new(engine: Box<dyn StreamingAsr>, partial_interval_ms: u64) -> Result<AsrActor> {
        if !(50..=5_000).contains(&partial_interval_ms) {
            bail!("partial_interval_ms must be between 50 and 5000, got {partial_interval_ms}");
        }
        Ok(AsrActor {
            abort: engine.abort_flag(),
            engine: Some(engine),
            pass: None,
            pass_started: (Instant::now(), 0),
            guess_forward: None,
            partial_interval: samples(partial_interval_ms),
            clock: 0,
            recent: VecDeque::new(),
            utterance: None,
        })
    }

    fn take_audio(&mut self, chunk: &[f32]) {
        let first = self.clock;
        self.clock += chunk.len() as u64;
        match &mut self.utterance {
            Some(u) => {
                let skip = u.start.saturating_sub(first).min(chunk.len() as u64) as usize;
                u.unsent.extend_from_slice(&chunk[skip..]);
            }
            None => {
                self.recent.extend(chunk);
                let keep = samples(RECENT_MS) as usize;
                if self.recent.len() > keep {
                    self.recent.drain(..self.recent.len() - keep);
                }
            }
        }
    }

    fn start_utterance(&mut self, item_id: String, audio_start_ms: u64) {
        let start = samples(audio_start_ms);
        let recent_start = self.clock - self.recent.len() as u64;
        let from = start
            .saturating_sub(recent_start)
            .min(self.recent.len() as u64) as usize;
        let unsent: Vec<f32> = self.recent.iter().skip(from).copied().collect();
        self.recent.clear();
        self.utterance = Some(Utterance {
            item_id,
            start,
            unsent,
            last_pass: None,
            agreement: LocalAgreement::new(),
            stop_at: None,
            pause_at: None,
            speculation: None,
            resumed_from: None,
            guess: String::new(),
            guess_until_ms: 0,
            wants_score: false,
        });
    }

    /// Drops the user's unfinished utterance (input_audio_buffer.clear).
    async fn clear_input(&mut self, ctx: &Ctx) -> Result<()> {
        self.abort.store(true, Ordering::SeqCst);
        self.collect(true, ctx).await?;
        self.utterance = None;
        self.recent.clear();
        if let Some(engine) = &mut self.engine {
            engine.reset();
        }
        Ok(())
    }

    /// Collects the partial pass in flight: if it has finished, or always
    /// when `wait` is set.
    async fn collect(&mut self, wait: bool, ctx: &Ctx) -> Result<()> {
        let Some((_, pass)) = &self.pass else {
            return Ok(());
        };
        if !wait && !pass.is_finished() {
            return Ok(());
        }
        let (kind, pass) = self.pass.take().context("no pass in flight")?;
        let (engine, result) = pass.await.context("ASR pass task failed")?;
        let guess = (kind == PassKind::Partial)
            .then(|| engine.latest_guess())
            .flatten();
        self.engine = Some(engine);
        let aborted = self.abort.load(Ordering::SeqCst);
        let text = match result {
            Ok(text) => text,
            Err(_) if aborted => return Ok(()),
            Err(e) => return Err(e.context("partial transcription failed")),
        };
        let Some(u) = &mut self.utterance else {
            return Ok(());
        };
        tracing::debug!(
            item_id = %u.item_id,
            ?kind,
            audio_ms = self.pass_started.1,
            pass_ms = self.pass_started.0.elapsed().as_millis() as u64,
            text = %text,
            "ASR pass"
        );
        if kind == PassKind::Partial {
            u.guess = guess.unwrap_or_else(|| text.clone());
            u.guess_until_ms = ms(u.start) + self.pass_started.1;
            ctx.send(DataFrame {
                t_ms: ms(self.clock),
                response_id: INPUT,
                payload: Payload::Hypothesis {
                    item_id: u.item_id.clone(),
                    text: u.guess.clone(),
                },
            })
            .await;
        }
        if let PassKind::Speculative { speech_end_ms } = kind
            && u.resumed_from != Some(speech_end_ms)
        {
            u.speculation = Some((speech_end_ms, text.clone()));
            if let Some(forward) = self.guess_forward.take() {
                // The guess (if the engine gave one) reaches the turn
                // detector first.
                forward.await.context("forwarding the ASR's guess failed")?;
            }
            if u.wants_score {
                let item_id = u.item_id.clone();
                send_pause_transcript(
                    ctx,
                    ms(self.clock),
                    item_id,
                    speech_end_ms,
                    text.clone(),
                    true,
                )
                .await;
            }
        }
        let fresh = u.agreement.update(&text);
        if fresh.is_empty() {
            return Ok(());
        }
        let first = u.agreement.committed().len() == fresh.len();
        let delta = format!("{}{}", if first { "" } else { " " }, fresh.join(" "));
        let item_id = u.item_id.clone();
        ctx.events().emit(
            "conversation.item.input_audio_transcription.delta",
            ms(self.clock),
            json!({"item_id": item_id, "content_index": 0, "delta": delta}),
        );
        ctx.send(DataFrame {
            t_ms: ms(self.clock),
            response_id: INPUT,
            payload: Payload::Transcript {
                item_id,
                text: delta,
                is_final: false,
            },
        })
        .await;
        Ok(())
    }

    /// Starts a partial pass if the engine is free and enough new audio came.
    fn maybe_start_partial(&mut self) {
        let Some(u) = &mut self.utterance else {
            return;
        };
        if u.stop_at.is_some() || self.pass.is_some() {
            return;
        }
        if u.pause_at.is_some() || u.speculation.is_some() {
            // Silence since the pause: the speculative final (to come, or
            // done) has heard everything; a pass now would only take the
            // cores from the scorer and the answer, and hold up the final.
            return;
        }
        // Until the first word is committed, passes come three times as
        // often: whisper hesitates most over an utterance's first words, and
        // two early passes that agree show them sooner (a pass on under a
        // second of audio costs ~100 ms; the engine drops words it is unsure
        // of, so early guesses rarely agree by chance).
        let interval = if u.agreement.committed().is_empty() {
            self.partial_interval / 3
        } else {
            self.partial_interval
        };
        if u.last_pass.is_some_and(|at| self.clock < at + interval) {
            return;
        }
        let Some(mut engine) = self.engine.take() else {
            return;
        };
        u.last_pass = Some(self.clock);
        self.pass_started = (Instant::now(), ms(self.clock.saturating_sub(u.start)));
        let audio = std::mem::take(&mut u.unsent);
        arm(&self.abort);
        let pass = tokio::task::spawn_blocking(move || {
            let result = engine.partial(&audio);
            (engine, result)
        });
        self.pass = Some((PassKind::Partial, pass));
    }

    /// Starts the speculative final once the audio up to the pause is in.
    /// What the pass in flight heard is settled first ([`Self::settle`]);
    /// the last partial's words are scored at once when they reach the
    /// pause, and stand as the speculative final when the engine decoded
    /// them just as a final would.
    async fn maybe_speculate(&mut self, ctx: &Ctx) -> Result<()> {
        let Some((at, speech_end_ms)) = self.utterance.as_ref().and_then(|u| u.pause_at) else {
            return Ok(());
        };
        let stopped = self.utterance.as_ref().is_some_and(|u| u.stop_at.is_some());
        if self.clock < at || stopped {
            return Ok(());
        }
        self.settle(speech_end_ms, ctx).await?;
        let Some(guess_is_final) = self.engine.as_ref().map(|e| e.guess_is_final()) else {
            return Ok(());
        };
        let t_ms = ms(self.clock);
        let u = self.utterance.as_mut().context("no utterance")?;
        // Words that stop short of the pause are not scored: a prefix can
        // read as finished ("... in his power to do") where the speech went
        // on; the final decode is scored instead.
        let guess_reaches = reaches_pause(u.guess_until_ms, speech_end_ms);
        // A final decode would hear the same words as a final-grade guess:
        // they stand as the speculative final.
        let stands = guess_reaches && guess_is_final;
        if guess_reaches && u.wants_score {
            let (item_id, text) = (u.item_id.clone(), u.guess.clone());
            send_pause_transcript(ctx, t_ms, item_id, speech_end_ms, text, stands).await;
        }
        let u = self.utterance.as_mut().context("no utterance")?;
        u.pause_at = None;
        if stands {
            u.speculation = Some((speech_end_ms, u.guess.clone()));
            tracing::debug!(
                item_id = %u.item_id,
                speech_end_ms,
                text = %u.guess,
                "the last partial pass stands as the speculative final"
            );
            return Ok(());
        }
        self.start_speculative_final(speech_end_ms, ctx);
        Ok(())
    }

    /// At a pause (end of speech `speech_end_ms`), settles the pass in
    /// flight: a partial whose audio reaches the end of speech is let
    /// finish (what it hears is what was said up to the pause, soon, where
    /// stopping it would waste its encoder pass: whisper.cpp checks the
    /// flag only after it); any other pass (a partial that stops short, the
    /// speculative final of an earlier pause the user spoke through) is
    /// stopped, and returns after its encoder pass.
    async fn settle(&mut self, speech_end_ms: u64, ctx: &Ctx) -> Result<()> {
        let Some(kind) = self.pass.as_ref().map(|(kind, _)| *kind) else {
            return Ok(());
        };
        if kind == (PassKind::Speculative { speech_end_ms }) {
            return Ok(());
        }
        let start_ms = self.utterance.as_ref().map_or(0, |u| ms(u.start));
        let let_finish = kind == PassKind::Partial
            && reaches_pause(start_ms + self.pass_started.1, speech_end_ms);
        let (waited, running_ms) = (Instant::now(), self.pass_started.0.elapsed());
        if !let_finish {
            self.abort.store(true, Ordering::SeqCst);
        }
        self.collect(true, ctx).await?;
        tracing::debug!(
            let_finish,
            running_ms = running_ms.as_millis() as u64,
            waited_ms = waited.elapsed().as_millis() as u64,
            "the pass in flight at the pause was settled"
        );
        Ok(())
    }

    /// Starts decoding the utterance up to the pause as its final. A guess
    /// the engine hands over before its final (the words before a decoding
    /// loop) goes to the turn detector at once; the final's own transcript
    /// waits for it (see `collect`), so it comes second.
    fn start_speculative_final(&mut self, speech_end_ms: u64, ctx: &Ctx) {
        let (Some(mut engine), Some(u)) = (self.engine.take(), self.utterance.as_mut()) else {
            return;
        };
        self.pass_started = (Instant::now(), ms(self.clock.saturating_sub(u.start)));
        let audio = std::mem::take(&mut u.unsent);
        let (guess_tx, guess_rx) = tokio::sync::oneshot::channel::<String>();
        self.guess_forward = u.wants_score.then(|| {
            let (ctx, item_id, t_ms) = (ctx.clone(), u.item_id.clone(), ms(self.clock));
            tokio::spawn(async move {
                if let Ok(text) = guess_rx.await {
                    tracing::debug!(%item_id, speech_end_ms, %text, "guess before the final");
                    send_pause_transcript(&ctx, t_ms, item_id, speech_end_ms, text, false).await;
                }
            })
        });
        arm(&self.abort);
        let pass = tokio::task::spawn_blocking(move || {
            let mut guess_tx = Some(guess_tx);
            let mut guess = |text: &str| {
                if let Some(tx) = guess_tx.take() {
                    let _ = tx.send(text.to_string());
                }
            };
            let result = engine.speculate(&audio, &mut guess);
            (engine, result)
        });
        self.pass = Some((PassKind::Speculative { speech_end_ms }, pass));
    }

    /// Finishes the utterance if speech has stopped and its audio is in.
    async fn maybe_finalize(&mut self, at_end: bool, ctx: &Ctx) -> Result<()> {
        let (ready, stopped_speech_end) = match &self.utterance {
            Some(u) => (
                at_end || u.stop_at.is_some_and(|(end, _)| self.clock >= end),
                u.stop_at.map(|(_, speech_end)| speech_end),
            ),
            None => (false, None),
        };
        if !ready {
            return Ok(());
        }
        let started = Instant::now();
        // A speculative final for this very end of speech is the answer
        // (wait for it if it is still running); anything else in flight is
        // stopped, never waited for.
        let speculating_here = matches!(
            self.pass,
            Some((PassKind::Speculative { speech_end_ms }, _)) if Some(speech_end_ms) == stopped_speech_end
        );
        if !speculating_here {
            self.abort.store(true, Ordering::SeqCst);
        }
        self.collect(true, ctx).await?;
        let mut u = self.utterance.take().context("no utterance")?;
        let mut engine = self
            .engine
            .take()
            .context("ASR engine lost after an earlier failure")?;
        let speculation = u
            .speculation
            .take()
            .filter(|(speech_end, _)| Some(*speech_end) == stopped_speech_end);
        let (transcript, speculated) = match speculation {
            Some((_, text)) => {
                // The audio after the pause is the silence that ended the turn.
                engine.reset();
                self.engine = Some(engine);
                (text, true)
            }
            None => {
                let audio = std::mem::take(&mut u.unsent);
                arm(&self.abort);
                let (engine, result) = tokio::task::spawn_blocking(move || {
                    let result = engine.finalize(&audio);
                    (engine, result)
                })
                .await
                .context("ASR final task failed")?;
                self.engine = Some(engine);
                (result.context("final transcription failed")?, false)
            }
        };
        tracing::debug!(
            item_id = %u.item_id,
            wait_ms = started.elapsed().as_millis() as u64,
            speculated,
            "final transcript"
        );
        ctx.events().emit(
            "conversation.item.input_audio_transcription.completed",
            ms(self.clock),
            json!({"item_id": u.item_id, "content_index": 0, "transcript": transcript}),
        );
        ctx.send(DataFrame {
            t_ms: ms(self.clock),
            response_id: INPUT,
            payload: Payload::Transcript {
                item_id: u.item_id,
                text: transcript,
                is_final: true,
            },
        })
        .await;
        Ok(())
    }
}

#[async_trait]
impl Actor for AsrActor {
    async fn on_data(&mut self, frame: DataFrame, ctx: &Ctx) -> Result<()> {
        let Payload::Audio(chunk) = &frame.payload else {
            if let Payload::Control(control) = &frame.payload
                && **control == Control::ClearInput
            {
                self.clear_input(ctx).await?;
            }
            ctx.send(frame).await;
            return Ok(());
        };
        if chunk.sample_rate != ASR_RATE {
            bail!(
                "ASR needs {ASR_RATE} Hz audio but got {} Hz: set sample_rate = {ASR_RATE} on the input node",
                chunk.sample_rate
            );
        }
        self.take_audio(&chunk.samples);
        self.collect(false, ctx).await?;
        self.maybe_finalize(false, ctx).await?;
        self.maybe_speculate(ctx).await?;
        self.maybe_start_partial();
        Ok(())
    }

    async fn on_system(&mut self, frame: &SystemFrame, ctx: &Ctx) -> Result<()> {
        match &frame.kind {
            SystemKind::SpeechStarted {
                item_id,
                audio_start_ms,
                ..
            } => {
                if self.utterance.is_some() {
                    // A new segment before the last one was stopped: finish it.
                    self.maybe_finalize(true, ctx).await?;
                }
                self.start_utterance(item_id.clone(), *audio_start_ms);
                self.maybe_start_partial();
            }
            SystemKind::SpeechPaused {
                audio_end_ms,
                speech_end_ms,
                wants_score,
                ..
            } => {
                if let Some(u) = &mut self.utterance {
                    u.pause_at = Some((samples(*audio_end_ms), *speech_end_ms));
                    u.wants_score = *wants_score;
                }
                self.maybe_speculate(ctx).await?;
            }
            SystemKind::SpeechResumed { speech_end_ms, .. } => {
                if let Some(u) = &mut self.utterance {
                    u.resumed_from = Some(*speech_end_ms);
                    u.speculation = None;
                }
            }
            SystemKind::SpeechStopped {
                audio_end_ms,
                speech_end_ms,
                ..
            } => {
                if let Some(u) = &mut self.utterance {
                    u.stop_at = Some((samples(*audio_end_ms), *speech_end_ms));
                }
                self.maybe_finalize(false, ctx).await?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn on_end(&mut self, ctx: &Ctx) -> Result<()> {
        self.maybe_finalize(true, ctx).await?;
        self.abort.store(true, Ordering::SeqCst);
        self.collect(true, ctx).await
    }
}

/// Tells the stages downstream what was heard up to a pause.
async fn send_pause_transcript(
    ctx: &Ctx,
    t_ms: u64,
    item_id: String,
    speech_end_ms: u64,
    text: String,
    final_decode: bool,
) {
    ctx.send(DataFrame {
        t_ms,
        response_id: INPUT,
        payload: Payload::PauseTranscript {
            item_id,
            speech_end_ms,
            text,
            final_decode,
        },
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::asr::{Redecode, UtteranceRecognizer};
    use crate::graph::actor::{SessionLink, mailbox};
    use crate::graph::{AudioChunk, EventSink};

    /// Names the audio it was given: "<samples> final" or "<samples>", and
    /// logs each call's (samples, final decode). Partial passes take
    /// `partial_ms`; its guess is "guess <samples>", a final grade one when
    /// `final_grade`; with `loops_first`, a final hands "first try" over as
    /// its guess.
    #[derive(Default)]
    struct Counting {
        calls: Arc<Mutex<Vec<(usize, bool)>>>,
        partial_ms: Arc<std::sync::atomic::AtomicU64>,
        final_grade: bool,
        loops_first: bool,
        last_partial: Option<usize>,
    }

    impl UtteranceRecognizer for Counting {
        fn transcribe_partial(&mut self, audio: &[f32], _: &Arc<AtomicBool>) -> Result<String> {
            self.calls.lock().unwrap().push((audio.len(), false));
            let delay = self.partial_ms.load(Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(delay));
            self.last_partial = Some(audio.len());
            Ok(audio.len().to_string())
        }

        fn transcribe_final(
            &mut self,
            audio: &[f32],
            _: &Arc<AtomicBool>,
            guess: &mut dyn FnMut(&str),
        ) -> Result<String> {
            self.calls.lock().unwrap().push((audio.len(), true));
            self.last_partial = None;
            if self.loops_first {
                guess("first try");
            }
            Ok(format!("{} final", audio.len()))
        }

        fn latest_guess(&self) -> Option<String> {
            self.last_partial.map(|n| format!("guess {n}"))
        }

        fn guess_is_final(&self) -> bool {
            self.final_grade && self.last_partial.is_some()
        }
    }

    const SAMPLES_PER_MS: usize = 16;

    /// Drives one utterance: speech from 0, a pause reported at 1000 ms
    /// (speech ended at 800, `wants_score` as given), the stop at 1500 ms
    /// with `stop_speech_end`. Returns the final transcript, the
    /// recognizer's calls and the pause transcripts sent downstream.
    async fn utterance(
        stop_speech_end: u64,
        wants_score: bool,
    ) -> (String, Vec<(usize, bool)>, Vec<String>) {
        utterance_paused_at(800, None, stop_speech_end, wants_score).await
    }

    /// [`utterance`] with the pause's end of speech at `pause_speech_end`,
    /// and the user speaking again at `resumed_at` (ms), if given.
    async fn utterance_paused_at(
        pause_speech_end: u64,
        resumed_at: Option<u64>,
        stop_speech_end: u64,
        wants_score: bool,
    ) -> (String, Vec<(usize, bool)>, Vec<String>) {
        let (transcript, calls, pauses) = run(Script {
            pause_speech_end,
            resumed_at,
            stop_speech_end,
            wants_score,
            ..Script::default()
        })
        .await;
        let texts = pauses.into_iter().map(|(text, _)| text).collect();
        (transcript, calls, texts)
    }

    /// One utterance as [`utterance_paused_at`] drives it.
    #[derive(Default)]
    struct Script {
        /// When the pause is reported (its audio end); 1000 ms if `None`.
        pause_at_ms: Option<u64>,
        pause_speech_end: u64,
        resumed_at: Option<u64>,
        stop_speech_end: u64,
        wants_score: bool,
        engine: Counting,
        /// Partial passes that start from this chunk (ms) on take 200 ms.
        slow_partials_from: Option<u64>,
    }

    /// Runs `script`: the final transcript, the recognizer's calls and the
    /// pause transcripts sent downstream (text, from a final decode).
    async fn run(script: Script) -> (String, Vec<(usize, bool)>, Vec<(String, bool)>) {
        let Script {
            pause_at_ms,
            pause_speech_end,
            resumed_at,
            stop_speech_end,
            wants_score,
            engine,
            slow_partials_from,
        } = script;
        let pause_at = pause_at_ms.unwrap_or(1000);
        let (calls, partial_ms) = (engine.calls.clone(), engine.partial_ms.clone());
        let engine = Redecode::new(engine);
        let mut actor = AsrActor::new(Box::new(engine), 300).unwrap();
        let (events, mut rx) = EventSink::new();
        let (out, mut inbox) = mailbox();
        let ctx = Ctx::new("asr", vec![out], events, SessionLink::new());
        let link = SessionLink::new();
        let system = |t_ms, kind| link.frame(t_ms, kind);
        let item_id = "item_1".to_string();
        actor
            .on_system(
                &system(
                    0,
                    SystemKind::SpeechStarted {
                        item_id: item_id.clone(),
                        audio_start_ms: 0,
                        wants_scores: true,
                    },
                ),
                &ctx,
            )
            .await
            .unwrap();
        for t in (0..1500).step_by(20) {
            if slow_partials_from == Some(t) {
                // The fast pass before is surely done (and is collected
                // now, so the next one starts on time).
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                partial_ms.store(200, Ordering::SeqCst);
            }
            if t == pause_at {
                let kind = SystemKind::SpeechPaused {
                    item_id: item_id.clone(),
                    audio_end_ms: pause_at,
                    speech_end_ms: pause_speech_end,
                    wants_score,
                };
                actor.on_system(&system(t, kind), &ctx).await.unwrap();
            }
            if resumed_at == Some(t) {
                let kind = SystemKind::SpeechResumed {
                    item_id: item_id.clone(),
                    speech_end_ms: pause_speech_end,
                };
                actor.on_system(&system(t, kind), &ctx).await.unwrap();
            }
            let chunk = AudioChunk::new(vec![0.1; 20 * SAMPLES_PER_MS], ASR_RATE);
            actor
                .on_data(DataFrame::audio(t, INPUT, chunk), &ctx)
                .await
                .unwrap();
            // Let a pass on the blocking pool finish, as real time would.
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let kind = SystemKind::SpeechStopped {
            item_id,
            audio_end_ms: 1500,
            speech_end_ms: stop_speech_end,
        };
        actor.on_system(&system(1500, kind), &ctx).await.unwrap();
        let mut transcript = None;
        while let Ok(event) = rx.try_recv() {
            if event["type"] == "conversation.item.input_audio_transcription.completed" {
                transcript = event["transcript"].as_str().map(String::from);
            }
        }
        let calls = calls.lock().unwrap().clone();
        let mut pauses = Vec::new();
        let wait = std::time::Duration::from_millis(20);
        while let Ok(next) = tokio::time::timeout(wait, inbox.next()).await {
            if let crate::graph::actor::Next::Data(DataFrame {
                payload:
                    Payload::PauseTranscript {
                        speech_end_ms,
                        text,
                        final_decode,
                        ..
                    },
                ..
            }) = next
            {
                assert_eq!(speech_end_ms, pause_speech_end);
                pauses.push((text, final_decode));
            }
        }
        (transcript.expect("a final transcript"), calls, pauses)
    }

    #[tokio::test]
    async fn a_pause_that_ends_the_turn_makes_the_final_ready_early() {
        let (transcript, calls, pauses) = utterance(800, false).await;
        assert!(pauses.is_empty(), "server VAD scores no pause: {pauses:?}");
        let finals: Vec<_> = calls.iter().filter(|(_, f)| *f).collect();
        assert_eq!(
            finals.len(),
            1,
            "one final-quality decode, at the pause: {calls:?}"
        );
        // It covered the audio up to the pause (1000 ms), not the silence after.
        assert_eq!(transcript, format!("{} final", 1000 * SAMPLES_PER_MS));
        assert!(
            calls.iter().any(|(_, f)| !f),
            "partials ran before the pause"
        );
        assert_eq!(
            calls.last(),
            Some(&(1000 * SAMPLES_PER_MS, true)),
            "no partial pass ran in the silence after the speculative final: {calls:?}"
        );
    }

    #[tokio::test]
    async fn partials_go_on_when_the_user_speaks_through_a_pause() {
        let (transcript, calls, _) = utterance_paused_at(800, Some(1200), 1400, false).await;
        let speculation = calls
            .iter()
            .position(|&call| call == (1000 * SAMPLES_PER_MS, true))
            .expect("a speculative final at the pause");
        assert!(
            calls[speculation + 1..]
                .iter()
                .any(|&(samples, f)| !f && samples > 1200 * SAMPLES_PER_MS),
            "a partial pass heard the speech after the pause: {calls:?}"
        );
        assert_eq!(transcript, format!("{} final", 1500 * SAMPLES_PER_MS));
    }

    #[tokio::test]
    async fn speech_after_the_pause_discards_the_speculation() {
        // The turn ended later than the paused speech: decode it all again.
        let (transcript, calls, _) = utterance(1200, false).await;
        let finals: Vec<_> = calls.iter().filter(|(_, f)| *f).collect();
        assert_eq!(finals.len(), 2, "speculative + real final: {calls:?}");
        assert_eq!(transcript, format!("{} final", 1500 * SAMPLES_PER_MS));
    }

    #[tokio::test]
    async fn a_pause_semantic_vad_scores_gets_the_latest_guess_then_the_speculation() {
        let (_, _, pauses) = utterance(800, true).await;
        // The last partial pass's words at once, then the speculative final
        // (which covered the audio up to the pause).
        assert_eq!(pauses.len(), 2, "{pauses:?}");
        assert!(!pauses[0].ends_with("final"), "{pauses:?}");
        assert_eq!(pauses[1], format!("{} final", 1000 * SAMPLES_PER_MS));
    }

    #[tokio::test]
    async fn a_guess_that_stops_short_of_the_pause_is_not_scored() {
        // The last partial pass started at 1000 ms: its words may miss the
        // speech up to 1080 ms, so only the speculative final is scored.
        let (_, calls, pauses) = run(Script {
            pause_at_ms: Some(1080),
            pause_speech_end: 1080,
            stop_speech_end: 1080,
            wants_score: true,
            ..Script::default()
        })
        .await;
        assert_eq!(
            pauses,
            vec![(format!("{} final", 1080 * SAMPLES_PER_MS), true)],
            "{calls:?}"
        );
    }

    #[tokio::test]
    async fn a_partial_in_flight_that_reaches_the_pause_is_let_finish_and_scored() {
        // The partial pass that starts at 1000 ms (the pause's audio end)
        // is in flight when the pause comes: its words are scored at once,
        // and the speculative final decodes after it.
        let script = || Script {
            pause_speech_end: 980,
            stop_speech_end: 980,
            wants_score: true,
            slow_partials_from: Some(980),
            ..Script::default()
        };
        let at_pause = 1000 * SAMPLES_PER_MS;
        let (transcript, calls, pauses) = run(script()).await;
        assert_eq!(
            pauses,
            vec![
                (format!("guess {at_pause}"), false),
                (format!("{at_pause} final"), true)
            ],
            "{calls:?}"
        );
        assert_eq!(transcript, format!("{at_pause} final"));
        assert!(calls.contains(&(at_pause, false)), "{calls:?}");

        // Decoded just as a final would be, its words stand as the final
        // (sent once, as the final decode's): no other decode runs.
        let (transcript, calls, pauses) = run(Script {
            engine: Counting {
                final_grade: true,
                ..Counting::default()
            },
            ..script()
        })
        .await;
        let guess = format!("guess {at_pause}");
        assert_eq!(pauses, vec![(guess.clone(), true)], "{calls:?}");
        assert_eq!(transcript, guess);
        assert!(calls.iter().all(|(_, f)| !f), "no final decode: {calls:?}");
    }

    #[tokio::test]
    async fn a_final_that_must_decode_again_hands_its_guess_over_first() {
        let (transcript, _, pauses) = run(Script {
            pause_speech_end: 800,
            stop_speech_end: 800,
            wants_score: true,
            engine: Counting {
                loops_first: true,
                ..Counting::default()
            },
            ..Script::default()
        })
        .await;
        let last = pauses.len().checked_sub(2).expect("two pause transcripts");
        let at_pause = format!("{} final", 1000 * SAMPLES_PER_MS);
        assert_eq!(
            pauses[last..],
            [("first try".to_string(), false), (at_pause.clone(), true)],
            "{pauses:?}"
        );
        assert_eq!(transcript, at_pause);
    }
}
