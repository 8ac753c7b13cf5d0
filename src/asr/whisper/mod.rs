//! Whisper speech recognition on whisper.cpp (through `whisper-rs`).
//!
//! The model is Whisper tiny.en, installed by `duplex models install` from a
//! CTranslate2 package and converted at install time into whisper.cpp's ggml
//! format ([`ggml::convert_ct2_to_ggml`], file [`GGML_FILE`] of package
//! `whisper-tiny-en`).
//!
//! - [`WhisperModel`]: the loaded weights (`Send + Sync`); load once, share
//!   in an `Arc` across sessions.
//! - [`WhisperSession`]: one whisper.cpp decoding state (`Send`), created
//!   once per session and reused for every utterance.
//! - [`WhisperSession::transcribe`]: 16 kHz mono audio in, plain text out.
//!
//! Speed: whisper.cpp's encoder normally runs a fixed 30 s window (1500
//! positions). `transcribe` sizes the window to the audio instead
//! (`audio_ctx`: 50 positions per second plus [`AUDIO_CTX_MARGIN`]), never
//! below [`DecodeOptions::audio_ctx_floor`] (default
//! [`DEFAULT_AUDIO_CTX_FLOOR`] = 512, i.e. 10.24 s).
//!
//! Measured on the 10 test clips (5 LibriVox, 5 "cards", 1.1-7.1 s), greedy,
//! CPU time of one thread (the sweep tests in `tests.rs`):
//!
//! | window | errors LibriVox / cards | ms per clip |
//! |---|---|---|
//! | 1500 (whisper.cpp default) | 3/71, 2/21 | 1730-1900 |
//! | floor 768 | 5/71, 3/21 | 700-800 |
//! | floor 512 | 5/71, 3/21 | 440-550 |
//! | floor 448, no fallback | 5/71, 33/21 (loops) | 450-520 |
//! | floor 384, no fallback | 5/71, 33/21 (loops) | (not timed) |
//! | floor 0 (tight), fallback | 13/71, 49/21 (loops) | up to 23 s |
//!
//! (These were measured with f16 weights. The installed file has q8_0 weight
//! matrices, [`ggml::WEIGHT_TYPE`]: about a fifth faster for the same words
//! on the ten clips.)
//!
//! Windows below 512 make tiny.en's greedy decoding loop on short clips
//! ("10 of clubs 10 of clubs ..."): with temperature fallback whisper.cpp
//! recovers (slowly, and the result then depends on earlier calls because
//! the sampler's random state lives in the session), without it the loop
//! stays. From 512 up no loop was seen, with or without fallback, in any
//! call order. Beam search (5) at 512 fixed two LibriVox errors but cost 40%
//! more time and added two on the cards.
//!
//! Finals ([`WhisperSession::transcribe_final`]) first try a narrower
//! floor, [`FAST_FINAL_AUDIO_CTX_FLOOR`] = 320, with decoding loops stopped
//! as they start ([`DecodeOptions::stop_loops`]); the three clips of ten
//! that loop there (0880, cards 001 and 004) are decoded again at 512. The
//! same words as at 512 (commas and full stops aside) in a median 148 ms
//! instead of 201 (2 threads; 0.74x), 290-340 ms for a clip that loops.
//!
//! Silence or noise alone comes out as "you" or "♪" (a known Whisper
//! hallucination; whisper.cpp's no-speech probability does not catch it with
//! `<|notimestamps|>`): feed Whisper speech segments from the VAD.
//!
//! Abort ([`DecodeOptions::abort`]) is checked by whisper.cpp after the
//! encoder pass and after every decoder step, not inside the encoder graph:
//! a set flag takes effect within one encoder pass (~0.25 s at the 512
//! window, ~0.8 s for a 25 s utterance, 2 threads).
pub mod ggml;
mod loop_guard;
pub mod mel;

use std::cell::RefCell;
use std::ffi::{CStr, c_char, c_void};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};

