//! The FastConformer encoder: 8x depthwise-separable convolutional
//! subsampling (`encoder.pre_encode`) and Conformer blocks (feed-forward
//! halves, relative-position multi-head self-attention, causal depthwise
//! convolution module), with NeMo's parameter names and shapes.
//!
//! Two ways to run it that give the same numbers:
//! - offline ([`Encoder::forward_offline`]): the whole utterance at once,
//!   attention limited by the `chunked_limited` mask of NeMo's
//!   `att_context_size = [left, right]` (frames grouped in chunks of
//!   `right + 1`; a frame sees its own chunk and `left / (right + 1)`
//!   chunks before it);
//! - streaming ([`Encoder::forward_chunk`]): one chunk at a time, keys and
//!   values taken from the cached attention inputs of earlier chunks and the
//!   depthwise convolution continued from its cached last inputs
//!   ([`EncoderCache`]). Relative positions are absolute query position
//!   minus absolute key position, so they are the same in both.
//!
//! The subsampling is streamed by recomputing a window of feature frames
//! that starts 24 frames (three outputs) before the first new output, which
//! makes every kept output identical to the offline one.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use candle_core::{D, DType, Device, Tensor};

use super::cache::{EncoderCache, LayerCache};
use super::config::{ConvNorm, EncoderConfig, SUBSAMPLING};

const NORM_EPS: f64 = 1e-5;
const MASKED: f32 = -1e30;

