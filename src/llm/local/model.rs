//! A llama-architecture transformer over quantized GGUF weights, with a KV
//! cache that can be cut back to any prefix.
//!
//! Adapted from candle-transformers' `models::quantized_llama`
//! (https://github.com/huggingface/candle, Apache-2.0 OR MIT, copyright the
//! candle authors). Changes: the weights are immutable and shared (`Arc`)
//! between sessions while each session owns its [`KvCache`], which can be
//! truncated; q/k/v and gate/up are fused into one matmul each; matmuls go
//! through [`Linear`] (the packed AVX-512 VNNI kernel or candle's); norms,
//! RoPE and attention are computed here on plain slices, row by row, so a
//! token gives the same bits whether it is prefilled in a batch or decoded
//! alone; no MoE.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor, gguf_file};
use candle_core::{Device, Tensor};

use super::qmatmul::{Linear, Packed, packed_available};

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
            || !cfg.n_head.is_multiple_of(cfg.n_kv_head)
            || !cfg.n_embd.is_multiple_of(cfg.n_head)
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
    attn_norm: Vec<f32>,
    /// q, k, v stacked: [(n_head + 2 n_kv_head) * head_dim, n_embd].
    qkv: Linear,
    wo: Linear,
    ffn_norm: Vec<f32>,
    /// gate, up stacked: [2 n_ff, n_embd].
    gate_up: Linear,
    down: Linear,
}

/// Immutable weights, shared by every session.
pub struct Weights {
    pub cfg: Config,
    /// The storage type of the layers' matmul weights.
    pub weight_dtype: GgmlDType,
    /// The layers run the packed AVX-512 VNNI kernel.
    pub packed: bool,
    /// Decode steps (one token) use the thread pool too (prefill always
    /// does).
    pub parallel_decode: bool,
    embed: Arc<QTensor>,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    output: Linear,
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
) -> Result<Vec<f32>> {
    let t = ct
        .tensor(r, name, dev)
        .with_context(|| format!("cannot read tensor `{name}`"))?;
    Ok(t.dequantize(dev)?.flatten_all()?.to_vec1::<f32>()?)
}

/// Builds one matmul from row-stacked `parts`, converted to `quant` when
/// given (else as stored). Runs the packed kernel when `packed` and the
/// types allow it, candle's otherwise.
fn make_linear(
    parts: Vec<Arc<QTensor>>,
    quant: Option<GgmlDType>,
    packed: bool,
    name: &str,
) -> Result<(Linear, GgmlDType)> {
    let dev = Device::Cpu;
    let parts: Vec<Arc<QTensor>> = match quant {
        Some(q) => parts
            .into_iter()
            .map(|p| -> Result<Arc<QTensor>> {
                if p.dtype() == q {
                    return Ok(p);
                }
                let f = p.dequantize(&dev)?;
                Ok(Arc::new(QTensor::quantize(&f, q).with_context(|| {
                    format!("cannot quantize `{name}` to {q:?}")
                })?))
            })
            .collect::<Result<_>>()?,
        None => parts,
    };
    let dtype = parts[0].dtype();
    let n: usize = parts
        .iter()
        .map(|p| p.shape().dims2().map(|(r, _)| r))
        .sum::<candle_core::Result<usize>>()?;
    if packed {
        let refs: Vec<&QTensor> = parts.iter().map(|p| p.as_ref()).collect();
        if let Some(p) =
            Packed::from_qtensors(&refs).with_context(|| format!("packing `{name}`"))?
        {
            return Ok((Linear::Packed(p), dtype));
        }
    }
    let same = parts.iter().all(|p| p.dtype() == dtype);
    if parts.len() == 1 && same {
        let p = parts.into_iter().next().expect("one part");
        return Ok((
            Linear::Candle {
                mm: QMatMul::from_arc(p)?,
                n,
            },
            dtype,
        ));
    }
    let rows: Vec<Tensor> = parts
        .iter()
        .map(|p| p.dequantize(&dev))
        .collect::<candle_core::Result<_>>()?;
    let full = Tensor::cat(&rows, 0)?;
    let q = QTensor::quantize(&full, dtype)
        .with_context(|| format!("cannot quantize `{name}` to {dtype:?}"))?;
    Ok((
        Linear::Candle {
            mm: QMatMul::from_qtensor(q)?,
            n,
        },
        dtype,
    ))
}

