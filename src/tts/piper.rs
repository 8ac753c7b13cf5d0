//! Piper VITS voices: the `.onnx.json` config (sample rate, espeak voice,
//! phoneme id map, inference scales), IPA -> phoneme ids exactly as Piper
//! maps them, and one ONNX Runtime session per voice, shared by every
//! session of the process ([`PiperVoice`] is `Send + Sync`; runs are
//! serialized by a mutex inside).
//!
//! The model: inputs `input` i64 `[1, N]` (phoneme ids), `input_lengths`
//! i64 `[1]`, `scales` f32 `[3]` = (noise_scale, length_scale, noise_w), and
//! `sid` i64 `[1]` on multi-speaker voices; output f32 `[1, 1, 1, T]` at the
//! config's rate (22050 Hz for en_US-joe-medium). Not incremental inside a
//! call: stream by clause or sentence.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, anyhow, bail};
use ort::session::Session;
use ort::value::Tensor;
use serde::Deserialize;

use crate::models::{ModelStore, corrupt_model_error, files, ids};

/// Piper's special symbols.
pub const PAD: char = '_';
pub const BOS: char = '^';
pub const EOS: char = '$';

/// Default intra-op threads of a voice's session: 1 measured faster than 2
/// on a busy 2-core box (RTF 0.09-0.20 vs 0.11-0.28 in the same runs); use
/// [`PiperVoice::load_with_threads`] for more.
pub const DEFAULT_THREADS: usize = 1;

/// Intra-op threads of a voice's second, quick session
/// ([`PiperVoice::synthesize_quick`]), which speaks what a listener is
/// waiting for: the opening of an answer comes ~1.6x sooner on 2 threads
/// than on 1 (one word 23 vs 38 ms, six words 67 vs 113 ms, idle 2-core box).
pub const QUICK_THREADS: usize = 2;

/// A voice's `.onnx.json`, the parts synthesis needs.
#[derive(Debug, Clone)]
pub struct PiperConfig {
    pub sample_rate: u32,
    /// espeak-ng voice for the phonemizer (`espeak.voice`, e.g. `en-us`).
    pub espeak_voice: String,
    pub noise_scale: f32,
    pub length_scale: f32,
    pub noise_w: f32,
    pub num_speakers: u32,
    /// IPA codepoint -> ids.
    pub phoneme_id_map: HashMap<char, Vec<i64>>,
}

#[derive(Deserialize)]
struct RawConfig {
    audio: RawAudio,
    espeak: RawEspeak,
    #[serde(default)]
    inference: RawInference,
    #[serde(default)]
    phoneme_type: Option<String>,
    #[serde(default)]
    num_speakers: Option<u32>,
    phoneme_id_map: HashMap<String, Vec<i64>>,
}

#[derive(Deserialize)]
struct RawAudio {
    sample_rate: u32,
}

#[derive(Deserialize)]
struct RawEspeak {
    voice: String,
}

#[derive(Deserialize)]
struct RawInference {
    #[serde(default = "default_noise_scale")]
    noise_scale: f32,
    #[serde(default = "default_length_scale")]
    length_scale: f32,
    #[serde(default = "default_noise_w")]
    noise_w: f32,
}

impl Default for RawInference {
    fn default() -> Self {
        RawInference {
            noise_scale: default_noise_scale(),
            length_scale: default_length_scale(),
            noise_w: default_noise_w(),
        }
    }
}

fn default_noise_scale() -> f32 {
    0.667
}
fn default_length_scale() -> f32 {
    1.0
}
fn default_noise_w() -> f32 {
    0.8
}

