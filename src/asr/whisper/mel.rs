//! Whisper's mel filterbank: the 80 x 201 matrix of OpenAI Whisper's
//! `mel_filters.npz`, i.e. `librosa.filters.mel(sr=16000, n_fft=400,
//! n_mels=80)` with librosa's defaults (`fmin=0`, `fmax=sr/2`, `htk=False`:
//! Slaney's mel scale, `norm="slaney"`: each triangle scaled to unit area).
//!
//! The CTranslate2 package does not ship the filters, and whisper.cpp's ggml
//! file must carry them, so they are computed here. The arithmetic follows
//! librosa step by step (float64, rounded to float32 where librosa stores into
//! its float32 weight matrix) so the values match the `.npz` to the last bit
//! or two.

/// Sample rate Whisper works at.
pub const SAMPLE_RATE: u32 = 16_000;
/// FFT size of Whisper's STFT (25 ms at 16 kHz).
pub const N_FFT: usize = 400;
/// Frequency bins of one STFT frame: `N_FFT / 2 + 1`.
pub const N_FREQS: usize = N_FFT / 2 + 1;
/// Mel bins of Whisper tiny/base/small/medium/large-v2.
pub const N_MELS: usize = 80;

/// The 80 x 201 filterbank Whisper uses, row-major (`[mel][freq]`).
pub fn whisper_mel_filters() -> Vec<f32> {
    slaney_mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS)
}

/// `librosa.filters.mel(sr, n_fft, n_mels, fmin=0, fmax=sr/2, htk=False,
/// norm="slaney", dtype=float32)`: `n_mels` rows of `n_fft / 2 + 1` weights,
/// row-major.
pub fn slaney_mel_filterbank(sample_rate: u32, n_fft: usize, n_mels: usize) -> Vec<f32> {
    let n_freqs = n_fft / 2 + 1;
    let sr = f64::from(sample_rate);

    // fft_frequencies: np.linspace(0, sr / 2, n_freqs) (the librosa that
    // made `mel_filters.npz`; newer librosa's rfftfreq gives the same values
    // here, multiples of 40 Hz).
    let fft_freqs = linspace(0.0, sr / 2.0, n_freqs);

    // mel_frequencies(n_mels + 2, fmin=0, fmax=sr/2): np.linspace over the
    // mel scale, then back to Hz.
    let mel_f: Vec<f64> = linspace(hz_to_mel(0.0), hz_to_mel(sr / 2.0), n_mels + 2)
        .into_iter()
        .map(mel_to_hz)
        .collect();

    let fdiff: Vec<f64> = mel_f.windows(2).map(|w| w[1] - w[0]).collect();
    let mut weights = vec![0f32; n_mels * n_freqs];
    for i in 0..n_mels {
        // Slaney normalisation: 2 / (upper edge - lower edge).
        let enorm = 2.0 / (mel_f[i + 2] - mel_f[i]);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let lower = -(mel_f[i] - f) / fdiff[i];
            let upper = (mel_f[i + 2] - f) / fdiff[i + 1];
            // librosa stores the triangle into its float32 matrix, then
            // multiplies in place by the float64 `enorm`.
            let tri = 0f64.max(lower.min(upper)) as f32;
            weights[i * n_freqs + k] = (f64::from(tri) * enorm) as f32;
        }
    }
    weights
}

/// `np.linspace(start, stop, num)`: `start + i * step`, the last point
/// exactly `stop`.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num < 2 {
        return vec![start; num];
    }
    let step = (stop - start) / (num - 1) as f64;
    (0..num)
        .map(|i| {
            if i == num - 1 {
                stop
            } else {
                i as f64 * step + start
            }
        })
        .collect()
}

const F_SP: f64 = 200.0 / 3.0;
const MIN_LOG_HZ: f64 = 1000.0;
const MIN_LOG_MEL: f64 = MIN_LOG_HZ / F_SP;