use anyhow::{Context, Result, anyhow};
use whisper_rs::{
    FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters, WhisperState,
};

use crate::models::{ModelStore, corrupt_model_error, ids};
use loop_guard::LoopGuard;

pub use ggml::convert_ct2_to_ggml;

/// The converted model's file name inside package `whisper-tiny-en`
/// (`store.file("whisper-tiny-en", GGML_FILE)`).
pub const GGML_FILE: &str = "ggml-tiny.en-q8_0.bin";

/// Sample rate `transcribe` expects.
pub const SAMPLE_RATE: u32 = 16_000;

/// Encoder positions per second of audio (one per 20 ms).
const POSITIONS_PER_SECOND: usize = 50;

/// Whisper's full encoder window (30 s).
pub const MAX_AUDIO_CTX: usize = 1500;

/// Default [`DecodeOptions::audio_ctx_floor`].
pub const DEFAULT_AUDIO_CTX_FLOOR: usize = 512;

/// The encoder floor of partial passes: ~3x cheaper than
/// [`DEFAULT_AUDIO_CTX_FLOOR`] on the first seconds of an utterance (about
/// 80 vs 250 ms per pass, 2 threads). Small windows make greedy decoding
/// loop more often; [`WhisperSession::transcribe_partial`] cuts loops off
/// ([`cut_runaway`]).
pub const PARTIAL_AUDIO_CTX_FLOOR: usize = 128;

/// The encoder floor of [`WhisperSession::transcribe_final`]'s first,
/// loop-guarded decode.
pub const FAST_FINAL_AUDIO_CTX_FLOOR: usize = 320;

/// Encoder positions added after the end of the audio (0.64 s of the
/// silence whisper.cpp pads with), so the model sees the utterance end.
pub const AUDIO_CTX_MARGIN: usize = 32;

/// Audio shorter than this is padded with silence (whisper.cpp gives up on
/// less than 100 ms and is unreliable on very short input).
pub const MIN_AUDIO_SAMPLES: usize = SAMPLE_RATE as usize;

/// How [`WhisperSession::transcribe`] decodes.
#[derive(Debug, Clone)]
pub struct DecodeOptions {
    /// CPU threads for whisper.cpp (at least 1).
    pub threads: usize,
    /// The encoder window never goes below this many positions (20 ms each);
    /// see the module docs. Default [`DEFAULT_AUDIO_CTX_FLOOR`]. 1500 runs
    /// whisper.cpp's full 30 s window.
    pub audio_ctx_floor: usize,
    /// Positions added after the end of the audio. Default
    /// [`AUDIO_CTX_MARGIN`].
    pub audio_ctx_margin: usize,
    /// `Some(n)`: beam search of width `n`; `None`: greedy.
    pub beam: Option<usize>,
    /// Most tokens to decode. `None`: an automatic cap from the audio length
    /// (see [`auto_max_tokens`]) so a decoding loop cannot run long.
    pub max_tokens: Option<usize>,
    /// Let whisper.cpp retry at higher temperatures when the result looks
    /// like a loop or is improbable (slower in those cases).
    pub temperature_fallback: bool,
    /// When set (from any thread) a running `transcribe` stops soon and
    /// returns an [`Aborted`] error. Checked between encoder/decoder steps.
    pub abort: Option<Arc<AtomicBool>>,
    /// Greedy decodes only: end decoding as soon as the text repeats itself
    /// like a decoding loop; [`WhisperSession::looped`] then says so.
    pub stop_loops: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            threads: default_threads(),
            audio_ctx_floor: DEFAULT_AUDIO_CTX_FLOOR,
            audio_ctx_margin: AUDIO_CTX_MARGIN,
            beam: None,
            max_tokens: None,
            temperature_fallback: true,
            abort: None,
            stop_loops: false,
        }
    }
}

/// The available cores, at most 4 (whisper.cpp's own default).
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

