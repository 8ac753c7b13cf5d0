//! The local LLM engine: a llama-architecture GGUF model (SmolLM2-135M by
//! default) run on the CPU.
//!
//! - [`LocalModel`] holds the weights and tokenizer, immutable and shared by
//!   every session (`Clone` is an `Arc` bump; `Send + Sync`). On CPUs with
//!   AVX-512 VNNI the matmuls run duplex's packed kernel on the file's own
//!   Q4_0/Q4_1/Q8_0 blocks (`local/qmatmul.rs`, lossless); elsewhere candle's
//!   kernels, with the weights requantized at load ([`WeightQuant`]: candle
//!   runs Q4_1 ~1.7x slower than Q8_0).
//! - [`LocalSession`] is one conversation: it implements [`Llm`] and owns a
//!   KV cache that survives across turns. Each `generate` renders the
//!   conversation as ChatML, finds the longest common prefix with the tokens
//!   already in the cache, cuts the cache back to it and computes only the
//!   rest, so a new turn costs only its new tokens and an edited history (a
//!   reply cut short by an interruption, a deleted item) is recomputed from
//!   the first token that changed.
//!
//! Every token is computed with the same arithmetic whether it is prefilled
//! in a batch or decoded alone, so a cached session and a fresh one given the
//! same history produce the same greedy reply, token for token.
//!
//! The transformer (`local/model.rs`) is adapted from candle-transformers'
//! `quantized_llama` (Apache-2.0 OR MIT); the tokenizer (`local/tokenizer.rs`)
//! is built from the GGUF metadata; `local/pool.rs` is the thread pool of the
//! packed kernel and attention.

mod model;
mod pool;
mod qmatmul;
mod tokenizer;

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use candle_core::quantized::{GgmlDType, gguf_file};

pub use model::{Config, SUPPORTED_ARCHITECTURES};
use model::{KvCache, Weights};
use tokenizer::{GgufTokenizer, Utf8Stream};

use super::{ChatMessage, GenerateOptions, Llm, Role, Usage};
use crate::models::{ModelStore, corrupt_model_error, files, ids};

/// The type the matmul weights are converted to at load.
///
/// With the packed AVX-512 VNNI kernel (see [`LoadOptions::packed_kernel`])
/// Q4_0, Q4_1 and Q8_0 weights run as stored, losslessly, and 4-bit types
/// are the fastest (least memory traffic). candle's own kernels (every
/// other CPU) run Q4_1, SmolLM2's type, ~1.7x slower than Q4_0 or Q8_0, so
/// [`WeightQuant::Auto`] requantizes to Q8_0 there (greedy output still
/// matches llama.cpp on the original file; Q4_0 drifts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightQuant {
    /// As stored when the packed kernel runs, else Q8_0.
    Auto,
    /// Keep each tensor as stored in the file.
    AsStored,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    F16,
    F32,
}

/// The default conversion (see [`WeightQuant`]).
pub const DEFAULT_QUANT: WeightQuant = WeightQuant::Auto;

impl WeightQuant {
    pub const ALL: [WeightQuant; 9] = [
        WeightQuant::Auto,
        WeightQuant::AsStored,
        WeightQuant::Q4_0,
        WeightQuant::Q4_1,
        WeightQuant::Q5_0,
        WeightQuant::Q5_1,
        WeightQuant::Q8_0,
        WeightQuant::F16,
        WeightQuant::F32,
    ];

    fn ggml(self) -> Option<GgmlDType> {
        Some(match self {
            WeightQuant::Auto | WeightQuant::AsStored => return None,
            WeightQuant::Q4_0 => GgmlDType::Q4_0,
            WeightQuant::Q4_1 => GgmlDType::Q4_1,
            WeightQuant::Q5_0 => GgmlDType::Q5_0,
            WeightQuant::Q5_1 => GgmlDType::Q5_1,
            WeightQuant::Q8_0 => GgmlDType::Q8_0,
            WeightQuant::F16 => GgmlDType::F16,
            WeightQuant::F32 => GgmlDType::F32,
        })
    }

    fn from_ggml(dt: GgmlDType) -> WeightQuant {
        match dt {
            GgmlDType::Q4_0 => WeightQuant::Q4_0,
            GgmlDType::Q4_1 => WeightQuant::Q4_1,
            GgmlDType::Q5_0 => WeightQuant::Q5_0,
            GgmlDType::Q5_1 => WeightQuant::Q5_1,
            GgmlDType::Q8_0 => WeightQuant::Q8_0,
            GgmlDType::F16 => WeightQuant::F16,
            GgmlDType::F32 => WeightQuant::F32,
            _ => WeightQuant::AsStored,
        }
    }