fn logstep() -> f64 {
    6.4f64.ln() / 27.0
}

/// Slaney's mel scale (librosa `hz_to_mel`, `htk=False`): linear below
/// 1 kHz, logarithmic above.
pub fn hz_to_mel(hz: f64) -> f64 {
    if hz >= MIN_LOG_HZ {
        MIN_LOG_MEL + (hz / MIN_LOG_HZ).ln() / logstep()
    } else {
        hz / F_SP
    }
}

/// Inverse of [`hz_to_mel`].
pub fn mel_to_hz(mel: f64) -> f64 {
    if mel >= MIN_LOG_MEL {
        MIN_LOG_HZ * (logstep() * (mel - MIN_LOG_MEL)).exp()
    } else {
        F_SP * mel
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// Reference values from `librosa.filters.mel(sr=16000, n_fft=400,
    /// n_mels=80)` (librosa 0.11.0, float32), `(mel, freq bin, value)`.
    const REFERENCE: [(usize, usize, f32); 16] = [
        (0, 1, 0.024_862_595),
        (0, 2, 0.0),
        (1, 2, 0.022_871_772),
        (5, 5, 0.009_954_109),
        (5, 6, 0.014_908_484),
        (13, 13, 0.025_880_683),
        (20, 19, 0.010_972_2),
        (20, 20, 0.013_890_394),
        (39, 41, 0.011_486_922),
        (39, 43, 0.000_400_222_87),
        (40, 43, 0.014_735_566),
        (60, 91, 0.003_441_219),
        (79, 186, 0.000_366_741_67),
        (79, 196, 0.001_795_036),
        (79, 199, 0.000_448_759),
        (79, 200, 0.0),
    ];

    /// sha256 of librosa's 80 x 201 float32 matrix as little-endian bytes,
    /// its one negative zero (at [0][0]) written as +0.0.
    const REFERENCE_SHA256: &str =
        "85818f156f7e189453901a515e4726d270d307f976e161cf9403e8caab405498";

    #[test]
    fn matches_librosa_values() {
        let m = whisper_mel_filters();
        assert_eq!(m.len(), N_MELS * N_FREQS);
        assert_eq!(N_FREQS, 201);
        for (mel, bin, want) in REFERENCE {
            let got = m[mel * N_FREQS + bin];
            assert!(
                (got - want).abs() <= 1e-8 + want.abs() * 1e-6,
                "filter[{mel}][{bin}] = {got}, librosa {want}"
            );
        }
        // Every triangle has some weight; 391 non-zero weights in all.
        assert_eq!(m.iter().filter(|&&w| w > 0.0).count(), 391);
        let row_sums: Vec<f64> = m
            .chunks(N_FREQS)
            .map(|r| r.iter().map(|&w| f64::from(w)).sum())
            .collect();
        for (mel, want) in [(0, 0.024_862_59), (20, 0.024_862_59), (40, 0.026_664_86)] {
            assert!(
                (row_sums[mel] - want).abs() < 1e-7,
                "row {mel}: {}",
                row_sums[mel]
            );
        }
        let total: f64 = row_sums.iter().sum();
        assert!((total - 1.999_024_092_387_117).abs() < 1e-6, "{total}");
    }

    #[test]
    fn bit_exact_with_librosa() {
        let m = whisper_mel_filters();
        let bytes: Vec<u8> = m.iter().flat_map(|w| (w + 0.0).to_le_bytes()).collect();
        assert_eq!(hex::encode(Sha256::digest(&bytes)), REFERENCE_SHA256);
    }

    #[test]
    fn mel_scale_round_trips() {
        for hz in [0.0, 40.0, 999.0, 1000.0, 1234.5, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(hz)) - hz).abs() < 1e-9, "{hz}");
        }
        assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-12);
        assert!((hz_to_mel(200.0) - 3.0).abs() < 1e-12);
    }
}
