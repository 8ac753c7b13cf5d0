//! Quantized matmul for the local engine.
//!
//! [`Linear`] is a weight matrix `[n, k]` applied to activation rows
//! `[m, k]`. Two kernels:
//!
//! - **packed** (x86-64 with AVX-512 VNNI, detected at run time): the GGUF's
//!   own Q4_0 / Q4_1 / Q8_0 blocks, repacked losslessly into tiles of 16
//!   output rows so that one `vpdpbusd` computes 16 rows x 4 k-values.
//!   Every block is `value = d * u + m` with `u` an unsigned 4- or 8-bit
//!   integer (Q4_1 as is; Q4_0: m = -8d; Q8_0: u = q + 128, m = -128d);
//!   activations are quantized per 32 values to i8 (as llama.cpp does), so a
//!   block's dot product is `d_x * (d * Σ u·x + m * Σ x)` in integers plus
//!   two multiply-adds. Results are identical for a row whether it is
//!   computed alone or in a batch.
//! - **candle**: candle's `QMatMul` (AVX2), anywhere else.

use std::sync::OnceLock;

use anyhow::{Result, bail};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

/// Output rows per tile (one 512-bit register of f32).
const TILE: usize = 16;
/// k values per quantization block.
const BLOCK: usize = 32;
/// Activation rows sharing one pass over a weight tile.
const ROWS: usize = 4;

/// Whether the packed kernel can run here.
pub fn packed_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// A weight matrix and the kernel that applies it.
pub enum Linear {
    Packed(Packed),
    Candle { mm: QMatMul, n: usize },
}

impl Linear {
    pub fn out_dim(&self) -> usize {
        match self {
            Linear::Packed(p) => p.n,
            Linear::Candle { n, .. } => *n,
        }
    }

    pub fn is_packed(&self) -> bool {
        matches!(self, Linear::Packed(_))
    }

    /// `x`: `m` rows of `k` values; returns `m` rows of `n` values.
    /// `parallel`: spread the packed kernel over candle's thread pool (else
    /// it runs on the calling thread; candle's kernels always use the pool).
    pub fn forward(&self, x: &[f32], m: usize, parallel: bool) -> Result<Vec<f32>> {
        match self {
            Linear::Packed(p) => Ok(p.matmul(x, m, parallel)),
            Linear::Candle { mm, .. } => {
                let k = x.len() / m.max(1);
                let t = Tensor::from_slice(x, (m, k), &Device::Cpu)?;
                Ok(mm.forward(&t)?.flatten_all()?.to_vec1::<f32>()?)
            }
        }
    }
}

/// f16 bits to f32 (IEEE half precision).
pub fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// f32 to f16 bits, rounding to nearest even.
pub fn f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// One weight row decoded from GGUF blocks: per block the f16 bits of `d`
/// and `m`, and the unsigned values `u` (value = d * u + m).
struct Row {
    d: Vec<u16>,
    m: Vec<u16>,
    u: Vec<u8>,
}

fn le16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

fn decode_rows(t: &QTensor) -> Result<Vec<Row>> {
    let (rows, k) = t.shape().dims2()?;
    let nb = k / BLOCK;
    let data = t.data()?;
    let (bsize, dtype) = match t.dtype() {
        GgmlDType::Q4_0 => (18, 0),
        GgmlDType::Q4_1 => (20, 1),
        GgmlDType::Q8_0 => (34, 2),
        other => bail!("no packed layout for {other:?}"),
    };
    if data.len() != rows * nb * bsize {
        bail!(
            "tensor data is {} bytes, expected {}",
            data.len(),
            rows * nb * bsize
        );
    }
    let mut out = Vec::with_capacity(rows);
    for r in 0..rows {
        let mut row = Row {
            d: Vec::with_capacity(nb),
            m: Vec::with_capacity(nb),
            u: vec![0; k],
        };
        for b in 0..nb {
            let blk = &data[(r * nb + b) * bsize..(r * nb + b + 1) * bsize];
            let u = &mut row.u[b * BLOCK..(b + 1) * BLOCK];
            let d = le16(blk);
            let df = f16_to_f32(d);
            match dtype {
                0 | 1 => {
                    let (m, qs) = if dtype == 0 {
                        (f32_to_f16(-8.0 * df), &blk[2..18])
                    } else {
                        (le16(&blk[2..4]), &blk[4..20])
                    };
                    for j in 0..16 {
                        u[j] = qs[j] & 0x0f;
                        u[j + 16] = qs[j] >> 4;
                    }
                    row.d.push(d);
                    row.m.push(m);
                }
                _ => {
                    for j in 0..32 {
                        u[j] = (blk[2 + j] as i8 as i16 + 128) as u8;
                    }
                    row.d.push(d);
                    row.m.push(f32_to_f16(-128.0 * df));
                }
            }
        }
        out.push(row);
    }
    Ok(out)
}