    /// `auto`, `as-stored`, `q4_0`, `q4_1`, `q5_0`, `q5_1`, `q8_0`, `f16`, `f32`.
    pub fn name(self) -> &'static str {
        match self {
            WeightQuant::Auto => "auto",
            WeightQuant::AsStored => "as-stored",
            WeightQuant::Q4_0 => "q4_0",
            WeightQuant::Q4_1 => "q4_1",
            WeightQuant::Q5_0 => "q5_0",
            WeightQuant::Q5_1 => "q5_1",
            WeightQuant::Q8_0 => "q8_0",
            WeightQuant::F16 => "f16",
            WeightQuant::F32 => "f32",
        }
    }
}

impl fmt::Display for WeightQuant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WeightQuant {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase().replace('-', "_");
        WeightQuant::ALL
            .into_iter()
            .find(|q| {
                q.name().replace('-', "_") == s || (s == "keep" && *q == WeightQuant::AsStored)
            })
            .ok_or_else(|| {
                anyhow!(
                    "unknown weight type `{s}` (one of: {})",
                    WeightQuant::ALL.map(|q| q.name()).join(", ")
                )
            })
    }
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The type matmul weights run in.
    pub quant: WeightQuant,
    /// Caps the context window below the model's own (`None`: the model's,
    /// 8192 for SmolLM2).
    pub context_length: Option<usize>,
    /// The model package the file belongs to, when it came from the model
    /// store: a file that fails to load is then reported as corrupt with the
    /// `duplex models install --force <id>` command that fixes it.
    pub package_id: Option<String>,
    /// Run Q4_0/Q4_1/Q8_0 weights on duplex's packed AVX-512 VNNI kernel when
    /// the CPU has it (`false`: always candle's kernels).
    pub packed_kernel: bool,
    /// Spread each decoding step (one token) over all cores; prefill always
    /// is. Off by default: on 2 idle cores it decodes ~2x faster (SmolLM2:
    /// ~85 vs ~45 tok/s, both far above speaking pace), but a decoding step
    /// is ~150 small jobs, and when speech recognition and synthesis keep
    /// the other core busy, waiting for a preempted helper thread made it
    /// several times slower than one thread.
    pub parallel_decode: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            quant: DEFAULT_QUANT,
            context_length: None,
            package_id: None,
            packed_kernel: true,
            parallel_decode: false,
        }
    }
}

/// How the model's chat turns are written.
struct ChatFormat {
    im_start: u32,
    im_end: u32,
    /// Inserted when the conversation has no system message (SmolLM2's
    /// template does this).
    default_system: Option<String>,
}

struct Shared {
    weights: Weights,
    tok: GgufTokenizer,
    chat: ChatFormat,
    path: PathBuf,
    name: String,
    load_time: Duration,
}

/// Loaded weights and tokenizer, shared by all sessions (cheap to clone).
#[derive(Clone)]
pub struct LocalModel {
    shared: Arc<Shared>,
}

impl fmt::Debug for LocalModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalModel")
            .field("name", &self.shared.name)
            .field("path", &self.shared.path)
            .field("quant", &self.weight_quant())
            .field("config", &self.shared.weights.cfg)
            .finish()
    }
}

/// Pulls the default system prompt out of a ChatML template of the form
/// `{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n...<|im_end|>\n' }}`.
fn default_system_from_template(template: &str) -> Option<String> {
    let cond = template.find("messages[0]['role'] != 'system'")?;
    let rest = &template[cond..];
    let start = rest.find("<|im_start|>system\n")? + "<|im_start|>system\n".len();
    let end = rest[start..].find("<|im_end|>")?;
    let text = &rest[start..start + end];
    (!text.contains("{{") && !text.contains("{%")).then(|| text.to_string())
}

impl LocalModel {
    /// Loads the bundled SmolLM2-135M-Instruct from the model store with the
    /// default options.
    pub fn load(store: &ModelStore) -> Result<LocalModel> {
        LocalModel::load_with(store, &LoadOptions::default())
    }

