//! Lip-sync: outgoing speech audio in, one mouth pose per video frame out.
//!
//! [`LipSync`] owns the audio-to-mouth mapping. It cuts the stream into video
//! frames (frame `k` covers samples `floor(k*rate/fps)..floor((k+1)*rate/fps)`,
//! so 16 kHz at 25 fps is 640 samples = 40 ms), and for each completed frame:
//!
//! - measures its RMS level in dBFS and gates anything below
//!   [`LipSyncConfig::gate_db`] (silence, breath, codec noise) to a closed mouth;
//! - maps the level to `open` in 0..1 with a soft knee (a smoothstep over a
//!   [`LipSyncConfig::range_db`] window that ends [`LipSyncConfig::full_below_peak_db`]
//!   under a slowly decaying running peak, so quiet and loud voices both move
//!   the mouth well);
//! - smooths `open` with a fast attack and a slower release;
//! - derives `wide` (0 round "oo" .. 1 wide "ee") from the frame's spectral
//!   centre of mass, estimated from first-difference energy (no FFT).
//!
//! It is causal and streaming: a frame's pose is known as soon as its last
//! sample arrives, and the output does not depend on how the audio is chunked
//! (every accumulator is updated sample by sample in the same order).

/// Tuning for [`LipSync`]. The defaults suit TTS output around -20 dBFS.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LipSyncConfig {
    /// Frames quieter than this (dBFS RMS) close the mouth.
    pub gate_db: f32,
    /// The mouth is fully open this many dB below the running peak.
    pub full_below_peak_db: f32,
    /// Width of the soft-knee window below the full-open level, in dB.
    pub range_db: f32,
    /// Starting running peak, in dBFS.
    pub initial_peak_db: f32,
    /// The running peak stays within these bounds (dBFS).
    pub min_peak_db: f32,
    pub max_peak_db: f32,
    /// How fast the running peak falls, in dB per second.
    pub peak_decay_db_per_s: f32,
    /// Opening time constant, ms.
    pub attack_ms: f32,
    /// Closing time constant, ms.
    pub release_ms: f32,
    /// Time constant of `wide`, ms.
    pub wide_ms: f32,
}

impl Default for LipSyncConfig {
    fn default() -> Self {
        LipSyncConfig {
            gate_db: -52.0,
            full_below_peak_db: 1.5,
            range_db: 24.0,
            initial_peak_db: -16.0,
            min_peak_db: -34.0,
            max_peak_db: -6.0,
            peak_decay_db_per_s: 3.0,
            attack_ms: 15.0,
            release_ms: 35.0,
            wide_ms: 60.0,
        }
    }
}

/// The mouth for one video frame.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MouthFrame {
    /// How open, 0..1 (feed to `Pose::mouth_open`).
    pub open: f32,
    /// Round (0) to wide (1); 0.5 neutral (feed to `Pose::mouth_wide`).
    pub wide: f32,
    /// The frame's raw RMS level (linear, full scale 1.0).
    pub rms: f32,
}

/// Streaming audio-to-mouth converter; see the module docs.
#[derive(Debug, Clone)]
pub struct LipSync {
    rate: u32,
    fps: u32,
    cfg: LipSyncConfig,
    /// Samples consumed since the start (or the last flush/reset).
    n: u64,
    /// Index of the frame being accumulated.
    frame: u64,
    /// Sample index where the current frame ends.
    frame_end: u64,
    sum_sq: f64,
    sum_diff_sq: f64,
    count: u32,
    prev: f32,
    have_prev: bool,
    peak_db: f32,
    open: f32,
    wide: f32,
}

impl LipSync {
    /// A lip-sync for mono audio at `sample_rate` Hz and `fps` video frames
    /// per second, with the default tuning. Zero rates are treated as 1.
    pub fn new(sample_rate: u32, fps: u32) -> Self {
        LipSync::with_config(sample_rate, fps, LipSyncConfig::default())
    }

    /// As [`LipSync::new`] with explicit tuning.
    pub fn with_config(sample_rate: u32, fps: u32, cfg: LipSyncConfig) -> Self {
        let mut s = LipSync {
            rate: sample_rate.max(1),
            fps: fps.max(1),
            cfg,
            n: 0,
            frame: 0,
            frame_end: 0,
            sum_sq: 0.0,
            sum_diff_sq: 0.0,
            count: 0,
            prev: 0.0,
            have_prev: false,
            peak_db: cfg.initial_peak_db,
            open: 0.0,
            wide: 0.5,
        };
        s.reset();
        s
    }

