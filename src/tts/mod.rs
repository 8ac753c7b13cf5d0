//! Speech synthesis: text -> espeak-ng IPA -> Piper VITS voice -> PCM.
//!
//! Blocking building blocks (run them on a blocking thread); the streaming
//! TTS actor sits on top:
//! - [`phonemizer`]: [`EspeakPhonemizer`], one long-lived `espeak-ng`
//!   process per phonemizer (GPL: a separate process, never linked), text
//!   in, IPA out, clause punctuation marked the way Piper marks it.
//! - [`piper`]: [`PiperVoice`], the `.onnx.json` config, IPA -> ids as Piper
//!   maps them, and the ONNX session, shared by all sessions (`Send + Sync`).
//! - [`Synthesizer`]: one session's phonemizer plus a shared voice;
//!   `synthesize(text)` gives the audio at the voice's rate (22050 Hz).
//!
//! Text is synthesized sentence by sentence (as Piper does: the model is not
//! incremental, and very long inputs degrade), with [`SENTENCE_GAP_MS`] of
//! silence between sentences.

pub mod actor;
pub mod phonemizer;
pub mod piper;
pub mod playout;

use std::sync::Arc;

use anyhow::Result;

use crate::audio::Pcm;

pub use phonemizer::{ESPEAK_PROGRAM, EspeakPhonemizer};
pub use piper::{PiperConfig, PiperVoice, has_phonemes};

/// Silence between two sentences of one `synthesize` call (Piper's
/// `sentence_silence` default is 200 ms).
pub const SENTENCE_GAP_MS: u64 = 200;

/// Text to speech for one session: its own espeak-ng process and a shared
/// voice. `Send`; blocking.
#[derive(Debug)]
pub struct Synthesizer {
    phonemizer: EspeakPhonemizer,
    voice: Arc<PiperVoice>,
    speed: f32,
}

impl Synthesizer {
    /// Starts an espeak-ng process for the voice's espeak voice.
    pub fn new(voice: Arc<PiperVoice>) -> Result<Synthesizer> {
        let phonemizer = EspeakPhonemizer::start(voice.espeak_voice())?;
        Ok(Synthesizer::with_phonemizer(voice, phonemizer))
    }

    /// A synthesizer over an already started phonemizer.
    pub fn with_phonemizer(voice: Arc<PiperVoice>, phonemizer: EspeakPhonemizer) -> Synthesizer {
        Synthesizer {
            phonemizer,
            voice,
            speed: 1.0,
        }
    }

    /// Rate of the audio `synthesize` returns (Hz).
    pub fn sample_rate(&self) -> u32 {
        self.voice.sample_rate()
    }

    pub fn voice(&self) -> &Arc<PiperVoice> {
        &self.voice
    }

    pub fn phonemizer(&mut self) -> &mut EspeakPhonemizer {
        &mut self.phonemizer
    }

    /// Speaking rate, 1.0 = the voice's own (clamped to 0.25..=4).
    pub fn set_speed(&mut self, speed: f32) {
        self.speed = if speed.is_finite() {
            speed.clamp(0.25, 4.0)
        } else {
            1.0
        };
    }

    pub fn speed(&self) -> f32 {
        self.speed
    }

    /// Speech for `text` at [`sample_rate`](Self::sample_rate). Empty audio
    /// (not an error) for empty, whitespace or punctuation-only text.
    pub fn synthesize(&mut self, text: &str) -> Result<Pcm> {
        self.synthesize_with(text, false)
    }

    /// [`synthesize`](Self::synthesize) for audio a listener is waiting for
    /// (the opening of an answer): on the voice's quick session when free.
    pub fn synthesize_quick(&mut self, text: &str) -> Result<Pcm> {
        self.synthesize_with(text, true)
    }

    fn synthesize_with(&mut self, text: &str, quick: bool) -> Result<Pcm> {
        let rate = self.sample_rate();
        let gap = crate::audio::samples_for_ms(rate, SENTENCE_GAP_MS);
        let mut samples = Vec::new();
        for sentence in self.phonemizer.phonemize_sentences(text)? {
            if !has_phonemes(&sentence) {
                continue;
            }
            let audio = if quick {
                self.voice.synthesize_quick(&sentence, self.speed)?
            } else {
                self.voice.synthesize(&sentence, self.speed)?
            };
            if audio.is_empty() {
                continue;
            }
            if !samples.is_empty() {
                samples.extend(std::iter::repeat_n(0.0, gap));
            }
            samples.extend_from_slice(&audio);
        }
        Ok(Pcm::new(samples, rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::ModelStore;
    use std::time::Instant;

    fn synthesizer() -> Synthesizer {
        let voice = PiperVoice::load(&ModelStore::from_env()).expect("piper-joe installed");
        Synthesizer::new(Arc::new(voice)).expect("espeak-ng installed")
    }

    #[test]
    fn text_to_speech_is_plausible() {
        let mut tts = synthesizer();
        assert_eq!(tts.sample_rate(), 22050);
        let text = "Hello! My name is Joe, and I can read 42 numbers aloud. Can you hear me?";
        let words = 15.0;
        tts.synthesize("Warm up.").unwrap();
        let t0 = Instant::now();
        let pcm = tts.synthesize(text).unwrap();
        let elapsed = t0.elapsed().as_secs_f64();
        let secs = pcm.duration_secs();
        let peak = pcm.samples.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let rms = crate::audio::rms(&pcm.samples);
        eprintln!(
            "TTS: {secs:.2} s of audio in {elapsed:.3} s (RTF {:.3}), {:.2} words/s, peak {peak:.3}, rms {rms:.4}",
            elapsed / secs,
            words / secs
        );
        assert_eq!(pcm.sample_rate, 22050);
        assert!((1.0..=5.0).contains(&(words / secs)), "{secs} s");
        assert!(rms > 0.01 && peak < 1.0);
    }

    #[test]
    fn nothing_to_say_is_empty_audio() {
        let mut tts = synthesizer();
        for text in ["", "   ", "\n\t", "...", "?!", ", ; :", "\"()\""] {
            let pcm = tts.synthesize(text).unwrap();
            assert!(pcm.is_empty(), "{text:?} gave {} samples", pcm.len());
            assert_eq!(pcm.sample_rate, 22050);
        }
        assert!(!tts.synthesize("Okay.").unwrap().is_empty());
    }

    #[test]
    fn synthesizer_is_send() {
        fn send<T: Send>() {}
        send::<Synthesizer>();
    }
}
