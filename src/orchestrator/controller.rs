//! The controller: the orchestrator actor between ASR and TTS, around a
//! frozen LLM (after Freeze-Omni and "Training-Free Multimodal LLM
//! Orchestration").
//!
//! On each final user transcript it routes the turn (memory, vision, tools),
//! puts what the chosen experts know before the user's words, and streams the
//! LLM's answer: text deltas as events, and clauses (cut by the chunker) to
//! the TTS the moment each closes. It owns the conversation and keeps it
//! interruption-true: when the user barges in, the assistant item keeps only
//! the words the output stage reports as played.
//!
//! Barge-in is two-step (LiveKit's false-interruption resume): the moment the
//! user starts speaking over the bot, its audio is paused; once the user's
//! words show a real turn (a word that is not a backchannel like "mhm"), the
//! response is interrupted and cancelled within one token; if it was only a
//! cough or a backchannel, the audio resumes where it stopped and nothing
//! enters the conversation.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::conversation::Conversation;
use super::heard::Heard;
use super::memory::{Memory, Modality, format_for_prompt};
use super::router::{self, Decision};
use super::tool_call;
use crate::graph::frame::ResponseSummary;
use crate::graph::{
    Actor, Control, Ctx, DataFrame, INPUT, Payload, ResponseId, SystemFrame, SystemKind,
};
use crate::latency::{Latency, Stage};
use crate::llm::chunker::{ChunkerOptions, ClauseChunker};
use crate::llm::{GenerateOptions, Llm, Role, Usage};
use crate::realtime::{self, SessionSettings};

pub const DEFAULT_INSTRUCTIONS: &str = "You are a friendly voice assistant. Answer in one or two short spoken sentences. No lists, no markdown.";

/// Recalled memories scoring under this fraction of the best one are left
/// out of the prompt.
const RECALL_RELATIVE_FLOOR: f32 = 0.6;

/// Listener sounds that neither interrupt the bot nor become a turn.
const BACKCHANNELS: &[&str] = &[
    "mhm", "mmhmm", "mhmm", "mmhm", "mm", "mmm", "hmm", "hm", "uh", "huh", "uhhuh", "um", "ah",
    "oh", "yeah", "yep", "yes", "right", "okay", "ok", "sure", "i", "see",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerParams {
    /// The engine: `{ engine = "local" }` (default) or
    /// `{ engine = "remote", url = "...", model = "..." }`.
    #[serde(default)]
    pub llm: crate::llm::LlmConfig,
    /// The system prompt.
    #[serde(default = "default_instructions")]
    pub instructions: String,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    #[serde(default)]
    pub temperature: f32,
    /// `["audio"]` (spoken answers) or `["text"]`.
    #[serde(default = "default_modalities")]
    pub modalities: Vec<String>,
    /// Answer each finished user turn.
    #[serde(default = "default_true")]
    pub create_response: bool,
    /// Let the user barge in on the bot.
    #[serde(default = "default_true")]
    pub interrupt_response: bool,
    /// Words (that are not backchannels) needed to confirm a barge-in.
    #[serde(default = "default_min_interruption_words")]
    pub min_interruption_words: usize,
    /// Clause boundaries cut only after this many words.
    #[serde(default = "default_min_clause_words")]
    pub min_clause_words: usize,
    /// Remember everything said, per user, across sessions (SQLite file).
    #[serde(default)]
    pub memory_db: Option<PathBuf>,
    /// Whose memory this session uses.
    #[serde(default = "default_user")]
    pub user: String,
    /// How many memories to recall per turn.
    #[serde(default = "default_recall_k")]
    pub recall_k: usize,
    /// Most user turns kept in the prompt (all when absent); older ones are
    /// dropped in blocks (see `Conversation::with_window`). With memory on,
    /// a small model answers better from a short window plus recall than
    /// from a long history.
    #[serde(default)]
    pub history_turns: Option<usize>,
    /// Under semantic VAD, start answering during a pause whose end-of-turn
    /// score is at least `speculation_threshold`, into a held buffer that
    /// is released the moment the turn is committed on the same words
    /// (and thrown away without a trace otherwise).
    #[serde(default = "default_true")]
    pub speculative: bool,
    #[serde(default = "default_speculation_threshold")]
    pub speculation_threshold: f32,
}

fn default_instructions() -> String {
    DEFAULT_INSTRUCTIONS.into()
}
fn default_max_tokens() -> usize {
    120
}
fn default_modalities() -> Vec<String> {
    vec!["audio".into()]
}
fn default_true() -> bool {
    true
}
fn default_min_interruption_words() -> usize {
    1
}
fn default_min_clause_words() -> usize {
    3
}
/// Every pause whose final decode is scored before its window closes: the
/// answer is got ready while the user is silent, and one thrown away costs
/// only cores that silence left idle (`duplex bench turn` prints how many
/// were started, adopted and thrown away).
fn default_speculation_threshold() -> f32 {
    0.0
}
fn default_user() -> String {
    "default".into()
}
fn default_recall_k() -> usize {
    3
}

impl ControllerParams {
    pub fn validate(&self) -> Result<()> {
        if !(1..=4096).contains(&self.max_tokens) {
            anyhow::bail!("max_tokens must be 1..4096, got {}", self.max_tokens);
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            anyhow::bail!("temperature must be 0..2, got {}", self.temperature);
        }
        if !(0.0..=1.0).contains(&self.speculation_threshold) {
            anyhow::bail!(
                "speculation_threshold must be 0..1, got {}",
                self.speculation_threshold
            );
        }
        for m in &self.modalities {
            if m != "audio" && m != "text" {
                anyhow::bail!("modalities may hold \"audio\" and \"text\", not \"{m}\"");
            }
        }
        Ok(())
    }
}

/// What a finished generation hands back (no engine if it crashed).
struct Generated {
    llm: Option<Box<dyn Llm>>,
    /// Everything the model generated.
    text: String,
    /// What was sent to the client as text deltas (all of `text` unless the
    /// response was stopped).
    sent: String,
    usage: Result<Usage>,
}

/// The response being generated.
struct Active {
    response_id: ResponseId,
    item_id: String,
    cancel: Arc<AtomicBool>,
    task: JoinHandle<Generated>,
    /// Set when it was stopped: the reason for its `response.done`.
    cancelled: Option<&'static str>,
}

/// What a response.create may change for one response.
#[derive(Debug, Clone, Default)]
struct ResponseOverrides {
    instructions: Option<String>,
    modalities: Option<Vec<String>>,
    max_tokens: Option<usize>,
}

/// What a user turn brings before the answer: what memory recalled, how the
/// router decided, the prompt of the user's message, the tool chosen.
struct Prepared {
    recalled: Option<Vec<super::memory::Recalled>>,
    decision: Decision,
    /// The scene put before the words, when the turn asked about it.
    vision_context: Option<String>,
    prompt: Option<String>,
    tool: Option<realtime::Tool>,
}

/// Whether a generation's output may be seen yet.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Gate {
    /// Speculative: keep everything (no events, no clauses).
    Held,
    /// Adopted: send what was held, then go on as usual.
    Release { held_ms: u64 },
    /// Thrown away: nothing is ever sent.
    Discard,
}