/// A matrix in the packed layout: for each tile of 16 rows and each block
/// of 32 k-values, 16 f16 `d`, 16 f16 `m`, then the values grouped for
/// `vpdpbusd` (4-bit: 4 x 64 bytes, byte [g][row][j] = u[8g + j] |
/// u[8g + 4 + j] << 4; 8-bit: 8 x 64 bytes, byte [g][row][j] = u[4g + j]).
pub struct Packed {
    n: usize,
    k: usize,
    four_bit: bool,
    data: Vec<u8>,
}

impl Packed {
    fn block_bytes(four_bit: bool) -> usize {
        64 + if four_bit { 256 } else { 512 }
    }

    /// Stacks `parts` (each `[rows, k]`, Q4_0 / Q4_1 / Q8_0) into one
    /// packed matrix; `None` when the shapes or types do not fit.
    pub fn from_qtensors(parts: &[&QTensor]) -> Result<Option<Packed>> {
        let mut k = None;
        let mut n = 0;
        let mut four_bit = true;
        for p in parts {
            let Ok((rows, pk)) = p.shape().dims2() else {
                return Ok(None);
            };
            if *k.get_or_insert(pk) != pk || pk % BLOCK != 0 {
                return Ok(None);
            }
            match p.dtype() {
                GgmlDType::Q4_0 | GgmlDType::Q4_1 => {}
                GgmlDType::Q8_0 => four_bit = false,
                _ => return Ok(None),
            }
            n += rows;
        }
        let Some(k) = k else { return Ok(None) };
        if n % TILE != 0 {
            return Ok(None);
        }
        let mut rows = Vec::with_capacity(n);
        for p in parts {
            rows.extend(decode_rows(p)?);
        }
        let nb = k / BLOCK;
        let bb = Packed::block_bytes(four_bit);
        let mut data = vec![0u8; n / TILE * nb * bb];
        for t in 0..n / TILE {
            for b in 0..nb {
                let out = &mut data[(t * nb + b) * bb..(t * nb + b + 1) * bb];
                for i in 0..TILE {
                    let row = &rows[t * TILE + i];
                    out[2 * i..2 * i + 2].copy_from_slice(&row.d[b].to_le_bytes());
                    out[32 + 2 * i..32 + 2 * i + 2].copy_from_slice(&row.m[b].to_le_bytes());
                    let u = &row.u[b * BLOCK..(b + 1) * BLOCK];
                    if four_bit {
                        for g in 0..4 {
                            for j in 0..4 {
                                out[64 + g * 64 + i * 4 + j] =
                                    u[8 * g + j] | (u[8 * g + 4 + j] << 4);
                            }
                        }
                    } else {
                        for g in 0..8 {
                            for j in 0..4 {
                                out[64 + g * 64 + i * 4 + j] = u[4 * g + j];
                            }
                        }
                    }
                }
            }
        }
        Ok(Some(Packed {
            n,
            k,
            four_bit,
            data,
        }))
    }

    /// `x`: `m` rows of `k`; returns `m` rows of `n`.
    pub fn matmul(&self, x: &[f32], m: usize, parallel: bool) -> Vec<f32> {
        assert_eq!(x.len(), m * self.k, "packed matmul: bad input length");
        assert!(packed_available(), "packed matmul needs AVX-512 VNNI");
        let acts = Acts::quantize(x, m, self.k);
        let mut dst = vec![0f32; m * self.n];
        struct Dst(*mut f32);
        // SAFETY: each tile writes only its own 16 columns of every row.
        unsafe impl Sync for Dst {}
        let out = Dst(dst.as_mut_ptr());
        let out = &out;
        let tiles = self.n / TILE;
        let run = |range: std::ops::Range<usize>| {
            for t in range {
                // SAFETY: checked above that the CPU has the features.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    self.tile(t, &acts, out.0)
                };
            }
        };
        if !parallel || m * self.n * self.k < 1 << 16 {
            run(0..tiles);
        } else {
            super::pool::Pool::global().run(tiles, run);
        }
        dst
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn tile(&self, t: usize, acts: &Acts, dst: *mut f32) {
        let m = acts.m;
        let mut r0 = 0;
        unsafe {
            if self.four_bit {
                while r0 + ROWS <= m {
                    kernel::<true, ROWS>(self, t, acts, r0, dst);
                    r0 += ROWS;
                }
                match m - r0 {
                    3 => kernel::<true, 3>(self, t, acts, r0, dst),
                    2 => kernel::<true, 2>(self, t, acts, r0, dst),
                    1 => kernel::<true, 1>(self, t, acts, r0, dst),
                    _ => {}
                }
            } else {
                while r0 + ROWS <= m {
                    kernel::<false, ROWS>(self, t, acts, r0, dst);
                    r0 += ROWS;
                }
                match m - r0 {
                    3 => kernel::<false, 3>(self, t, acts, r0, dst),
                    2 => kernel::<false, 2>(self, t, acts, r0, dst),
                    1 => kernel::<false, 1>(self, t, acts, r0, dst),
                    _ => {}
                }
            }
        }
    }

