//! The one `Frame` type that travels the actor graph.
//!
//! Two classes, as in Pipecat:
//! - *system* frames (speech started/stopped, interrupt, cancel, error) jump
//!   the queue of every actor and are never dropped;
//! - *data* frames (audio in, and later transcripts, LLM text, TTS audio,
//!   video and avatar frames) stay in order, carry the session clock and the
//!   id of the response they belong to, and are flushed by an interrupt.
//!
//! The end of a stream is not a frame: when every upstream actor has
//! finished, an actor's inbox closes, the actor flushes and closes its own
//! outputs, so shutdown ripples through the graph in order and no queued data
//! is lost.

use std::sync::Arc;
use std::time::Instant;

/// Id of an assistant response. `0` means "not part of any response": user
/// input such as microphone audio, which no interrupt ever drops.
pub type ResponseId = u64;

/// The user-input pseudo response: never dead.
pub const INPUT: ResponseId = 0;

#[derive(Debug, Clone)]
pub enum Frame {
    System(SystemFrame),
    Data(DataFrame),
}

/// A control frame: handled before any queued data frame.
#[derive(Debug, Clone, PartialEq)]
pub struct SystemFrame {
    /// Unique within the session; lets an actor that hears the same frame
    /// over two paths (a diamond in the graph) handle it once.
    pub id: u64,
    /// Session clock (ms of input audio) when the frame was raised.
    pub t_ms: u64,
    pub kind: SystemKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SystemKind {
    /// The user started speaking; `audio_start_ms` includes the prefix
    /// padding; `item_id` names the user message this speech becomes.
    SpeechStarted {
        item_id: String,
        audio_start_ms: u64,
        /// Semantic VAD will score this utterance's pauses: the turn
        /// detector caches its words as they come.
        wants_scores: bool,
    },
    /// The user stopped speaking. `audio_end_ms` is when the silence window
    /// closed (as in the Realtime API), `speech_end_ms` when voice last was heard.
    SpeechStopped {
        item_id: String,
        audio_end_ms: u64,
        speech_end_ms: u64,
    },
    /// The user has been silent for a moment but the turn is not over yet
    /// (`speech_end_ms`: when voice last was heard; `audio_end_ms`: now). A
    /// hint: a recognizer may start its final decode early, to have it ready
    /// if `SpeechStopped` follows with the same `speech_end_ms`.
    SpeechPaused {
        item_id: String,
        audio_end_ms: u64,
        speech_end_ms: u64,
        /// Semantic VAD waits for an end-of-turn score of this pause: the
        /// recognizer sends what it heard (`PauseTranscript`).
        wants_score: bool,
    },
    /// The user spoke again after a `SpeechPaused` (same utterance): what
    /// was prepared for the pause that began at `speech_end_ms` (a
    /// speculative answer) is void.
    SpeechResumed { item_id: String, speech_end_ms: u64 },
    /// How likely the user has finished, scored on the words heard up to a
    /// pause that began at `speech_end_ms` (semantic VAD). Sent to every
    /// stage: the VAD, upstream, turns it into the silence to wait for.
    EndOfTurnScore {
        item_id: String,
        speech_end_ms: u64,
        score: f32,
        text: String,
        /// What scoring took (ms of wall time, prefill on the blocking pool;
        /// 0 when the words were already scored).
        scoring_ms: u64,
        /// Scored on the speculative final decode (see `PauseTranscript`).
        final_decode: bool,
    },
    /// The user barged in: every response up to and including `response_id`
    /// is dead. Queued frames of dead responses are flushed everywhere.
    Interrupt { response_id: ResponseId },
    /// The client cancelled a response; same effect on frames as an interrupt.
    Cancel { response_id: ResponseId },
    /// The user may be barging in: hold the response's audio where it is.
    PauseOutput { response_id: ResponseId },
    /// It was a cough or a backchannel: go on playing.
    ResumeOutput { response_id: ResponseId },
    /// A stage failed on one frame; the session goes on.
    Error { node: String, message: String },
}

impl SystemKind {
    /// Whether the frame must reach every actor at once rather than hop by
    /// hop (a busy stage must not delay stopping the audio; an end-of-turn
    /// score goes upstream to the VAD).
    pub fn broadcast(&self) -> bool {
        matches!(
            self,
            SystemKind::Interrupt { .. }
                | SystemKind::EndOfTurnScore { .. }
                | SystemKind::SpeechResumed { .. }
                | SystemKind::Cancel { .. }
                | SystemKind::PauseOutput { .. }
                | SystemKind::ResumeOutput { .. }
        )
    }