/// Named weights (NeMo state-dict names) with shape checks.
pub struct Weights {
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    pub fn new(tensors: HashMap<String, Tensor>) -> Weights {
        Weights { tensors }
    }

    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .with_context(|| format!("the checkpoint has no {name}"))?;
        if t.dims() != shape {
            bail!("{name} has shape {:?}, expected {shape:?}", t.dims());
        }
        Ok(t.to_dtype(DType::F32)?)
    }

    pub fn get_opt(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        if self.tensors.contains_key(name) {
            self.get(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn raw(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }
}

/// Width of the subsampled feature axis after the three stride-2 convs.
pub fn subsampled_freq(cfg: &EncoderConfig) -> usize {
    (0..3).fold(cfg.feat_in, |f, _| {
        if cfg.causal_downsampling {
            f / 2 + 1
        } else {
            (f - 1) / 2 + 1
        }
    })
}

/// Encoder frames the subsampling gives `frames` feature frames (NeMo's
/// `calc_length`).
pub fn subsampled_len(cfg: &EncoderConfig, frames: usize) -> usize {
    if frames == 0 {
        return 0;
    }
    (0..3).fold(frames, |l, _| {
        if cfg.causal_downsampling {
            l / 2 + 1
        } else {
            (l - 1) / 2 + 1
        }
    })
}

/// Every encoder parameter (NeMo name, shape), plus the CTC head's under
/// `ctc_prefix` with `vocab + 1` classes (blank last).
pub fn parameter_shapes(
    cfg: &EncoderConfig,
    ctc_prefix: &str,
    vocab: usize,
) -> Vec<(String, Vec<usize>)> {
    let d = cfg.d_model;
    let c = cfg.subsampling_conv_channels;
    let ff = d * cfg.ff_expansion_factor;
    let dk = d / cfg.n_heads;
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>| out.push((name, shape));
    let pre = "encoder.pre_encode";
    add(format!("{pre}.conv.0.weight"), vec![c, 1, 3, 3]);
    add(format!("{pre}.conv.0.bias"), vec![c]);
    for (dw, pw) in [(2, 3), (5, 6)] {
        add(format!("{pre}.conv.{dw}.weight"), vec![c, 1, 3, 3]);
        add(format!("{pre}.conv.{dw}.bias"), vec![c]);
        add(format!("{pre}.conv.{pw}.weight"), vec![c, c, 1, 1]);
        add(format!("{pre}.conv.{pw}.bias"), vec![c]);
    }
    add(
        format!("{pre}.out.weight"),
        vec![d, c * subsampled_freq(cfg)],
    );
    add(format!("{pre}.out.bias"), vec![d]);
    for i in 0..cfg.n_layers {
        let l = format!("encoder.layers.{i}");
        let mut linear = |name: String, o: usize, inp: usize, bias: bool| {
            add(format!("{name}.weight"), vec![o, inp]);
            if bias {
                add(format!("{name}.bias"), vec![o]);
            }
        };
        let b = cfg.use_bias;
        for ffn in ["feed_forward1", "feed_forward2"] {
            linear(format!("{l}.{ffn}.linear1"), ff, d, b);
            linear(format!("{l}.{ffn}.linear2"), d, ff, b);
        }
        for proj in ["linear_q", "linear_k", "linear_v", "linear_out"] {
            linear(format!("{l}.self_attn.{proj}"), d, d, b);
        }
        linear(format!("{l}.self_attn.linear_pos"), d, d, false);
        add(format!("{l}.self_attn.pos_bias_u"), vec![cfg.n_heads, dk]);
        add(format!("{l}.self_attn.pos_bias_v"), vec![cfg.n_heads, dk]);
        add(
            format!("{l}.conv.pointwise_conv1.weight"),
            vec![2 * d, d, 1],
        );
        add(
            format!("{l}.conv.depthwise_conv.weight"),
            vec![d, 1, cfg.conv_kernel_size],
        );
        add(format!("{l}.conv.pointwise_conv2.weight"), vec![d, d, 1]);
        if b {
            add(format!("{l}.conv.pointwise_conv1.bias"), vec![2 * d]);
            add(format!("{l}.conv.depthwise_conv.bias"), vec![d]);
            add(format!("{l}.conv.pointwise_conv2.bias"), vec![d]);
        }
        add(format!("{l}.conv.batch_norm.weight"), vec![d]);
        add(format!("{l}.conv.batch_norm.bias"), vec![d]);
        if cfg.conv_norm == ConvNorm::BatchNorm {
            add(format!("{l}.conv.batch_norm.running_mean"), vec![d]);
            add(format!("{l}.conv.batch_norm.running_var"), vec![d]);
        }
        for norm in [
            "norm_feed_forward1",
            "norm_self_att",
            "norm_conv",
            "norm_feed_forward2",
            "norm_out",
        ] {
            add(format!("{l}.{norm}.weight"), vec![d]);
            add(format!("{l}.{norm}.bias"), vec![d]);
        }
    }
    add(
        format!("{ctc_prefix}.decoder_layers.0.weight"),
        vec![vocab + 1, d, 1],
    );
    add(
        format!("{ctc_prefix}.decoder_layers.0.bias"),
        vec![vocab + 1],
    );
    out
}

/// Random weights for every parameter (deterministic from `seed`): linear
/// and conv weights uniform in +-1/sqrt(fan_in), norms near identity,
/// batch-norm statistics near (0, 1). For tests and timing.
pub fn random_weights(
    cfg: &EncoderConfig,
    ctc_prefix: &str,
    vocab: usize,
    seed: u64,
) -> Result<HashMap<String, Tensor>> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let bits = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
        bits as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let mut out = HashMap::new();
    for (name, shape) in parameter_shapes(cfg, ctc_prefix, vocab) {
        let n: usize = shape.iter().product();
        let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
        let values: Vec<f32> = if name.ends_with("running_var") {
            (0..n).map(|_| 1.0 + 0.2 * uniform()).collect()
        } else if name.ends_with("running_mean") {
            (0..n).map(|_| 0.1 * uniform()).collect()
        } else if name.contains("norm") && name.ends_with(".weight") && shape.len() == 1 {
            (0..n).map(|_| 1.0 + 0.1 * uniform()).collect()
        } else if name.contains("pos_bias") || shape.len() == 1 {
            (0..n).map(|_| 0.1 * uniform()).collect()
        } else {
            let scale = 1.0 / (fan_in as f32).sqrt();
            (0..n).map(|_| scale * uniform()).collect()
        };
        out.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
    }
    Ok(out)
}

/// Makes random weights "talk": matrices scaled by 4, so the output follows
/// the speech rather than the features' large mean (at gain 1 a random
/// model emits one token for a whole clip), and the CTC blank disabled, so
/// every change of class is a token. For tests of streaming structure.
pub fn make_talkative(weights: &mut HashMap<String, Tensor>, ctc_prefix: &str) -> Result<()> {
    for (name, w) in weights.iter_mut() {
        if w.rank() >= 2 && !name.contains("pos_bias") {
            *w = (&*w * 4.0)?;
        }
    }
    let name = format!("{ctc_prefix}.decoder_layers.0.bias");
    let bias = weights
        .get_mut(&name)
        .with_context(|| format!("no {name}"))?;
    let mut values = bias.to_vec1::<f32>()?;
    if let Some(blank) = values.last_mut() {
        *blank = -1e3;
    }
    *bias = Tensor::new(values, &Device::Cpu)?;
    Ok(())
}

struct Linear {
    /// `in x out`, contiguous.
    wt: Tensor,
    b: Option<Tensor>,
}

impl Linear {
    fn load(w: &Weights, name: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let weight = w.get(&format!("{name}.weight"), &[out, inp])?;
        let b = if bias {
            Some(w.get(&format!("{name}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Linear {
            wt: weight.t()?.contiguous()?,
            b,
        })
    }

    /// A 1x1 convolution (`out x in x 1`) as a linear layer.
    fn load_pointwise(
        w: &Weights,
        name: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<Linear> {
        let weight = w.get(&format!("{name}.weight"), &[out, inp, 1])?;
        let b = if bias {
            Some(w.get(&format!("{name}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Linear {
            wt: weight.reshape((out, inp))?.t()?.contiguous()?,
            b,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.wt)?;
        Ok(match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    fn params(&self) -> usize {
        self.wt.elem_count() + self.b.as_ref().map_or(0, Tensor::elem_count)
    }
}

struct Norm {
    w: Tensor,
    b: Tensor,
}

impl Norm {
    fn load(w: &Weights, name: &str, d: usize) -> Result<Norm> {
        Ok(Norm {
            w: w.get(&format!("{name}.weight"), &[d])?,
            b: w.get(&format!("{name}.bias"), &[d])?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::layer_norm(
            x,
            &self.w,
            &self.b,
            NORM_EPS as f32,
        )?)
    }
}

struct FeedForward {
    linear1: Linear,
    linear2: Linear,
}

impl FeedForward {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.linear2.forward(&self.linear1.forward(x)?.silu()?)
    }
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    pos: Linear,
    /// `heads x 1 x d_k`.
    bias_u: Tensor,
    bias_v: Tensor,
}

enum ConvNormLayer {
    /// Inference batch norm as a per-channel affine.
    Batch {
        scale: Tensor,
        shift: Tensor,
    },
    Layer(Norm),
}

struct ConvModule {
    pointwise1: Linear,
    /// `kernel x d`: the depthwise taps, tap `k` applied to input `t - K + 1 + k`.
    depthwise: Tensor,
    depthwise_bias: Option<Tensor>,
    norm: ConvNormLayer,
    pointwise2: Linear,
}

struct Layer {
    norm_ff1: Norm,
    ff1: FeedForward,
    norm_att: Norm,
    att: Attention,
    norm_conv: Norm,
    conv: ConvModule,
    norm_ff2: Norm,
    ff2: FeedForward,
    norm_out: Norm,
}

struct Conv2d {
    w: Tensor,
    /// `1 x C x 1 x 1`.
    b: Tensor,
    groups: usize,
    stride: usize,
}

/// The encoder with its weights.
pub struct Encoder {
    pub cfg: EncoderConfig,
    subsampling: Vec<Conv2d>,
    pre_out: Linear,
    layers: Vec<Layer>,
    params: usize,
}

/// Attention context of a stream: `[left, right]` in encoder frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttContext {
    pub left: usize,
    pub right: usize,
}

impl AttContext {
    pub fn new(context: [usize; 2]) -> AttContext {
        AttContext {
            left: context[0],
            right: context[1],
        }
    }

    /// Frames per chunk.
    pub fn chunk(&self) -> usize {
        self.right + 1
    }

    /// Whether query frame `q` may attend to key frame `k` (absolute
    /// indices): NeMo's `chunked_limited` mask.
    pub fn allows(&self, q: usize, k: usize) -> bool {
        let chunk = self.chunk();
        let left_chunks = self.left / chunk;
        let (cq, ck) = (q / chunk, k / chunk);
        ck <= cq && cq - ck <= left_chunks
    }
}

/// Sinusoidal embeddings of relative positions `first, first - 1, ...,
/// first - count + 1` (NeMo's `RelPositionalEncoding`).
fn rel_positions(first: i64, count: usize, d: usize) -> Result<Tensor> {
    let mut data = Vec::with_capacity(count * d);
    let inv: Vec<f32> = (0..d / 2)
        .map(|m| (-((2 * m) as f32) * (10000f32.ln() / d as f32)).exp())
        .collect();
    for r in 0..count {
        let pos = (first - r as i64) as f32;
        for f in &inv {
            let angle = pos * f;
            data.push(angle.sin());
            data.push(angle.cos());
        }
    }
    Ok(Tensor::from_vec(data, (count, d), &Device::Cpu)?)
}

impl Encoder {
    pub fn load(cfg: &EncoderConfig, w: &Weights) -> Result<Encoder> {
        let d = cfg.d_model;
        let c = cfg.subsampling_conv_channels;
        let h = cfg.n_heads;
        let dk = d / h;
        let ff = d * cfg.ff_expansion_factor;
        let bias = cfg.use_bias;
        let pre = "encoder.pre_encode";
        let conv =
            |idx: usize, shape: [usize; 4], groups: usize, stride: usize| -> Result<Conv2d> {
                Ok(Conv2d {
                    w: w.get(&format!("{pre}.conv.{idx}.weight"), &shape)?,
                    b: w.get(&format!("{pre}.conv.{idx}.bias"), &[shape[0]])?
                        .reshape((1, shape[0], 1, 1))?,
                    groups,
                    stride,
                })
            };
        let subsampling = vec![
            conv(0, [c, 1, 3, 3], 1, 2)?,
            conv(2, [c, 1, 3, 3], c, 2)?,
            conv(3, [c, c, 1, 1], 1, 1)?,
            conv(5, [c, 1, 3, 3], c, 2)?,
            conv(6, [c, c, 1, 1], 1, 1)?,
        ];
        let pre_out = Linear::load(w, &format!("{pre}.out"), d, c * subsampled_freq(cfg), true)?;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let l = format!("encoder.layers.{i}");
            let ffn = |name: &str| -> Result<FeedForward> {
                Ok(FeedForward {
                    linear1: Linear::load(w, &format!("{l}.{name}.linear1"), ff, d, bias)?,
                    linear2: Linear::load(w, &format!("{l}.{name}.linear2"), d, ff, bias)?,
                })
            };
            let a = format!("{l}.self_attn");
            let att = Attention {
                q: Linear::load(w, &format!("{a}.linear_q"), d, d, bias)?,
                k: Linear::load(w, &format!("{a}.linear_k"), d, d, bias)?,
                v: Linear::load(w, &format!("{a}.linear_v"), d, d, bias)?,
                out: Linear::load(w, &format!("{a}.linear_out"), d, d, bias)?,
                pos: Linear::load(w, &format!("{a}.linear_pos"), d, d, false)?,
                bias_u: w
                    .get(&format!("{a}.pos_bias_u"), &[h, dk])?
                    .reshape((h, 1, dk))?,
                bias_v: w
                    .get(&format!("{a}.pos_bias_v"), &[h, dk])?
                    .reshape((h, 1, dk))?,
            };
            let cv = format!("{l}.conv");
            let k = cfg.conv_kernel_size;
            let norm = match cfg.conv_norm {
                ConvNorm::BatchNorm => {
                    let bn = format!("{cv}.batch_norm");
                    let gamma = w.get(&format!("{bn}.weight"), &[d])?;
                    let beta = w.get(&format!("{bn}.bias"), &[d])?;
                    let mean = w.get(&format!("{bn}.running_mean"), &[d])?;
                    let var = w.get(&format!("{bn}.running_var"), &[d])?;
                    let scale = gamma.div(&(var + NORM_EPS)?.sqrt()?)?;
                    let shift = beta.sub(&mean.mul(&scale)?)?;
                    ConvNormLayer::Batch { scale, shift }
                }
                ConvNorm::LayerNorm => {
                    ConvNormLayer::Layer(Norm::load(w, &format!("{cv}.batch_norm"), d)?)
                }
            };
            let conv = ConvModule {
                pointwise1: Linear::load_pointwise(
                    w,
                    &format!("{cv}.pointwise_conv1"),
                    2 * d,
                    d,
                    bias,
                )?,
                depthwise: w
                    .get(&format!("{cv}.depthwise_conv.weight"), &[d, 1, k])?
                    .reshape((d, k))?
                    .t()?
                    .contiguous()?,
                depthwise_bias: if bias {
                    Some(w.get(&format!("{cv}.depthwise_conv.bias"), &[d])?)
                } else {
                    None
                },
                norm,
                pointwise2: Linear::load_pointwise(
                    w,
                    &format!("{cv}.pointwise_conv2"),
                    d,
                    d,
                    bias,
                )?,
            };
            layers.push(Layer {
                norm_ff1: Norm::load(w, &format!("{l}.norm_feed_forward1"), d)?,
                ff1: ffn("feed_forward1")?,
                norm_att: Norm::load(w, &format!("{l}.norm_self_att"), d)?,
                att,
                norm_conv: Norm::load(w, &format!("{l}.norm_conv"), d)?,
                conv,
                norm_ff2: Norm::load(w, &format!("{l}.norm_feed_forward2"), d)?,
                ff2: ffn("feed_forward2")?,
                norm_out: Norm::load(w, &format!("{l}.norm_out"), d)?,
            });
        }
        let params = parameter_shapes(cfg, "x", 0)
            .iter()
            .filter(|(name, _)| name.starts_with("encoder."))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        Ok(Encoder {
            cfg: cfg.clone(),
            subsampling,
            pre_out,
            layers,
            params,
        })
    }

    /// Number of encoder parameters.
    pub fn parameters(&self) -> usize {
        self.params
    }

    /// The subsampling of `frames x n_mels` features (row-major) into
    /// `subsampled_len(frames) x d_model`, scaled by sqrt(d_model) when the
    /// model says so: exactly NeMo's `pre_encode` plus `xscale`.
    pub fn subsample(&self, feats: &[f32], frames: usize) -> Result<Tensor> {
        let f = self.cfg.feat_in;
        if feats.len() != frames * f {
            bail!("{} feature values for {frames} frames of {f}", feats.len());
        }
        let mut x = Tensor::from_slice(feats, (1, 1, frames, f), &Device::Cpu)?;
        for (i, conv) in self.subsampling.iter().enumerate() {
            if conv.stride == 2 {
                x = if self.cfg.causal_downsampling {
                    x.pad_with_zeros(2, 2, 1)?.pad_with_zeros(3, 2, 1)?
                } else {
                    x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?
                };
            }
            x = x
                .conv2d(&conv.w, 0, conv.stride, 1, conv.groups)?
                .broadcast_add(&conv.b)?;
            // ReLU after the first conv and after each pointwise conv.
            if i == 0 || conv.stride == 1 {
                x = x.relu()?;
            }
        }
        let (_, c, t, fo) = x.dims4()?;
        let x = x.permute((0, 2, 1, 3))?.reshape((t, c * fo))?;
        let x = self.pre_out.forward(&x)?;
        Ok(if self.cfg.xscaling {
            (x * (self.cfg.d_model as f64).sqrt())?
        } else {
            x
        })
    }

    /// The whole utterance at once with the limited-context mask.
    pub fn forward_offline(&self, x: &Tensor, ctx: AttContext) -> Result<Tensor> {
        let cache = EncoderCache::new(
            self.cfg.n_layers,
            self.cfg.d_model,
            self.cfg.conv_kernel_size,
        )?;
        Ok(self.step(x, ctx, &cache, false)?.0)
    }

    /// One chunk (`frames x d_model`, at most `ctx.chunk()` frames, the
    /// next after `cache.frames_done`): returns its encoder output and the
    /// caches for the next chunk.
    pub fn forward_chunk(
        &self,
        x: &Tensor,
        ctx: AttContext,
        cache: &EncoderCache,
    ) -> Result<(Tensor, EncoderCache)> {
        let t = x.dims()[0];
        if t > ctx.chunk() || !cache.frames_done.is_multiple_of(ctx.chunk()) {
            bail!(
                "a chunk of {t} frames at frame {} does not fit chunks of {}",
                cache.frames_done,
                ctx.chunk()
            );
        }
        self.step(x, ctx, cache, true)
    }

    fn step(
        &self,
        x: &Tensor,
        ctx: AttContext,
        cache: &EncoderCache,
        keep_cache: bool,
    ) -> Result<(Tensor, EncoderCache)> {
        let t = x.dims()[0];
        let d = self.cfg.d_model;
        let start = cache.frames_done;
        // Every layer's attention cache holds the same number of frames.
        let cached = cache.layers.first().map_or(0, LayerCache::channel_len);
        let keys = cached + t;
        let key_start = start - cached;
        let mut mask = Vec::with_capacity(t * keys);
        for q in 0..t {
            for k in 0..keys {
                mask.push(if ctx.allows(start + q, key_start + k) {
                    0.0
                } else {
                    MASKED
                });
            }
        }
        let mask = Tensor::from_vec(mask, (1, t, keys), &Device::Cpu)?;
        // Relative positions from keys - 1 (last query... first key) down
        // to -(t - 1); query i, key j reads entry (t - 1) - i + j.
        let n_pos = keys + t - 1;
        let pos = rel_positions(keys as i64 - 1, n_pos, d)?;
        let mut gather = Vec::with_capacity(t * keys);
        for i in 0..t {
            for j in 0..keys {
                gather.push((i * n_pos + (t - 1) - i + j) as u32);
            }
        }
        let gather = Tensor::from_vec(gather, t * keys, &Device::Cpu)?;
        let mut x = x.clone();
        let mut next = Vec::with_capacity(self.layers.len());
        for (layer, lc) in self.layers.iter().zip(&cache.layers) {
            let (y, c) = self.layer(layer, &x, lc, &mask, &pos, &gather, ctx)?;
            x = y;
            next.push(c);
        }
        let cache = EncoderCache {
            layers: if keep_cache {
                next
            } else {
                cache.layers.clone()
            },
            frames_done: start + t,
        };
        Ok((x, cache))
    }

    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        l: &Layer,
        x: &Tensor,
        cache: &LayerCache,
        mask: &Tensor,
        pos: &Tensor,
        gather: &Tensor,
        ctx: AttContext,
    ) -> Result<(Tensor, LayerCache)> {
        let h = self.cfg.n_heads;
        let d = self.cfg.d_model;
        let dk = d / h;
        let t = x.dims()[0];
        let mut res = (x + (l.ff1.forward(&l.norm_ff1.forward(x)?)? * 0.5)?)?;

        // Self-attention over (cache + chunk).
        let xn = l.norm_att.forward(&res)?;
        let kv = match &cache.channel {
            Some(c) => Tensor::cat(&[c, &xn], 0)?,
            None => xn.clone(),
        };
        let keys = kv.dims()[0];
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((n, h, dk))?.transpose(0, 1)?.contiguous()?)
        };
        let q = heads(l.att.q.forward(&xn)?, t)?;
        let k = heads(l.att.k.forward(&kv)?, keys)?;
        let v = heads(l.att.v.forward(&kv)?, keys)?;
        let n_pos = pos.dims()[0];
        let p = heads(l.att.pos.forward(pos)?, n_pos)?;
        let ac = q
            .broadcast_add(&l.att.bias_u)?
            .matmul(&k.t()?.contiguous()?)?;
        let bd_full = q
            .broadcast_add(&l.att.bias_v)?
            .matmul(&p.t()?.contiguous()?)?;
        let bd = bd_full
            .reshape((h, t * n_pos))?
            .index_select(gather, 1)?
            .reshape((h, t, keys))?;
        let scores = ((ac + bd)? / (dk as f64).sqrt())?.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let att = probs
            .matmul(&v)?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((t, d))?;
        res = (res + l.att.out.forward(&att)?)?;
        let channel = if keys > ctx.left {
            kv.narrow(0, keys - ctx.left, ctx.left)?
        } else {
            kv
        };

        // Convolution module with the causal depthwise conv continued from
        // the cached inputs.
        let xc = l.norm_conv.forward(&res)?;
        let g = l.conv.pointwise1.forward(&xc)?;
        let glu = g
            .narrow(1, 0, d)?
            .mul(&candle_nn::ops::sigmoid(&g.narrow(1, d, d)?)?)?;
        let kernel = self.cfg.conv_kernel_size;
        let window = Tensor::cat(&[&cache.time, &glu], 0)?;
        let mut acc = window
            .narrow(0, 0, t)?
            .broadcast_mul(&l.conv.depthwise.narrow(0, 0, 1)?)?;
        for tap in 1..kernel {
            acc = (acc
                + window
                    .narrow(0, tap, t)?
                    .broadcast_mul(&l.conv.depthwise.narrow(0, tap, 1)?)?)?;
        }
        if let Some(b) = &l.conv.depthwise_bias {
            acc = acc.broadcast_add(b)?;
        }
        let time = window.narrow(0, t, kernel - 1)?;
        let normed = match &l.conv.norm {
            ConvNormLayer::Batch { scale, shift } => {
                acc.broadcast_mul(scale)?.broadcast_add(shift)?
            }
            ConvNormLayer::Layer(n) => n.forward(&acc)?,
        };
        let conv_out = l.conv.pointwise2.forward(&normed.silu()?)?;
        res = (res + conv_out)?;

        res = (&res + (l.ff2.forward(&l.norm_ff2.forward(&res)?)? * 0.5)?)?;
        let out = l.norm_out.forward(&res)?;
        Ok((
            out,
            LayerCache {
                channel: Some(channel),
                time,
            },
        ))
    }

    /// Total linear-layer parameters actually loaded (a cross-check of
    /// [`Encoder::parameters`]).
    pub fn linear_parameters(&self) -> usize {
        self.pre_out.params()
            + self
                .layers
                .iter()
                .map(|l| {
                    l.ff1.linear1.params()
                        + l.ff1.linear2.params()
                        + l.ff2.linear1.params()
                        + l.ff2.linear2.params()
                        + l.att.q.params()
                        + l.att.k.params()
                        + l.att.v.params()
                        + l.att.out.params()
                        + l.att.pos.params()
                        + l.conv.pointwise1.params()
                        + l.conv.pointwise2.params()
                })
                .sum::<usize>()
    }
}

/// Where the subsampling must restart to produce outputs from `first` on
/// exactly: the feature frame of the window start and the outputs of the
/// window to drop.
pub fn subsampling_window(first: usize) -> (usize, usize) {
    let back = first.min(3);
    ((first - back) * SUBSAMPLING, back)
}

/// How many encoder frames are final once `frames` feature frames are in
/// (more audio cannot change them): output `t` reads feature frames up to
/// `8t` (causal) or `8t + 7`.
pub fn subsampled_ready(cfg: &EncoderConfig, frames: usize) -> usize {
    let reach = if cfg.causal_downsampling { 0 } else { 7 };
    if frames > reach {
        (frames - 1 - reach) / SUBSAMPLING + 1
    } else {
        0
    }
}

/// Log-probabilities over the last dimension.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::log_softmax(x, D::Minus1)?)
}
