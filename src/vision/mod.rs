//! Vision: the image encoder and what runs on its tokens.
//!
//! - `pth`: legacy torch `.pth` reader (weights as candle tensors);
//! - `efficientnet`: EfficientNet-Lite0 (ImageNet-1k classes, feature tokens);
//! - `prune`: training-free spatial (HiPrune-style) and temporal
//!   (STORM-style) token pruning of the late stages;
//! - `imagenet`: the ImageNet-1k class names.

pub mod efficientnet;
pub mod imagenet;
pub mod prune;
pub mod pth;
