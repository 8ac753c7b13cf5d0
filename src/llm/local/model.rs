//! A llama-architecture transformer over quantized GGUF weights, with a KV
//! cache that can be cut back to any prefix.
//!
//! Adapted from candle-transformers' `models::quantized_llama`
//! (https://github.com/huggingface/candle, Apache-2.0 OR MIT, copyright the
//! candle authors). Changes: the weights are immutable and shared (`Arc`)
//! between sessions while each session owns its [`KvCache`]; the cache is a
//! preallocated buffer that can be truncated; q/k/v and gate/up are fused
//! into one matmul each; weights can be requantized at load; grouped-query
//! attention runs without copying the keys/values per query head; no MoE.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor, gguf_file};
use candle_core::{D, DType, Device, IndexOp, Module, Tensor};

/// Hyper-parameters read from GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub architecture: String,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub rope_dim: usize,
    pub rope_base: f32,
    pub rms_eps: f64,
    pub context_length: usize,
    pub vocab_size: usize,
}

/// Architectures this engine runs: the llama layout (pre-norm, RMSNorm,
/// SwiGLU, interleaved RoPE, GQA), which llama.cpp also uses for Mistral and
/// for SmolLM2.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "mistral"];

fn md<'a>(ct: &'a gguf_file::Content, key: &str) -> Result<&'a gguf_file::Value> {
    ct.metadata
        .get(key)
        .with_context(|| format!("missing GGUF metadata key `{key}`"))
}

fn md_u32(ct: &gguf_file::Content, key: &str) -> Result<usize> {
    Ok(md(ct, key)?
        .to_u32()
        .with_context(|| format!("GGUF metadata `{key}` is not a u32"))? as usize)
}

impl Config {
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Config> {
        let arch = md(ct, "general.architecture")?
            .to_string()
            .context("`general.architecture` is not a string")?
            .clone();
        let n_head = md_u32(ct, &format!("{arch}.attention.head_count"))?;
        let n_kv_head = md_u32(ct, &format!("{arch}.attention.head_count_kv")).unwrap_or(n_head);
        let n_embd = md_u32(ct, &format!("{arch}.embedding_length"))?;
        let head_dim = n_embd / n_head.max(1);
        let cfg = Config {
            n_layer: md_u32(ct, &format!("{arch}.block_count"))?,
            n_embd,
            n_ff: md_u32(ct, &format!("{arch}.feed_forward_length"))?,
            n_head,
            n_kv_head,
            head_dim,
            rope_dim: md_u32(ct, &format!("{arch}.rope.dimension_count")).unwrap_or(head_dim),
            rope_base: md(ct, &format!("{arch}.rope.freq_base"))
                .and_then(|v| Ok(v.to_f32()?))
                .unwrap_or(10000.0),
            rms_eps: md(ct, &format!("{arch}.attention.layer_norm_rms_epsilon"))
                .and_then(|v| Ok(v.to_f32()?))
                .unwrap_or(1e-5) as f64,
            context_length: md_u32(ct, &format!("{arch}.context_length")).unwrap_or(2048),
            vocab_size: 0,
            architecture: arch,
        };
        if cfg.n_head == 0
            || cfg.n_kv_head == 0
            || cfg.n_head % cfg.n_kv_head != 0
            || cfg.n_embd % cfg.n_head != 0
            || cfg.rope_dim != cfg.head_dim
        {
            bail!(
                "inconsistent attention shape: {} heads, {} kv heads, embedding {}, rope dim {}",
                cfg.n_head,
                cfg.n_kv_head,
                cfg.n_embd,
                cfg.rope_dim
            );
        }
        Ok(cfg)
    }
}

struct Layer {
    attn_norm: Tensor,
    /// q, k, v stacked: [(n_head + 2 n_kv_head) * head_dim, n_embd].
    qkv: QMatMul,
    wo: QMatMul,
    ffn_norm: Tensor,
    /// gate, up stacked: [2 n_ff, n_embd].
    gate_up: QMatMul,
    down: QMatMul,
}

/// Immutable weights, shared by every session.
pub struct Weights {
    pub cfg: Config,
    /// The storage type the matmul weights run in.
    pub weight_dtype: GgmlDType,
    embed: Arc<QTensor>,
    layers: Vec<Layer>,
    norm: Tensor,
    output: QMatMul,
    /// RoPE angles per position: [context][rope_dim / 2].
    cos_v: Vec<f32>,
    sin_v: Vec<f32>,
    device: Device,
}