impl PiperConfig {
    /// Parses the text of a `.onnx.json`.
    pub fn from_json(text: &str) -> Result<PiperConfig> {
        let raw: RawConfig = serde_json::from_str(text).context("not a Piper voice config")?;
        if let Some(kind) = raw.phoneme_type.as_deref()
            && kind != "espeak"
        {
            bail!("phoneme_type {kind:?} is not supported (only \"espeak\")");
        }
        if raw.audio.sample_rate < 1000 || raw.audio.sample_rate > 192_000 {
            bail!("implausible audio.sample_rate {}", raw.audio.sample_rate);
        }
        let inf = &raw.inference;
        for (name, v) in [
            ("noise_scale", inf.noise_scale),
            ("length_scale", inf.length_scale),
            ("noise_w", inf.noise_w),
        ] {
            if !v.is_finite() || v < 0.0 {
                bail!("inference.{name} {v} is not a non-negative number");
            }
        }
        if inf.length_scale <= 0.0 {
            bail!("inference.length_scale must be positive");
        }
        let mut map = HashMap::with_capacity(raw.phoneme_id_map.len());
        for (key, ids) in raw.phoneme_id_map {
            let mut chars = key.chars();
            let (Some(c), None) = (chars.next(), chars.next()) else {
                bail!("phoneme_id_map key {key:?} is not one character");
            };
            if ids.is_empty() {
                bail!("phoneme_id_map[{key:?}] has no ids");
            }
            map.insert(c, ids);
        }
        for special in [PAD, BOS, EOS] {
            if !map.contains_key(&special) {
                bail!("phoneme_id_map lacks {special:?}");
            }
        }
        Ok(PiperConfig {
            sample_rate: raw.audio.sample_rate,
            espeak_voice: raw.espeak.voice,
            noise_scale: inf.noise_scale,
            length_scale: inf.length_scale,
            noise_w: inf.noise_w,
            num_speakers: raw.num_speakers.unwrap_or(1).max(1),
            phoneme_id_map: map,
        })
    }

    /// Reads and parses a `.onnx.json` file.
    pub fn load(path: &Path) -> Result<PiperConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        PiperConfig::from_json(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Phoneme ids of `ipa` as Piper maps them (piper-phonemize's
    /// `phonemes_to_ids`): `^`, `_`, then each codepoint's ids followed by
    /// `_`, then `$`. Codepoints not in the map are skipped (debug log).
    pub fn phoneme_ids(&self, ipa: &str) -> Vec<i64> {
        let map = &self.phoneme_id_map;
        let ids_of = |c: char| map.get(&c).map(Vec::as_slice).unwrap_or(&[]);
        let pad = ids_of(PAD);
        let mut out = Vec::with_capacity(2 * ipa.chars().count() + 4);
        out.extend_from_slice(ids_of(BOS));
        out.extend_from_slice(pad);
        for c in ipa.chars() {
            match map.get(&c) {
                Some(ids) => {
                    out.extend_from_slice(ids);
                    out.extend_from_slice(pad);
                }
                None => tracing::debug!(
                    phoneme = %c,
                    code = %format!("U+{:04X}", c as u32),
                    "phoneme not in the voice's id map; skipped"
                ),
            }
        }
        out.extend_from_slice(ids_of(EOS));
        out
    }
}

/// Whether `ipa` has anything to say (not only spaces and punctuation).
pub fn has_phonemes(ipa: &str) -> bool {
    ipa.chars()
        .any(|c| !c.is_whitespace() && !".,?!:;-'\"()…".contains(c))
}

/// A loaded Piper voice: config plus ONNX session. `Send + Sync`; share one
/// per process in an `Arc`.
pub struct PiperVoice {
    config: PiperConfig,
    session: Mutex<Session>,
    /// A session with [`QUICK_THREADS`], when the machine has the cores.
    quick: Option<Mutex<Session>>,
    output: String,
    has_sid: bool,
    path: PathBuf,
    package: String,
}

impl std::fmt::Debug for PiperVoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PiperVoice")
            .field("path", &self.path)
            .field("sample_rate", &self.config.sample_rate)
            .field("espeak_voice", &self.config.espeak_voice)
            .finish_non_exhaustive()
    }
}

impl PiperVoice {
    /// The installed voice's package and files.
    pub const PACKAGE: &'static str = ids::PIPER_JOE;
    pub const ONNX: &'static str = files::PIPER_JOE_ONNX;
    pub const JSON: &'static str = files::PIPER_JOE_JSON;

    /// Loads the installed voice (`piper-joe`) with [`DEFAULT_THREADS`],
    /// and a quick session of [`QUICK_THREADS`] when the machine has that
    /// many cores. Missing files give an error naming `duplex models install`.
    pub fn load(store: &ModelStore) -> Result<PiperVoice> {
        let mut voice = PiperVoice::load_with_threads(store, DEFAULT_THREADS)?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cores >= QUICK_THREADS {
            voice.quick = Some(Mutex::new(crate::onnx::load_session(
                store,
                &voice.package,
                &voice.path,
                QUICK_THREADS,
            )?));
        }
        Ok(voice)
    }