impl Weights {
    /// Reads every tensor; `quant` = the type matmul weights are converted
    /// to (`None`: as stored); `packed` = use the VNNI kernel if the CPU has
    /// it.
    pub fn from_gguf<R: std::io::Read + std::io::Seek>(
        ct: &gguf_file::Content,
        r: &mut R,
        quant: Option<GgmlDType>,
        packed: bool,
        context_limit: Option<usize>,
    ) -> Result<Weights> {
        let dev = Device::Cpu;
        let packed = packed && packed_available();
        let mut cfg = Config::from_gguf(ct)?;
        if let Some(limit) = context_limit {
            cfg.context_length = cfg.context_length.min(limit.max(8));
        }
        let q = |r: &mut R, name: &str| -> Result<Arc<QTensor>> {
            Ok(Arc::new(
                ct.tensor(r, name, &dev)
                    .with_context(|| format!("cannot read tensor `{name}`"))?,
            ))
        };
        let embed = q(r, "token_embd.weight")?;
        let (vocab, hidden) = embed.shape().dims2()?;
        if hidden != cfg.n_embd {
            bail!(
                "token_embd.weight is {vocab}x{hidden}, expected embedding {}",
                cfg.n_embd
            );
        }
        cfg.vocab_size = vocab;
        // Tied embeddings (SmolLM2) when there is no output.weight.
        let output_w = match ct.tensor(r, "output.weight", &dev) {
            Ok(t) => Arc::new(t),
            Err(_) => embed.clone(),
        };
        let (output, _) = make_linear(vec![output_w], quant, packed, "output.weight")?;
        let norm = load_f32(ct, r, "output_norm.weight", &dev)?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        let mut weight_dtype = None;
        let mut all_packed = true;
        let expect = |l: &Linear, n: usize, what: &str| -> Result<()> {
            if l.out_dim() != n {
                bail!("{what} has {} rows, expected {n}", l.out_dim());
            }
            Ok(())
        };
        for i in 0..cfg.n_layer {
            let p = format!("blk.{i}");
            let (qkv, dt) = make_linear(
                vec![
                    q(r, &format!("{p}.attn_q.weight"))?,
                    q(r, &format!("{p}.attn_k.weight"))?,
                    q(r, &format!("{p}.attn_v.weight"))?,
                ],
                quant,
                packed,
                &format!("{p}.attn_qkv"),
            )?;
            weight_dtype.get_or_insert(dt);
            let hd = cfg.head_dim;
            expect(
                &qkv,
                (cfg.n_head + 2 * cfg.n_kv_head) * hd,
                &format!("{p}.attn_qkv"),
            )?;
            let (wo, _) = make_linear(
                vec![q(r, &format!("{p}.attn_output.weight"))?],
                quant,
                packed,
                &format!("{p}.attn_output.weight"),
            )?;
            expect(&wo, cfg.n_embd, &format!("{p}.attn_output.weight"))?;
            let (gate_up, _) = make_linear(
                vec![
                    q(r, &format!("{p}.ffn_gate.weight"))?,
                    q(r, &format!("{p}.ffn_up.weight"))?,
                ],
                quant,
                packed,
                &format!("{p}.ffn_gate_up"),
            )?;
            expect(&gate_up, 2 * cfg.n_ff, &format!("{p}.ffn_gate_up"))?;
            let (down, _) = make_linear(
                vec![q(r, &format!("{p}.ffn_down.weight"))?],
                quant,
                packed,
                &format!("{p}.ffn_down.weight"),
            )?;
            expect(&down, cfg.n_embd, &format!("{p}.ffn_down.weight"))?;
            all_packed &=
                qkv.is_packed() && wo.is_packed() && gate_up.is_packed() && down.is_packed();
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
            packed: all_packed && !layers.is_empty(),
            parallel_decode: true,
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
    /// (prefill) or alone (decode): the matmuls work row by row and norms,
    /// RoPE and attention are computed per row with a fixed summation
    /// order. So a conversation continued on a cached session gives
    /// bit-identical logits to a fresh session given the whole history, and
    /// greedy replies agree exactly.
    pub fn forward(&self, tokens: &[u32], kv: &mut KvCache) -> Result<Vec<f32>> {
        let cfg = &self.cfg;
        let seq = tokens.len();
        let par = seq > 1 || self.parallel_decode;
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
        let e = cfg.n_embd;
        let hd = cfg.head_dim;
        let q_dim = cfg.n_head * hd;
        let kv_dim = cfg.n_kv_head * hd;
        let qkv_dim = q_dim + 2 * kv_dim;
        let eps = cfg.rms_eps as f32;
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self
            .embed
            .embedding(&ids)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let shape = AttnShape {
            n_head: cfg.n_head,
            n_kv_head: cfg.n_kv_head,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        let mut h = vec![0f32; seq * e];
        let mut y = vec![0f32; seq * q_dim];
        let mut q = Vec::with_capacity(seq * q_dim);
        let mut act = vec![0f32; seq * cfg.n_ff];
        for (layer, (kc, vc)) in self.layers.iter().zip(kv.layers.iter_mut()) {
            rms_norm(&x, &layer.attn_norm, eps, &mut h);
            let mut qkv = layer.qkv.forward(&h, seq, par)?;
            kc.truncate(pos * kv_dim);
            vc.truncate(pos * kv_dim);
            q.clear();
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
            attention(&q, kc, vc, pos, seq, &shape, par, &mut y);
            let o = layer.wo.forward(&y, seq, par)?;
            add_assign(&mut x, &o);
            rms_norm(&x, &layer.ffn_norm, eps, &mut h);
            let gu = layer.gate_up.forward(&h, seq, par)?;
            for (a, row) in act
                .chunks_exact_mut(cfg.n_ff)
                .zip(gu.chunks_exact(2 * cfg.n_ff))
            {
                let (gate, up) = row.split_at(cfg.n_ff);
                for ((a, &g), &u) in a.iter_mut().zip(gate).zip(up) {
                    *a = g / (1.0 + (-g).exp()) * u;
                }
            }
            let dn = layer.down.forward(&act, seq, par)?;
            add_assign(&mut x, &dn);
        }
        kv.len = pos + seq;
        let mut last = vec![0f32; e];
        rms_norm(&x[(seq - 1) * e..], &self.norm, eps, &mut last);
        self.output.forward(&last, 1, self.parallel_decode)
    }

    fn rope_row<'a>(&self, table: &'a [f32], pos: usize) -> &'a [f32] {
        let half = self.cfg.rope_dim / 2;
        &table[pos * half..(pos + 1) * half]
    }
}

/// Row-wise RMSNorm of `x` (rows of `w.len()`) into `out`.
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let ms = dot(xr, xr) / n as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * inv * g;
        }
    }
}

fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
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
/// independently with the same arithmetic, spread over candle's CPU thread
/// pool (the one its matmuls use, so the two never compete for cores).
#[allow(clippy::too_many_arguments)]
fn attention(
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    pos: usize,
    seq: usize,
    s: &AttnShape,
    parallel: bool,
    out: &mut [f32],
) {
    let hd = s.head_dim;
    let items = seq * s.n_head;
    let n_rep = s.n_head / s.n_kv_head;
    let out = &mut out[..items * hd];
    let run = |range: std::ops::Range<usize>, out: &mut [f32]| {
        let mut scores = Vec::with_capacity(pos + seq);
        for (item, o) in range.zip(out.chunks_exact_mut(hd)) {
            let qv = &q[item * hd..(item + 1) * hd];
            let (i, h) = (item / s.n_head, item % s.n_head);
            attend_one(qv, kc, vc, pos + i, h / n_rep, s, &mut scores, o);
        }
    };
    // Tiny jobs are not worth waking the pool.
    if !parallel || items * (pos + seq) * hd < 1 << 16 {
        run(0..items, out);
        return;
    }
    struct Out(*mut f32);
    // SAFETY: each work item writes only its own `hd` values of `out`.
    unsafe impl Sync for Out {}
    let base = Out(out.as_mut_ptr());
    let base = &base;
    super::pool::Pool::global().run(items, |range| {
        let o = unsafe {
            std::slice::from_raw_parts_mut(base.0.add(range.start * hd), range.len() * hd)
        };
        run(range, o);
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