/// An answer started during a pause, on the words heard up to it.
struct Speculation {
    /// The user item and the pause it answers.
    item_id: String,
    speech_end_ms: u64,
    /// The speculated words, normalized.
    words: Vec<String>,
    prepared: Prepared,
    /// The response id it takes if adopted.
    response_id: ResponseId,
    cancel: Arc<AtomicBool>,
    gate: tokio::sync::watch::Sender<Gate>,
    task: JoinHandle<Generated>,
    started: std::time::Instant,
}

/// A possible barge-in on `response_id`, waiting for the user's words.
struct BargeIn {
    response_id: ResponseId,
    item_id: String,
}

pub struct Controller {
    params: ControllerParams,
    llm: Option<Box<dyn Llm>>,
    conversation: Conversation,
    memory: Option<Arc<Mutex<Memory>>>,
    next_response: ResponseId,
    active: Option<Active>,
    /// The last response and its assistant item (it may still be playing).
    last: Option<(ResponseId, String)>,
    barge_in: Option<BargeIn>,
    heard: Arc<Heard>,
    latency: Arc<Latency>,
    /// Words committed so far of the user's current utterance.
    partial_words: Vec<String>,
    /// The client truncated the item of the response still generating.
    truncate_on_settle: bool,
    /// Functions the session declared (for the router).
    tools: Vec<router::ToolInfo>,
    /// Their full declarations (for the arguments prompt).
    tool_specs: Vec<realtime::Tool>,
    /// `auto` (default), `none`, or `required`.
    tool_choice: String,
    /// The response that produced each assistant item.
    responses_of_items: std::collections::HashMap<String, ResponseId>,
    /// Decisions of the router, for tests and the client.
    pub decisions: Vec<Decision>,
    /// What the camera shows (from the vision stage), if a camera streams.
    scene: Option<Arc<crate::vision::expert::Scene>>,
    /// Session time of the latest frame (for the scene's "for 12 s").
    now_ms: u64,
    /// The held answer of the current pause.
    speculation: Option<Speculation>,
    /// A discarded speculation still stopping (it holds the engine).
    discarded: Option<JoinHandle<Generated>>,
    /// The last pause the user spoke through: (item, speech end).
    resumed: Option<(String, u64)>,
    /// The last user item whose turn the VAD ended.
    stopped: Option<String>,
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn is_backchannel(word: &str) -> bool {
    let w: String = word
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect();
    w.is_empty() || BACKCHANNELS.contains(&w.as_str())
}

impl Controller {
    pub fn new(
        params: ControllerParams,
        llm: Box<dyn Llm>,
        memory: Option<Memory>,
        heard: Arc<Heard>,
        latency: Arc<Latency>,
    ) -> Result<Controller> {
        params.validate()?;
        Ok(Controller {
            conversation: Conversation::new(params.instructions.clone())
                .with_window(params.history_turns),
            params,
            llm: Some(llm),
            memory: memory.map(|m| Arc::new(Mutex::new(m))),
            next_response: 1,
            active: None,
            last: None,
            barge_in: None,
            heard,
            latency,
            partial_words: Vec::new(),
            truncate_on_settle: false,
            tools: Vec::new(),
            tool_specs: Vec::new(),
            tool_choice: "auto".into(),
            responses_of_items: Default::default(),
            decisions: Vec::new(),
            scene: None,
            now_ms: 0,
            speculation: None,
            discarded: None,
            resumed: None,
            stopped: None,
        })
    }

    pub fn conversation(&self) -> &Conversation {
        &self.conversation
    }

    fn speaks(&self) -> bool {
        self.params.modalities.iter().any(|m| m == "audio")
    }

    /// Whether the bot may still be talking (generating or playing).
    fn talking(&self) -> Option<(ResponseId, String)> {
        if let Some(a) = &self.active
            && a.cancelled.is_none()
        {
            return Some((a.response_id, a.item_id.clone()));
        }
        match &self.last {
            Some((r, item)) if !self.heard.is_finished(*r) => Some((*r, item.clone())),
            _ => None,
        }
    }

    /// Waits for the generation in flight and files its answer in the
    /// conversation (only the heard part if it was interrupted).
    async fn settle(&mut self, ctx: &Ctx) -> Result<()> {
        if let Some(task) = self.discarded.take() {
            // A thrown-away answer only gives the engine back.
            let generated = task.await.context("LLM task failed")?;
            self.llm = generated.llm;
        }
        let Some(active) = self.active.take() else {
            return Ok(());
        };
        let generated = active.task.await.context("LLM task failed")?;
        self.llm = generated.llm;
        let usage = generated.usage;
        let cut = active.cancelled.is_some() || std::mem::take(&mut self.truncate_on_settle);
        // Cut short, the answer keeps what reached the user: the words
        // played, or for a text answer the text sent.
        let text = match (cut, self.speaks()) {
            (true, true) => self.heard.heard_text(active.response_id),
            (true, false) => generated.sent.clone(),
            (false, _) => generated.text.clone(),
        };
        self.conversation
            .push(&active.item_id, Role::Assistant, &generated.text, None);
        if cut {
            self.conversation.truncate(&active.item_id, &text)?;
            if active.cancelled.is_some() {
                self.conversation.mark_incomplete(&active.item_id);
            }
        }
        if !text.trim().is_empty() {
            self.remember(Modality::Assistant, &text).await?;
        }
        if let Err(e) = usage {
            ctx.events().error(0, "llm_error", &format!("{e:#}"));
        }
        Ok(())
    }

