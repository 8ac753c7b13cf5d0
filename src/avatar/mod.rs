//! The avatar: a procedurally drawn 2-D face that speaks, listens and idles.
//!
//! In the spirit of LLIA (audio-driven avatars with speaking / listening /
//! idle states, low first-frame latency, a steady frame rate), but local,
//! CPU-fast and model-free. These are the synchronous building blocks; an
//! actor elsewhere drives them at the video frame rate:
//!
//! - [`lipsync`]: [`LipSync`] turns outgoing speech audio into one
//!   [`MouthFrame`] (mouth open / wide) per video frame, causally and
//!   independently of chunking.
//! - [`render`]: [`AvatarRenderer`] draws a [`Pose`] (state, mouth, clock)
//!   into an RGB frame in about a millisecond at 256x256; blinks, breathing,
//!   sway, gaze and nods are deterministic functions of the clock.
//!   [`mouth_open_measure`] and [`eye_open_measure`] read a rendered frame
//!   back, so tests can check lip-sync from the pixels.
//! - [`jpeg`](mod@jpeg): [`encode_jpeg`] for the wire, [`contact_sheet`] and
//!   [`save_png`] for looking at frames.
//!
//! ```
//! use duplex::avatar::{AvatarRenderer, AvatarState, LipSync, Pose, encode_jpeg};
//! let mut lips = LipSync::new(16_000, 25);
//! let mut face = AvatarRenderer::new(256);
//! let audio = vec![0.0f32; 640]; // 40 ms of silence
//! for (i, m) in lips.push(&audio).into_iter().enumerate() {
//!     let pose = Pose { state: AvatarState::Speaking, mouth_open: m.open, mouth_wide: m.wide, t_ms: 40 * i as u64 };
//!     let jpeg = encode_jpeg(&face.render(&pose), 80).unwrap();
//!     assert!(jpeg.len() > 1000);
//! }
//! ```

pub mod actor;
pub mod jpeg;
pub mod lipsync;
pub mod render;

#[cfg(test)]
mod tests;

pub use jpeg::{contact_sheet, encode_jpeg, save_png};
pub use lipsync::{LipSync, LipSyncConfig, MouthFrame};
pub use render::{
    AvatarRenderer, AvatarState, DEFAULT_SIZE, Pose, eye_open_measure, eye_openness,
    mouth_open_measure,
};
