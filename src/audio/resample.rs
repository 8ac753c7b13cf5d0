//! Sample-rate conversion of mono `f32` audio: [`StreamResampler`] for live
//! streams fed in arbitrary-sized pieces, and [`resample()`] for whole clips.
//!
//! Built on rubato's synchronous FFT resampler (fixed input chunk of about
//! 20 ms). The resampler's start-up delay is trimmed, so output sample `k`
//! corresponds to input time `k / to_rate`, and a whole stream (all
//! `process` calls plus `flush`) yields `round(n_in * to / from)` samples.

use anyhow::{Context, Result, bail};
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Indexing, Resampler};

/// Input chunk length handed to rubato, in milliseconds.
const CHUNK_MS: usize = 20;

/// Streaming mono resampler. Feed any number of samples per
/// [`process`](Self::process) call; call [`flush`](Self::flush) at the end of
/// the stream to get the tail. After `flush` the resampler is reset and can
/// start a new stream.
///
/// When `from_rate == to_rate` it is a pass-through (no filtering, no delay).
pub struct StreamResampler {
    from_rate: u32,
    to_rate: u32,
    inner: Option<Inner>,
}

struct Inner {
    fft: Fft<f32>,
    from_rate: u32,
    to_rate: u32,
    /// Fixed number of input frames per rubato call.
    chunk_in: usize,
    /// Input received but not yet handed to rubato (always `< chunk_in` between calls).
    pending: Vec<f32>,
    /// Scratch output buffer, `output_frames_max` long.
    out_buf: Vec<f32>,
    /// Zeros fed ahead of each stream so the filter delay is a whole number
    /// of output samples (see [`Inner::new`]).
    lead_in: usize,
    /// Output samples to drop at the start of each stream.
    delay_out: usize,
    /// Output samples still to drop for the current stream.
    to_trim: usize,
    /// Output produced while priming, handed out by the next `process`.
    ready: Vec<f32>,
    /// Input samples received this stream.
    total_in: u64,
    /// Output samples produced (after trimming) this stream.
    total_out: u64,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl StreamResampler {
    /// Create a resampler from `from_rate` Hz to `to_rate` Hz. Both must be non-zero.
    pub fn new(from_rate: u32, to_rate: u32) -> Result<Self> {
        if from_rate == 0 || to_rate == 0 {
            bail!(
                "invalid resampling rates {from_rate} Hz -> {to_rate} Hz: rates must be non-zero"
            );
        }
        let inner = if from_rate == to_rate {
            None
        } else {
            Some(Inner::new(from_rate, to_rate)?)
        };
        Ok(Self {
            from_rate,
            to_rate,
            inner,
        })
    }

    /// Input sample rate in Hz.
    pub fn from_rate(&self) -> u32 {
        self.from_rate
    }

    /// Output sample rate in Hz.
    pub fn to_rate(&self) -> u32 {
        self.to_rate
    }

    /// True when the rates are equal and samples pass straight through.
    pub fn is_passthrough(&self) -> bool {
        self.inner.is_none()
    }

    /// Resample the next piece of the stream. Returns whatever output is
    /// ready. Output lags input by the buffering (one ~20 ms chunk, plus up
    /// to one FFT block when the chunk is not a whole number of blocks) and
    /// the filter delay (about 5-10 ms); [`flush`](Self::flush) releases it.
    pub fn process(&mut self, input: &[f32]) -> Vec<f32> {
        let Some(inner) = self.inner.as_mut() else {
            return input.to_vec();
        };
        inner.total_in += input.len() as u64;
        let mut out = std::mem::take(&mut inner.ready);
        out.reserve(
            (input.len() as u64 * u64::from(self.to_rate) / u64::from(self.from_rate)) as usize
                + 16,
        );
        inner.push(input, &mut out);
        out
    }

    /// End of stream: push out the buffered tail (zero-padded internally) so
    /// the stream's total output is `round(n_in * to / from)` samples, then
    /// reset for a new stream. Returns nothing for a pass-through.
    pub fn flush(&mut self) -> Vec<f32> {
        let Some(inner) = self.inner.as_mut() else {
            return Vec::new();
        };
        let expected = ((u128::from(inner.total_in) * u128::from(self.to_rate)
            + u128::from(self.from_rate) / 2)
            / u128::from(self.from_rate)) as u64;
        let mut out = std::mem::take(&mut inner.ready);
        if inner.total_out < expected {
            let pending = std::mem::take(&mut inner.pending);
            if !pending.is_empty() {
                inner.run_chunk(&pending, Some(pending.len()), &mut out);
            }
            inner.pending = pending; // keep the allocation; cleared below
            // Pump silence until the delayed tail is out. Each call consumes a
            // full chunk of zeros; bound the loop defensively.
            let mut idle_calls = 0;
            while inner.total_out < expected && idle_calls < 1000 {
                let before = inner.total_out;
                inner.run_chunk(&[], Some(0), &mut out);
                if inner.total_out == before {
                    idle_calls += 1;
                }
            }
        }
        let excess = inner.total_out.saturating_sub(expected) as usize;
        out.truncate(out.len().saturating_sub(excess));
        inner.start_stream();
        out
    }

    /// Drop all buffered audio and filter state and start a fresh stream.
    pub fn reset(&mut self) {
        if let Some(inner) = self.inner.as_mut() {
            inner.start_stream();
        }
    }
}

impl Inner {
    fn new(from_rate: u32, to_rate: u32) -> Result<Self> {
        let chunk_in = (from_rate as usize * CHUNK_MS / 1000).max(1);
        let fft = Fft::<f32>::new(
            from_rate as usize,
            to_rate as usize,
            chunk_in,
            1,
            FixedSync::Input,
        )
        .with_context(|| format!("failed to create resampler {from_rate} Hz -> {to_rate} Hz"))?;

        // rubato's FFT filter is centred on input sample `fft_size_in / 2`
        // (integer division), so its delay is that many *input* samples, which
        // is generally a fractional number of output samples (its
        // `output_delay()` rounds, leaving up to half an output sample of
        // skew). Feeding `lead_in` zeros first makes the total delay a
        // multiple of the smallest input block `from / gcd`, hence a whole
        // number of output samples that can be trimmed exactly. The lead-in
        // adds no latency to the signal: it only shifts where chunks start.
        let (from, to) = (u64::from(from_rate), u64::from(to_rate));
        let min_in = (from / gcd(from, to)) as usize;
        let half = fft.fft_size_in() / 2;
        let lead_in = (min_in - half % min_in) % min_in;
        let delay_out = ((half + lead_in) as u64 * to / from) as usize;

        let out_buf = vec![0.0; fft.output_frames_max()];
        let mut inner = Self {
            fft,
            from_rate,
            to_rate,
            chunk_in,
            pending: Vec::with_capacity(chunk_in),
            out_buf,
            lead_in,
            delay_out,
            to_trim: delay_out,
            ready: Vec::new(),
            total_in: 0,
            total_out: 0,
        };
        inner.start_stream();
        Ok(inner)
    }