    /// Loads the bundled SmolLM2-135M-Instruct from the model store.
    /// A missing file is an error naming `duplex models install`; a file
    /// that does not load, one naming `duplex models install --force smollm2`.
    pub fn load_with(store: &ModelStore, options: &LoadOptions) -> Result<LocalModel> {
        let path = store.file(ids::SMOLLM2, files::SMOLLM2_GGUF)?;
        let options = LoadOptions {
            package_id: Some(ids::SMOLLM2.to_string()),
            ..options.clone()
        };
        LocalModel::load_gguf(&path, &options)
    }

    /// Loads any GGUF of a supported architecture ([`SUPPORTED_ARCHITECTURES`])
    /// with a byte-level BPE tokenizer and ChatML control tokens.
    pub fn load_gguf(path: impl AsRef<Path>, options: &LoadOptions) -> Result<LocalModel> {
        let path = path.as_ref();
        let started = Instant::now();
        let corrupt = |cause: anyhow::Error| -> anyhow::Error {
            match &options.package_id {
                Some(id) => corrupt_model_error(id, path, format!("{cause:#}")),
                None => anyhow!(
                    "{} is not a loadable GGUF model ({cause:#}); for the bundled model run `duplex models install --force {}`",
                    path.display(),
                    ids::SMOLLM2
                ),
            }
        };
        let mut file = File::open(path)
            .with_context(|| format!("cannot open model file {}", path.display()))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| corrupt(anyhow!("not a GGUF file: {e}")))?;
        let arch = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .ok_or_else(|| corrupt(anyhow!("no `general.architecture` in the GGUF metadata")))?;
        if !SUPPORTED_ARCHITECTURES.contains(&arch.as_str()) {
            bail!(
                "{}: GGUF architecture `{arch}` is not supported by the local engine (it runs: {}); serve this model with an OpenAI-compatible server and use the remote engine",
                path.display(),
                SUPPORTED_ARCHITECTURES.join(", ")
            );
        }
        let tok = GgufTokenizer::from_gguf(&content).map_err(corrupt)?;
        let (Some(im_start), Some(im_end)) =
            (tok.control_id("<|im_start|>"), tok.control_id("<|im_end|>"))
        else {
            bail!(
                "{}: the model has no `<|im_start|>`/`<|im_end|>` control tokens; the local engine speaks ChatML only",
                path.display()
            );
        };
        let default_system = content
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .and_then(|t| default_system_from_template(t));
        let packed = options.packed_kernel && qmatmul::packed_available();
        let quant = match options.quant {
            WeightQuant::Auto if packed => None,
            WeightQuant::Auto => Some(GgmlDType::Q8_0),
            q => q.ggml(),
        };
        let mut weights =
            Weights::from_gguf(&content, &mut file, quant, packed, options.context_length)
                .map_err(corrupt)?;
        weights.parallel_decode = options.parallel_decode;
        if weights.cfg.vocab_size != tok.vocab_size() {
            return Err(corrupt(anyhow!(
                "the embedding has {} rows but the tokenizer {} tokens",
                weights.cfg.vocab_size,
                tok.vocab_size()
            )));
        }
        let name = content
            .metadata
            .get("general.name")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_else(|| {
                path.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
        let load_time = started.elapsed();
        tracing::info!(
            model = %name,
            quant = %WeightQuant::from_ggml(weights.weight_dtype),
            kernel = if weights.packed { "avx512-vnni" } else { "candle" },
            ms = load_time.as_millis() as u64,
            "local LLM loaded"
        );
        Ok(LocalModel {
            shared: Arc::new(Shared {
                weights,
                tok,
                chat: ChatFormat {
                    im_start,
                    im_end,
                    default_system,
                },
                path: path.to_path_buf(),
                name,
                load_time,
            }),
        })
    }

    /// A new conversation with an empty KV cache.
    pub fn session(&self) -> LocalSession {
        LocalSession {
            shared: self.shared.clone(),
            kv: KvCache::new(),
            cached: Vec::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.shared.weights.cfg
    }

    /// The context window in tokens (after [`LoadOptions::context_length`]).
    pub fn context_length(&self) -> usize {
        self.shared.weights.cfg.context_length
    }

    /// The type the layers' matmul weights actually run in.
    pub fn weight_quant(&self) -> WeightQuant {
        WeightQuant::from_ggml(self.shared.weights.weight_dtype)
    }

    /// The matmul kernel the layers run: `avx512-vnni` (duplex's packed
    /// kernel) or `candle`.
    pub fn kernel(&self) -> &'static str {
        if self.shared.weights.packed {
            "avx512-vnni"
        } else {
            "candle"
        }
    }

    /// `general.name` from the GGUF.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// How long loading (parsing, requantizing) took.
    pub fn load_time(&self) -> Duration {
        self.shared.load_time
    }

    /// Plain text to token ids (control-token spellings stay text).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        self.shared.tok.encode(text)
    }