/// The error [`WhisperSession::transcribe`] returns when its abort flag was
/// set; test with `err.is::<Aborted>()` or [`is_aborted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("whisper transcription aborted")]
pub struct Aborted;

/// Whether `err` is (or wraps) an [`Aborted`].
pub fn is_aborted(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<Aborted>())
}

/// The encoder window for `samples` samples of 16 kHz audio with the default
/// margin: see [`DecodeOptions::audio_ctx`].
pub fn audio_ctx_for(samples: usize, floor: usize) -> usize {
    DecodeOptions {
        audio_ctx_floor: floor,
        ..DecodeOptions::default()
    }
    .audio_ctx(samples)
}

impl DecodeOptions {
    /// Whether this decode is greedy (no beam, or a beam of one).
    pub fn greedy(&self) -> bool {
        self.beam.is_none_or(|n| n <= 1)
    }

    /// The encoder window for `samples` samples of 16 kHz audio: 50
    /// positions per second (rounded up) plus `audio_ctx_margin`, clamped to
    /// `[audio_ctx_floor, 1500]`.
    pub fn audio_ctx(&self, samples: usize) -> usize {
        let positions = (samples * POSITIONS_PER_SECOND).div_ceil(SAMPLE_RATE as usize);
        (positions + self.audio_ctx_margin)
            .max(self.audio_ctx_floor)
            .min(MAX_AUDIO_CTX)
    }
}

/// The token cap used when [`DecodeOptions::max_tokens`] is `None`: 24 plus
/// 8 per second of audio (speech runs at 2-5 tokens per second).
pub fn auto_max_tokens(samples: usize) -> usize {
    24 + (samples * 8).div_ceil(SAMPLE_RATE as usize)
}

/// Whisper tiny.en loaded into whisper.cpp. `Send + Sync`: share one across
/// sessions (in an `Arc`); each session makes its own [`WhisperSession`].
pub struct WhisperModel {
    ctx: WhisperContext,
    path: PathBuf,
}

impl std::fmt::Debug for WhisperModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperModel")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl WhisperModel {
    /// Loads the converted model of package `whisper-tiny-en` from `store`.
    /// Fails with a message naming `duplex models install` when it is not
    /// installed (or predates the ggml conversion), and with
    /// [`corrupt_model_error`] when whisper.cpp cannot load the file.
    pub fn load(store: &ModelStore) -> Result<WhisperModel> {
        let path = store.file(ids::WHISPER_TINY_EN, GGML_FILE)?;
        WhisperModel::load_file(&path)
            .map_err(|e| corrupt_model_error(ids::WHISPER_TINY_EN, &path, format!("{e:#}")))
    }

    /// Loads a whisper.cpp ggml model file.
    pub fn load_file(path: &Path) -> Result<WhisperModel> {
        install_log_hook();
        let path_str = path
            .to_str()
            .ok_or_else(|| anyhow!("model path {} is not UTF-8", path.display()))?;
        if !path.is_file() {
            return Err(anyhow!("{} does not exist", path.display()));
        }
        take_log_errors();
        let mut params = WhisperContextParameters::default();
        params.use_gpu(false);
        // Flash attention measured no faster on CPU for tiny (1 thread:
        // within +-8% at windows 512-1500); keep whisper-rs' default (off).
        params.flash_attn(false);
        let ctx = WhisperContext::new_with_params(path_str, params).map_err(|e| {
            let detail = take_log_errors();
            if detail.is_empty() {
                anyhow!("whisper.cpp could not load {}: {e}", path.display())
            } else {
                anyhow!(
                    "whisper.cpp could not load {}: {e} ({})",
                    path.display(),
                    detail.join("; ")
                )
            }
        })?;
        Ok(WhisperModel {
            ctx,
            path: path.to_path_buf(),
        })
    }

    /// The file the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new decoding state for one session (~a few MB; reuse it).
    pub fn session(&self) -> Result<WhisperSession> {
        let state = self
            .ctx
            .create_state()
            .map_err(|e| anyhow!("whisper.cpp could not create a decoding state: {e}"))?;
        let eot = self.ctx.token_eot();
        let n_vocab = usize::try_from(self.ctx.n_vocab())
            .map_err(|_| anyhow!("whisper.cpp reports a negative vocabulary size"))?;
        Ok(WhisperSession {
            state,
            first_special_token: eot,
            padded: Vec::new(),
            last_guess: String::new(),
            last_guess_is_final: false,
            loop_guard: Box::new(LoopGuard::new(eot, n_vocab)),
        })
    }
}

