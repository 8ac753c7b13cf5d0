//! Vision: what the camera shows, for the conversation.
//!
//! - [`sampler`]: which camera frames are worth encoding.
//! - [`expert`]: labels tracked over time, as prompt text and memory
//!   observations.

pub mod expert;
pub mod sampler;
