//! The turn actor (`end_of_turn` node): scores what the user said up to each
//! pause with the frozen LLM, as an answer to what the user last heard the
//! assistant say, and raises the score to every stage (`EndOfTurnScore`),
//! which semantic VAD turns into its silence window.
//!
//! Scoring runs on the blocking pool. A pause is scored on each guess the
//! recognizer sends of what was said up to it (a partial hypothesis whose
//! audio reaches the pause, the words before a decoding loop; see
//! `crate::asr::actor`), and again when the speculative final arrives if
//! its words differ (if they do not, the score is raised again, marked as
//! the final decode's, for the controller's speculative answer); a score
//! for a pause the user has since spoken through is ignored by the VAD.
//!
//! While the user speaks, each partial hypothesis' words but the last (the
//! one a later pass most often changes) are cached in the scorer, so
//! scoring a pause costs a prefill of only the words after them; when a
//! pause begins, the last of them is computed again while the recognizer
//! decodes the pause, so the weights are back in memory for the score
//! (`duplex run` of the ten clips through VAD -> whisper -> end_of_turn,
//! two runs each way, alternating: median commit 480 and 448 ms after the
//! end of speech with it, 544 and 512 without; median scoring about 45 ms
//! instead of 70).
//!
//! The hypothesis, not the committed words, is what is cached: those are
//! fixed once committed, and drift from what later passes and the final
//! say ("Mr. John" committed where the final reads "And Mr. John", "cold
//! cold-hearted"), and the final's score then computed the whole
//! utterance again. Caching starts with the utterance when the VAD says
//! its pauses will be scored (`SpeechStarted`), not at its first pause,
//! whose warm-up then computed everything said so far on the cores the
//! final decode needed. (`duplex run` of the five LibriVox clips, two runs:
//! the final's score prefilled 18-25 tokens in 40-48 ms and the warm-up
//! took 58-143 ms; now 1-4 tokens in 12-33 ms, and 11-27 ms.)

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use async_trait::async_trait;

use super::end_of_turn::EndOfTurnScorer;
use crate::graph::{Actor, Control, Ctx, DataFrame, Payload, SystemFrame, SystemKind};
use crate::orchestrator::heard::Heard;

pub struct TurnActor {
    /// The scorer, or `None` while a score is being computed.
    scorer: Option<EndOfTurnScorer>,
    /// The last pause scored: (item, speech end, words), and its score.
    last: Option<((String, u64, String), f32)>,
    /// What the user has heard of the session's answers.
    heard: Arc<Heard>,
    /// The utterance being spoken and its settled words so far (cached in
    /// the scorer as they come).
    settled: Option<(String, String)>,
    /// Semantic VAD is on, as the start of speech, the last pause or a
    /// session.update said: only then are hypotheses cached, so a server
    /// VAD session spends nothing on the scorer.
    semantic: bool,
}

impl TurnActor {
    pub fn new(scorer: EndOfTurnScorer, heard: Arc<Heard>) -> Self {
        TurnActor {
            scorer: Some(scorer),
            last: None,
            heard,
            settled: None,
            semantic: false,
        }
    }

    /// Takes the latest partial hypothesis of an utterance still being
    /// spoken and caches its words but the last in the scorer, so that
    /// scoring the next pause prefills only what was heard after them.
    async fn prepare(&mut self, item_id: &str, hypothesis: &str) -> Result<()> {
        let words: Vec<&str> = hypothesis.split_whitespace().collect();
        let settled = words[..words.len().saturating_sub(1)].join(" ");
        if settled.is_empty() {
            return Ok(());
        }
        self.cache(item_id, settled).await
    }

    /// Caches the prompt up to `settled` (words of utterance `item_id` that
    /// later passes are unlikely to change; none at the start of speech:
    /// the system prompt and what the user heard the assistant say) in the
    /// scorer, under semantic VAD.
    async fn cache(&mut self, item_id: &str, settled: String) -> Result<()> {
        self.settled = Some((item_id.to_string(), settled.clone()));
        if !self.semantic {
            return Ok(());
        }
        self.with_scorer(move |scorer, said| scorer.prepare(said, &settled))
            .await
            .context("caching the user's words for the end-of-turn scorer")
    }