/// One session's whisper.cpp decoding state. `Send`: move it to the thread
/// that transcribes; not for concurrent use (`transcribe` takes `&mut`).
pub struct WhisperSession {
    state: WhisperState,
    /// Token ids from here on are special (end of text, timestamps…).
    first_special_token: whisper_rs::WhisperTokenId,
    /// Scratch buffer for padding short audio.
    padded: Vec<f32>,
    /// See [`WhisperSession::last_guess`].
    last_guess: String,
    /// See [`WhisperSession::last_guess_is_final`].
    last_guess_is_final: bool,
    /// The logits filter of decodes with [`DecodeOptions::stop_loops`]
    /// (boxed: whisper.cpp holds its address during a decode).
    loop_guard: Box<LoopGuard>,
}

impl std::fmt::Debug for WhisperSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperSession").finish_non_exhaustive()
    }
}

/// `extern "C"` abort check: `data` points at the caller's `AtomicBool`,
/// alive for the whole `whisper_full` call.
unsafe extern "C" fn abort_requested(data: *mut c_void) -> bool {
    if data.is_null() {
        return false;
    }
    // SAFETY: `transcribe` passes a pointer to an `AtomicBool` it keeps
    // alive (an `Arc` it holds) until `full` returns.
    let flag = unsafe { &*(data as *const AtomicBool) };
    flag.load(Ordering::Relaxed)
}

impl WhisperSession {
    /// Transcribes 16 kHz mono `audio_16k` and returns the plain text
    /// (segments joined, trimmed; empty for silence). English, no
    /// timestamps, nothing carried over from earlier calls.
    ///
    /// Audio shorter than 1 s is padded with silence. Returns an [`Aborted`]
    /// error when `opts.abort` is (or becomes) set.
    pub fn transcribe(&mut self, audio_16k: &[f32], opts: &DecodeOptions) -> Result<String> {
        let abort = opts.abort.clone();
        let aborted = || abort.as_ref().is_some_and(|f| f.load(Ordering::Relaxed));
        self.last_guess_is_final = false;
        if aborted() {
            return Err(Aborted.into());
        }
        if audio_16k.is_empty() {
            return Ok(String::new());
        }
        let audio: &[f32] = if audio_16k.len() < MIN_AUDIO_SAMPLES {
            self.padded.clear();
            self.padded.extend_from_slice(audio_16k);
            self.padded.resize(MIN_AUDIO_SAMPLES, 0.0);
            &self.padded
        } else {
            audio_16k
        };

        let strategy = match opts.beam {
            Some(n) if !opts.greedy() => SamplingStrategy::BeamSearch {
                beam_size: n as i32,
                patience: -1.0,
            },
            _ => SamplingStrategy::Greedy { best_of: 1 },
        };
        let mut params = FullParams::new(strategy);
        params.set_n_threads(opts.threads.max(1) as i32);
        params.set_language(Some("en"));
        params.set_translate(false);
        params.set_no_context(true);
        params.set_no_timestamps(true);
        params.set_single_segment(true);
        params.set_print_special(false);
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_timestamps(false);
        params.set_suppress_blank(true);
        params.set_suppress_nst(true);
        params.set_audio_ctx(opts.audio_ctx(audio.len()) as i32);
        let max_tokens = opts
            .max_tokens
            .unwrap_or_else(|| auto_max_tokens(audio.len()));
        params.set_max_tokens(max_tokens.min(i32::MAX as usize) as i32);
        if !opts.temperature_fallback {
            params.set_temperature_inc(0.0);
        }
        self.loop_guard.looped = false;
        if opts.stop_loops && opts.greedy() {
            // SAFETY: the guard is boxed in `self`, which `full` borrows
            // mutably, so it stays put and nothing else touches it until
            // `full` returns.
            unsafe {
                params.set_filter_logits_callback(Some(loop_guard::stop_loops));
                params.set_filter_logits_callback_user_data(
                    &mut *self.loop_guard as *mut LoopGuard as *mut c_void,
                );
            }
        }
        if let Some(flag) = &abort {
            // SAFETY: the callback only reads the `AtomicBool` behind the
            // pointer, which `abort` (an `Arc` held until after `full`)
            // keeps alive.
            unsafe {
                params.set_abort_callback(Some(abort_requested));
                params.set_abort_callback_user_data(Arc::as_ptr(flag) as *mut c_void);
            }
        }

        take_log_errors();
        // Decodes of all sessions take turns for the cores: oversubscribed,
        // whisper.cpp's spinning worker threads slow every decode down many
        // times over.
        let Some(_turn) = DECODE_GATE.enter(opts.threads.max(1), &aborted) else {
            return Err(Aborted.into());
        };
        let result = self.state.full(params, audio);
        if aborted() {
            return Err(Aborted.into());
        }
        result.map_err(|e| {
            let detail = take_log_errors();
            anyhow!(
                "whisper.cpp failed to transcribe: {e} {}",
                detail.join("; ")
            )
        })?;

        let mut text = String::new();
        for segment in self.state.as_iter() {
            let s = segment
                .to_str_lossy()
                .context("reading a whisper.cpp segment")?;
            text.push_str(&s);
        }
        drop(abort);
        Ok(text.trim().to_string())
    }
}