/// Loads `name` as f32 (whatever it is stored as).
fn load_f32<R: std::io::Read + std::io::Seek>(
    ct: &gguf_file::Content,
    r: &mut R,
    name: &str,
    dev: &Device,
) -> Result<Tensor> {
    let t = ct
        .tensor(r, name, dev)
        .with_context(|| format!("cannot read tensor `{name}`"))?;
    Ok(t.dequantize(dev)?)
}

/// Builds a matmul weight from f32 rows, quantized to `dtype` (`None` =
/// keep `stored` as it is when there is a single part).
fn make_matmul(
    parts: Vec<(QTensor, Tensor)>,
    dtype: Option<GgmlDType>,
    name: &str,
) -> Result<(QMatMul, GgmlDType)> {
    let stored = parts[0].0.dtype();
    let target = dtype.unwrap_or(stored);
    let same_everywhere = parts.iter().all(|(q, _)| q.dtype() == target);
    if parts.len() == 1 && same_everywhere {
        let (q, _) = parts.into_iter().next().expect("one part");
        return Ok((QMatMul::from_qtensor(q)?, target));
    }
    let rows: Vec<Tensor> = parts.into_iter().map(|(_, f)| f).collect();
    let full = Tensor::cat(&rows, 0)?;
    let q = QTensor::quantize(&full, target)
        .with_context(|| format!("cannot quantize `{name}` to {target:?}"))?;
    Ok((QMatMul::from_qtensor(q)?, target))
}

impl Weights {
    /// Reads every tensor; `quant` = the type matmul weights are converted to
    /// (`None`: as stored, though fused weights of mixed types use the first).
    pub fn from_gguf<R: std::io::Read + std::io::Seek>(
        ct: &gguf_file::Content,
        r: &mut R,
        quant: Option<GgmlDType>,
        context_limit: Option<usize>,
    ) -> Result<Weights> {
        let dev = Device::Cpu;
        let mut cfg = Config::from_gguf(ct)?;
        if let Some(limit) = context_limit {
            cfg.context_length = cfg.context_length.min(limit.max(8));
        }
        let q = |r: &mut R, name: &str| -> Result<(QTensor, Tensor)> {
            let t = ct
                .tensor(r, name, &dev)
                .with_context(|| format!("cannot read tensor `{name}`"))?;
            let f = t.dequantize(&dev)?;
            Ok((t, f))
        };
        let embed = ct
            .tensor(r, "token_embd.weight", &dev)
            .context("cannot read tensor `token_embd.weight`")?;
        let (vocab, hidden) = embed.shape().dims2()?;
        if hidden != cfg.n_embd {
            bail!(
                "token_embd.weight is {vocab}x{hidden}, expected embedding {}",
                cfg.n_embd
            );
        }
        cfg.vocab_size = vocab;
        let embed_f = embed.dequantize(&dev)?;
        let embed = Arc::new(embed);
        let output = match ct.tensor(r, "output.weight", &dev) {
            Ok(t) => {
                let f = t.dequantize(&dev)?;
                make_matmul(vec![(t, f)], quant, "output.weight")?.0
            }
            // Tied embeddings (SmolLM2): share the table when no conversion.
            Err(_) => match quant {
                Some(dt) if dt != embed.dtype() => QMatMul::from_qtensor(
                    QTensor::quantize(&embed_f, dt)
                        .with_context(|| format!("cannot quantize the output to {dt:?}"))?,
                )?,
                _ => QMatMul::from_arc(embed.clone())?,
            },
        };
        drop(embed_f);
        let norm = load_f32(ct, r, "output_norm.weight", &dev)?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        let mut weight_dtype = quant;
        for i in 0..cfg.n_layer {
            let p = format!("blk.{i}");
            let qkv_parts = vec![
                q(r, &format!("{p}.attn_q.weight"))?,
                q(r, &format!("{p}.attn_k.weight"))?,
                q(r, &format!("{p}.attn_v.weight"))?,
            ];
            let (qkv, dt) = make_matmul(qkv_parts, quant, &format!("{p}.attn_qkv"))?;
            weight_dtype.get_or_insert(dt);
            let (wo, _) = make_matmul(
                vec![q(r, &format!("{p}.attn_output.weight"))?],
                quant,
                &format!("{p}.attn_output.weight"),
            )?;
            let (gate_up, _) = make_matmul(
                vec![
                    q(r, &format!("{p}.ffn_gate.weight"))?,
                    q(r, &format!("{p}.ffn_up.weight"))?,
                ],
                quant,
                &format!("{p}.ffn_gate_up"),
            )?;
            let (down, _) = make_matmul(
                vec![q(r, &format!("{p}.ffn_down.weight"))?],
                quant,
                &format!("{p}.ffn_down.weight"),
            )?;
            layers.push(Layer {
                attn_norm: load_f32(ct, r, &format!("{p}.attn_norm.weight"), &dev)?,
                qkv,
                wo,
                ffn_norm: load_f32(ct, r, &format!("{p}.ffn_norm.weight"), &dev)?,
                gate_up,
                down,
            });
        }
        let (cos_v, sin_v) = rope_tables(&cfg);
        Ok(Weights {
            weight_dtype: weight_dtype.unwrap_or(GgmlDType::F32),
            cfg,
            embed,
            layers,
            norm,
            output,
            cos_v,
            sin_v,
            device: dev,
        })
    }