    /// Runs `job` with the scorer and what the user last heard the
    /// assistant say, on the blocking pool.
    async fn with_scorer<T: Send + 'static>(
        &mut self,
        job: impl FnOnce(&mut EndOfTurnScorer, Option<&str>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let mut scorer = self
            .scorer
            .take()
            .context("end-of-turn scorer lost after an earlier failure")?;
        let assistant = self.heard.last_heard();
        let (scorer, result) = tokio::task::spawn_blocking(move || {
            let result = job(&mut scorer, assistant.as_deref());
            (scorer, result)
        })
        .await
        .context("end-of-turn scorer task failed")?;
        self.scorer = Some(scorer);
        result
    }

    async fn score(
        &mut self,
        t_ms: u64,
        item_id: &str,
        speech_end_ms: u64,
        text: &str,
        final_decode: bool,
        ctx: &Ctx,
    ) -> Result<()> {
        let key = (item_id.to_string(), speech_end_ms, text.to_string());
        if text.trim().is_empty() {
            return Ok(());
        }
        if let Some((last, score)) = &self.last
            && *last == key
        {
            if final_decode {
                // The final decode heard what the partial did: same score.
                ctx.raise(
                    t_ms,
                    SystemKind::EndOfTurnScore {
                        item_id: item_id.to_string(),
                        speech_end_ms,
                        score: *score,
                        text: text.to_string(),
                        scoring_ms: 0,
                        final_decode,
                    },
                );
            }
            return Ok(());
        }
        let words = text.to_string();
        let started = Instant::now();
        let scored = self
            .with_scorer(move |scorer, said| scorer.score(said, &words))
            .await
            .context("scoring the end of the turn")?;
        let score = scored.score;
        self.last = Some((key, score));
        tracing::debug!(
            item_id,
            speech_end_ms,
            score,
            prefilled = scored.prefilled,
            ms = started.elapsed().as_millis() as u64,
            text,
            "end of turn scored"
        );
        ctx.raise(
            t_ms,
            SystemKind::EndOfTurnScore {
                item_id: item_id.to_string(),
                speech_end_ms,
                score,
                text: text.to_string(),
                scoring_ms: started.elapsed().as_millis() as u64,
                final_decode,
            },
        );
        Ok(())
    }
}

#[async_trait]
impl Actor for TurnActor {
    async fn on_system(&mut self, frame: &SystemFrame, _ctx: &Ctx) -> Result<()> {
        if let SystemKind::SpeechStarted {
            item_id,
            wants_scores,
            ..
        } = &frame.kind
        {
            // The prompt before the user's words is computed while they
            // speak: a short answer ("Yes.") has no words to cache before
            // its pause, which would otherwise prefill it all.
            self.semantic = *wants_scores;
            return self.cache(item_id, String::new()).await;
        }
        let SystemKind::SpeechPaused {
            item_id,
            speech_end_ms,
            wants_score,
            ..
        } = &frame.kind
        else {
            return Ok(());
        };
        self.semantic = *wants_score;
        // A pause to be scored: while the recognizer decodes it, bring the
        // scorer's weights back into memory (see `EndOfTurnScorer::warm`),
        // unless its words that reached the pause were scored already.
        let scored = self
            .last
            .as_ref()
            .is_some_and(|((item, end, _), _)| item == item_id && end == speech_end_ms);
        if *wants_score
            && !scored
            && let Some((item, words)) = &self.settled
            && item == item_id
        {
            let words = words.clone();
            let started = Instant::now();
            self.with_scorer(move |scorer, said| scorer.warm(said, &words))
                .await
                .context("warming the end-of-turn scorer")?;
            tracing::debug!(
                item_id,
                ms = started.elapsed().as_millis() as u64,
                "end-of-turn scorer warmed"
            );
        }
        Ok(())
    }