impl WhisperSession {
    /// A fast hypothesis for a partial pass: greedy, no temperature
    /// fallback, at [`PARTIAL_AUDIO_CTX_FLOOR`], ending before the first
    /// word whisper is unsure of ([`PARTIAL_MIN_TOKEN_P`]), with a decoding
    /// loop stopped as it starts and cut off ([`cut_runaway`]): a loop
    /// starts with a sound hypothesis, and the caller's agreement step
    /// filters what is still unstable.
    pub fn transcribe_partial(
        &mut self,
        audio_16k: &[f32],
        threads: usize,
        abort: Option<Arc<AtomicBool>>,
    ) -> Result<String> {
        let fast = DecodeOptions {
            threads,
            audio_ctx_floor: PARTIAL_AUDIO_CTX_FLOOR,
            temperature_fallback: false,
            abort,
            stop_loops: true,
            ..DecodeOptions::default()
        };
        let guess = self.transcribe(audio_16k, &fast)?;
        self.last_guess = cut_runaway(&guess, audio_16k.len());
        self.last_guess_is_final = !self.looped()
            && fast.audio_ctx(audio_16k.len())
                == audio_ctx_for(audio_16k.len(), FAST_FINAL_AUDIO_CTX_FLOOR);
        let confident = self.confident_prefix(PARTIAL_MIN_TOKEN_P)?;
        Ok(cut_runaway(&confident, audio_16k.len()))
    }

