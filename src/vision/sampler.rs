//! The frame sampler: which camera frames are worth encoding.
//!
//! A camera sends 5-30 frames a second; the vision encoder needs a handful.
//! [`FrameSampler`] keeps a frame when its content changed (the mean absolute
//! difference of a 16x16 grey thumbnail against the last kept frame, a few
//! microseconds) and otherwise at a pace set by the conversation: every
//! `speaking_interval_ms` while the user speaks (they may be showing
//! something), every `idle_interval_ms` otherwise. A near-duplicate of the
//! last kept frame is skipped however long ago that was, until
//! `max_stale_ms`, so a still camera costs almost nothing (the temporal-
//! sparsity idea: no work where frames do not change).

use serde::Serialize;

/// Side of the grey thumbnail the sampler compares.
pub const THUMB_SIDE: usize = 16;

/// A frame reduced to a `THUMB_SIDE` x `THUMB_SIDE` grey thumbnail (0..1).
#[derive(Debug, Clone, PartialEq)]
pub struct Thumbnail(Vec<f32>);

impl Thumbnail {
    /// Box-averages an RGB image down to the thumbnail.
    pub fn of(image: &image::RgbImage) -> Thumbnail {
        let (w, h) = (image.width() as usize, image.height() as usize);
        let mut sums = vec![0.0f32; THUMB_SIDE * THUMB_SIDE];
        let mut counts = vec![0u32; THUMB_SIDE * THUMB_SIDE];
        if w == 0 || h == 0 {
            return Thumbnail(sums);
        }
        // Every second pixel of every second row is plenty for a thumbnail.
        for y in (0..h).step_by(2) {
            let ty = y * THUMB_SIDE / h;
            for x in (0..w).step_by(2) {
                let tx = x * THUMB_SIDE / w;
                let p = image.get_pixel(x as u32, y as u32).0;
                let grey = 0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32;
                sums[ty * THUMB_SIDE + tx] += grey / 255.0;
                counts[ty * THUMB_SIDE + tx] += 1;
            }
        }
        for (s, c) in sums.iter_mut().zip(&counts) {
            if *c > 0 {
                *s /= *c as f32;
            }
        }
        Thumbnail(sums)
    }

    /// Mean absolute difference to `other`, 0 (same) .. 1.
    pub fn difference(&self, other: &Thumbnail) -> f32 {
        let n = self.0.len().max(1) as f32;
        self.0
            .iter()
            .zip(&other.0)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / n
    }
}

/// What the conversation is doing, which sets how often frames are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activity {
    /// The user is speaking: keep frames often.
    UserSpeaking,
    /// Nobody, or the agent, is speaking: keep frames rarely.
    Idle,
}

/// Why a frame was kept or skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The first frame of the stream.
    First,
    /// The content changed since the last kept frame.
    Changed,
    /// The pace of the current activity asks for a fresh look.
    Periodic,
    /// A near-duplicate, but the last look is older than `max_stale_ms`.
    Stale,
    /// Skipped: too soon after the last kept frame.
    TooSoon,
    /// Skipped: the same picture as the last kept frame.
    Duplicate,
    /// Skipped: a small change, and the activity's interval has not passed.
    Waiting,
}

impl Verdict {
    pub fn keep(self) -> bool {
        matches!(
            self,
            Verdict::First | Verdict::Changed | Verdict::Periodic | Verdict::Stale
        )
    }
}

/// The sampler's settings (the `vision` node's parameters).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerSettings {
    /// Never keep two frames closer than this.
    pub min_interval_ms: u64,
    /// While the user speaks, keep a frame at least this often.
    pub speaking_interval_ms: u64,
    /// Otherwise, keep a frame at least this often.
    pub idle_interval_ms: u64,
    /// Thumbnail difference from which a frame counts as changed.
    pub change_threshold: f32,
    /// Thumbnail difference under which a frame is a duplicate.
    pub duplicate_threshold: f32,
    /// A duplicate is still kept when the last look is this old.
    pub max_stale_ms: u64,
}

impl Default for SamplerSettings {
    fn default() -> Self {
        SamplerSettings {
            min_interval_ms: 200,
            speaking_interval_ms: 1000,
            idle_interval_ms: 5000,
            change_threshold: 0.06,
            duplicate_threshold: 0.012,
            max_stale_ms: 30_000,
        }
    }
}

