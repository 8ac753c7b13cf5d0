//! The log-mel front end, as NeMo's `FilterbankFeatures` computes it at
//! inference (pre-emphasis, centred STFT with zero padding, Hann window,
//! power spectrum, Slaney mel filterbank, log(x + guard), no
//! normalization), offline over a whole utterance or incrementally: frame
//! `i` only needs samples up to `hop * i + n_fft / 2`, so streamed frames are
//! exactly the offline ones and the last few wait for the end-of-utterance
//! padding.

use std::sync::Arc;

use anyhow::{Result, bail};
use realfft::{RealFftPlanner, RealToComplex};

use super::config::FeatureConfig;

/// Filterbank and window, shared by every stream of a model.
pub struct MelFrontend {
    pub config: FeatureConfig,
    /// `n_mels x (n_fft/2 + 1)`, row-major.
    filterbank: Vec<f32>,
    /// The window zero-padded (centred) to `n_fft`.
    window: Vec<f32>,
    fft: Arc<dyn RealToComplex<f32>>,
}

fn hz_to_mel(hz: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = (6.4f64).ln() / 27.0;
    if hz >= min_log_hz {
        min_log_mel + (hz / min_log_hz).ln() / logstep
    } else {
        hz / f_sp
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = (6.4f64).ln() / 27.0;
    if mel >= min_log_mel {
        min_log_hz * (logstep * (mel - min_log_mel)).exp()
    } else {
        f_sp * mel
    }
}

/// librosa's `filters.mel(sr, n_fft, n_mels, fmin, fmax, htk=False,
/// norm="slaney")`, which NeMo uses.
pub fn slaney_filterbank(config: &FeatureConfig) -> Vec<f32> {
    let bins = config.n_fft / 2 + 1;
    let sr = config.sample_rate as f64;
    let fmax = config.highfreq.map(f64::from).unwrap_or(sr / 2.0);
    let (lo, hi) = (hz_to_mel(config.lowfreq as f64), hz_to_mel(fmax));
    let n = config.n_mels;
    let mel_f: Vec<f64> = (0..n + 2)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (n + 1) as f64))
        .collect();
    let fft_freqs: Vec<f64> = (0..bins)
        .map(|k| k as f64 * sr / config.n_fft as f64)
        .collect();
    let mut weights = vec![0f32; n * bins];
    for m in 0..n {
        let enorm = 2.0 / (mel_f[m + 2] - mel_f[m]);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let lower = (f - mel_f[m]) / (mel_f[m + 1] - mel_f[m]);
            let upper = (mel_f[m + 2] - f) / (mel_f[m + 2] - mel_f[m + 1]);
            weights[m * bins + k] = (lower.min(upper).max(0.0) * enorm) as f32;
        }
    }
    weights
}

impl MelFrontend {
    /// A front end with the Slaney filterbank and a symmetric Hann window,
    /// or the model's own (`preprocessor.featurizer.fb` / `.window`) when
    /// the checkpoint has them.
    pub fn new(
        config: FeatureConfig,
        filterbank: Option<Vec<f32>>,
        window: Option<Vec<f32>>,
    ) -> Result<MelFrontend> {
        let bins = config.n_fft / 2 + 1;
        let filterbank = filterbank.unwrap_or_else(|| slaney_filterbank(&config));
        if filterbank.len() != config.n_mels * bins {
            bail!(
                "the mel filterbank has {} values, expected {} x {bins}",
                filterbank.len(),
                config.n_mels
            );
        }
        let win = config.win_length;
        let window = window.unwrap_or_else(|| {
            (0..win)
                .map(|n| {
                    let x = 2.0 * std::f64::consts::PI * n as f64 / (win - 1).max(1) as f64;
                    (0.5 - 0.5 * x.cos()) as f32
                })
                .collect()
        });
        if window.len() != win {
            bail!("the window has {} values, expected {win}", window.len());
        }
        let mut padded = vec![0f32; config.n_fft];
        let left = (config.n_fft - win) / 2;
        padded[left..left + win].copy_from_slice(&window);
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(config.n_fft);
        Ok(MelFrontend {
            config,
            filterbank,
            window: padded,
            fft,
        })
    }

    pub fn n_mels(&self) -> usize {
        self.config.n_mels
    }

    /// Number of frames NeMo gives an utterance of `samples` samples.
    pub fn frames_for(&self, samples: usize) -> usize {
        samples / self.config.hop_length + 1
    }

