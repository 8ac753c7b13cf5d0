//! Vision: what the camera shows, for the conversation.
//!
//! - [`pth`]: legacy torch `.pth` reader (weights as candle tensors);
//! - [`efficientnet`]: EfficientNet-Lite0 (ImageNet-1k classes, feature
//!   tokens);
//! - [`prune`]: training-free spatial (HiPrune-style) and temporal
//!   (STORM-style) token pruning of the encoder's late stages;
//! - [`tokens`]: which of the encoder's output tokens the expert works on
//!   (merged PruMerge-style or dropped HiPrune-style, STORM-style temporal
//!   pooling);
//! - [`imagenet`]: the ImageNet-1k class names;
//! - [`sampler`]: which camera frames are worth encoding;
//! - [`analyzer`]: one frame through the pruned encoder to named, placed
//!   labels;
//! - [`expert`]: labels tracked over time, as prompt text and memory
//!   observations;
//! - [`actor`]: the `vision` node (camera frames in, scenes out, off the
//!   reactor).

pub mod actor;
pub mod analyzer;
pub mod efficientnet;
pub mod expert;
pub mod imagenet;
pub mod prune;
pub mod pth;
pub mod sampler;
pub mod tokens;