    /// The response this frame kills, if it kills one.
    pub fn kills(&self) -> Option<ResponseId> {
        match self {
            SystemKind::Interrupt { response_id } | SystemKind::Cancel { response_id } => {
                Some(*response_id)
            }
            _ => None,
        }
    }
}

/// An ordered frame of the stream.
#[derive(Debug, Clone)]
pub struct DataFrame {
    /// Session clock: ms of input audio at the start of this frame's content.
    pub t_ms: u64,
    /// The response this frame belongs to ([`INPUT`] for user input).
    pub response_id: ResponseId,
    pub payload: Payload,
}

#[derive(Debug, Clone)]
pub enum Payload {
    /// Mono audio in [-1, 1].
    Audio(AudioChunk),
    /// Recognized user speech: committed partial words (`is_final` false,
    /// only the new words) or the whole final transcript of an utterance.
    Transcript {
        item_id: String,
        text: String,
        is_final: bool,
    },
    /// The whole hypothesis of the latest partial pass over an utterance
    /// still being spoken (ASR -> turn actor, which caches its settled
    /// words for scoring the next pause).
    Hypothesis { item_id: String, text: String },
    /// The words of an utterance heard up to a pause that began at
    /// `speech_end_ms` (guesses first: a partial hypothesis that heard up to
    /// the pause, the words before a decoding loop; then the speculative
    /// final): what the end of the turn is judged on (ASR -> turn actor).
    PauseTranscript {
        item_id: String,
        speech_end_ms: u64,
        text: String,
        /// The speculative final decode (not a partial guess): what the
        /// final transcript will be if the turn ends at this pause.
        final_decode: bool,
    },
    /// A clause of the assistant's answer, ready to be spoken
    /// (orchestrator -> TTS).
    Clause { item_id: String, text: String },
    /// Synthesized speech of a response, in order (TTS -> output). The first
    /// chunk of each clause carries the clause's text and full duration.
    Speech {
        item_id: String,
        chunk: AudioChunk,
        clause: Option<ClauseAudio>,
    },
    /// Speech released to the client at playback pace (output -> avatar);
    /// `offset_ms` is where the chunk starts in the response's audio.
    Playout {
        item_id: String,
        offset_ms: u64,
        chunk: AudioChunk,
    },
    /// The response has produced everything; ordered after its last clause
    /// or speech frame. The stage that finishes playing it reports it done.
    ResponseEnd(Box<ResponseSummary>),
    /// A camera frame from the client (encoded JPEG or PNG), stamped with
    /// the session clock when it arrived.
    Video(Arc<[u8]>),
    /// What the camera shows now, and the labels that just came into view
    /// (vision -> controller).
    Scene {
        scene: Arc<crate::vision::expert::Scene>,
        observations: Vec<crate::vision::expert::Observation>,
    },
    /// A client's request (session.update, conversation edits, response
    /// create/cancel), in order with the audio around it. Each stage acts
    /// on what concerns it and passes it on.
    Control(Arc<Control>),
    /// A timing probe: benchmarks and tests measure hops with it.
    Probe { seq: u64, sent: Instant },
}

/// Requests a client makes of the pipeline (see [`Payload::Control`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    /// New settings from session.update.
    Configure(crate::realtime::SessionSettings),
    /// input_audio_buffer.clear: drop the user's unfinished utterance.
    ClearInput,
    /// conversation.item.create: a typed message or a function's result.
    AddItem {
        item_id: String,
        previous_item_id: Option<String>,
        role: crate::llm::Role,
        text: String,
        /// For a function_call_output item: the call it answers.
        call_id: Option<String>,
    },
    /// conversation.item.truncate: the client played only `audio_end_ms`.
    Truncate { item_id: String, audio_end_ms: u64 },
    /// conversation.item.delete.
    Delete { item_id: String },
    /// conversation.item.retrieve: the item as the conversation holds it
    /// (an interrupted answer: only what the user heard).
    Retrieve { item_id: String },
    /// response.create, with per-response overrides.
    CreateResponse {
        instructions: Option<String>,
        modalities: Option<Vec<String>>,
        max_tokens: Option<usize>,
    },
    /// response.cancel (of the current response when no id is given).
    CancelResponse { response_id: Option<String> },
}

/// The clause a run of speech audio speaks.
#[derive(Debug, Clone)]
pub struct ClauseAudio {
    pub text: String,
    pub duration_ms: u64,
}

/// What a finished response produced, for its `response.done`.
#[derive(Debug, Clone, Default)]
pub struct ResponseSummary {
    pub response_id: String,
    pub item_id: String,
    /// The whole text the model generated.
    pub transcript: String,
    /// `["audio"]` or `["text"]`.
    pub modalities: Vec<String>,
    pub tokens: crate::realtime::TokenCounts,
}

/// Mono f32 samples at `sample_rate`; shared, so fan-out does not copy.
#[derive(Debug, Clone)]
pub struct AudioChunk {
    pub samples: Arc<[f32]>,
    pub sample_rate: u32,
}

impl AudioChunk {
    pub fn new(samples: Vec<f32>, sample_rate: u32) -> Self {
        AudioChunk {
            samples: samples.into(),
            sample_rate,
        }
    }

    pub fn duration_ms(&self) -> f64 {
        self.samples.len() as f64 * 1000.0 / self.sample_rate as f64
    }
}

impl DataFrame {
    pub fn audio(t_ms: u64, response_id: ResponseId, chunk: AudioChunk) -> Self {
        DataFrame {
            t_ms,
            response_id,
            payload: Payload::Audio(chunk),
        }
    }
}