    /// Runs `tokens` (positions `kv.len()..`) through the model, appends
    /// their keys/values to `kv` and returns the logits of the last one.
    ///
    /// Every row is computed the same way whether it comes in a batch
    /// (prefill) or alone (decode): the quantized matmuls work row by row
    /// and attention is computed here per (position, head) with a fixed
    /// summation order. So a conversation continued on a cached session
    /// gives bit-identical logits to a fresh session given the whole
    /// history, and greedy replies agree exactly.
    pub fn forward(&self, tokens: &[u32], kv: &mut KvCache) -> Result<Vec<f32>> {
        let cfg = &self.cfg;
        let seq = tokens.len();
        let pos = kv.len;
        if seq == 0 {
            bail!("forward with no tokens");
        }
        if pos + seq > cfg.context_length {
            bail!(
                "context overflow: {} tokens exceed the model's context of {}",
                pos + seq,
                cfg.context_length
            );
        }
        if kv.layers.len() != cfg.n_layer {
            kv.layers = (0..cfg.n_layer).map(|_| (Vec::new(), Vec::new())).collect();
        }
        let hd = cfg.head_dim;
        let q_dim = cfg.n_head * hd;
        let kv_dim = cfg.n_kv_head * hd;
        let qkv_dim = q_dim + 2 * kv_dim;
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embed.embedding(&ids)?.unsqueeze(0)?; // (1, seq, n_embd)
        let shape = AttnShape {
            n_head: cfg.n_head,
            n_kv_head: cfg.n_kv_head,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        let mut y = vec![0f32; seq * q_dim];
        for (layer, (kc, vc)) in self.layers.iter().zip(kv.layers.iter_mut()) {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, cfg.rms_eps as f32)?;
            let mut qkv = layer.qkv.forward(&h)?.flatten_all()?.to_vec1::<f32>()?;
            debug_assert_eq!(qkv.len(), seq * qkv_dim);
            kc.truncate(pos * kv_dim);
            vc.truncate(pos * kv_dim);
            let mut q = Vec::with_capacity(seq * q_dim);
            for (i, row) in qkv.chunks_exact_mut(qkv_dim).enumerate() {
                let p = pos + i;
                let (cos, sin) = (self.rope_row(&self.cos_v, p), self.rope_row(&self.sin_v, p));
                let (qr, rest) = row.split_at_mut(q_dim);
                let (kr, vr) = rest.split_at_mut(kv_dim);
                rope_interleaved(qr, hd, cos, sin);
                rope_interleaved(kr, hd, cos, sin);
                q.extend_from_slice(qr);
                kc.extend_from_slice(kr);
                vc.extend_from_slice(vr);
            }
            attention(&q, kc, vc, pos, seq, &shape, &mut y);
            let yt = Tensor::from_slice(&y, (1, seq, q_dim), &self.device)?;
            let attn = layer.wo.forward(&yt)?;
            let x1 = (attn + &x)?;
            let h = candle_nn::ops::rms_norm(&x1, &layer.ffn_norm, cfg.rms_eps as f32)?;
            let gu = layer.gate_up.forward(&h)?;
            let gate = gu.narrow(D::Minus1, 0, cfg.n_ff)?;
            let up = gu.narrow(D::Minus1, cfg.n_ff, cfg.n_ff)?;
            let act = (candle_nn::ops::silu(&gate)? * up)?;
            let down = layer.down.forward(&act)?;
            x = (down + x1)?;
        }
        kv.len = pos + seq;
        let last = x.i((.., seq - 1, ..))?.contiguous()?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, cfg.rms_eps as f32)?;
        let logits = self.output.forward(&last)?;
        Ok(logits
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?)
    }

    fn rope_row<'a>(&self, table: &'a [f32], pos: usize) -> &'a [f32] {
        let half = self.cfg.rope_dim / 2;
        &table[pos * half..(pos + 1) * half]
    }
}

/// Rotates each head of `x` (heads of `hd` values, pairs (2i, 2i+1)) by the
/// angles of one position: llama's interleaved RoPE as GGUF stores it.
fn rope_interleaved(x: &mut [f32], hd: usize, cos: &[f32], sin: &[f32]) {
    for head in x.chunks_exact_mut(hd) {
        for (i, pair) in head.chunks_exact_mut(2).enumerate() {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * cos[i] - b * sin[i];
            pair[1] = a * sin[i] + b * cos[i];
        }
    }
}