    /// The final transcript of an utterance, quickly: a greedy decode first
    /// runs at [`FAST_FINAL_AUDIO_CTX_FLOOR`] with loops stopped as they
    /// start; only when it loops is the audio decoded again with `opts` (at
    /// [`DEFAULT_AUDIO_CTX_FLOOR`] loops are rare, and the temperature
    /// fallback recovers from them). A beam search (`opts.beam`) runs as
    /// asked at once. Before decoding again, `guess` is handed the words
    /// heard before the loop ([`cut_runaway`]): what the turn detector
    /// reads meanwhile.
    pub fn transcribe_final(
        &mut self,
        audio_16k: &[f32],
        opts: &DecodeOptions,
        guess: &mut dyn FnMut(&str),
    ) -> Result<String> {
        if opts.greedy() {
            let fast = DecodeOptions {
                audio_ctx_floor: FAST_FINAL_AUDIO_CTX_FLOOR.min(opts.audio_ctx_floor),
                temperature_fallback: false,
                stop_loops: true,
                ..opts.clone()
            };
            let text = self.transcribe(audio_16k, &fast)?;
            if !self.looped() {
                return Ok(text);
            }
            tracing::debug!(
                text,
                "final decode looped; decoding again on a wider window"
            );
            guess(&cut_runaway(&text, audio_16k.len()));
        }
        self.transcribe(audio_16k, opts)
    }

    /// Whether the last decode was ended in a loop
    /// ([`DecodeOptions::stop_loops`]).
    pub fn looped(&self) -> bool {
        self.loop_guard.looped
    }

    /// The whole hypothesis of the last partial pass, the words it was
    /// unsure of included (what the turn detector reads at a pause).
    pub fn last_guess(&self) -> &str {
        &self.last_guess
    }

    /// Whether the last decode was a partial pass that decoded just as the
    /// first try of [`Self::transcribe_final`] would have: audio long
    /// enough that both use the same window (5.8 s and up), and no loop.
    /// Its [`Self::last_guess`] is then what a greedy final of the same
    /// audio gives.
    pub fn last_guess_is_final(&self) -> bool {
        self.last_guess_is_final
    }

    /// The text of the last decode up to the first word with a token whisper
    /// gave less than `min_p` probability (trimmed): what it is unsure of
    /// is not offered for commitment yet.
    fn confident_prefix(&self, min_p: f32) -> Result<String> {
        let mut bytes: Vec<u8> = Vec::new();
        // Where the word being read started in `bytes`.
        let mut word_start = 0;
        'segments: for segment in self.state.as_iter() {
            for i in 0..segment.n_tokens() {
                let Some(token) = segment.get_token(i) else {
                    continue;
                };
                if token.token_id() >= self.first_special_token {
                    continue;
                }
                let piece = token.to_bytes().context("reading a whisper.cpp token")?;
                if piece.first() == Some(&b' ') {
                    word_start = bytes.len();
                }
                if token.token_probability() < min_p {
                    bytes.truncate(word_start);
                    break 'segments;
                }
                bytes.extend_from_slice(piece);
            }
        }
        Ok(String::from_utf8_lossy(&bytes).trim().to_string())
    }
}

/// A partial hypothesis stops before the first word with a token less likely
/// than this: on the first few hundred ms of speech whisper guesses whole
/// phrases ("How do you marry" for "Had he married"), and two guesses can
/// agree.
const PARTIAL_MIN_TOKEN_P: f32 = 0.15;

/// `text` up to where it stops looking like speech of `samples` samples: a
/// run of 1-8 words said three times in a row is cut after its first
/// occurrence, and so is a run of 6 or more words that starts over right
/// after itself (whisper re-reading a whole sentence: the repeat runs to
/// the end of the text or the full length of the run); no more words are
/// kept than anyone says in that time (5 per second, plus 3).
pub fn cut_runaway(text: &str, samples: usize) -> String {
    /// The shortest run that, said twice in a row, is a decoding loop and
    /// not a speaker repeating themselves.
    const SENTENCE_LOOP_MIN_WORDS: usize = 6;
    let words: Vec<&str> = text.split_whitespace().collect();
    let keys: Vec<String> = words
        .iter()
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric())
                .flat_map(char::to_lowercase)
                .collect()
        })
        .collect();
    let seconds = samples as f64 / SAMPLE_RATE as f64;
    let mut keep = words.len().min((5.0 * seconds + 3.0) as usize);
    'scan: for start in 0..keep {
        for n in 1..=8 {
            let Some(w) = keys.get(start..start + 3 * n) else {
                break;
            };
            if w[..n] == w[n..2 * n] && w[n..2 * n] == w[2 * n..] && w.iter().any(|k| !k.is_empty())
            {
                keep = start + n;
                break 'scan;
            }
        }
        for n in SENTENCE_LOOP_MIN_WORDS..=(keep - start).saturating_sub(SENTENCE_LOOP_MIN_WORDS) {
            let repeat = n.min(keep - start - n);
            let (run, after) = (
                &keys[start..start + repeat],
                &keys[start + n..start + n + repeat],
            );
            if run == after && run.iter().any(|k| !k.is_empty()) {
                keep = start + n;
                break 'scan;
            }
        }
    }
    words[..keep].join(" ")
}