    /// Token ids to text (control tokens are dropped).
    pub fn detokenize(&self, ids: &[u32]) -> String {
        self.shared.tok.decode(ids)
    }

    /// The id of `<|im_end|>`.
    pub fn end_of_turn_token(&self) -> u32 {
        self.shared.chat.im_end
    }

    /// The conversation as the model sees it (ChatML, ending with the open
    /// assistant turn), as text.
    pub fn render_prompt(&self, messages: &[ChatMessage]) -> String {
        let mut s = String::new();
        let chat = &self.shared.chat;
        if !matches!(messages.first(), Some(m) if m.role == Role::System)
            && let Some(sys) = &chat.default_system
        {
            s.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
        }
        for m in messages {
            s.push_str(&format!(
                "<|im_start|>{}\n{}<|im_end|>\n",
                role_name(m.role),
                m.content
            ));
        }
        s.push_str("<|im_start|>assistant\n");
        s
    }

    /// The token ids of [`LocalModel::render_prompt`]; control tokens are
    /// inserted by id, message text is tokenized as plain text.
    pub fn prompt_tokens(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        Ok(self.message_tokens(messages)?.concat())
    }

    /// Per rendered message (default system first when inserted), then the
    /// open assistant header as the last element.
    fn message_tokens(&self, messages: &[ChatMessage]) -> Result<Vec<Vec<u32>>> {
        let chat = &self.shared.chat;
        let tok = &self.shared.tok;
        let newline = tok.encode("\n")?;
        let one = |role: &str, content: &str| -> Result<Vec<u32>> {
            let mut ids = vec![chat.im_start];
            ids.extend(tok.encode(&format!("{role}\n{content}"))?);
            ids.push(chat.im_end);
            ids.extend(&newline);
            Ok(ids)
        };
        let mut out = Vec::with_capacity(messages.len() + 2);
        if !matches!(messages.first(), Some(m) if m.role == Role::System)
            && let Some(sys) = &chat.default_system
        {
            out.push(one("system", sys)?);
        }
        for m in messages {
            out.push(one(role_name(m.role), &m.content)?);
        }
        let mut header = vec![chat.im_start];
        header.extend(tok.encode("assistant\n")?);
        out.push(header);
        Ok(out)
    }

    /// The prompt, with the oldest turns dropped (never the leading system
    /// message nor the last message) until it leaves `reserve` tokens free
    /// for the reply. Returns the ids and how many messages were dropped.
    fn fit_prompt(&self, messages: &[ChatMessage], reserve: usize) -> Result<(Vec<u32>, usize)> {
        let mut parts = self.message_tokens(messages)?;
        let limit = self.context_length().saturating_sub(reserve.max(1));
        let total = |p: &[Vec<u32>]| p.iter().map(Vec::len).sum::<usize>();
        // The first droppable part: after a system message (given or default).
        let inserted_system = parts.len() == messages.len() + 2;
        let first = usize::from(
            inserted_system || matches!(messages.first(), Some(m) if m.role == Role::System),
        );
        let mut dropped = 0;
        // parts = [system?] turns... last_message header
        while total(&parts) > limit && parts.len() > first + 2 {
            parts.remove(first);
            dropped += 1;
        }
        let n = total(&parts);
        if n > limit {
            bail!(
                "the conversation needs {n} tokens but the model's context is {} tokens ({} kept free for the reply), even with all earlier turns dropped",
                self.context_length(),
                reserve
            );
        }
        if dropped > 0 {
            tracing::warn!(
                dropped,
                tokens = n,
                context = self.context_length(),
                "conversation too long for the context: dropped the oldest turns"
            );
        }
        Ok((parts.concat(), dropped))
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

/// Tokens computed per forward pass while prefilling a long prompt (bounds
/// the attention scratch memory; cancel is checked between chunks).
const PREFILL_CHUNK: usize = 256;

/// A small, seedable PRNG (SplitMix64) for temperature sampling.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn sample(logits: &[f32], temperature: f32, rng: &mut SplitMix64) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    if temperature <= 0.0 || !temperature.is_finite() {
        return best as u32;
    }
    let max = logits[best];
    let weights: Vec<f64> = logits
        .iter()
        .map(|&l| (((l - max) / temperature) as f64).exp())
        .collect();
    let sum: f64 = weights.iter().sum();
    let mut r = rng.next_f64() * sum;
    for (i, w) in weights.iter().enumerate() {
        r -= w;
        if r <= 0.0 {
            return i as u32;
        }
    }
    best as u32
}