struct AttnShape {
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    scale: f32,
}

/// Dot product with a fixed summation order (8 lanes, then the lanes in
/// order), whatever the caller.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        let (x, y) = (&a[c * 8..c * 8 + 8], &b[c * 8..c * 8 + 8]);
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0f32;
    for i in chunks * 8..a.len() {
        tail += a[i] * b[i];
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Causal attention of `seq` queries at positions `pos..` over the cache
/// (`kc`/`vc`: [position][kv head][head_dim], holding `pos + seq` positions).
/// `q` and `out` are [query][head][head_dim]. Each (query, head) is computed
/// independently with the same arithmetic; large batches are split across
/// threads.
fn attention(
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    pos: usize,
    seq: usize,
    s: &AttnShape,
    out: &mut [f32],
) {
    let hd = s.head_dim;
    let items = seq * s.n_head;
    let work = items * (pos + seq / 2 + 1) * hd;
    let threads = if work < 1 << 20 {
        1
    } else {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(items)
    };
    let run = |first: usize, out: &mut [f32]| {
        let mut scores = Vec::with_capacity(pos + seq);
        let n_rep = s.n_head / s.n_kv_head;
        for (n, o) in out.chunks_exact_mut(hd).enumerate() {
            let item = first + n;
            let qv = &q[item * hd..(item + 1) * hd];
            let (i, h) = (item / s.n_head, item % s.n_head);
            attend_one(qv, kc, vc, pos + i, h / n_rep, s, &mut scores, o);
        }
    };
    let out = &mut out[..items * hd];
    if threads <= 1 {
        run(0, out);
        return;
    }
    let per = items.div_ceil(threads);
    std::thread::scope(|scope| {
        let mut rest = out;
        let mut first = 0;
        let mut handles = Vec::new();
        while !rest.is_empty() {
            let n = per.min(rest.len() / hd);
            let (mine, tail) = rest.split_at_mut(n * hd);
            rest = tail;
            let start = first;
            first += n;
            if rest.is_empty() {
                run(start, mine); // the last share runs on this thread
            } else {
                handles.push(scope.spawn(move || run(start, mine)));
            }
        }
    });
}

/// One query vector (absolute position `p`, kv head `g`) against the
/// cached positions `0..=p`.
#[allow(clippy::too_many_arguments)]
#[inline]
fn attend_one(
    qv: &[f32],
    kc: &[f32],
    vc: &[f32],
    p: usize,
    g: usize,
    s: &AttnShape,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let hd = s.head_dim;
    let kv_dim = s.n_kv_head * hd;
    scores.clear();
    let mut max = f32::NEG_INFINITY;
    for j in 0..=p {
        let k = &kc[j * kv_dim + g * hd..j * kv_dim + (g + 1) * hd];
        let sc = dot(qv, k) * s.scale;
        max = max.max(sc);
        scores.push(sc);
    }
    let mut sum = 0f32;
    for sc in scores.iter_mut() {
        *sc = (*sc - max).exp();
        sum += *sc;
    }
    let inv = 1.0 / sum;
    out.fill(0.0);
    for (j, &w) in scores.iter().enumerate() {
        let w = w * inv;
        let v = &vc[j * kv_dim + g * hd..j * kv_dim + (g + 1) * hd];
        for (o, &x) in out.iter_mut().zip(v) {
            *o += w * x;
        }
    }
}

fn rope_tables(cfg: &Config) -> (Vec<f32>, Vec<f32>) {
    let half = cfg.rope_dim / 2;
    let theta: Vec<f32> = (0..half)
        .map(|i| 1f32 / cfg.rope_base.powf(2.0 * i as f32 / cfg.rope_dim as f32))
        .collect();
    let n = cfg.context_length;
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for p in 0..n {
        for &t in &theta {
            let a = p as f32 * t;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    (cos, sin)
}

/// One session's keys and values: per layer, [position][kv head][head_dim]
/// for the first `len` positions. Truncating forgets the positions after a
/// prefix.
pub struct KvCache {
    layers: Vec<(Vec<f32>, Vec<f32>)>,
    len: usize,
}

impl KvCache {
    pub fn new() -> KvCache {
        KvCache {
            layers: Vec::new(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Forgets every position from `len` on (memory is kept for reuse).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Bytes held by the buffers.
    pub fn allocated_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|(k, v)| (k.capacity() + v.capacity()) * 4)
            .sum()
    }
}

impl Default for KvCache {
    fn default() -> Self {
        KvCache::new()
    }
}