    /// Stores something said in the session's memory (when it has one),
    /// off the reactor: embedding runs the model.
    fn remember(
        &self,
        modality: Modality,
        text: &str,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        remember_in(self.memory.clone(), modality, text.to_string())
    }

    /// Stops a response (the user talked over it, or the client cancelled
    /// it), keeping what the user heard of it.
    fn stop(
        &mut self,
        response_id: ResponseId,
        item_id: &str,
        reason: &'static str,
        ctx: &Ctx,
    ) -> Result<()> {
        let kind = if reason == "turn_detected" {
            SystemKind::Interrupt { response_id }
        } else {
            SystemKind::Cancel { response_id }
        };
        ctx.raise(0, kind);
        let played_ms = self.heard.played_ms(response_id);
        let heard = self.heard.heard_text(response_id);
        self.heard.finish(response_id);
        let generating = matches!(&self.active, Some(a) if a.response_id == response_id);
        if generating {
            if let Some(a) = &mut self.active {
                a.cancel.store(true, Ordering::SeqCst);
                a.cancelled = Some(reason);
            }
        } else if self.conversation.get(item_id).is_some() {
            self.conversation.truncate(item_id, &heard)?;
        }
        tracing::info!(response = response_id, played_ms, heard = %heard, reason, "response stopped");
        let item = realtime::assistant_item(item_id, "incomplete", &self.params.modalities, &heard);
        ctx.events().emit(
            "conversation.item.truncated",
            0,
            json!({"item_id": item_id, "content_index": 0, "audio_end_ms": played_ms}),
        );
        ctx.events().emit(
            "response.done",
            0,
            json!({"response": realtime::response_object(
                &realtime::response_id(response_id),
                "cancelled",
                json!({"type": "cancelled", "reason": reason}),
                vec![item],
                &self.params.modalities,
                None,
            )}),
        );
        Ok(())
    }

    /// Decides a pending barge-in from the user's words so far.
    async fn judge_barge_in(
        &mut self,
        words: &[String],
        is_final: bool,
        ctx: &Ctx,
    ) -> Result<bool> {
        let Some(b) = &self.barge_in else {
            return Ok(false);
        };
        let real = words.iter().filter(|w| !is_backchannel(w)).count();
        if real >= self.params.min_interruption_words {
            let (r, item) = (b.response_id, b.item_id.clone());
            self.barge_in = None;
            self.stop(r, &item, "turn_detected", ctx)?;
            return Ok(false);
        }
        if is_final {
            let r = b.response_id;
            self.barge_in = None;
            ctx.raise(0, SystemKind::ResumeOutput { response_id: r });
            ctx.events().emit(
                "duplex.backchannel",
                0,
                json!({"response_id": realtime::response_id(r), "transcript": words.join(" ")}),
            );
            return Ok(true);
        }
        Ok(false)
    }

    async fn on_user_final(&mut self, item_id: &str, text: &str, ctx: &Ctx) -> Result<()> {
        let words: Vec<String> = text.split_whitespace().map(String::from).collect();
        if self.judge_barge_in(&words, true, ctx).await? {
            self.discard_speculation("backchannel", ctx);
            return Ok(()); // a backchannel: not a turn
        }
        if words.is_empty() {
            self.discard_speculation("empty_final", ctx);
            return Ok(());
        }
        // A speculative answer on the very words of the final is adopted.
        let adopt = self.speculation.as_ref().is_some_and(|s| {
            s.item_id == item_id
                && s.words == crate::asr::wer::normalize(text)
                && self.params.create_response
        });
        if adopt && let Some(spec) = self.speculation.take() {
            self.commit_user_turn(item_id, text, &spec.prepared, ctx)
                .await?;
            self.adopt(spec, ctx);
            return Ok(());
        }
        self.discard_speculation("final_differs", ctx);
        self.settle(ctx).await?;
        let prepared = self.prepare(text).await?;
        let tool = self.commit_user_turn(item_id, text, &prepared, ctx).await?;
        if self.params.create_response {
            match tool {
                Some(tool) => self.call_tool(tool, text, ctx)?,
                None => self.respond(ResponseOverrides::default(), ctx)?,
            }
        }
        Ok(())
    }

    /// Routes a user turn and recalls what memory knows for it, changing
    /// nothing: the prompt the turn's message will have, and the tool the
    /// router chose.
    fn prepare(
        &self,
        text: &str,
    ) -> impl std::future::Future<Output = Result<Prepared>> + Send + 'static {
        let memory = self.memory.clone();
        let k = self.params.recall_k;
        let tools = self.tools.clone();
        let tool_specs = self.tool_specs.clone();
        let tool_choice = self.tool_choice.clone();
        let text = text.to_string();
        let scene = self.scene.as_ref().map(|s| s.describe(self.now_ms));
        async move { prepare_turn(memory, k, &tools, &tool_specs, &tool_choice, scene, &text).await }
    }
}

async fn prepare_turn(
    memory: Option<Arc<Mutex<Memory>>>,
    k: usize,
    tools: &[router::ToolInfo],
    tool_specs: &[realtime::Tool],
    tool_choice: &str,
    scene: Option<String>,
    text: &str,
) -> Result<Prepared> {
    let recalled = match memory {
        Some(memory) => {
            let query = text.to_string();
            tokio::task::spawn_blocking(move || {
                let m = memory
                    .lock()
                    .map_err(|_| anyhow::anyhow!("memory lock poisoned"))?;
                anyhow::Ok(Some(m.recall(&query, k, now_unix_ms())?))
            })
            .await
            .context("memory task failed")??
        }
        None => None,
    };
    // Of the top k, only those close to the best match: weaker ones are
    // noise a small model copies from.
    let recalled = recalled.map(|mut found| {
        // The same words said before tell nothing new ("what is my
        // name?" asked in an earlier session).
        let asked = crate::asr::wer::normalize(text);
        found.retain(|r| crate::asr::wer::normalize(&r.item.text) != asked);
        let best = found.first().map_or(0.0, |r| r.score);
        found.retain(|r| r.score >= RECALL_RELATIVE_FLOOR * best);
        found
    });
    let best = recalled.as_ref().and_then(|r| r.first().map(|x| x.score));
    let decision = router::route(text, best, scene.is_some(), tools);
    let mut context = String::new();
    if decision.memory.used
        && let Some(found) = &recalled
        && !found.is_empty()
    {
        // This framing made SmolLM2-135M use the memory; "Earlier in
        // our conversations: ..." before the bare question did not.
        context = format!(
            "Context from memory:\n{}\n",
            format_for_prompt(found, now_unix_ms())
        );
    }
    let vision_context = scene.filter(|_| decision.vision.used);
    if let Some(seen) = vision_context.as_ref().filter(|s| !s.is_empty()) {
        context.push_str(&format!("Camera: {seen}\n"));
    }
    if !context.is_empty() {
        context.push_str("Question: ");
    }
    let tool = decision
        .tool
        .as_ref()
        .filter(|_| tool_choice != "none")
        .and_then(|name| tool_specs.iter().find(|t| &t.name == name))
        .cloned();
    let prompt = (!context.is_empty()).then(|| format!("{context}{text}"));
    Ok(Prepared {
        recalled,
        decision,
        vision_context,
        prompt,
        tool,
    })
}

