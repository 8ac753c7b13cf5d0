//! WAV output: writes a mono [`Pcm`] clip as a 16-bit PCM WAV file via hound.
//! (Reading goes through [`crate::audio::decode_file`].)

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::pcm::{Pcm, f32_sample_to_i16};

/// Write `pcm` to `path` as a mono 16-bit PCM WAV at `pcm.sample_rate`
/// (samples are clamped to `[-1, 1]`). Overwrites an existing file.
pub fn write_wav(path: &Path, pcm: &Pcm) -> Result<()> {
    if pcm.sample_rate == 0 {
        bail!("cannot write WAV {}: sample rate is 0", path.display());
    }
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: pcm.sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec)
        .with_context(|| format!("failed to create WAV file {}", path.display()))?;
    for &x in &pcm.samples {
        writer
            .write_sample(f32_sample_to_i16(x))
            .with_context(|| format!("failed to write WAV samples to {}", path.display()))?;
    }
    writer
        .finalize()
        .with_context(|| format!("failed to finalize WAV file {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::decode_file;

    #[test]
    fn write_then_decode_round_trip() {
        let path = std::env::temp_dir().join(format!(
            "duplex-wav-test-{}-{:?}.wav",
            std::process::id(),
            std::thread::current().id()
        ));
        let samples: Vec<f32> = (0..2400)
            .map(|i| 0.5 * (2.0 * std::f32::consts::PI * 300.0 * i as f32 / 24000.0).sin())
            .collect();
        let pcm = Pcm::new(samples.clone(), 24000);
        write_wav(&path, &pcm).expect("write");

        let spec = hound::WavReader::open(&path)
            .expect("hound opens it")
            .spec();
        assert_eq!(spec.channels, 1);
        assert_eq!(spec.bits_per_sample, 16);
        assert_eq!(spec.sample_rate, 24000);

        let back = decode_file(&path).expect("decode");
        let _ = std::fs::remove_file(&path);
        assert_eq!(back.sample_rate, 24000);
        assert_eq!(back.samples.len(), samples.len());
        for (a, b) in samples.iter().zip(&back.samples) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    #[test]
    fn zero_rate_is_an_error() {
        let path = std::env::temp_dir().join("duplex-wav-zero-rate.wav");
        let err = write_wav(&path, &Pcm::new(vec![0.0], 0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sample rate is 0"), "{err}");
    }
}