    /// Log-mel of one frame from `n_fft` samples of the padded signal.
    fn frame(&self, samples: &[f32], out: &mut Vec<f32>) {
        let n_fft = self.config.n_fft;
        let mut input: Vec<f32> = samples[..n_fft]
            .iter()
            .zip(&self.window)
            .map(|(x, w)| x * w)
            .collect();
        let mut spectrum = self.fft.make_output_vec();
        // Lengths are the plan's own: this cannot fail.
        let _ = self.fft.process(&mut input, &mut spectrum);
        let power: Vec<f32> = spectrum
            .iter()
            .map(|c| {
                let mag2 = c.re * c.re + c.im * c.im;
                if self.config.mag_power == 2.0 {
                    mag2
                } else {
                    mag2.sqrt().powf(self.config.mag_power)
                }
            })
            .collect();
        let bins = power.len();
        for m in 0..self.config.n_mels {
            let row = &self.filterbank[m * bins..(m + 1) * bins];
            let energy: f32 = row.iter().zip(&power).map(|(w, p)| w * p).sum();
            out.push((energy + self.config.log_guard).ln());
        }
    }

    /// Features of a whole utterance: `frames x n_mels`, row-major.
    pub fn offline(&self, audio: &[f32]) -> Vec<f32> {
        let mut stream = MelStream::new(self);
        let mut feats = stream.push(self, audio);
        feats.extend(stream.finish(self));
        feats
    }
}

/// One utterance's front end state: the pre-emphasized samples not yet
/// framed (with the centring pad), and how many frames are out.
#[derive(Clone)]
pub struct MelStream {
    /// Padded, pre-emphasized signal from sample `offset` on.
    buffer: Vec<f32>,
    offset: usize,
    last_sample: Option<f32>,
    received: usize,
    frames_done: usize,
}

impl MelStream {
    pub fn new(frontend: &MelFrontend) -> MelStream {
        MelStream {
            buffer: vec![0.0; frontend.config.n_fft / 2],
            offset: 0,
            last_sample: None,
            received: 0,
            frames_done: 0,
        }
    }

    /// Frames out so far.
    pub fn frames_done(&self) -> usize {
        self.frames_done
    }

    fn emit(&mut self, frontend: &MelFrontend, until: usize) -> Vec<f32> {
        let hop = frontend.config.hop_length;
        let n_fft = frontend.config.n_fft;
        let mut out = Vec::new();
        while self.frames_done < until {
            let start = self.frames_done * hop - self.offset;
            if start + n_fft > self.buffer.len() {
                break;
            }
            frontend.frame(&self.buffer[start..start + n_fft], &mut out);
            self.frames_done += 1;
        }
        // Keep only what the next frame needs.
        let keep_from = self.frames_done * hop;
        if keep_from > self.offset {
            let drop = (keep_from - self.offset).min(self.buffer.len());
            self.buffer.drain(..drop);
            self.offset += drop;
        }
        out
    }

    /// Adds audio and returns the frames now complete (`n x n_mels`).
    pub fn push(&mut self, frontend: &MelFrontend, audio: &[f32]) -> Vec<f32> {
        self.buffer.reserve(audio.len());
        for &x in audio {
            let y = match (frontend.config.preemph, self.last_sample) {
                (Some(a), Some(prev)) => x - a * prev,
                _ => x,
            };
            self.last_sample = Some(x);
            self.buffer.push(y);
        }
        self.received += audio.len();
        self.emit(frontend, usize::MAX)
    }

    /// Pads the end of the utterance and returns the last frames.
    pub fn finish(&mut self, frontend: &MelFrontend) -> Vec<f32> {
        self.buffer
            .extend(std::iter::repeat_n(0.0, frontend.config.n_fft / 2));
        let total = frontend.frames_for(self.received);
        self.emit(frontend, total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_frames_equal_offline_frames() {
        let frontend = MelFrontend::new(FeatureConfig::nemo_default(80), None, None).unwrap();
        let audio: Vec<f32> = (0..16_123)
            .map(|i| {
                ((i as f32) * 0.05).sin() * 0.3 + ((i * 7919 % 101) as f32 / 101.0 - 0.5) * 0.01
            })
            .collect();
        let offline = frontend.offline(&audio);
        assert_eq!(offline.len(), frontend.frames_for(audio.len()) * 80);
        let mut stream = MelStream::new(&frontend);
        let mut streamed = Vec::new();
        for piece in audio.chunks(777) {
            streamed.extend(stream.push(&frontend, piece));
        }
        assert!(
            streamed.len() < offline.len(),
            "the last frames wait for the end"
        );
        streamed.extend(stream.finish(&frontend));
        assert_eq!(streamed, offline);
        // A 0.05 rad/sample tone is ~127 Hz: its energy lands in the low
        // mel bands, far above the high ones.
        let frame = &offline[40 * 80..41 * 80];
        assert!(frame[2] > frame[70] + 5.0, "{frame:?}");
    }

    #[test]
    fn filterbank_rows_are_triangles_with_slaney_area() {
        let config = FeatureConfig::nemo_default(80);
        let fb = slaney_filterbank(&config);
        let bins = 257;
        for m in 0..80 {
            let row = &fb[m * bins..(m + 1) * bins];
            assert!(row.iter().all(|w| *w >= 0.0));
            assert!(row.iter().any(|w| *w > 0.0), "empty mel band {m}");
        }
    }
}