impl Controller {
    /// Files a user turn: remembers the words, reports what was recalled
    /// and how the turn was routed, and adds the message to the
    /// conversation. Returns the tool to call, if the router chose one.
    async fn commit_user_turn(
        &mut self,
        item_id: &str,
        text: &str,
        prepared: &Prepared,
        ctx: &Ctx,
    ) -> Result<Option<realtime::Tool>> {
        self.remember(Modality::User, text).await?;
        if let Some(found) = &prepared.recalled {
            let items: Vec<Value> = found
                .iter()
                .map(|r| {
                    json!({
                        "text": r.item.text,
                        "modality": r.item.modality.as_str(),
                        "at_unix_ms": r.item.at_unix_ms,
                        "score": r.score,
                    })
                })
                .collect();
            ctx.events().emit(
                "duplex.memory.recalled",
                0,
                json!({"item_id": item_id, "items": items}),
            );
        }
        ctx.events().emit(
            "duplex.router.decision",
            0,
            json!({"item_id": item_id, "decision": prepared.decision}),
        );
        if let Some(seen) = &prepared.vision_context {
            ctx.events().emit(
                "duplex.vision.context",
                0,
                json!({"item_id": item_id, "text": seen}),
            );
        }
        self.decisions.push(prepared.decision.clone());
        self.conversation
            .push(item_id, Role::User, text, prepared.prompt.clone());
        Ok(prepared.tool.clone())
    }

    /// Answers with a call of `tool` (its arguments from the LLM) instead of
    /// words; the client's `function_call_output` and `response.create`
    /// bring the answer.
    fn call_tool(&mut self, tool: realtime::Tool, request: &str, ctx: &Ctx) -> Result<()> {
        let (llm, response_id, rid, item_id) = self.next_response()?;
        ctx.events().emit(
            "response.created",
            0,
            json!({"response": realtime::response_object(&rid, "in_progress", Value::Null, vec![], &["text".to_string()], None)}),
        );
        let cancel = Arc::new(AtomicBool::new(false));
        let name = tool.name.clone();
        let job = tool_call::CallJob {
            llm,
            tool,
            request: request.to_string(),
            ctx: ctx.clone(),
            rid,
            item_id: item_id.clone(),
            call_id: format!("call_{response_id:06}"),
            cancel: cancel.clone(),
            seed: response_id,
        };
        let task = tokio::spawn(async move {
            let done = tool_call::run(job).await;
            // What the model sees of the call in later turns.
            let text = format!("(calling {name} with {})", done.arguments);
            Generated {
                llm: done.llm,
                sent: text.clone(),
                text,
                usage: done.usage,
            }
        });
        self.start_active(response_id, item_id, cancel, task);
        Ok(())
    }

    /// Files the response now generating (and the last one started).
    fn start_active(
        &mut self,
        response_id: ResponseId,
        item_id: String,
        cancel: Arc<AtomicBool>,
        task: JoinHandle<Generated>,
    ) {
        self.active = Some(Active {
            response_id,
            item_id: item_id.clone(),
            cancel,
            task,
            cancelled: None,
        });
        self.last = Some((response_id, item_id));
    }

    /// Takes the engine for a new response and numbers it: (engine,
    /// response id, `resp_...` id, its item id).
    fn next_response(&mut self) -> Result<(Box<dyn Llm>, ResponseId, String, String)> {
        let llm = self
            .llm
            .take()
            .context("LLM lost after an earlier failure")?;
        let response_id = self.next_response;
        self.next_response += 1;
        Ok((
            llm,
            response_id,
            realtime::response_id(response_id),
            realtime::assistant_item_id(response_id),
        ))
    }

    /// Starts generating a response to the conversation as it stands.
    fn respond(&mut self, overrides: ResponseOverrides, ctx: &Ctx) -> Result<()> {
        let (llm, response_id, rid, item_id) = self.next_response()?;
        let modalities = overrides
            .modalities
            .unwrap_or_else(|| self.params.modalities.clone());
        self.latency.response(&rid);
        open_response(&rid, &item_id, &modalities, ctx);
        let cancel = Arc::new(AtomicBool::new(false));
        let mut messages = self.conversation.messages();
        if let (Some(instructions), Some(system)) = (overrides.instructions, messages.first_mut()) {
            system.content = instructions;
        }
        let options = GenerateOptions {
            max_tokens: overrides.max_tokens.unwrap_or(self.params.max_tokens),
            temperature: self.params.temperature,
            seed: response_id,
        };
        let task = tokio::spawn(generate(GenerateJob {
            llm,
            messages,
            options,
            chunker: self.chunker_options(),
            cancel: cancel.clone(),
            ctx: ctx.clone(),
            latency: self.latency.clone(),
            response_id,
            rid,
            item_id: item_id.clone(),
            modalities,
            gate: None,
        }));
        self.responses_of_items.insert(item_id.clone(), response_id);
        self.start_active(response_id, item_id, cancel, task);
        Ok(())
    }

    fn chunker_options(&self) -> ChunkerOptions {
        ChunkerOptions {
            min_clause_words: self.params.min_clause_words,
            ..ChunkerOptions::default()
        }
    }

