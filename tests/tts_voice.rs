//! Speech synthesis round trip: text -> espeak-ng + Piper (`duplex::tts`) ->
//! 16 kHz -> the project's Whisper ASR must give the text back (WER <= 10 %
//! over varied sentences with numbers, names and questions). Needs the
//! installed models (`duplex models install`) and the Debian `espeak-ng`.

use std::sync::Arc;
use std::time::Instant;

use duplex::asr::wer::WerTally;
use duplex::asr::whisper::{DecodeOptions, WhisperModel};
use duplex::audio::resample;
use duplex::models::ModelStore;
use duplex::tts::{PiperVoice, Synthesizer};

const SENTENCES: [&str; 10] = [
    "My name is Sarah Johnson and I live in Boston.",
    "Can you tell me the weather forecast for this weekend?",
    "I bought 3 apples and 12 oranges at the market.",
    "What time does the train to Chicago leave?",
    "Please call Doctor Williams before the office closes.",
    "The package weighs 250 grams.",
    "Do you want to go to the park with Michael?",
    "It was the best day of my life.",
    "There are 7 days in a week and 365 days in a year.",
    "Where did you put the keys to the car?",
];

#[test]
fn synthesized_speech_is_transcribed_back() {
    let store = ModelStore::from_env();
    let voice = Arc::new(PiperVoice::load(&store).expect("piper-joe installed"));
    let mut tts = Synthesizer::new(voice).expect("espeak-ng installed");
    let whisper = WhisperModel::load(&store).expect("whisper-tiny-en installed");
    let mut asr = whisper.session().unwrap();
    let opts = DecodeOptions::default();

    tts.synthesize("Warm up.").unwrap();
    let mut tally = WerTally::default();
    let (mut audio_secs, mut tts_secs) = (0.0, 0.0);
    for text in SENTENCES {
        let t0 = Instant::now();
        let pcm = tts.synthesize(text).unwrap();
        tts_secs += t0.elapsed().as_secs_f64();
        audio_secs += pcm.duration_secs();
        assert_eq!(pcm.sample_rate, 22050);
        assert!(!pcm.is_empty(), "{text}: no audio");

        let audio_16k = resample(&pcm.samples, pcm.sample_rate, 16_000).unwrap();
        let heard = asr.transcribe(&audio_16k, &opts).unwrap();
        let wer = tally.add(text, &heard);
        eprintln!("{:5.1}%  {text}  ->  {heard}", wer * 100.0);
    }
    eprintln!(
        "round trip WER {:.1}% ({} errors / {} words); TTS {audio_secs:.1} s of audio in {tts_secs:.2} s, RTF {:.3}",
        tally.rate() * 100.0,
        tally.errors,
        tally.words,
        tts_secs / audio_secs
    );
    assert!(
        tally.rate() <= 0.10,
        "WER {:.1}% over 10 %",
        tally.rate() * 100.0
    );
}
