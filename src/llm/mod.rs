//! Language models: the [`Llm`] trait every engine implements (the local
//! candle engine, remote OpenAI-compatible servers), the chat message type,
//! and the clause chunker that cuts streamed text for speech.
//!
//! Engines are driven from the blocking pool: `generate` blocks, streams text
//! pieces through a callback as they are produced, and checks a cancel flag
//! at every token step.

pub mod chunker;
pub mod remote;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        ChatMessage {
            role,
            content: content.into(),
        }
    }
}

/// How to generate one reply.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    /// 0 = greedy (deterministic).
    pub temperature: f32,
    pub seed: u64,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 256,
            temperature: 0.0,
            seed: 42,
        }
    }
}

/// What one `generate` call cost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// Tokens of the whole prompt (the conversation as the model sees it).
    pub input_tokens: usize,
    /// Prompt tokens actually computed this call; the rest came from the
    /// KV cache of earlier turns.
    pub prefilled_tokens: usize,
    pub output_tokens: usize,
    /// From the call to the first text piece.
    pub time_to_first_token: Option<Duration>,
    /// The call stopped because the cancel flag was raised.
    pub cancelled: bool,
}

/// A conversation engine for one session. Blocking; callers run it on the
/// blocking pool.
pub trait Llm: Send {
    /// Generates the assistant's reply to `messages` (the whole conversation,
    /// system prompt first). Text pieces go to `on_text` as they are
    /// produced; `on_text` returning `false`, or `cancel` being set, stops
    /// generation within one token step.
    fn generate(
        &mut self,
        messages: &[ChatMessage],
        options: &GenerateOptions,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Usage>;
}
pub mod local;

/// Which engine answers, as a pipeline names it: the local model or any
/// OpenAI-compatible server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "engine", rename_all = "snake_case", deny_unknown_fields)]
pub enum LlmConfig {
    /// The local engine (candle). `model`: a GGUF file (llama architecture);
    /// the installed SmolLM2-135M-Instruct when absent.
    Local {
        #[serde(default)]
        model: Option<PathBuf>,
    },
    /// Any `/v1/chat/completions` server with streaming (vLLM, llama.cpp,
    /// Ollama). The key is read from the environment variable `api_key_env`.
    Remote {
        url: String,
        model: String,
        #[serde(default)]
        api_key_env: Option<String>,
        #[serde(default = "default_remote_timeout_s")]
        timeout_s: u64,
    },
}

fn default_remote_timeout_s() -> u64 {
    30
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig::Local { model: None }
    }
}