    /// A pause was scored on the recognizer's speculative final (semantic
    /// VAD; a guess is not answered: answering it takes the cores from the
    /// final's decode. Tried on guesses that heard the whole pause,
    /// `duplex bench turn` gave 792 and 902 ms to first audio against 695
    /// without, the final decode slowed to 519-631 ms from 363): on a
    /// likely end of turn, starts
    /// answering the words heard so far into a held buffer. Nothing of it
    /// is seen (no events, no clauses, nothing in the conversation or
    /// memory) unless the turn is committed on the same words.
    async fn on_score(
        &mut self,
        item_id: &str,
        speech_end_ms: u64,
        score: f32,
        text: &str,
        ctx: &Ctx,
    ) -> Result<()> {
        if !self.params.speculative || !self.params.create_response {
            return Ok(());
        }
        let words = crate::asr::wer::normalize(text);
        if let Some(s) = &self.speculation
            && s.item_id == item_id
            && s.speech_end_ms == speech_end_ms
            && s.words == words
        {
            return Ok(()); // already answering these words
        }
        if self.resumed.as_ref() == Some(&(item_id.to_string(), speech_end_ms))
            || self.stopped.as_deref() == Some(item_id)
        {
            // The user spoke on, or the turn is already over: too late to
            // speculate (the answer starts from the final).
            return Ok(());
        }
        self.discard_speculation("rescored", ctx);
        if score < self.params.speculation_threshold || words.is_empty() {
            return Ok(());
        }
        // Only when the bot is silent: a pause while it talks is a barge-in
        // or a backchannel, decided on the final.
        if self.barge_in.is_some() || self.talking().is_some() {
            return Ok(());
        }
        if self.active.as_ref().is_some_and(|a| !a.task.is_finished()) {
            return Ok(());
        }
        self.settle(ctx).await?;
        let prepared = self.prepare(text).await?;
        if prepared.tool.is_some() {
            return Ok(()); // a tool call is not an answer to hold
        }
        let mut conversation = self.conversation.clone();
        conversation.push(item_id, Role::User, text, prepared.prompt.clone());
        let messages = conversation.messages();
        let llm = self
            .llm
            .take()
            .context("LLM lost after an earlier failure")?;
        // The id the answer gets if adopted; nothing is numbered until then.
        let response_id = self.next_response;
        let rid = realtime::response_id(response_id);
        let answer_item = realtime::assistant_item_id(response_id);
        let cancel = Arc::new(AtomicBool::new(false));
        let (gate, gate_rx) = tokio::sync::watch::channel(Gate::Held);
        let task = tokio::spawn(generate(GenerateJob {
            llm,
            messages,
            options: GenerateOptions {
                max_tokens: self.params.max_tokens,
                temperature: self.params.temperature,
                seed: response_id,
            },
            chunker: self.chunker_options(),
            cancel: cancel.clone(),
            ctx: ctx.clone(),
            latency: self.latency.clone(),
            response_id,
            rid,
            item_id: answer_item,
            modalities: self.params.modalities.clone(),
            gate: Some(gate_rx),
        }));
        ctx.events().emit(
            "duplex.turn.speculation",
            0,
            // The user's words it answers (never the answer).
            json!({"state": "started", "item_id": item_id, "speech_end_ms": speech_end_ms, "score": score, "text": text}),
        );
        tracing::debug!(item_id, speech_end_ms, score, "speculative answer started");
        self.speculation = Some(Speculation {
            item_id: item_id.to_string(),
            speech_end_ms,
            words,
            prepared,
            response_id,
            cancel,
            gate,
            task,
            started: std::time::Instant::now(),
        });
        Ok(())
    }

    /// Throws the speculative answer away (if there is one): its generation
    /// stops within a token and nothing of it was or will be seen; the
    /// engine comes back at the next [`Controller::settle`].
    fn discard_speculation(&mut self, reason: &str, ctx: &Ctx) {
        let Some(spec) = self.speculation.take() else {
            return;
        };
        spec.cancel.store(true, Ordering::SeqCst);
        let _ = spec.gate.send(Gate::Discard);
        ctx.events().emit(
            "duplex.turn.speculation",
            0,
            json!({
                "state": "discarded",
                "item_id": spec.item_id,
                "speech_end_ms": spec.speech_end_ms,
                "reason": reason,
                "held_ms": spec.started.elapsed().as_millis() as u64,
            }),
        );
        tracing::debug!(
            item_id = spec.item_id,
            reason,
            "speculative answer discarded"
        );
        self.discarded = Some(spec.task);
    }

    /// The turn was committed on the speculated words: the held answer
    /// becomes the response, released at once and generating on.
    fn adopt(&mut self, spec: Speculation, ctx: &Ctx) {
        let response_id = spec.response_id;
        self.next_response = response_id + 1;
        let rid = realtime::response_id(response_id);
        let item_id = realtime::assistant_item_id(response_id);
        self.latency.response(&rid);
        open_response(&rid, &item_id, &self.params.modalities, ctx);
        let held_ms = spec.started.elapsed().as_millis() as u64;
        let _ = spec.gate.send(Gate::Release { held_ms });
        ctx.events().emit(
            "duplex.turn.speculation",
            0,
            json!({
                "state": "adopted",
                "item_id": spec.item_id,
                "speech_end_ms": spec.speech_end_ms,
                "response_id": rid,
                "held_ms": held_ms,
            }),
        );
        self.responses_of_items.insert(item_id.clone(), response_id);
        self.start_active(response_id, item_id, spec.cancel, spec.task);
    }
}

/// The first events of a response (created, its item and content part).
fn open_response(rid: &str, item_id: &str, modalities: &[String], ctx: &Ctx) {
    let events = ctx.events();
    events.emit(
        "response.created",
        0,
        json!({"response": realtime::response_object(rid, "in_progress", Value::Null, vec![], modalities, None)}),
    );
    let item = realtime::assistant_item(item_id, "in_progress", modalities, "");
    events.emit(
        "response.output_item.added",
        0,
        json!({"response_id": rid, "output_index": 0, "item": item}),
    );
    events.emit("conversation.item.added", 0, json!({"item": item}));
    let audio = modalities.iter().any(|m| m == "audio");
    let part = if audio {
        json!({"type": "audio", "transcript": ""})
    } else {
        json!({"type": "text", "text": ""})
    };
    events.emit(
        "response.content_part.added",
        0,
        json!({"response_id": rid, "item_id": item_id, "output_index": 0, "content_index": 0, "part": part}),
    );
}