    /// Reset all state and prime the filter with the lead-in zeros.
    fn start_stream(&mut self) {
        self.fft.reset();
        self.pending.clear();
        self.ready.clear();
        self.to_trim = self.delay_out;
        self.total_in = 0;
        self.total_out = 0;
        if self.lead_in > 0 {
            let zeros = vec![0.0; self.lead_in];
            let mut ready = std::mem::take(&mut self.ready);
            self.push(&zeros, &mut ready);
            self.ready = ready;
        }
    }

    /// Buffer `input` into whole chunks, run each full chunk, append output to `out`.
    fn push(&mut self, mut input: &[f32], out: &mut Vec<f32>) {
        let chunk = self.chunk_in;
        // Top up a partially filled pending chunk first.
        if !self.pending.is_empty() {
            let take = (chunk - self.pending.len()).min(input.len());
            self.pending.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.pending.len() < chunk {
                return;
            }
            let pending = std::mem::take(&mut self.pending);
            self.run_chunk(&pending, None, out);
            self.pending = pending;
            self.pending.clear();
        }
        // Then whole chunks straight from the caller's slice.
        while input.len() >= chunk {
            self.run_chunk(&input[..chunk], None, out);
            input = &input[chunk..];
        }
        self.pending.extend_from_slice(input);
    }