    /// One session of `threads` intra-op threads (at least 1), no quick
    /// session.
    pub fn load_with_threads(store: &ModelStore, threads: usize) -> Result<PiperVoice> {
        let onnx = store.file(Self::PACKAGE, Self::ONNX)?;
        let json = store.file(Self::PACKAGE, Self::JSON)?;
        PiperVoice::load_package_files(store, Self::PACKAGE, &onnx, &json, threads)
    }

    /// Loads a voice from its two files, with ONNX Runtime from the model
    /// cache of the environment ([`ModelStore::from_env`]).
    pub fn load_files(onnx: &Path, json: &Path) -> Result<PiperVoice> {
        PiperVoice::load_package_files(
            &ModelStore::from_env(),
            Self::PACKAGE,
            onnx,
            json,
            DEFAULT_THREADS,
        )
    }

    /// Loads a voice of model package `package` from its two files; errors
    /// for files that exist but do not load name `package` to reinstall.
    pub fn load_package_files(
        store: &ModelStore,
        package: &str,
        onnx: &Path,
        json: &Path,
        threads: usize,
    ) -> Result<PiperVoice> {
        for path in [onnx, json] {
            if !path.is_file() {
                bail!(
                    "Piper voice file {} is missing: run `duplex models install`",
                    path.display()
                );
            }
        }
        let config = PiperConfig::load(json)
            .map_err(|e| corrupt_model_error(package, json, format!("{e:#}")))?;
        let session = crate::onnx::load_session(store, package, onnx, threads.clamp(1, 16))?;
        let inputs: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        for needed in ["input", "input_lengths", "scales"] {
            if !inputs.contains(&needed) {
                return Err(corrupt_model_error(
                    package,
                    onnx,
                    format!("not a Piper model: inputs {inputs:?} lack `{needed}`"),
                ));
            }
        }
        let has_sid = inputs.contains(&"sid");
        let output = session
            .outputs()
            .first()
            .map(|o| o.name().to_string())
            .ok_or_else(|| corrupt_model_error(package, onnx, "the model has no output"))?;
        tracing::debug!(
            model = %onnx.display(),
            rate = config.sample_rate,
            voice = %config.espeak_voice,
            threads,
            "Piper voice loaded"
        );
        Ok(PiperVoice {
            config,
            session: Mutex::new(session),
            quick: None,
            output,
            has_sid,
            path: onnx.to_path_buf(),
            package: package.to_string(),
        })
    }

    pub fn config(&self) -> &PiperConfig {
        &self.config
    }

    /// Output sample rate (Hz).
    pub fn sample_rate(&self) -> u32 {
        self.config.sample_rate
    }