impl Controller {
    /// Acts on a client's request.
    async fn on_control(&mut self, control: &Control, t_ms: u64, ctx: &Ctx) -> Result<()> {
        let events = ctx.events();
        // A client's request may change what the answer would be (or
        // cancel it): a held answer is thrown away.
        if !matches!(control, Control::Retrieve { .. }) {
            self.discard_speculation("client_request", ctx);
        }
        match control {
            Control::Configure(settings) => self.configure(settings),
            Control::ClearInput => {}
            Control::AddItem {
                item_id,
                previous_item_id,
                role,
                text,
                call_id,
            } => {
                self.settle(ctx).await?;
                // Phrased as a request for the answer: given the bare
                // output, SmolLM2-135M echoes it.
                let prompt = call_id.as_ref().map(|_| {
                    format!(
                        "The function you called returned: {text}\nTell me the answer in one short spoken sentence."
                    )
                });
                if *role == Role::User && call_id.is_none() {
                    // A typed message gets the experts a spoken one gets
                    // (memory, the camera); its answer waits for
                    // response.create.
                    let prepared = self.prepare(text).await?;
                    self.commit_user_turn(item_id, text, &prepared, ctx).await?;
                } else {
                    self.conversation.push(item_id, *role, text, prompt);
                }
                let item = match call_id {
                    Some(call_id) => json!({
                        "id": item_id, "object": "realtime.item", "type": "function_call_output",
                        "status": "completed", "call_id": call_id, "output": text,
                    }),
                    None => json!({
                        "id": item_id, "object": "realtime.item", "type": "message",
                        "status": "completed", "role": role,
                        "content": [{"type": "input_text", "text": text}],
                    }),
                };
                events.emit(
                    "conversation.item.added",
                    t_ms,
                    json!({"previous_item_id": previous_item_id, "item": item}),
                );
                events.emit(
                    "conversation.item.done",
                    t_ms,
                    json!({"previous_item_id": previous_item_id, "item": item}),
                );
            }
            Control::Truncate {
                item_id,
                audio_end_ms,
            } => self.truncate(item_id, *audio_end_ms, t_ms, ctx)?,
            Control::Delete { item_id } => {
                if matches!(&self.active, Some(a) if &a.item_id == item_id) {
                    events.error(
                        t_ms,
                        "invalid_value",
                        &format!(
                            "item `{item_id}` is still being generated: cancel the response first"
                        ),
                    );
                } else if self.conversation.delete(item_id).is_ok() {
                    events.emit(
                        "conversation.item.deleted",
                        t_ms,
                        json!({"item_id": item_id}),
                    );
                } else {
                    events.error(
                        t_ms,
                        "item_not_found",
                        &format!("conversation.item.delete: no item `{item_id}`"),
                    );
                }
            }
            Control::Retrieve { item_id } => {
                // A stopped or finished answer is filed first, so the item
                // shows what the user heard; one still generating is not
                // waited for.
                if self
                    .active
                    .as_ref()
                    .is_some_and(|a| a.cancelled.is_some() || a.task.is_finished())
                {
                    self.settle(ctx).await?;
                }
                match self.conversation.get(item_id) {
                    Some(item) => events.emit(
                        "conversation.item.retrieved",
                        t_ms,
                        json!({"item": item.to_realtime(&self.params.modalities)}),
                    ),
                    None => events.error(
                        t_ms,
                        "item_not_found",
                        &format!("conversation.item.retrieve: no item `{item_id}`"),
                    ),
                }
            }
            Control::CreateResponse {
                instructions,
                modalities,
                max_tokens,
            } => {
                if self
                    .active
                    .as_ref()
                    .is_some_and(|a| a.cancelled.is_none() && !a.task.is_finished())
                {
                    events.error(
                        t_ms,
                        "conversation_already_has_active_response",
                        "a response is in progress: wait for response.done or send response.cancel",
                    );
                    return Ok(());
                }
                self.settle(ctx).await?;
                self.respond(
                    ResponseOverrides {
                        instructions: instructions.clone(),
                        modalities: modalities.clone(),
                        max_tokens: *max_tokens,
                    },
                    ctx,
                )?;
            }
            Control::CancelResponse { response_id } => {
                let target = self.talking().filter(|(r, _)| {
                    response_id
                        .as_ref()
                        .is_none_or(|id| *id == realtime::response_id(*r))
                });
                match target {
                    Some((r, item_id)) => self.stop(r, &item_id, "client_cancelled", ctx)?,
                    None => events.error(
                        t_ms,
                        "response_cancel_not_active",
                        "response.cancel: there is no active response to cancel",
                    ),
                }
            }
        }
        Ok(())
    }

    fn configure(&mut self, settings: &SessionSettings) {
        if let Some(instructions) = &settings.instructions {
            self.conversation.instructions = instructions.clone();
            self.params.instructions = instructions.clone();
        }
        if let Some(modalities) = &settings.output_modalities {
            self.params.modalities = modalities.clone();
        }
        if let Some(max) = settings.max_output_tokens {
            self.params.max_tokens = max;
        }
        if let Some(t) = settings.temperature {
            self.params.temperature = t;
        }
        match &settings.turn_detection {
            Some(Some(turn)) => {
                self.params.create_response = turn.create_response;
                self.params.interrupt_response = turn.interrupt_response;
            }
            Some(None) => {
                self.params.create_response = false;
                self.params.interrupt_response = false;
            }
            None => {}
        }
        if let Some(choice) = &settings.tool_choice {
            self.tool_choice = choice.clone();
        }
        if let Some(tools) = &settings.tools {
            self.tool_specs = tools.clone();
            self.tools = tools
                .iter()
                .map(|t| router::ToolInfo {
                    name: t.name.clone(),
                    description: t.description.clone(),
                })
                .collect();
        }
    }