/// Length of the common prefix of `a` and `b`.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// One conversation on a [`LocalModel`]: its own KV cache, reused across
/// turns. `Send`; not shared between threads.
pub struct LocalSession {
    shared: Arc<Shared>,
    kv: KvCache,
    /// The token ids whose keys/values are in `kv`, in order.
    cached: Vec<u32>,
}

impl LocalSession {
    /// The model this session runs on.
    pub fn model(&self) -> LocalModel {
        LocalModel {
            shared: self.shared.clone(),
        }
    }

    /// The token ids whose keys and values are in the cache: the last
    /// prompt plus the reply, except the reply's last sampled token (a stop
    /// token, or the token that hit `max_tokens` or a cancel), which was
    /// never fed back.
    pub fn cached_tokens(&self) -> &[u32] {
        &self.cached
    }

    /// Empties the KV cache (keeps its memory).
    pub fn reset(&mut self) {
        self.kv.truncate(0);
        self.cached.clear();
    }

    /// Bytes of KV cache memory this session holds.
    pub fn cache_bytes(&self) -> usize {
        self.kv.allocated_bytes()
    }

    /// Generates from raw prompt ids (the caller rendered the prompt), with
    /// the same cache reuse as [`Llm::generate`]. `stop_at_end_of_turn =
    /// false` ignores control tokens and always produces `max_tokens` tokens
    /// (for benchmarks). `on_token` sees each sampled token id with the text
    /// it completed (possibly empty: part of a UTF-8 character, or a control
    /// token), and at the end `None` with what is left of an incomplete
    /// UTF-8 sequence, if anything; returning `false` stops.
    pub fn generate_ids(
        &mut self,
        prompt: &[u32],
        options: &GenerateOptions,
        stop_at_end_of_turn: bool,
        cancel: &AtomicBool,
        on_token: &mut dyn FnMut(Option<u32>, &str) -> bool,
    ) -> Result<Usage> {
        self.run(
            Instant::now(),
            prompt,
            options,
            stop_at_end_of_turn,
            cancel,
            on_token,
        )
    }

    /// The next-token logits after `prompt` (raw ids), reusing the cached
    /// prefix, and how many tokens were computed (at least the last); the
    /// cache then holds `prompt`. For scoring what the model expects next
    /// (the end-of-turn token, say) without generating.
    pub fn next_token_logits(&mut self, prompt: &[u32]) -> Result<(Vec<f32>, usize)> {
        let mut prefilled = 0;
        let logits = self
            .prefill(prompt, &AtomicBool::new(false), &mut prefilled)?
            .context("prefill stopped")?;
        Ok((logits, prefilled))
    }