    pub fn sample_rate(&self) -> u32 {
        self.rate
    }

    pub fn fps(&self) -> u32 {
        self.fps
    }

    /// Duration of one video frame in ms.
    pub fn frame_ms(&self) -> f64 {
        1000.0 / self.fps as f64
    }

    /// Feeds the next chunk (any length) and returns one pose per video frame
    /// completed by it, in order. Non-finite samples count as silence.
    pub fn push(&mut self, samples: &[f32]) -> Vec<MouthFrame> {
        let mut out = Vec::new();
        for &x in samples {
            let x = if x.is_finite() { x } else { 0.0 };
            self.sum_sq += (x as f64) * (x as f64);
            if self.have_prev {
                let d = (x - self.prev) as f64;
                self.sum_diff_sq += d * d;
            }
            self.prev = x;
            self.have_prev = true;
            self.count += 1;
            self.n += 1;
            if self.n >= self.frame_end {
                out.push(self.finish_frame());
            }
        }
        out
    }

    /// Ends the stream: returns the pose of the partial frame in progress, if
    /// any, and restarts frame counting (the smoothing state is kept, so the
    /// mouth keeps easing from where it was). Call [`LipSync::reset`] to
    /// forget everything.
    pub fn flush(&mut self) -> Option<MouthFrame> {
        let last = if self.count > 0 {
            Some(self.finish_frame())
        } else {
            None
        };
        self.n = 0;
        self.frame = 0;
        self.frame_end = self.boundary(1);
        self.have_prev = false;
        last
    }

    /// Forgets all state (as freshly constructed), e.g. on barge-in.
    pub fn reset(&mut self) {
        self.n = 0;
        self.frame = 0;
        self.frame_end = self.boundary(1);
        self.sum_sq = 0.0;
        self.sum_diff_sq = 0.0;
        self.count = 0;
        self.prev = 0.0;
        self.have_prev = false;
        self.peak_db = self.cfg.initial_peak_db;
        self.open = 0.0;
        self.wide = 0.5;
    }

    /// First sample index of frame `k`.
    fn boundary(&self, k: u64) -> u64 {
        // u128 so hours of 192 kHz audio cannot overflow.
        ((k as u128 * self.rate as u128) / self.fps as u128) as u64
    }

    fn finish_frame(&mut self) -> MouthFrame {
        let n = self.count.max(1) as f64;
        let ms = self.count as f32 * 1000.0 / self.rate as f32;
        let rms = (self.sum_sq / n).sqrt() as f32;
        let db = 20.0 * rms.max(1e-9).log10();
        let c = self.cfg;

        // Running peak: jumps up, decays slowly, stays within bounds.
        self.peak_db = if db > self.peak_db && db > c.gate_db {
            db
        } else {
            self.peak_db - c.peak_decay_db_per_s * ms / 1000.0
        }
        .clamp(c.min_peak_db, c.max_peak_db);

        let target = if db < c.gate_db {
            0.0
        } else {
            let full = self.peak_db - c.full_below_peak_db;
            let x = ((db - (full - c.range_db)) / c.range_db).clamp(0.0, 1.0);
            x * x * (3.0 - 2.0 * x)
        };
        let tau = if target > self.open {
            c.attack_ms
        } else {
            c.release_ms
        };
        self.open += (target - self.open) * (1.0 - (-ms / tau.max(1e-3)).exp());

        // Spectral cue: for a sinusoid at f, E[diff^2]/E[x^2] = 2(1 - cos(2 pi f / rate)).
        let wide_target = if db < c.gate_db || self.sum_sq <= 0.0 {
            0.5
        } else {
            let r = (self.sum_diff_sq / self.sum_sq) as f32;
            let f =
                (1.0 - r / 2.0).clamp(-1.0, 1.0).acos() * self.rate as f32 / std::f32::consts::TAU;
            ((f.max(1.0).log2() - 350f32.log2()) / (1800f32.log2() - 350f32.log2())).clamp(0.0, 1.0)
        };
        self.wide += (wide_target - self.wide) * (1.0 - (-ms / c.wide_ms.max(1e-3)).exp());

        self.frame += 1;
        self.frame_end = self.boundary(self.frame + 1);
        self.sum_sq = 0.0;
        self.sum_diff_sq = 0.0;
        self.count = 0;
        MouthFrame {
            open: self.open,
            wide: self.wide,
            rms,
        }
    }
}
