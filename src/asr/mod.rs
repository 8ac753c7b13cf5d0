//! Streaming speech recognition.
//!
//! Every backend implements [`StreamingAsr`]: audio of the current utterance
//! in, a hypothesis for the whole utterance so far out, then a final
//! transcript when the user stops. The ASR actor ([`actor`]) turns that into
//! committed partial words (LocalAgreement, [`agreement`]) and finals, so
//! backends that decode chunk by chunk (the cache-aware Conformer) and
//! backends that re-decode the growing utterance (Whisper, through
//! [`Redecode`]) plug in the same way.

pub mod actor;
pub mod agreement;
pub mod conformer;
pub mod wer;
pub mod whisper;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;

/// Rate of the audio every ASR backend receives.
pub const ASR_RATE: u32 = 16_000;

/// `text` without a closing full stop (one `.` at its end, not an
/// ellipsis), or `None` when it has none. Whisper closes whatever audio it
/// is given with one, so at a pause mid-sentence it writes "He was not." as
/// readily as at the end of a sentence: such a full stop says nothing.
pub fn strip_closing_full_stop(text: &str) -> Option<&str> {
    text.strip_suffix('.').filter(|rest| !rest.ends_with('.'))
}

/// A recognizer for one session's utterances (16 kHz mono). Methods block:
/// callers run them on the blocking pool.
pub trait StreamingAsr: Send + 'static {
    /// Adds `new_audio` to the current utterance and returns a hypothesis
    /// for all of it so far (its last words may still change).
    fn partial(&mut self, new_audio: &[f32]) -> Result<String>;

    /// Adds the last audio and returns the final transcript of the
    /// utterance; the next call starts a new utterance.
    fn finalize(&mut self, new_audio: &[f32]) -> Result<String>;

    /// Adds `new_audio` and returns what [`finalize`](Self::finalize) would
    /// if the utterance ended here, without ending it (the user paused; the
    /// turn may be over). Stops early when the abort flag is raised.
    /// An engine whose first try must be decoded again (Whisper's after a
    /// decoding loop) hands `guess` the words it heard before the loop
    /// first, for the turn detector to read while it decodes.
    fn speculate(&mut self, new_audio: &[f32], guess: &mut dyn FnMut(&str)) -> Result<String>;

    /// The last partial pass's whole hypothesis, words the engine was
    /// unsure of included (`partial` may hold those back from commitment):
    /// what the turn detector reads when the user pauses. `None`: the
    /// engine has no such difference.
    fn latest_guess(&self) -> Option<String> {
        None
    }

    /// Whether the last partial pass decoded its audio just as a final
    /// would (same window, same search, no loop cut off), so that its whole
    /// hypothesis can stand as the final when that audio reaches the end of
    /// speech. `false` when unsure.
    fn guess_is_final(&self) -> bool {
        false
    }

    /// Forgets the current utterance.
    fn reset(&mut self);

    /// A flag that makes a running `partial` give up early when set, so a
    /// final never waits behind a partial pass. The caller clears it before
    /// each call.
    fn abort_flag(&self) -> Arc<AtomicBool>;
}

/// A recognizer of whole utterances (such as Whisper).
pub trait UtteranceRecognizer: Send + 'static {
    /// A fast hypothesis of `audio` for a partial pass; `abort` set means
    /// give up now.
    fn transcribe_partial(&mut self, audio: &[f32], abort: &Arc<AtomicBool>) -> Result<String>;

    /// The best transcript of `audio`; `abort` set means give up now.
    /// `guess` is handed what a first try heard when it must decode again
    /// (see [`StreamingAsr::speculate`]).
    fn transcribe_final(
        &mut self,
        audio: &[f32],
        abort: &Arc<AtomicBool>,
        guess: &mut dyn FnMut(&str),
    ) -> Result<String>;

    /// See [`StreamingAsr::latest_guess`].
    fn latest_guess(&self) -> Option<String> {
        None
    }

    /// See [`StreamingAsr::guess_is_final`].
    fn guess_is_final(&self) -> bool {
        false
    }
}

/// Streaming by re-decoding the growing utterance on every pass.
pub struct Redecode<R> {
    recognizer: R,
    audio: Vec<f32>,
    abort: Arc<AtomicBool>,
}

impl<R: UtteranceRecognizer> Redecode<R> {
    pub fn new(recognizer: R) -> Self {
        Redecode {
            recognizer,
            audio: Vec::new(),
            abort: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl<R: UtteranceRecognizer> StreamingAsr for Redecode<R> {
    fn partial(&mut self, new_audio: &[f32]) -> Result<String> {
        self.audio.extend_from_slice(new_audio);
        self.recognizer.transcribe_partial(&self.audio, &self.abort)
    }

    fn finalize(&mut self, new_audio: &[f32]) -> Result<String> {
        self.audio.extend_from_slice(new_audio);
        let result = self
            .recognizer
            .transcribe_final(&self.audio, &self.abort, &mut |_| {});
        self.audio.clear();
        result
    }

    fn speculate(&mut self, new_audio: &[f32], guess: &mut dyn FnMut(&str)) -> Result<String> {
        self.audio.extend_from_slice(new_audio);
        self.recognizer
            .transcribe_final(&self.audio, &self.abort, guess)
    }

    fn latest_guess(&self) -> Option<String> {
        self.recognizer.latest_guess()
    }

    fn guess_is_final(&self) -> bool {
        self.recognizer.guess_is_final()
    }

    fn reset(&mut self) {
        self.audio.clear();
    }

    fn abort_flag(&self) -> Arc<AtomicBool> {
        self.abort.clone()
    }
}

/// Clears an abort flag before a new pass.
pub(crate) fn arm(flag: &AtomicBool) {
    flag.store(false, Ordering::SeqCst);
}