    /// Feeds `prompt` after the longest cached prefix of it and returns the
    /// logits of its last token, or `None` when `cancel` was raised first;
    /// `prefilled` counts the tokens computed.
    fn prefill(
        &mut self,
        prompt: &[u32],
        cancel: &AtomicBool,
        prefilled: &mut usize,
    ) -> Result<Option<Vec<f32>>> {
        let weights = &self.shared.weights;
        let ctx = weights.cfg.context_length;
        if prompt.is_empty() {
            bail!("empty prompt");
        }
        if prompt.len() >= ctx {
            bail!(
                "the prompt has {} tokens but the model's context is {ctx}",
                prompt.len()
            );
        }
        let vocab = self.shared.tok.vocab_size();
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            bail!("token id {bad} is outside the vocabulary");
        }
        // Reuse the longest cached prefix; at least one token must be
        // computed to get the next-token logits.
        let keep = common_prefix(&self.cached, prompt).min(prompt.len() - 1);
        self.kv.truncate(keep);
        self.cached.truncate(keep);
        let mut logits = Vec::new();
        for chunk in prompt[keep..].chunks(PREFILL_CHUNK) {
            if cancel.load(Ordering::Relaxed) {
                return Ok(None);
            }
            match weights.forward(chunk, &mut self.kv) {
                Ok(l) => logits = l,
                Err(e) => {
                    // The cache may hold part of the chunk: forget it all
                    // from the reused prefix on.
                    self.kv.truncate(self.cached.len());
                    return Err(e);
                }
            }
            self.cached.extend_from_slice(chunk);
            *prefilled += chunk.len();
        }
        Ok(Some(logits))
    }

    fn run(
        &mut self,
        started: Instant,
        prompt: &[u32],
        options: &GenerateOptions,
        stop_at_end_of_turn: bool,
        cancel: &AtomicBool,
        on_token: &mut dyn FnMut(Option<u32>, &str) -> bool,
    ) -> Result<Usage> {
        let shared = self.shared.clone();
        let weights = &shared.weights;
        let tok = &shared.tok;
        let ctx = weights.cfg.context_length;
        let mut usage = Usage {
            input_tokens: prompt.len(),
            ..Usage::default()
        };
        let Some(mut logits) = self.prefill(prompt, cancel, &mut usage.prefilled_tokens)? else {
            usage.cancelled = true;
            return Ok(usage);
        };
        tracing::debug!(
            input = prompt.len(),
            prefilled = usage.prefilled_tokens,
            ms = started.elapsed().as_millis() as u64,
            "prefill"
        );

        let mut rng = SplitMix64(options.seed);
        let mut text = Utf8Stream::default();
        loop {
            let next = sample(&logits, options.temperature, &mut rng);
            if stop_at_end_of_turn && (tok.is_control(next) || Some(next) == tok.eos) {
                break;
            }
            usage.output_tokens += 1;
            let piece = text.push(tok.token_bytes(next));
            if !piece.is_empty() && usage.time_to_first_token.is_none() {
                usage.time_to_first_token = Some(started.elapsed());
            }
            let go_on = on_token(Some(next), &piece);
            if !go_on || cancel.load(Ordering::Relaxed) {
                usage.cancelled = true;
                break;
            }
            if usage.output_tokens >= options.max_tokens || self.kv.len() + 1 >= ctx {
                break;
            }
            logits = weights.forward(&[next], &mut self.kv).inspect_err(|_| {
                self.kv.truncate(self.cached.len());
            })?;
            self.cached.push(next);
        }
        let rest = text.finish();
        if !rest.is_empty() && !usage.cancelled {
            if usage.time_to_first_token.is_none() {
                usage.time_to_first_token = Some(started.elapsed());
            }
            on_token(None, &rest);
        }
        Ok(usage)
    }
}

impl Llm for LocalSession {
    fn generate(
        &mut self,
        messages: &[ChatMessage],
        options: &GenerateOptions,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Usage> {
        let started = Instant::now();
        let model = self.model();
        let reserve = options.max_tokens.min(model.context_length() / 4).max(1);
        let (prompt, _dropped) = model.fit_prompt(messages, reserve)?;
        self.run(started, &prompt, options, true, cancel, &mut |_, piece| {
            piece.is_empty() || on_text(piece)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_system_is_read_from_smollm2_template() {
        let t = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}";
        assert_eq!(
            default_system_from_template(t).as_deref(),
            Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        );
        assert_eq!(default_system_from_template("{{ messages }}"), None);
    }

    #[test]
    fn quant_names_round_trip() {
        for q in WeightQuant::ALL {
            assert_eq!(q.name().parse::<WeightQuant>().unwrap(), q);
        }
        assert_eq!("Q8_0".parse::<WeightQuant>().unwrap(), WeightQuant::Q8_0);
        assert_eq!(
            "keep".parse::<WeightQuant>().unwrap(),
            WeightQuant::AsStored
        );
        assert_eq!("auto".parse::<WeightQuant>().unwrap(), WeightQuant::Auto);
        assert!("q3_k".parse::<WeightQuant>().is_err());
    }

    #[test]
    fn greedy_sampling_takes_the_first_maximum() {
        let mut rng = SplitMix64(1);
        assert_eq!(sample(&[0.0, 3.0, 1.0, 3.0], 0.0, &mut rng), 1);
        // A very peaked distribution samples its peak.
        assert_eq!(sample(&[0.0, 50.0, 1.0], 1.0, &mut rng), 1);
    }

    #[test]
    fn common_prefix_counts_equal_leading_ids() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
        assert_eq!(common_prefix(&[1, 2], &[1, 2, 3]), 2);
    }
}