    /// conversation.item.truncate: the client says how much it played.
    fn truncate(&mut self, item_id: &str, audio_end_ms: u64, t_ms: u64, ctx: &Ctx) -> Result<()> {
        let events = ctx.events();
        let response = self.responses_of_items.get(item_id).copied();
        match response {
            Some(r) => {
                self.heard.set_played(r, audio_end_ms);
                if matches!(&self.active, Some(a) if a.item_id == item_id) {
                    self.truncate_on_settle = true;
                } else {
                    let heard = self.heard.heard_text(r);
                    self.conversation.truncate(item_id, &heard)?;
                }
            }
            None => {
                match self.conversation.get(item_id) {
                    Some(item) if item.role == Role::Assistant && audio_end_ms == 0 => {
                        self.conversation.truncate(item_id, "")?;
                    }
                    Some(_) => {
                        events.error(
                        t_ms,
                        "invalid_value",
                        &format!("conversation.item.truncate: item `{item_id}` has no audio to truncate"),
                    );
                        return Ok(());
                    }
                    None => {
                        events.error(
                            t_ms,
                            "item_not_found",
                            &format!("conversation.item.truncate: no item `{item_id}`"),
                        );
                        return Ok(());
                    }
                }
            }
        }
        events.emit(
            "conversation.item.truncated",
            t_ms,
            json!({"item_id": item_id, "content_index": 0, "audio_end_ms": audio_end_ms}),
        );
        Ok(())
    }
}

async fn remember_in(
    memory: Option<Arc<Mutex<Memory>>>,
    modality: Modality,
    said: String,
) -> Result<()> {
    let Some(memory) = memory else {
        return Ok(());
    };
    tokio::task::spawn_blocking(move || {
        let mut m = memory
            .lock()
            .map_err(|_| anyhow::anyhow!("memory lock poisoned"))?;
        m.remember(modality, &said, now_unix_ms())
    })
    .await
    .context("memory task failed")??;
    Ok(())
}

struct GenerateJob {
    llm: Box<dyn Llm>,
    messages: Vec<crate::llm::ChatMessage>,
    options: GenerateOptions,
    chunker: ChunkerOptions,
    cancel: Arc<AtomicBool>,
    ctx: Ctx,
    latency: Arc<Latency>,
    response_id: ResponseId,
    rid: String,
    item_id: String,
    modalities: Vec<String>,
    /// A speculative answer's gate (`None`: seen as it comes).
    gate: Option<tokio::sync::watch::Receiver<Gate>>,
}

/// Most pieces a held answer generates before it waits for the commit (a
/// text answer has no clauses to tell when its opening is ready).
const HELD_PIECES: usize = 24;

/// Where a generation's text goes once it may be seen: text deltas as
/// events, and (spoken answers) clauses to the TTS.
struct Forward {
    ctx: Ctx,
    latency: Arc<Latency>,
    response_id: ResponseId,
    rid: String,
    item_id: String,
    audio: bool,
    chunker: ClauseChunker,
    /// What was sent as text deltas.
    sent: String,
}

impl Forward {
    async fn piece(&mut self, piece: &str) {
        self.latency.mark(Stage::LlmFirstToken);
        self.sent.push_str(piece);
        let delta_event = if self.audio {
            "response.output_audio_transcript.delta"
        } else {
            "response.output_text.delta"
        };
        self.ctx.events().emit(
            delta_event,
            0,
            json!({"response_id": self.rid, "item_id": self.item_id, "output_index": 0, "content_index": 0, "delta": piece}),
        );
        if self.audio {
            for clause in self.chunker.push(piece) {
                self.clause(clause).await;
            }
        }
    }

    async fn clause(&self, clause: String) {
        self.latency.mark(Stage::FirstClause);
        self.ctx
            .send(DataFrame {
                t_ms: 0,
                response_id: self.response_id,
                payload: Payload::Clause {
                    item_id: self.item_id.clone(),
                    text: clause,
                },
            })
            .await;
    }
}

/// Runs one generation: the LLM on the blocking pool, its text pieces
/// streamed here into events and clauses. A speculative generation (with a
/// gate) keeps its pieces until the gate opens, and shows nothing at all if
/// it is discarded.
async fn generate(job: GenerateJob) -> Generated {
    let GenerateJob {
        mut llm,
        messages,
        options,
        chunker,
        cancel,
        ctx,
        latency,
        response_id,
        rid,
        item_id,
        modalities,
        mut gate,
    } = job;
    let audio = modalities.iter().any(|m| m == "audio");
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let flag = cancel.clone();
    // Set once a held answer has its first clause: the engine then waits
    // for the commit instead of taking the cores from the recognizer and
    // the scorer (a speculation is there to hide the prefill and the first
    // clause, not the whole answer).
    let park = Arc::new(AtomicBool::new(false));
    let parked = park.clone();
    let mut parked_gate = gate.clone();
    let runtime = tokio::runtime::Handle::current();
    let blocking = tokio::task::spawn_blocking(move || {
        // Pieces the engine produced after the cancel flag was raised (the
        // engine promises at most one).
        let mut after_cancel = 0usize;
        let mut on_text = |piece: &str| {
            if flag.load(Ordering::SeqCst) {
                after_cancel += 1;
            }
            let sent = tx.send(piece.to_string()).is_ok();
            if parked.swap(false, Ordering::SeqCst)
                && let Some(g) = parked_gate.as_mut()
            {
                // Released or discarded (the cancel flag then stops it).
                let _ = runtime.block_on(g.wait_for(|s| *s != Gate::Held));
            }
            sent
        };
        let usage = llm.generate(&messages, &options, &flag, &mut on_text);
        (llm, usage, after_cancel)
    });
    let mut forward = Forward {
        ctx: ctx.clone(),
        latency: latency.clone(),
        response_id,
        rid: rid.clone(),
        item_id: item_id.clone(),
        audio,
        chunker: ClauseChunker::new(chunker),
        sent: String::new(),
    };
    let mut text = String::new();
    // Pieces kept while the gate is held, and a chunker that only tells
    // when they make a first clause.
    let mut held: Vec<String> = Vec::new();
    let mut probe = ClauseChunker::new(chunker);
    // A gated generation starts held even if the gate opened before this
    // task ran: the release is then handled (and noted) below.
    let mut state = match gate {
        Some(_) => Gate::Held,
        None => Gate::Release { held_ms: 0 },
    };
    let mut generating = true;
    loop {
        if state == Gate::Held {
            let Some(g) = gate.as_mut() else { break };
            tokio::select! {
                piece = rx.recv(), if generating => match piece {
                    Some(piece) => {
                        text.push_str(&piece);
                        if !probe.push(&piece).is_empty() || held.len() + 1 >= HELD_PIECES {
                            park.store(true, Ordering::SeqCst);
                        }
                        held.push(piece);
                    }
                    None => generating = false,
                },
                changed = async { g.wait_for(|s| *s != Gate::Held).await.map(|s| *s) } => {
                    // The controller gone counts as a discard.
                    state = changed.unwrap_or(Gate::Discard);
                    if let Gate::Release { held_ms } = state {
                        let ready = json!({
                            "held_ms": held_ms,
                            "pieces_ready": held.len(),
                            "chars_ready": text.len(),
                            "finished_before_commit": !generating,
                        });
                        latency.speculated(ready);
                        for piece in std::mem::take(&mut held) {
                            forward.piece(&piece).await;
                        }
                    }
                }
            }
            continue;
        }
        if !generating {
            break;
        }
        let Some(piece) = rx.recv().await else { break };
        text.push_str(&piece);
        if state == Gate::Discard || ctx.is_dead(response_id) || cancel.load(Ordering::SeqCst) {
            continue;
        }
        forward.piece(&piece).await;
    }
    // Seen at all: released (or never gated).
    let seen = matches!(state, Gate::Release { .. });
    let (llm, usage) = match blocking.await {
        Ok((llm, usage, after_cancel)) => {
            if seen
                && cancel.load(Ordering::SeqCst)
                && let Ok(u) = &usage
            {
                ctx.events().emit(
                    "duplex.llm.stopped",
                    0,
                    json!({
                        "response_id": rid,
                        "output_tokens": u.output_tokens,
                        "pieces_after_cancel": after_cancel,
                        "sent_text": forward.sent.trim(),
                    }),
                );
            }
            (Some(llm), usage)
        }
        // The engine panicked: it cannot be used again.
        Err(e) => (None, Err(anyhow::anyhow!("the LLM crashed: {e}"))),
    };
    if seen && !ctx.is_dead(response_id) && !cancel.load(Ordering::SeqCst) {
        if audio && let Some(rest) = forward.chunker.finish() {
            forward.clause(rest).await;
        }
        let tokens = usage
            .as_ref()
            .map(realtime::TokenCounts::from)
            .unwrap_or_default();
        ctx.send(DataFrame {
            t_ms: 0,
            response_id,
            payload: Payload::ResponseEnd(Box::new(ResponseSummary {
                response_id: rid,
                item_id,
                transcript: text.trim().to_string(),
                modalities,
                tokens,
            })),
        })
        .await;
    }
    Generated {
        llm,
        text: text.trim().to_string(),
        sent: forward.sent.trim().to_string(),
        usage,
    }
}