    /// The plain-Rust definition of what the kernel computes (for tests).
    #[cfg(test)]
    fn matmul_reference(&self, x: &[f32], m: usize) -> Vec<f32> {
        let acts = Acts::quantize(x, m, self.k);
        let nb = self.k / BLOCK;
        let bb = Packed::block_bytes(self.four_bit);
        let mut dst = vec![0f32; m * self.n];
        for r in 0..m {
            for col in 0..self.n {
                let (t, i) = (col / TILE, col % TILE);
                let mut acc = 0f32;
                for b in 0..nb {
                    let blk = &self.data[(t * nb + b) * bb..(t * nb + b + 1) * bb];
                    let d = f16_to_f32(le16(&blk[2 * i..]));
                    let mm = f16_to_f32(le16(&blk[32 + 2 * i..]));
                    let mut dot = 0i32;
                    for kk in 0..BLOCK {
                        let u = if self.four_bit {
                            let (g, j, hi) = (kk / 8, kk % 4, (kk % 8) >= 4);
                            let byte = blk[64 + g * 64 + i * 4 + j];
                            if hi { byte >> 4 } else { byte & 0x0f }
                        } else {
                            blk[64 + (kk / 4) * 64 + i * 4 + kk % 4]
                        };
                        dot += u as i32 * acts.q[r * self.k + b * BLOCK + kk] as i32;
                    }
                    let tt = d * dot as f32;
                    let tt = mm.mul_add(acts.s[r * nb + b], tt);
                    acc = tt.mul_add(acts.d[r * nb + b], acc);
                }
                dst[r * self.n + col] = acc;
            }
        }
        dst
    }
}

/// Activations quantized per block of 32 to i8: `x ≈ d * q`; `s = Σ q`.
struct Acts {
    m: usize,
    q: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
}

impl Acts {
    fn quantize(x: &[f32], m: usize, k: usize) -> Acts {
        let nb = k / BLOCK;
        let mut a = Acts {
            m,
            q: vec![0; m * k],
            d: vec![0.0; m * nb],
            s: vec![0.0; m * nb],
        };
        for ((blk, q), (d, s)) in x
            .chunks_exact(BLOCK)
            .zip(a.q.chunks_exact_mut(BLOCK))
            .zip(a.d.iter_mut().zip(a.s.iter_mut()))
        {
            let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
            let scale = amax / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let mut sum = 0i32;
            for (o, &v) in q.iter_mut().zip(blk) {
                let r = (v * inv).round().clamp(-127.0, 127.0) as i8;
                *o = r;
                sum += r as i32;
            }
            *d = scale;
            *s = sum as f32;
        }
        a
    }
}

