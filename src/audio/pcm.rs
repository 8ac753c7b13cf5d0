//! PCM helpers: the in-memory mono clip type ([`Pcm`]), f32 <-> 16-bit integer
//! conversion, little-endian byte and base64 encodings (as used by the OpenAI
//! Realtime API's `pcm16` audio format), and small signal utilities.
//!
//! All audio inside the project is mono `f32` in `[-1, 1]`. The integer scale
//! is the usual 32768: `i16::MIN` maps to exactly `-1.0`, and `+1.0` clamps to
//! `i16::MAX`.

use anyhow::{Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// A mono clip of `f32` samples in `[-1, 1]` at `sample_rate` Hz.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pcm {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
}

impl Pcm {
    /// Wrap `samples` recorded at `sample_rate` Hz.
    pub fn new(samples: Vec<f32>, sample_rate: u32) -> Self {
        Self {
            samples,
            sample_rate,
        }
    }

    /// Duration in whole milliseconds (rounded down); 0 when the rate is 0.
    pub fn duration_ms(&self) -> u64 {
        if self.sample_rate == 0 {
            return 0;
        }
        (self.samples.len() as u64).saturating_mul(1000) / u64::from(self.sample_rate)
    }

    /// Duration in seconds; 0 when the rate is 0.
    pub fn duration_secs(&self) -> f64 {
        if self.sample_rate == 0 {
            return 0.0;
        }
        self.samples.len() as f64 / f64::from(self.sample_rate)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True when the clip holds no samples.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The energy (sum of squared samples) of each 10 ms frame.
    pub fn frame_energy(&self) -> Vec<f32> {
        let frame = (self.sample_rate / 100).max(1) as usize;
        self.samples
            .chunks(frame)
            .map(|c| c.iter().map(|x| x * x).sum::<f32>())
            .collect()
    }

    /// Where speech is, by energy: the start of the first and the end of
    /// the last 10 ms frame whose RMS is within 26 dB of the loudest frame,
    /// in ms; `None` for silence.
    pub fn energy_speech_span(&self) -> Option<(u64, u64)> {
        let frame = (self.sample_rate / 100).max(1) as usize;
        let rms: Vec<f32> = self
            .samples
            .chunks(frame)
            .map(|c| (c.iter().map(|x| x * x).sum::<f32>() / c.len() as f32).sqrt())
            .collect();
        let peak = rms.iter().copied().fold(0.0f32, f32::max);
        let loud = |r: &f32| peak > 0.0 && *r > peak * 0.05;
        let first = rms.iter().position(loud)?;
        let last = rms.iter().rposition(loud)?;
        Some((first as u64 * 10, (last as u64 + 1) * 10))
    }

    /// The clip with `before_ms` of silence before it and `after_ms` after.
    pub fn padded(&self, before_ms: u64, after_ms: u64) -> Pcm {
        let n = |ms: u64| (u64::from(self.sample_rate) * ms / 1000) as usize;
        let mut samples = vec![0.0; n(before_ms)];
        samples.extend_from_slice(&self.samples);
        samples.extend(std::iter::repeat_n(0.0, n(after_ms)));
        Pcm::new(samples, self.sample_rate)
    }
}

/// Convert one `f32` sample to `i16`, clamping to `[-1, 1]` first (NaN -> 0).
#[inline]
pub fn f32_sample_to_i16(x: f32) -> i16 {
    // `as` saturates and maps NaN to 0.
    (x.clamp(-1.0, 1.0) * 32768.0)
        .round()
        .clamp(-32768.0, 32767.0) as i16
}

/// Convert one `i16` sample to `f32` in `[-1, 1)`.
#[inline]
pub fn i16_sample_to_f32(x: i16) -> f32 {
    f32::from(x) / 32768.0
}

/// Convert `f32` samples to `i16`, clamping out-of-range values.
pub fn f32_to_i16(samples: &[f32]) -> Vec<i16> {
    samples.iter().map(|&x| f32_sample_to_i16(x)).collect()
}

/// Convert `i16` samples to `f32` in `[-1, 1)`.
pub fn i16_to_f32(samples: &[i16]) -> Vec<f32> {
    samples.iter().map(|&x| i16_sample_to_f32(x)).collect()
}

/// Encode samples as 16-bit signed little-endian PCM bytes (clamped).
pub fn pcm16_le_bytes(samples: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(samples.len() * 2);
    for &x in samples {
        out.extend_from_slice(&f32_sample_to_i16(x).to_le_bytes());
    }
    out
}

/// Decode 16-bit signed little-endian PCM bytes. Fails on an odd byte count.
pub fn pcm16_from_le_bytes(bytes: &[u8]) -> Result<Vec<f32>> {
    if !bytes.len().is_multiple_of(2) {
        bail!(
            "PCM16 byte buffer has odd length {} (expected a multiple of 2 bytes per sample)",
            bytes.len()
        );
    }
    Ok(bytes
        .chunks_exact(2)
        .map(|b| i16_sample_to_f32(i16::from_le_bytes([b[0], b[1]])))
        .collect())
}

/// Encode samples as base64 of 16-bit little-endian PCM (OpenAI Realtime `pcm16`).
pub fn pcm16_base64_encode(samples: &[f32]) -> String {
    BASE64.encode(pcm16_le_bytes(samples))
}

/// Decode base64 of 16-bit little-endian PCM (OpenAI Realtime `pcm16`).
/// Surrounding whitespace is ignored; invalid base64 or an odd decoded byte
/// count is an error.
pub fn pcm16_base64_decode(b64: &str) -> Result<Vec<f32>> {
    let bytes = BASE64.decode(b64.trim()).map_err(|e| {
        anyhow::anyhow!(
            "invalid base64 in PCM16 audio payload ({} chars): {e}",
            b64.len()
        )
    })?;
    pcm16_from_le_bytes(&bytes)
}

/// Root-mean-square level of `samples`; 0 for an empty slice.
pub fn rms(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    (sum / samples.len() as f64).sqrt() as f32
}

/// Number of samples covering `ms` milliseconds at `sample_rate` Hz (rounded down).
pub fn samples_for_ms(sample_rate: u32, ms: u64) -> usize {
    (u64::from(sample_rate).saturating_mul(ms) / 1000) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_i16_round_trip() {
        let input: Vec<f32> = (0..2001).map(|i| (i as f32 - 1000.0) / 1000.0).collect();
        let ints = f32_to_i16(&input);
        assert_eq!(ints.len(), input.len());
        assert_eq!(ints[0], i16::MIN);
        assert_eq!(ints[1000], 0);
        assert_eq!(ints[2000], i16::MAX);
        let back = i16_to_f32(&ints);
        for (a, b) in input.iter().zip(&back) {
            assert!((a - b).abs() <= 1.0 / 32768.0 + 1e-7, "{a} -> {b}");
        }
    }

    #[test]
    fn f32_to_i16_clamps() {
        assert_eq!(
            f32_to_i16(&[2.0, -3.0, f32::NAN, 0.5]),
            vec![32767, -32768, 0, 16384]
        );
    }

    #[test]
    fn le_bytes_round_trip() {
        let input = [0.0f32, 0.25, -0.25, -1.0, 0.999];
        let bytes = pcm16_le_bytes(&input);
        assert_eq!(bytes.len(), 10);
        assert_eq!(&bytes[2..4], &8192i16.to_le_bytes());
        let back = pcm16_from_le_bytes(&bytes).expect("even length decodes");
        for (a, b) in input.iter().zip(&back) {
            assert!((a - b).abs() <= 1.0 / 32768.0, "{a} -> {b}");
        }
    }

    #[test]
    fn odd_length_bytes_error() {
        let err = pcm16_from_le_bytes(&[1, 2, 3]).unwrap_err().to_string();
        assert!(err.contains("odd length 3"), "{err}");
    }

    #[test]
    fn base64_round_trip() {
        let input = [0.5f32, -0.5, 0.0, 0.125];
        let b64 = pcm16_base64_encode(&input);
        // 4 samples = 8 bytes -> 12 base64 chars.
        assert_eq!(b64.len(), 12);
        let back = pcm16_base64_decode(&format!(" {b64}\n")).expect("valid base64");
        assert_eq!(back, vec![0.5, -0.5, 0.0, 0.125]);
        assert!(pcm16_base64_decode("").expect("empty ok").is_empty());
    }

    #[test]
    fn bad_base64_error() {
        let err = pcm16_base64_decode("not*valid*base64!")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid base64"), "{err}");
        // Valid base64 of 3 bytes: odd PCM length.
        let err = pcm16_base64_decode("AQID").unwrap_err().to_string();
        assert!(err.contains("odd length 3"), "{err}");
    }

    #[test]
    fn rms_and_durations() {
        assert_eq!(rms(&[]), 0.0);
        assert!((rms(&[0.5, -0.5, 0.5, -0.5]) - 0.5).abs() < 1e-6);
        let sine: Vec<f32> = (0..16000)
            .map(|i| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 16000.0).sin())
            .collect();
        assert!((rms(&sine) - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-3);

        assert_eq!(samples_for_ms(16000, 20), 320);
        assert_eq!(samples_for_ms(44100, 10), 441);
        assert_eq!(samples_for_ms(22050, 1), 22);
        let pcm = Pcm::new(vec![0.0; 24000], 24000);
        assert_eq!(pcm.duration_ms(), 1000);
        assert!((pcm.duration_secs() - 1.0).abs() < 1e-12);
        assert_eq!(Pcm::new(vec![0.0; 10], 0).duration_ms(), 0);
    }
}