#[async_trait]
impl Actor for Controller {
    async fn on_data(&mut self, frame: DataFrame, ctx: &Ctx) -> Result<()> {
        self.now_ms = self.now_ms.max(frame.t_ms);
        match &frame.payload {
            Payload::Transcript {
                text,
                is_final: false,
                ..
            } => {
                self.partial_words
                    .extend(text.split_whitespace().map(String::from));
                let words = self.partial_words.clone();
                self.judge_barge_in(&words, false, ctx).await?;
            }
            Payload::Transcript {
                item_id,
                text,
                is_final: true,
            } => {
                self.partial_words.clear();
                let (item_id, text) = (item_id.clone(), text.clone());
                self.latency.mark(Stage::AsrFinal);
                self.on_user_final(&item_id, &text, ctx).await?;
            }
            Payload::Control(control) => {
                let control = control.clone();
                self.on_control(&control, frame.t_ms, ctx).await?;
            }
            // Camera frames are for vision stages before the controller;
            // none goes on to speech output.
            Payload::Video(_) => {}
            Payload::Scene {
                scene,
                observations,
            } => {
                self.scene = Some(scene.clone());
                for seen in observations {
                    self.remember(Modality::Vision, &seen.text).await?;
                }
            }
            // What was heard up to a pause, or so far, is for the turn
            // detector.
            Payload::PauseTranscript { .. } | Payload::Hypothesis { .. } => {}
            _ => {
                if frame.response_id == INPUT {
                    ctx.send(frame).await;
                }
            }
        }
        Ok(())
    }

    async fn on_system(&mut self, frame: &SystemFrame, ctx: &Ctx) -> Result<()> {
        match &frame.kind {
            SystemKind::EndOfTurnScore {
                item_id,
                speech_end_ms,
                score,
                text,
                final_decode: true,
                ..
            } => {
                return self
                    .on_score(item_id, *speech_end_ms, *score, text, ctx)
                    .await;
            }
            SystemKind::SpeechResumed {
                item_id,
                speech_end_ms,
            } => {
                self.resumed = Some((item_id.clone(), *speech_end_ms));
                if self
                    .speculation
                    .as_ref()
                    .is_some_and(|s| &s.item_id == item_id && s.speech_end_ms == *speech_end_ms)
                {
                    self.discard_speculation("speech_resumed", ctx);
                }
                return Ok(());
            }
            SystemKind::SpeechStopped { item_id, .. } => {
                self.stopped = Some(item_id.clone());
            }
            _ => {}
        }
        if let SystemKind::SpeechStarted { .. } = &frame.kind {
            self.discard_speculation("speech_started", ctx);
            self.partial_words.clear();
            if self.params.interrupt_response
                && self.barge_in.is_none()
                && let Some((response_id, item_id)) = self.talking()
            {
                ctx.raise(frame.t_ms, SystemKind::PauseOutput { response_id });
                self.barge_in = Some(BargeIn {
                    response_id,
                    item_id,
                });
            }
        }
        Ok(())
    }

    async fn on_end(&mut self, ctx: &Ctx) -> Result<()> {
        self.discard_speculation("session_ended", ctx);
        if let Some(b) = self.barge_in.take() {
            ctx.raise(
                0,
                SystemKind::ResumeOutput {
                    response_id: b.response_id,
                },
            );
        }
        self.settle(ctx).await
    }
}

#[cfg(test)]
mod tests {
    use super::is_backchannel;

    #[test]
    fn listener_sounds_are_backchannels_however_written() {
        for word in ["Mhm.", "Mm-hmm.", "uh-huh", "Yeah,", "OK", "..."] {
            assert!(is_backchannel(word), "{word}");
        }
        for word in ["stop", "wait", "no", "Paris"] {
            assert!(!is_backchannel(word), "{word}");
        }
    }
}
