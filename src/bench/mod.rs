//! `duplex bench`: benchmarks that print medians and ratios against a peer
//! measured in the same run, one module each.
//!
//! - [`graph`]: the actor runtime against bare tokio channels;
//! - [`asr`]: streaming Whisper (first partial, final after end of speech,
//!   real-time factor) against whisper.cpp's full 30 s window;
//! - [`conformer`]: the cache-aware streaming Conformer's encoder per chunk
//!   and real-time factor per look-ahead, against re-encoding the growing
//!   utterance;
//! - [`llm`]: the local LLM engine against llama.cpp on the same GGUF;
//! - [`tts`]: clause to first audio, phonemizer, TTS real-time factor,
//!   avatar render, the voice turn's waterfall;
//! - [`turn`]: end-of-turn scoring per pause, and voice-to-voice latency
//!   with semantic VAD (with and without speculative answers) against
//!   server VAD;
//! - [`vision`]: EfficientNet-Lite0 with spatial and temporal token
//!   pruning, per keep ratio against the unpruned run;
//! - [`voice`]: voice-to-voice latency over the Realtime API socket against
//!   the same pipeline in-process, and concurrent real-time sessions.

pub mod asr;
pub mod conformer;
pub mod graph;
pub mod llm;
pub mod tts;
pub mod turn;
pub mod vision;
pub mod voice;

pub use graph::{ChainResult, graph, print_graph};

/// The median of `values` (sorted in place); 0 when empty.
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