    async fn on_data(&mut self, frame: DataFrame, ctx: &Ctx) -> Result<()> {
        if let Payload::PauseTranscript {
            item_id,
            speech_end_ms,
            text,
            final_decode,
        } = &frame.payload
        {
            let (item_id, text) = (item_id.clone(), text.clone());
            return self
                .score(
                    frame.t_ms,
                    &item_id,
                    *speech_end_ms,
                    &text,
                    *final_decode,
                    ctx,
                )
                .await;
        }
        if let Payload::Control(control) = &frame.payload
            && let Control::Configure(settings) = control.as_ref()
            && let Some(turn_detection) = &settings.turn_detection
        {
            self.semantic = turn_detection
                .as_ref()
                .is_some_and(|t| t.semantic.is_some());
        }
        if let Payload::Hypothesis { item_id, text } = &frame.payload {
            let (item_id, text) = (item_id.clone(), text.clone());
            return self.prepare(&item_id, &text).await;
        }
        ctx.send(frame).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::EventSink;
    use crate::graph::INPUT;
    use crate::graph::actor::{SessionLink, mailbox};
    use crate::llm::local::LocalModel;
    use crate::models::ModelStore;

    fn hypothesis(words: &str) -> DataFrame {
        DataFrame {
            t_ms: 0,
            response_id: INPUT,
            payload: Payload::Hypothesis {
                item_id: "item_1".into(),
                text: words.into(),
            },
        }
    }

    fn paused(wants_score: bool) -> SystemFrame {
        SessionLink::new().frame(
            0,
            SystemKind::SpeechPaused {
                item_id: "item_1".into(),
                audio_end_ms: 1000,
                speech_end_ms: 968,
                wants_score,
            },
        )
    }

    fn started(wants_scores: bool) -> SystemFrame {
        SessionLink::new().frame(
            0,
            SystemKind::SpeechStarted {
                item_id: "item_1".into(),
                audio_start_ms: 0,
                wants_scores,
            },
        )
    }

    fn cached(actor: &TurnActor) -> usize {
        actor.scorer.as_ref().expect("scorer").cached_tokens()
    }

    #[tokio::test]
    async fn the_prompt_is_cached_when_speech_starts_under_semantic_vad() {
        let model = LocalModel::load(&ModelStore::from_env()).expect("the local LLM");
        let (events, _rx) = EventSink::new();
        let (out, _inbox) = mailbox();
        let ctx = Ctx::new("turn", vec![out], events, SessionLink::new());
        for semantic in [false, true] {
            let scorer = EndOfTurnScorer::new(&model).expect("scorer");
            let mut actor = TurnActor::new(scorer, Arc::new(Heard::new()));
            actor.on_system(&started(semantic), &ctx).await.unwrap();
            assert_eq!(
                cached(&actor) > 0,
                semantic,
                "semantic VAD {semantic}: cached {}",
                cached(&actor)
            );
        }
    }

    #[tokio::test]
    async fn hypotheses_are_cached_only_under_semantic_vad() {
        let model = LocalModel::load(&ModelStore::from_env()).expect("the local LLM");
        let scorer = EndOfTurnScorer::new(&model).expect("scorer");
        let mut actor = TurnActor::new(scorer, Arc::new(Heard::new()));
        let (events, _rx) = EventSink::new();
        let (out, _inbox) = mailbox();
        let ctx = Ctx::new("turn", vec![out], events, SessionLink::new());

        // Server VAD: hypotheses come and a pause passes unscored; nothing
        // runs.
        actor.on_data(hypothesis("I want to"), &ctx).await.unwrap();
        actor.on_system(&paused(false), &ctx).await.unwrap();
        actor
            .on_data(hypothesis("I want to book a"), &ctx)
            .await
            .unwrap();
        assert_eq!(cached(&actor), 0, "server VAD spends nothing on the scorer");

        // A pause to be scored: the settled words so far are computed while
        // the recognizer decodes it, and those of later hypotheses as they
        // come.
        actor.on_system(&paused(true), &ctx).await.unwrap();
        let at_pause = cached(&actor);
        assert!(at_pause > 0, "the pause computed the words so far");
        actor
            .on_data(hypothesis("I want to book a table for"), &ctx)
            .await
            .unwrap();
        let later = cached(&actor);
        assert!(
            later > at_pause,
            "hypotheses under semantic VAD are cached as they come"
        );
        // The last word of a hypothesis is not cached: a later pass often
        // changes it.
        actor
            .on_data(hypothesis("I want to book a table for two"), &ctx)
            .await
            .unwrap();
        let with_for = cached(&actor);
        assert!(with_for > later, "\"for\" settled once a word followed it");
    }
}