/// `R` activation rows (from `r0`) against tile `t`, written to `dst`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn kernel<const FOUR: bool, const R: usize>(
    p: &Packed,
    t: usize,
    acts: &Acts,
    r0: usize,
    dst: *mut f32,
) {
    use std::arch::x86_64::*;
    let k = p.k;
    let nb = k / BLOCK;
    let bb = Packed::block_bytes(FOUR);
    unsafe {
        let mut acc = [_mm512_setzero_ps(); R];
        let mask = _mm512_set1_epi8(0x0f);
        for b in 0..nb {
            let base = p.data.as_ptr().add((t * nb + b) * bb);
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(base as *const __m256i));
            let mn = _mm512_cvtph_ps(_mm256_loadu_si256(base.add(32) as *const __m256i));
            let mut w = [_mm512_setzero_si512(); 8];
            if FOUR {
                for g in 0..4 {
                    let v = _mm512_loadu_si512(base.add(64 + 64 * g) as *const _);
                    w[2 * g] = _mm512_and_si512(v, mask);
                    w[2 * g + 1] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask);
                }
            } else {
                for (g, wg) in w.iter_mut().enumerate() {
                    *wg = _mm512_loadu_si512(base.add(64 + 64 * g) as *const _);
                }
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let row = r0 + r;
                let xg = acts.q.as_ptr().add(row * k + b * BLOCK) as *const i32;
                let mut dot = _mm512_setzero_si512();
                for (g, wg) in w.iter().enumerate() {
                    dot = _mm512_dpbusd_epi32(
                        dot,
                        *wg,
                        _mm512_set1_epi32(xg.add(g).read_unaligned()),
                    );
                }
                let tt = _mm512_mul_ps(d, _mm512_cvtepi32_ps(dot));
                let tt =
                    _mm512_fmadd_ps(mn, _mm512_set1_ps(*acts.s.get_unchecked(row * nb + b)), tt);
                *a = _mm512_fmadd_ps(tt, _mm512_set1_ps(*acts.d.get_unchecked(row * nb + b)), *a);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(dst.add((r0 + r) * p.n + t * TILE), *a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(n: usize, k: usize, seed: u32) -> Tensor {
        let v: Vec<f32> = (0..n * k)
            .map(|i| {
                let h = (i as u32 ^ seed).wrapping_mul(2654435761).rotate_left(13);
                (h % 2001) as f32 / 1000.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, (n, k), &Device::Cpu).unwrap()
    }

    #[test]
    fn f16_conversions_round_trip() {
        for x in [0.0f32, 1.0, -2.5, 0.000123, 65504.0, -0.0078125, 3.25] {
            let h = f32_to_f16(x);
            let back = f16_to_f32(h);
            assert!((back - x).abs() <= x.abs() * 1e-3 + 1e-7, "{x} -> {back}");
            assert_eq!(f32_to_f16(back), h);
        }
        // Every finite half survives f16 -> f32 -> f16.
        for h in 0..0x7c00u16 {
            assert_eq!(f32_to_f16(f16_to_f32(h)), h, "{h:#x}");
        }
    }

    #[test]
    #[allow(clippy::needless_range_loop)]
    fn packing_is_lossless() {
        for dt in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let w = weights(32, 64, 7);
            let q = QTensor::quantize(&w, dt).unwrap();
            let reference = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let rows = decode_rows(&q).unwrap();
            for (r, row) in rows.iter().enumerate() {
                for kk in 0..64 {
                    let b = kk / BLOCK;
                    let v = f16_to_f32(row.d[b]) * row.u[kk] as f32 + f16_to_f32(row.m[b]);
                    assert!((v - reference[r][kk]).abs() < 1e-6, "{dt:?} [{r}][{kk}]");
                }
            }
        }
    }

    #[test]
    fn kernel_matches_reference_and_is_batch_invariant() {
        if !packed_available() {
            eprintln!("no AVX-512 VNNI here: skipped");
            return;
        }
        let (n, k, m) = (48, 96, 7);
        let x: Vec<f32> = weights(m, k, 99).flatten_all().unwrap().to_vec1().unwrap();
        let wq = [GgmlDType::Q4_1, GgmlDType::Q4_0, GgmlDType::Q8_0];
        for dt in wq {
            let w = weights(n, k, 3);
            let q = QTensor::quantize(&w, dt).unwrap();
            let p = Packed::from_qtensors(&[&q]).unwrap().expect("packable");
            let fast = p.matmul(&x, m, true);
            let slow = p.matmul_reference(&x, m);
            for (a, b) in fast.iter().zip(&slow) {
                assert!(
                    (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                    "{dt:?}: {a} vs {b}"
                );
            }
            // Against candle's f32 result on the dequantized weights.
            let exact = Tensor::from_slice(&x, (m, k), &Device::Cpu)
                .unwrap()
                .matmul(&q.dequantize(&Device::Cpu).unwrap().t().unwrap())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for (a, b) in fast.iter().zip(&exact) {
                assert!(
                    (a - b).abs() < 0.05 * (1.0 + b.abs()),
                    "{dt:?}: {a} vs exact {b}"
                );
            }
            // Row r alone gives the very same bits as inside the batch.
            for r in 0..m {
                let one = p.matmul(&x[r * k..(r + 1) * k], 1, false);
                assert_eq!(one, fast[r * n..(r + 1) * n].to_vec(), "{dt:?} row {r}");
            }
        }
        // Mixed 4- and 8-bit parts stack into an 8-bit matrix.
        let a = QTensor::quantize(&weights(16, k, 1), GgmlDType::Q4_1).unwrap();
        let b = QTensor::quantize(&weights(16, k, 2), GgmlDType::Q8_0).unwrap();
        let p = Packed::from_qtensors(&[&a, &b]).unwrap().unwrap();
        assert!(!p.four_bit);
        let fast = p.matmul(&x, m, true);
        let slow = p.matmul_reference(&x, m);
        for (x, y) in fast.iter().zip(&slow) {
            assert!((x - y).abs() <= 1e-4 * y.abs().max(1.0));
        }
    }
}