/// Decides frame by frame; one per camera stream.
#[derive(Debug, Clone)]
pub struct FrameSampler {
    settings: SamplerSettings,
    last_kept: Option<(u64, Thumbnail)>,
}

impl FrameSampler {
    pub fn new(settings: SamplerSettings) -> Self {
        FrameSampler {
            settings,
            last_kept: None,
        }
    }

    /// Judges the frame at `t_ms`; a kept frame becomes the new reference.
    pub fn consider(&mut self, t_ms: u64, thumb: Thumbnail, activity: Activity) -> Verdict {
        let s = self.settings;
        let verdict = match &self.last_kept {
            None => Verdict::First,
            Some((at, last)) => {
                let gap = t_ms.saturating_sub(*at);
                let change = thumb.difference(last);
                let interval = match activity {
                    Activity::UserSpeaking => s.speaking_interval_ms,
                    Activity::Idle => s.idle_interval_ms,
                };
                if gap < s.min_interval_ms {
                    Verdict::TooSoon
                } else if change >= s.change_threshold {
                    Verdict::Changed
                } else if change < s.duplicate_threshold {
                    if gap >= s.max_stale_ms {
                        Verdict::Stale
                    } else {
                        Verdict::Duplicate
                    }
                } else if gap >= interval {
                    Verdict::Periodic
                } else {
                    Verdict::Waiting
                }
            }
        };
        if verdict.keep() {
            self.last_kept = Some((t_ms, thumb));
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(level: u8) -> image::RgbImage {
        image::RgbImage::from_pixel(64, 48, image::Rgb([level, level, level]))
    }

    /// A grey frame with a bright square whose left edge is at `x`.
    fn square_at(x: u32) -> image::RgbImage {
        let mut img = flat(40);
        for yy in 10..30 {
            for xx in x..(x + 20).min(64) {
                img.put_pixel(xx, yy, image::Rgb([230, 230, 230]));
            }
        }
        img
    }

    #[test]
    fn thumbnail_difference_measures_change() {
        let a = Thumbnail::of(&flat(0));
        let b = Thumbnail::of(&flat(255));
        assert!((a.difference(&b) - 1.0).abs() < 1e-3);
        assert_eq!(a.difference(&a), 0.0);
        let moved = Thumbnail::of(&square_at(0)).difference(&Thumbnail::of(&square_at(40)));
        assert!(moved > 0.06, "a moved object is a change: {moved}");
    }

    #[test]
    fn still_camera_is_skipped_moving_one_kept() {
        let mut s = FrameSampler::new(SamplerSettings::default());
        let still = Thumbnail::of(&square_at(10));
        assert_eq!(s.consider(0, still.clone(), Activity::Idle), Verdict::First);
        assert_eq!(
            s.consider(100, still.clone(), Activity::Idle),
            Verdict::TooSoon
        );
        // 25 fps of the same picture for 10 s: nothing kept.
        let kept = (1..250)
            .map(|i| s.consider(i * 40 + 200, still.clone(), Activity::Idle))
            .filter(|v| v.keep())
            .count();
        assert_eq!(kept, 0);
        // Something moves: kept at once.
        let moved = Thumbnail::of(&square_at(40));
        assert_eq!(s.consider(10_400, moved, Activity::Idle), Verdict::Changed);
        // Stale after max_stale_ms even when nothing changes.
        assert_eq!(
            s.consider(40_400, Thumbnail::of(&square_at(40)), Activity::Idle),
            Verdict::Stale
        );
    }

    #[test]
    fn small_changes_are_kept_more_often_while_the_user_speaks() {
        // A slow pan: small changes every frame.
        let frames: Vec<Thumbnail> = (0..100).map(|i| Thumbnail::of(&square_at(i / 4))).collect();
        let count = |activity| {
            let mut s = FrameSampler::new(SamplerSettings::default());
            frames
                .iter()
                .enumerate()
                .filter(|(i, t)| s.consider(*i as u64 * 100, (*t).clone(), activity).keep())
                .count()
        };
        let speaking = count(Activity::UserSpeaking);
        let idle = count(Activity::Idle);
        assert!(speaking > idle, "speaking {speaking} vs idle {idle}");
        assert!(speaking < 100, "not every frame: {speaking}");
    }
}
