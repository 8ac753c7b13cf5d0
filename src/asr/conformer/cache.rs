//! The activation caches of cache-based inference: per layer, the last
//! left-context frames of the attention input (NeMo's `cache_last_channel`)
//! and the last `kernel - 1` inputs of the causal depthwise convolution
//! (`cache_last_time`), plus how many encoder frames the stream has
//! consumed (the absolute position of the next chunk, which the attention
//! mask needs). Tensors are immutable and shared, so a copy of the caches
//! (for a speculative final) costs nothing.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

/// One layer's caches.
#[derive(Clone, Debug)]
pub struct LayerCache {
    /// `frames x d_model`: normalized attention inputs of the last frames
    /// (at most the left context; fewer at the start of an utterance).
    pub channel: Option<Tensor>,
    /// `(kernel - 1) x d_model`: the depthwise convolution's last inputs
    /// (zeros at the start, as the causal left padding).
    pub time: Tensor,
}

impl LayerCache {
    /// Number of frames in the attention cache.
    pub fn channel_len(&self) -> usize {
        self.channel.as_ref().map_or(0, |c| c.dims()[0])
    }
}

/// The encoder's caches for one stream.
#[derive(Clone, Debug)]
pub struct EncoderCache {
    pub layers: Vec<LayerCache>,
    /// Encoder frames already consumed.
    pub frames_done: usize,
}

impl EncoderCache {
    /// Empty caches: no left context, zero convolution history.
    pub fn new(n_layers: usize, d_model: usize, kernel: usize) -> Result<EncoderCache> {
        let time = Tensor::zeros((kernel - 1, d_model), DType::F32, &Device::Cpu)?;
        Ok(EncoderCache {
            layers: (0..n_layers)
                .map(|_| LayerCache {
                    channel: None,
                    time: time.clone(),
                })
                .collect(),
            frames_done: 0,
        })
    }
}