    /// Feed one chunk (`partial` = number of valid frames when shorter than
    /// `chunk_in`) and append the delay-trimmed output to `out`.
    fn run_chunk(&mut self, input: &[f32], partial: Option<usize>, out: &mut Vec<f32>) {
        let frames_in = input.len();
        let Ok(adapter_in) = InterleavedSlice::new(input, 1, frames_in) else {
            tracing::error!(frames_in, "resampler: bad input adapter size");
            return;
        };
        let frames_out = self.out_buf.len();
        let Ok(mut adapter_out) = InterleavedSlice::new_mut(&mut self.out_buf, 1, frames_out)
        else {
            tracing::error!(frames_out, "resampler: bad output adapter size");
            return;
        };
        let indexing = partial.map(|n| Indexing::new().partial_len(n));
        match self
            .fft
            .process_into_buffer(&adapter_in, &mut adapter_out, indexing.as_ref())
        {
            Ok((_, produced)) => {
                let produced = &self.out_buf[..produced.min(self.out_buf.len())];
                let skip = self.to_trim.min(produced.len());
                self.to_trim -= skip;
                out.extend_from_slice(&produced[skip..]);
                self.total_out += (produced.len() - skip) as u64;
            }
            Err(e) => {
                // Only reachable on a buffer-size bug; don't take the server down.
                tracing::error!(
                    error = %e,
                    from = self.from_rate,
                    to = self.to_rate,
                    "resampler chunk failed; dropping it"
                );
            }
        }
    }
}

/// Resample a whole mono clip from `from_rate` to `to_rate` Hz. The output
/// has `round(len * to / from)` samples, time-aligned with the input.
pub fn resample(samples: &[f32], from_rate: u32, to_rate: u32) -> Result<Vec<f32>> {
    if from_rate == to_rate && from_rate != 0 {
        return Ok(samples.to_vec());
    }
    let mut rs = StreamResampler::new(from_rate, to_rate)?;
    let mut out = rs.process(samples);
    out.extend(rs.flush());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    const RATES: [u32; 6] = [8000, 16000, 22050, 24000, 44100, 48000];

    fn sine(freq: f64, rate: u32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (0.5 * (2.0 * PI * freq * i as f64 / f64::from(rate)).sin()) as f32)
            .collect()
    }

    fn expected_len(n: usize, from: u32, to: u32) -> usize {
        ((n as f64) * f64::from(to) / f64::from(from)).round() as usize
    }