    /// The espeak-ng voice its phonemes come from.
    pub fn espeak_voice(&self) -> &str {
        &self.config.espeak_voice
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// See [`PiperConfig::phoneme_ids`].
    pub fn phoneme_ids(&self, ipa: &str) -> Vec<i64> {
        self.config.phoneme_ids(ipa)
    }

    /// Audio (mono f32 at [`sample_rate`](Self::sample_rate)) for the IPA of
    /// one sentence or clause. `speed` 1.0 is the voice's own pace (it
    /// divides the length scale); empty audio when `ipa` has no phonemes.
    pub fn synthesize(&self, ipa: &str, speed: f32) -> Result<Vec<f32>> {
        if !has_phonemes(ipa) {
            return Ok(Vec::new());
        }
        self.synthesize_ids(&self.phoneme_ids(ipa), speed)
    }

    /// [`synthesize`](Self::synthesize) on the quick session when there is
    /// one and no other response holds it, else on the steady one.
    pub fn synthesize_quick(&self, ipa: &str, speed: f32) -> Result<Vec<f32>> {
        if !has_phonemes(ipa) {
            return Ok(Vec::new());
        }
        let ids = self.phoneme_ids(ipa);
        match self.quick.as_ref().and_then(|quick| quick.try_lock().ok()) {
            Some(mut session) => self.run(&mut session, &ids, speed),
            None => self.synthesize_ids(&ids, speed),
        }
    }

    /// Whether [`synthesize_quick`](Self::synthesize_quick) has a session of
    /// its own.
    pub fn has_quick_session(&self) -> bool {
        self.quick.is_some()
    }

    /// Audio for phoneme ids (as from [`phoneme_ids`](Self::phoneme_ids)).
    pub fn synthesize_ids(&self, phoneme_ids: &[i64], speed: f32) -> Result<Vec<f32>> {
        let mut session = self
            .session
            .lock()
            .map_err(|_| anyhow!("Piper voice lock poisoned"))?;
        self.run(&mut session, phoneme_ids, speed)
    }

    /// Runs one of the voice's sessions on phoneme ids.
    fn run(&self, session: &mut Session, phoneme_ids: &[i64], speed: f32) -> Result<Vec<f32>> {
        if !(speed.is_finite() && (0.1..=10.0).contains(&speed)) {
            bail!("speed {speed} is outside 0.1..=10");
        }
        if phoneme_ids.is_empty() {
            return Ok(Vec::new());
        }
        let n = phoneme_ids.len();
        let input = Tensor::from_array(([1usize, n], phoneme_ids.to_vec()))?;
        let lengths = Tensor::from_array(([1usize], vec![n as i64]))?;
        let c = &self.config;
        let scales = Tensor::from_array((
            [3usize],
            vec![c.noise_scale, c.length_scale / speed, c.noise_w],
        ))?;
        let outputs = if self.has_sid {
            let sid = Tensor::from_array(([1usize], vec![0i64]))?;
            session.run(ort::inputs![
                "input" => input, "input_lengths" => lengths, "scales" => scales, "sid" => sid
            ])
        } else {
            session.run(ort::inputs![
                "input" => input, "input_lengths" => lengths, "scales" => scales
            ])
        }
        .map_err(|e| anyhow!("Piper inference failed ({}): {e}", self.package))?;
        let value = outputs
            .get(&self.output)
            .ok_or_else(|| anyhow!("Piper model gave no `{}` output", self.output))?;
        let (_, audio) = value
            .try_extract_tensor::<f32>()
            .map_err(|e| anyhow!("Piper model output is not f32 audio: {e}"))?;
        if audio.iter().any(|x| !x.is_finite()) {
            bail!("Piper model produced non-finite samples");
        }
        // The model can overshoot slightly; keep the project's [-1, 1].
        Ok(audio.iter().map(|x| x.clamp(-1.0, 1.0)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn config() -> PiperConfig {
        PiperConfig::from_json(
            r#"{"audio":{"sample_rate":22050},"espeak":{"voice":"en-us"},
                "inference":{"noise_scale":0.667,"length_scale":1,"noise_w":0.8},
                "phoneme_type":"espeak",
                "phoneme_id_map":{"_":[0],"^":[1],"$":[2]," ":[3],".":[10],
                  "h":[20],"ə":[59],"l":[24],"ˈ":[120],"o":[27],"ʊ":[100]}}"#,
        )
        .unwrap()
    }

    #[test]
    fn ids_follow_piper() {
        let c = config();
        assert_eq!(c.sample_rate, 22050);
        assert_eq!(c.espeak_voice, "en-us");
        assert_eq!(
            c.phoneme_ids("həlˈoʊ."),
            [1, 0, 20, 0, 59, 0, 24, 0, 120, 0, 27, 0, 100, 0, 10, 0, 2]
        );
        // Unknown codepoints are skipped.
        assert_eq!(c.phoneme_ids("h§"), [1, 0, 20, 0, 2]);
        assert_eq!(c.phoneme_ids(""), [1, 0, 2]);
    }

    #[test]
    fn bad_configs_are_rejected() {
        assert!(PiperConfig::from_json("{").is_err());
        assert!(PiperConfig::from_json(
            r#"{"audio":{"sample_rate":22050},"espeak":{"voice":"en-us"},"phoneme_id_map":{"_":[0]}}"#
        )
        .is_err());
        assert!(
            PiperConfig::from_json(
                r#"{"audio":{"sample_rate":22050},"espeak":{"voice":"en-us"},"phoneme_type":"text",
                "phoneme_id_map":{"_":[0],"^":[1],"$":[2]}}"#
            )
            .is_err()
        );
    }

    #[test]
    fn punctuation_only_has_no_phonemes() {
        assert!(!has_phonemes(" .,?! "));
        assert!(has_phonemes("ə."));
    }

    #[test]
    fn installed_config_parses() {
        let store = ModelStore::from_env();
        let path = store
            .file(PiperVoice::PACKAGE, PiperVoice::JSON)
            .expect("piper-joe installed (duplex models install)");
        let c = PiperConfig::load(&path).unwrap();
        assert_eq!(c.sample_rate, 22050);
        assert_eq!(c.espeak_voice, "en-us");
        assert!(c.phoneme_id_map.len() > 100);
        assert_eq!(c.phoneme_ids("")[..2], [1, 0]);
    }

    #[test]
    fn missing_files_name_the_install_command() {
        let err = PiperVoice::load_files(Path::new("/nonexistent/v.onnx"), Path::new("/x.json"))
            .unwrap_err();
        assert!(format!("{err:#}").contains("duplex models install"));
    }

    #[test]
    fn voice_synthesizes_plausible_audio() {
        let store = ModelStore::from_env();
        let voice = PiperVoice::load(&store).expect("piper-joe installed");
        // "The quick brown fox jumps over the lazy dog." from espeak-ng en-us.
        let ipa = "ðə kwˈɪk bɹˈaʊn fˈɑːks dʒˈʌmps ˌoʊvɚ ðə lˈeɪzi dˈɑːɡ.";
        let words = 9.0;
        voice.synthesize(ipa, 1.0).unwrap(); // warm-up
        let t0 = Instant::now();
        let audio = voice.synthesize(ipa, 1.0).unwrap();
        let elapsed = t0.elapsed().as_secs_f64();
        let secs = audio.len() as f64 / f64::from(voice.sample_rate());
        let peak = audio.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let rms = crate::audio::rms(&audio);
        eprintln!(
            "Piper: {secs:.2} s of audio in {elapsed:.3} s, RTF {:.3}, {:.1} words/s, peak {peak:.3}, rms {rms:.4}",
            elapsed / secs,
            words / secs
        );
        assert!(
            (1.0..=6.0).contains(&(words / secs)),
            "{secs} s for {words} words"
        );
        assert!(rms > 0.01, "audio is silent (rms {rms})");
        assert!(peak < 1.0 && peak > 0.05, "peak {peak}");
        // Faster speech is shorter.
        let fast = voice.synthesize(ipa, 1.5).unwrap();
        assert!((fast.len() as f64) < audio.len() as f64 * 0.8);
        assert!(voice.synthesize(" . ", 1.0).unwrap().is_empty());
        assert!(voice.synthesize(ipa, 0.0).is_err());
        // The quick session is the same voice: about as long, as loud.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(voice.has_quick_session(), cores >= QUICK_THREADS);
        let quick = voice.synthesize_quick(ipa, 1.0).unwrap();
        let ratio = quick.len() as f64 / audio.len() as f64;
        assert!(
            (0.8..=1.25).contains(&ratio),
            "quick/steady length {ratio:.2}"
        );
        let quick_rms = crate::audio::rms(&quick);
        assert!(
            (0.5..=2.0).contains(&(quick_rms / rms)),
            "quick rms {quick_rms}, steady {rms}"
        );
        assert!(voice.synthesize_quick(" . ", 1.0).unwrap().is_empty());
        assert!(voice.synthesize_quick(ipa, 0.0).is_err());
    }

    /// `cargo test --release --lib tts::piper -- --ignored --nocapture`
    #[test]
    #[ignore = "benchmark"]
    fn rtf_by_thread_count() {
        let store = ModelStore::from_env();
        let ipa = "ðə kwˈɪk bɹˈaʊn fˈɑːks dʒˈʌmps ˌoʊvɚ ðə lˈeɪzi dˈɑːɡ.";
        for threads in [1, 2] {
            let voice = PiperVoice::load_with_threads(&store, threads).unwrap();
            voice.synthesize(ipa, 1.0).unwrap();
            let (mut audio, mut spent) = (0.0, 0.0);
            for _ in 0..5 {
                let t0 = Instant::now();
                let out = voice.synthesize(ipa, 1.0).unwrap();
                spent += t0.elapsed().as_secs_f64();
                audio += out.len() as f64 / f64::from(voice.sample_rate());
            }
            eprintln!("{threads} thread(s): RTF {:.3}", spent / audio);
        }
    }

    #[test]
    fn voice_is_send_and_sync() {
        fn both<T: Send + Sync>() {}
        both::<PiperVoice>();
    }
}