// ---------------------------------------------------------------------------
// Sharing the cores between sessions

/// Admits whisper.cpp decodes while the threads they use fit the machine's
/// cores (one decode always runs, whatever its thread count).
struct DecodeGate {
    busy: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
}

static DECODE_GATE: DecodeGate = DecodeGate {
    busy: std::sync::Mutex::new(0),
    freed: std::sync::Condvar::new(),
};

/// A decode's place in the gate; leaving it frees its threads.
struct Turn {
    threads: usize,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut busy = DECODE_GATE.busy.lock().unwrap_or_else(|e| e.into_inner());
        *busy = busy.saturating_sub(self.threads);
        DECODE_GATE.freed.notify_all();
    }
}

impl DecodeGate {
    /// Waits until `threads` more threads fit, or returns `None` as soon as
    /// `aborted` says so (checked every 10 ms while waiting).
    fn enter(&self, threads: usize, aborted: &dyn Fn() -> bool) -> Option<Turn> {
        // Looked up once: on Linux it reads the affinity mask and cgroup
        // quota files, not something to do before every decode.
        static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let cores =
            *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        while *busy > 0 && *busy + threads > cores {
            if aborted() {
                return None;
            }
            busy = self
                .freed
                .wait_timeout(busy, std::time::Duration::from_millis(10))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *busy += threads;
        Some(Turn { threads })
    }
}

// ---------------------------------------------------------------------------
// whisper.cpp logging -> tracing (debug level)

thread_local! {
    /// Error lines whisper.cpp logged on this thread since the last
    /// [`take_log_errors`], to explain a failed load/transcription.
    static LOG_ERRORS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

fn take_log_errors() -> Vec<String> {
    LOG_ERRORS
        .try_with(|e| {
            e.try_borrow_mut()
                .map(|mut v| std::mem::take(&mut *v))
                .unwrap_or_default()
        })
        .unwrap_or_default()
}

/// ggml's `GGML_LOG_LEVEL_ERROR`.
const GGML_LOG_LEVEL_ERROR: u32 = 4;

unsafe extern "C" fn log_to_tracing(level: u32, text: *const c_char, _user: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: whisper.cpp/ggml pass a NUL-terminated string.
    let msg = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    let msg = msg.trim();
    if msg.is_empty() {
        return;
    }
    // Never unwind into C.
    let _ = std::panic::catch_unwind(|| {
        tracing::debug!(target: "whisper_cpp", ggml_level = level, "{msg}");
        if level == GGML_LOG_LEVEL_ERROR {
            let _ = LOG_ERRORS.try_with(|e| {
                if let Ok(mut v) = e.try_borrow_mut()
                    && v.len() < 16
                {
                    v.push(msg.to_string());
                }
            });
        }
    });
}

/// Sends whisper.cpp's and ggml's log lines to `tracing` at debug level
/// (target `whisper_cpp`) instead of stderr. Idempotent.
pub fn install_log_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: `log_to_tracing` does not unwind and only reads `text`.
        unsafe { whisper_rs::set_log_callback(Some(log_to_tracing), std::ptr::null_mut()) };
    });
}

#[cfg(test)]
mod tests;