    /// Goertzel power of `freq` in `x`, normalised by length.
    fn goertzel(x: &[f32], freq: f64, rate: u32) -> f64 {
        let w = 2.0 * PI * freq / f64::from(rate);
        let coeff = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for &v in x {
            let s0 = f64::from(v) + coeff * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (x.len() as f64).powi(2)
    }

    fn zero_crossings(x: &[f32]) -> usize {
        x.windows(2)
            .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
            .count()
    }

    /// Time offset (seconds) of a sine of `freq` in `y` relative to an ideal
    /// `sin(2 pi f k / rate)`: positive means `y` lags.
    fn sine_lag_secs(y: &[f32], freq: f64, rate: u32) -> f64 {
        let (mut ss, mut sc) = (0.0f64, 0.0f64);
        for (k, &v) in y.iter().enumerate() {
            let ph = 2.0 * PI * freq * k as f64 / f64::from(rate);
            ss += f64::from(v) * ph.sin();
            sc += f64::from(v) * ph.cos();
        }
        // y ~ sin(ph - d) = sin(ph)cos(d) - cos(ph)sin(d)
        let d = (-sc).atan2(ss);
        d / (2.0 * PI * freq)
    }

    fn check_sine(from: u32, to: u32) {
        let n = from as usize + 37; // ~1 s, not a multiple of the chunk
        let x = sine(1000.0, from, n);
        let y = resample(&x, from, to).expect("resample");
        // Exact by construction (the brief allows +-2).
        assert_eq!(
            y.len(),
            expected_len(n, from, to),
            "{from}->{to}: output length"
        );

        // Steady-state region (skip 10 ms at each end).
        let edge = to as usize / 100;
        let mid = &y[edge..y.len() - edge];

        // Dominant frequency preserved.
        let zc = zero_crossings(mid) as f64;
        let want_zc = 2.0 * 1000.0 * mid.len() as f64 / f64::from(to);
        assert!(
            (zc - want_zc).abs() <= 4.0,
            "{from}->{to}: {zc} crossings, want {want_zc}"
        );
        let p = goertzel(mid, 1000.0, to);
        for other in [700.0, 1300.0, 2000.0] {
            assert!(
                p > 100.0 * goertzel(mid, other, to),
                "{from}->{to}: {other} Hz too strong"
            );
        }

        // Start-up delay trimmed: phase agrees with the ideal sine on the output grid.
        let ideal = sine(1000.0, to, y.len());
        let lag = sine_lag_secs(mid, 1000.0, to)
            - sine_lag_secs(&ideal[edge..y.len() - edge], 1000.0, to);
        assert!(
            lag.abs() < 0.01e-3,
            "{from}->{to}: phase lag {} ms",
            lag * 1e3
        );

        // And sample-by-sample it matches the ideal output closely.
        let max_err = mid
            .iter()
            .zip(&ideal[edge..])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(max_err < 1e-3, "{from}->{to}: max error {max_err}");
    }

    #[test]
    fn sine_8k_to_16k() {
        check_sine(8000, 16000);
    }

    #[test]
    fn sine_44k1_to_16k() {
        check_sine(44100, 16000);
    }

    #[test]
    fn sine_all_rate_pairs() {
        for &from in &RATES {
            for &to in &RATES {
                if from != to {
                    check_sine(from, to);
                }
            }
        }
    }

    /// A non-periodic signal pins the delay down absolutely (a sine only
    /// does so modulo one period).
    #[test]
    fn chirp_cross_correlation_has_zero_lag() {
        let chirp = |rate: u32, n: usize| -> Vec<f32> {
            // 200 Hz -> 3000 Hz over 1 s, under every Nyquist in use.
            (0..n)
                .map(|i| {
                    let t = i as f64 / f64::from(rate);
                    (0.5 * (2.0 * PI * (200.0 * t + 1400.0 * t * t)).sin()) as f32
                })
                .collect()
        };
        for (from, to) in [(8000, 16000), (44100, 16000), (16000, 24000), (48000, 8000)] {
            let x = chirp(from, from as usize);
            let y = resample(&x, from, to).expect("resample");
            let ideal = chirp(to, y.len());
            let max_lag = (to / 50) as i64; // +-20 ms
            let edge = (to / 50) as usize;
            let mut best = (i64::MIN, f64::MIN);
            for lag in -max_lag..=max_lag {
                let acc: f64 = (edge..y.len() - edge)
                    .map(|k| f64::from(y[k]) * f64::from(ideal[(k as i64 - lag) as usize]))
                    .sum();
                if acc > best.1 {
                    best = (lag, acc);
                }
            }
            let lag_ms = best.0 as f64 * 1000.0 / f64::from(to);
            assert!(lag_ms.abs() < 1.0, "{from}->{to}: lag {} samples", best.0);
            assert_eq!(best.0, 0, "{from}->{to}: lag {} samples", best.0);
        }
    }

    #[test]
    fn uneven_pieces_match_single_call() {
        for (from, to) in [
            (8000, 16000),
            (44100, 16000),
            (24000, 16000),
            (16000, 48000),
        ] {
            let x = sine(1000.0, from, from as usize / 2 + 123);
            let whole = resample(&x, from, to).expect("resample");

            let mut rs = StreamResampler::new(from, to).expect("new");
            let pieces = [37usize, 160, 1, 999];
            let mut out = Vec::new();
            let mut pos = 0;
            let mut i = 0;
            while pos < x.len() {
                let len = pieces[i % pieces.len()].min(x.len() - pos);
                out.extend(rs.process(&x[pos..pos + len]));
                pos += len;
                i += 1;
            }
            out.extend(rs.process(&[]));
            out.extend(rs.flush());
            assert_eq!(out.len(), whole.len(), "{from}->{to}");
            let diff = out
                .iter()
                .zip(&whole)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(diff < 1e-4, "{from}->{to}: max diff {diff}");
        }
    }

    #[test]
    fn reusable_after_flush_and_lengths_for_short_inputs() {
        let mut rs = StreamResampler::new(22050, 16000).expect("new");
        for n in [0usize, 1, 2, 7, 100, 441, 442, 5000] {
            let x = sine(440.0, 22050, n);
            let mut y = rs.process(&x);
            y.extend(rs.flush());
            let want = expected_len(n, 22050, 16000);
            assert!(
                (y.len() as i64 - want as i64).abs() <= 2,
                "n={n}: {} vs {want}",
                y.len()
            );
        }
    }

    #[test]
    fn identity_passes_through() {
        let mut rs = StreamResampler::new(16000, 16000).expect("new");
        assert!(rs.is_passthrough());
        let x = sine(1000.0, 16000, 321);
        assert_eq!(rs.process(&x), x);
        assert!(rs.flush().is_empty());
        assert_eq!(resample(&x, 24000, 24000).expect("identity"), x);
    }

    #[test]
    fn zero_rate_rejected() {
        assert!(StreamResampler::new(0, 16000).is_err());
        assert!(StreamResampler::new(16000, 0).is_err());
        assert!(resample(&[0.0], 0, 0).is_err());
    }
}
