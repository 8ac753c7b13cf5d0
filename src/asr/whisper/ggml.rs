//! CTranslate2 Whisper (`model.bin` + `tokenizer.json`) to whisper.cpp's ggml
//! model file.
//!
//! The only Whisper weights a registry ships are CTranslate2 conversions
//! (see `/work/shared/MODELS.md`); whisper.cpp reads its own "ggml" format
//! with OpenAI's original tensor names. [`convert_ct2_to_ggml`] rewrites one
//! into the other; `duplex models install` runs it for `whisper-tiny-en`
//! (`convert = "whisper-ggml"` in the manifest).
//!
//! CTranslate2 `model.bin` (little-endian): `u32 version` (6), `string spec`
//! (`WhisperSpec`), `u32 revision`, `u32 n_vars`, then per variable `string
//! name`, `u8 rank`, `u32 shape[rank]`, `u8 dtype` (0 f32, 1 i8, 2 i16,
//! 3 i32, 4 f16), `u32 nbytes`, data; then `u32 n_aliases` and (alias,
//! target) string pairs. A string is `u16 length` + bytes, NUL-padded.
//!
//! ggml (little-endian, i32 unless said): magic `0x67676d6c`; hparams
//! `n_vocab, n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer,
//! n_text_ctx, n_text_state, n_text_head, n_text_layer, n_mels, ftype` (1 =
//! f16 weights, 7 = q8_0); the mel filterbank as `n_mels, 201` + f32 data;
//! the vocab as a count + (`u32 len`, bytes) per token id below
//! `<|endoftext|>`; then per tensor `n_dims, name_len, type` (0 f32, 1 f16,
//! 8 q8_0), dims innermost first, name, data. whisper.cpp refuses a file with an unknown tensor, a
//! wrong-sized one or a missing one, so every tensor is checked here first.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use super::mel;

/// ggml's file magic (`"ggml"` as a little-endian u32).
pub const GGML_MAGIC: u32 = 0x6767_6d6c;

/// The CTranslate2 model-file versions this reader understands.
const CT2_VERSION: u32 = 6;

/// The CTranslate2 spec name of Whisper models.
const CT2_SPEC: &str = "WhisperSpec";

/// Element type of a tensor in a ggml file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    /// Blocks of 32 values along a row: an f16 scale, then 32 signed bytes
    /// (value = scale * byte).
    Q8_0,
}

/// Values per [`GgmlType::Q8_0`] block, and the block's bytes.
const Q8_0_BLOCK: usize = 32;
const Q8_0_BLOCK_BYTES: usize = 2 + Q8_0_BLOCK;

/// The type of the weight matrices (whisper.cpp's `wtype`: every linear
/// layer and the token embedding; convolutions stay f16) and the file's
/// `ftype` that announces it (ggml's `GGML_FTYPE_MOSTLY_Q8_0`).
///
/// Q8_0 against f16, final decodes of the ten test clips at the 512
/// window, 2 threads, alternating in one process
/// (`WhisperSession::transcribe`, median of three per clip, then over the
/// clips): 313 vs 333 ms and 300 vs
/// 379 ms on a busy machine, 204 vs 252 and 235 vs 309 ms on a quieter one.
/// The encoder's matrix products are most of a decode. The words were the
/// same on eight clips; on the other two both had one error ("4 queen of
/// clothes" for "4. Queen of Cloves"; "10 of close", which q8_0 retried at
/// a higher temperature, about 170 ms more).
pub const WEIGHT_TYPE: GgmlType = GgmlType::Q8_0;
const WEIGHT_FTYPE: i32 = 7;

impl GgmlType {
    fn code(self) -> i32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q8_0 => 8,
        }
    }

    fn from_code(code: i32) -> Option<GgmlType> {
        match code {
            0 => Some(GgmlType::F32),
            1 => Some(GgmlType::F16),
            8 => Some(GgmlType::Q8_0),
            _ => None,
        }
    }

    /// Bytes of `elements` values (whole blocks for Q8_0).
    fn bytes(self, elements: usize) -> usize {
        match self {
            GgmlType::F32 => 4 * elements,
            GgmlType::F16 => 2 * elements,
            GgmlType::Q8_0 => elements.div_ceil(Q8_0_BLOCK) * Q8_0_BLOCK_BYTES,
        }
    }
}

/// The hyperparameters at the head of a whisper.cpp ggml file, in file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgmlHparams {
    pub n_vocab: i32,
    pub n_audio_ctx: i32,
    pub n_audio_state: i32,
    pub n_audio_head: i32,
    pub n_audio_layer: i32,
    pub n_text_ctx: i32,
    pub n_text_state: i32,
    pub n_text_head: i32,
    pub n_text_layer: i32,
    pub n_mels: i32,
    pub ftype: i32,
}

impl GgmlHparams {
    fn to_array(self) -> [i32; 11] {
        [
            self.n_vocab,
            self.n_audio_ctx,
            self.n_audio_state,
            self.n_audio_head,
            self.n_audio_layer,
            self.n_text_ctx,
            self.n_text_state,
            self.n_text_head,
            self.n_text_layer,
            self.n_mels,
            self.ftype,
        ]
    }

    /// How many tensors whisper.cpp expects for these hparams.
    pub fn expected_tensors(&self) -> usize {
        7 + 15 * self.n_audio_layer.max(0) as usize + 4 + 24 * self.n_text_layer.max(0) as usize
    }
}

/// One tensor entry of a ggml file (see [`inspect_ggml`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgmlTensorInfo {
    pub name: String,
    /// Shape in PyTorch/numpy order (outermost first).
    pub shape: Vec<usize>,
    pub ty: GgmlType,
    /// Byte offset of the data in the file.
    pub offset: u64,
}

/// What [`inspect_ggml`] reads from a ggml file.
#[derive(Debug, Clone)]
pub struct GgmlInfo {
    pub hparams: GgmlHparams,
    /// Mel filterbank dimensions as stored (`n_mel`, `n_fft`).
    pub mel_dims: (i32, i32),
    pub mel_filters: Vec<f32>,
    /// Vocabulary tokens as raw bytes, by id.
    pub vocab: Vec<Vec<u8>>,
    pub tensors: Vec<GgmlTensorInfo>,
}

// ---------------------------------------------------------------------------
// CTranslate2 reader

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ct2Dtype {
    F32,
    I8,
    I16,
    I32,
    F16,
}

impl Ct2Dtype {
    fn from_code(code: u8) -> Option<Ct2Dtype> {
        Some(match code {
            0 => Ct2Dtype::F32,
            1 => Ct2Dtype::I8,
            2 => Ct2Dtype::I16,
            3 => Ct2Dtype::I32,
            4 => Ct2Dtype::F16,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Ct2Dtype::I8 => 1,
            Ct2Dtype::I16 | Ct2Dtype::F16 => 2,
            Ct2Dtype::F32 | Ct2Dtype::I32 => 4,
        }
    }
}

impl fmt::Display for Ct2Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ct2Dtype::F32 => "float32",
            Ct2Dtype::I8 => "int8",
            Ct2Dtype::I16 => "int16",
            Ct2Dtype::I32 => "int32",
            Ct2Dtype::F16 => "float16",
        })
    }
}

#[derive(Debug)]
struct Ct2Var {
    shape: Vec<usize>,
    dtype: Ct2Dtype,
    /// Byte range of the data inside the file buffer.
    start: usize,
    len: usize,
}

/// A parsed CTranslate2 model file; variable data stays in `bytes`.
struct Ct2Model {
    path: PathBuf,
    bytes: Vec<u8>,
    vars: HashMap<String, Ct2Var>,
}

/// A bounds-checked little-endian reader over a byte slice; errors say what
/// was being read and at which offset.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => bail!(
                "truncated while reading {} ({n} bytes at offset {}, file is {} bytes)",
                what(),
                self.pos,
                self.bytes.len()
            ),
        }
    }

    fn u8(&mut self, what: &dyn Fn() -> String) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &dyn Fn() -> String) -> Result<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let n = self.u16(what)? as usize;
        let raw = self.take(n, what)?;
        let trimmed = match raw.iter().position(|&b| b == 0) {
            Some(i) => &raw[..i],
            None => raw,
        };
        String::from_utf8(trimmed.to_vec()).map_err(|_| anyhow!("{} is not valid UTF-8", what()))
    }
}

impl Ct2Model {
    fn read(path: &Path) -> Result<Ct2Model> {
        let bytes = fs::read(path)
            .with_context(|| format!("cannot read CTranslate2 model {}", path.display()))?;
        Ct2Model::parse(path, bytes)
            .with_context(|| format!("CTranslate2 model {} is not usable", path.display()))
    }

    fn parse(path: &Path, bytes: Vec<u8>) -> Result<Ct2Model> {
        let mut c = Cursor {
            bytes: &bytes,
            pos: 0,
        };
        let version = c.u32(&|| "the format version".into())?;
        if version != CT2_VERSION {
            bail!(
                "unsupported CTranslate2 format version {version} (this reader supports \
                 version {CT2_VERSION}); is it a CTranslate2 model.bin at all?"
            );
        }
        let spec = c.string(&|| "the spec name".into())?;
        if spec != CT2_SPEC {
            bail!("model spec is `{spec}`, expected `{CT2_SPEC}` (not a Whisper model)");
        }
        let _revision = c.u32(&|| "the spec revision".into())?;
        let n_vars = c.u32(&|| "the variable count".into())?;
        let mut vars = HashMap::new();
        for i in 0..n_vars {
            let name = c.string(&|| format!("the name of variable #{i}"))?;
            let label = || format!("variable `{name}`");
            let rank = c.u8(&label)?;
            let mut shape = Vec::with_capacity(rank as usize);
            for _ in 0..rank {
                shape.push(c.u32(&label)? as usize);
            }
            let code = c.u8(&label)?;
            let dtype = Ct2Dtype::from_code(code)
                .ok_or_else(|| anyhow!("variable `{name}` has unknown dtype code {code}"))?;
            let nbytes = c.u32(&label)? as usize;
            let count = shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| anyhow!("variable `{name}` has an absurd shape {shape:?}"))?;
            if count.checked_mul(dtype.size()) != Some(nbytes) {
                bail!(
                    "variable `{name}` says {nbytes} bytes, but shape {shape:?} of {dtype} needs {}",
                    count.saturating_mul(dtype.size())
                );
            }
            let start = c.pos;
            c.take(nbytes, &label)?;
            vars.insert(
                name,
                Ct2Var {
                    shape,
                    dtype,
                    start,
                    len: nbytes,
                },
            );
        }
        // Aliases (e.g. `decoder/projection/weight` -> the embeddings) carry
        // no data of their own; read them only to check the file is whole.
        let n_aliases = c.u32(&|| "the alias count".into())?;
        for i in 0..n_aliases {
            c.string(&|| format!("alias #{i}"))?;
            c.string(&|| format!("the target of alias #{i}"))?;
        }
        if c.pos != bytes.len() {
            bail!(
                "{} unexpected trailing bytes after the aliases",
                bytes.len() - c.pos
            );
        }
        Ok(Ct2Model {
            path: path.to_path_buf(),
            bytes,
            vars,
        })
    }

    fn var(&self, name: &str) -> Result<&Ct2Var> {
        self.vars.get(name).ok_or_else(|| {
            anyhow!(
                "{}: missing variable `{name}` (not a complete CTranslate2 Whisper model)",
                self.path.display()
            )
        })
    }

    /// The variable `name`, checked to have exactly `shape`.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<&Ct2Var> {
        let v = self.var(name)?;
        if v.shape != shape {
            bail!(
                "{}: variable `{name}` has shape {:?}, expected {shape:?}",
                self.path.display(),
                v.shape
            );
        }
        if !matches!(v.dtype, Ct2Dtype::F32 | Ct2Dtype::F16) {
            bail!(
                "{}: variable `{name}` is {}, only float16/float32 models can be converted \
                 (a quantized CTranslate2 model?)",
                self.path.display(),
                v.dtype
            );
        }
        Ok(v)
    }

    /// A scalar integer variable such as `encoder/num_heads`.
    fn scalar_int(&self, name: &str) -> Result<i64> {
        let v = self.var(name)?;
        let d = &self.bytes[v.start..v.start + v.len];
        let value = match (v.shape.iter().product::<usize>(), v.dtype) {
            (1, Ct2Dtype::I8) => i64::from(d[0] as i8),
            (1, Ct2Dtype::I16) => i64::from(i16::from_le_bytes([d[0], d[1]])),
            (1, Ct2Dtype::I32) => i64::from(i32::from_le_bytes([d[0], d[1], d[2], d[3]])),
            _ => bail!(
                "{}: variable `{name}` should be one integer, is {:?} of {}",
                self.path.display(),
                v.shape,
                v.dtype
            ),
        };
        Ok(value)
    }

    /// The layer count of `prefix` (`encoder` / `decoder`): the number of
    /// consecutive `prefix/layer_N/` groups starting at 0.
    fn layer_count(&self, prefix: &str) -> usize {
        let mut n = 0;
        while self
            .vars
            .keys()
            .any(|k| k.starts_with(&format!("{prefix}/layer_{n}/")))
        {
            n += 1;
        }
        n
    }
}

// ---------------------------------------------------------------------------
// ggml writer

/// A tensor to write: rows `[row0, row0 + rows)` of a CT2 variable (all of
/// it when `rows` covers it), stored with `shape` and type `ty`.
struct Planned<'m> {
    name: String,
    shape: Vec<usize>,
    ty: GgmlType,
    src: &'m Ct2Var,
    /// Element range inside the source variable.
    elem_start: usize,
    elem_count: usize,
}

struct Planner<'m> {
    model: &'m Ct2Model,
    out: Vec<Planned<'m>>,
}

impl<'m> Planner<'m> {
    /// Adds a tensor; a Q8_0 one must have rows of whole blocks.
    fn push(&mut self, planned: Planned<'m>) -> Result<()> {
        let row = planned.shape.last().copied().unwrap_or(0);
        if planned.ty == GgmlType::Q8_0 && row % Q8_0_BLOCK != 0 {
            bail!(
                "{}: `{}` has rows of {row} values, which do not split into \
                 q8_0 blocks of {Q8_0_BLOCK}",
                self.model.path.display(),
                planned.name
            );
        }
        self.out.push(planned);
        Ok(())
    }

    /// Whole variable `src` (expected `shape`) as `name`.
    fn whole(&mut self, name: String, src: &str, shape: &[usize], ty: GgmlType) -> Result<()> {
        let v = self.model.tensor(src, shape)?;
        let count = shape.iter().product();
        self.push(Planned {
            name,
            shape: shape.to_vec(),
            ty,
            src: v,
            elem_start: 0,
            elem_count: count,
        })
    }

    /// Whole variable `src` (expected `src_shape`), stored reshaped.
    fn reshaped(
        &mut self,
        name: String,
        src: &str,
        src_shape: &[usize],
        shape: &[usize],
        ty: GgmlType,
    ) -> Result<()> {
        let v = self.model.tensor(src, src_shape)?;
        let count: usize = src_shape.iter().product();
        debug_assert_eq!(count, shape.iter().product::<usize>());
        self.push(Planned {
            name,
            shape: shape.to_vec(),
            ty,
            src: v,
            elem_start: 0,
            elem_count: count,
        })
    }

    /// Part `index` of `parts` equal slices (along dim 0) of a fused
    /// variable of shape `[parts * d, rest...]`.
    fn part(
        &mut self,
        name: String,
        src: &str,
        fused_shape: &[usize],
        parts: usize,
        index: usize,
        ty: GgmlType,
    ) -> Result<()> {
        let v = self.model.tensor(src, fused_shape)?;
        let mut shape = fused_shape.to_vec();
        shape[0] /= parts;
        let count: usize = shape.iter().product();
        self.push(Planned {
            name,
            shape,
            ty,
            src: v,
            elem_start: index * count,
            elem_count: count,
        })
    }
}

/// Converts the CTranslate2 Whisper model in `ct2_dir` (`model.bin` and
/// `tokenizer.json`) into a whisper.cpp ggml file at `out`: q8_0 weight
/// matrices ([`WEIGHT_TYPE`]), f16 convolutions, f32 biases/norms/positional
/// embeddings, Slaney mel filters, byte-level vocabulary. Writes `out` under
/// a temporary name and renames it into place, so `out` is either absent or
/// complete.
pub fn convert_ct2_to_ggml(ct2_dir: &Path, out: &Path) -> Result<()> {
    let model_path = ct2_dir.join("model.bin");
    let tokenizer_path = ct2_dir.join("tokenizer.json");
    let model = Ct2Model::read(&model_path)?;
    let vocab = read_vocab(&tokenizer_path)?;
    let (hparams, plan) = plan(&model)?;
    if vocab.len() >= hparams.n_vocab as usize {
        bail!(
            "{}: {} ordinary tokens, but the model has only {} embeddings",
            tokenizer_path.display(),
            vocab.len(),
            hparams.n_vocab
        );
    }

    let tmp = temp_path(out);
    let result = (|| -> Result<()> {
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        write_ggml(&mut w, &model, &hparams, &vocab, &plan)
            .with_context(|| format!("writing {}", tmp.display()))?;
        let file = w
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing {}", tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, out)
            .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `<out>.partial`, next to `out` so the rename is atomic.
fn temp_path(out: &Path) -> PathBuf {
    let mut name = out
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".partial");
    out.with_file_name(name)
}

/// The hparams and the ordered list of tensors to write.
fn plan(model: &Ct2Model) -> Result<(GgmlHparams, Vec<Planned<'_>>)> {
    let path = model.path.display();
    let emb = model.var("decoder/embeddings/weight")?;
    let [n_vocab, d] = emb.shape[..] else {
        bail!(
            "{path}: `decoder/embeddings/weight` has shape {:?}, expected 2 dimensions",
            emb.shape
        );
    };
    let enc_pe = model.var("encoder/position_encodings/encodings")?;
    let n_audio_ctx = enc_pe.shape.first().copied().unwrap_or(0);
    let dec_pe = model.var("decoder/position_encodings/encodings")?;
    let n_text_ctx = dec_pe.shape.first().copied().unwrap_or(0);
    let conv1 = model.var("encoder/conv1/weight")?;
    let n_mels = conv1.shape.get(1).copied().unwrap_or(0);
    let n_audio_layer = model.layer_count("encoder");
    let n_text_layer = model.layer_count("decoder");
    let n_audio_head = model.scalar_int("encoder/num_heads")?;
    let n_text_head = model.scalar_int("decoder/num_heads")?;
    if n_audio_layer == 0 || n_text_layer == 0 {
        bail!("{path}: no `encoder/layer_0/...` or `decoder/layer_0/...` variables");
    }
    for (what, h) in [("encoder", n_audio_head), ("decoder", n_text_head)] {
        if h <= 0 || d % h as usize != 0 {
            bail!("{path}: `{what}/num_heads` is {h}, which does not divide the width {d}");
        }
    }
    let to_i32 = |what: &str, v: usize| -> Result<i32> {
        i32::try_from(v).map_err(|_| anyhow!("{path}: {what} {v} is too large"))
    };
    let hparams = GgmlHparams {
        n_vocab: to_i32("vocabulary size", n_vocab)?,
        n_audio_ctx: to_i32("audio context", n_audio_ctx)?,
        n_audio_state: to_i32("width", d)?,
        n_audio_head: n_audio_head as i32,
        n_audio_layer: to_i32("encoder layers", n_audio_layer)?,
        n_text_ctx: to_i32("text context", n_text_ctx)?,
        n_text_state: to_i32("width", d)?,
        n_text_head: n_text_head as i32,
        n_text_layer: to_i32("decoder layers", n_text_layer)?,
        n_mels: to_i32("mel bins", n_mels)?,
        ftype: WEIGHT_FTYPE,
    };

    use GgmlType::{F16, F32};
    let mut p = Planner {
        model,
        out: Vec::new(),
    };
    // Encoder.
    p.whole(
        "encoder.conv1.weight".into(),
        "encoder/conv1/weight",
        &[d, n_mels, 3],
        F16,
    )?;
    p.reshaped(
        "encoder.conv1.bias".into(),
        "encoder/conv1/bias",
        &[d],
        &[d, 1],
        F32,
    )?;
    p.whole(
        "encoder.conv2.weight".into(),
        "encoder/conv2/weight",
        &[d, d, 3],
        F16,
    )?;
    p.reshaped(
        "encoder.conv2.bias".into(),
        "encoder/conv2/bias",
        &[d],
        &[d, 1],
        F32,
    )?;
    p.whole(
        "encoder.positional_embedding".into(),
        "encoder/position_encodings/encodings",
        &[n_audio_ctx, d],
        F32,
    )?;
    for i in 0..n_audio_layer {
        let src = format!("encoder/layer_{i}");
        let dst = format!("encoder.blocks.{i}");
        self_attention(&mut p, &src, &dst, d)?;
        mlp(&mut p, &src, &dst, d)?;
    }
    p.whole(
        "encoder.ln_post.weight".into(),
        "encoder/layer_norm/gamma",
        &[d],
        F32,
    )?;
    p.whole(
        "encoder.ln_post.bias".into(),
        "encoder/layer_norm/beta",
        &[d],
        F32,
    )?;
    // Decoder. `decoder/projection/weight` is an alias of the embeddings
    // (tied weights): whisper.cpp reuses the token embedding, skip it.
    p.whole(
        "decoder.token_embedding.weight".into(),
        "decoder/embeddings/weight",
        &[n_vocab, d],
        WEIGHT_TYPE,
    )?;
    p.whole(
        "decoder.positional_embedding".into(),
        "decoder/position_encodings/encodings",
        &[n_text_ctx, d],
        F32,
    )?;
    for i in 0..n_text_layer {
        let src = format!("decoder/layer_{i}");
        let dst = format!("decoder.blocks.{i}");
        self_attention(&mut p, &src, &dst, d)?;
        cross_attention(&mut p, &src, &dst, d)?;
        mlp(&mut p, &src, &dst, d)?;
    }
    p.whole(
        "decoder.ln.weight".into(),
        "decoder/layer_norm/gamma",
        &[d],
        F32,
    )?;
    p.whole(
        "decoder.ln.bias".into(),
        "decoder/layer_norm/beta",
        &[d],
        F32,
    )?;

    if p.out.len() != hparams.expected_tensors() {
        bail!(
            "internal error: planned {} tensors, whisper.cpp expects {}",
            p.out.len(),
            hparams.expected_tensors()
        );
    }
    Ok((hparams, p.out))
}

/// `src/self_attention/...` -> `dst.attn.*` and `dst.attn_ln.*`: the fused
/// q,k,v projection split in three; the key has no bias.
fn self_attention(p: &mut Planner<'_>, src: &str, dst: &str, d: usize) -> Result<()> {
    use GgmlType::F32;
    let w = format!("{src}/self_attention/linear_0/weight");
    let b = format!("{src}/self_attention/linear_0/bias");
    p.part(
        format!("{dst}.attn.query.weight"),
        &w,
        &[3 * d, d],
        3,
        0,
        WEIGHT_TYPE,
    )?;
    p.part(format!("{dst}.attn.query.bias"), &b, &[3 * d], 3, 0, F32)?;
    p.part(
        format!("{dst}.attn.key.weight"),
        &w,
        &[3 * d, d],
        3,
        1,
        WEIGHT_TYPE,
    )?;
    p.part(
        format!("{dst}.attn.value.weight"),
        &w,
        &[3 * d, d],
        3,
        2,
        WEIGHT_TYPE,
    )?;
    p.part(format!("{dst}.attn.value.bias"), &b, &[3 * d], 3, 2, F32)?;
    let o = format!("{src}/self_attention/linear_1");
    p.whole(
        format!("{dst}.attn.out.weight"),
        &format!("{o}/weight"),
        &[d, d],
        WEIGHT_TYPE,
    )?;
    p.whole(
        format!("{dst}.attn.out.bias"),
        &format!("{o}/bias"),
        &[d],
        F32,
    )?;
    let ln = format!("{src}/self_attention/layer_norm");
    p.whole(
        format!("{dst}.attn_ln.weight"),
        &format!("{ln}/gamma"),
        &[d],
        F32,
    )?;
    p.whole(
        format!("{dst}.attn_ln.bias"),
        &format!("{ln}/beta"),
        &[d],
        F32,
    )?;
    Ok(())
}

/// `src/attention/...` -> `dst.cross_attn.*` and `dst.cross_attn_ln.*`:
/// `linear_0` is the query, `linear_1` the fused key,value (key without
/// bias), `linear_2` the output.
fn cross_attention(p: &mut Planner<'_>, src: &str, dst: &str, d: usize) -> Result<()> {
    use GgmlType::F32;
    let q = format!("{src}/attention/linear_0");
    p.whole(
        format!("{dst}.cross_attn.query.weight"),
        &format!("{q}/weight"),
        &[d, d],
        WEIGHT_TYPE,
    )?;
    p.whole(
        format!("{dst}.cross_attn.query.bias"),
        &format!("{q}/bias"),
        &[d],
        F32,
    )?;
    let w = format!("{src}/attention/linear_1/weight");
    let b = format!("{src}/attention/linear_1/bias");
    p.part(
        format!("{dst}.cross_attn.key.weight"),
        &w,
        &[2 * d, d],
        2,
        0,
        WEIGHT_TYPE,
    )?;
    p.part(
        format!("{dst}.cross_attn.value.weight"),
        &w,
        &[2 * d, d],
        2,
        1,
        WEIGHT_TYPE,
    )?;
    p.part(
        format!("{dst}.cross_attn.value.bias"),
        &b,
        &[2 * d],
        2,
        1,
        F32,
    )?;
    let o = format!("{src}/attention/linear_2");
    p.whole(
        format!("{dst}.cross_attn.out.weight"),
        &format!("{o}/weight"),
        &[d, d],
        WEIGHT_TYPE,
    )?;
    p.whole(
        format!("{dst}.cross_attn.out.bias"),
        &format!("{o}/bias"),
        &[d],
        F32,
    )?;
    let ln = format!("{src}/attention/layer_norm");
    p.whole(
        format!("{dst}.cross_attn_ln.weight"),
        &format!("{ln}/gamma"),
        &[d],
        F32,
    )?;
    p.whole(
        format!("{dst}.cross_attn_ln.bias"),
        &format!("{ln}/beta"),
        &[d],
        F32,
    )?;
    Ok(())
}

/// `src/ffn/...` -> `dst.mlp.0`, `dst.mlp.2`, `dst.mlp_ln`.
fn mlp(p: &mut Planner<'_>, src: &str, dst: &str, d: usize) -> Result<()> {
    use GgmlType::F32;
    let f = format!("{src}/ffn");
    p.whole(
        format!("{dst}.mlp.0.weight"),
        &format!("{f}/linear_0/weight"),
        &[4 * d, d],
        WEIGHT_TYPE,
    )?;
    p.whole(
        format!("{dst}.mlp.0.bias"),
        &format!("{f}/linear_0/bias"),
        &[4 * d],
        F32,
    )?;
    p.whole(
        format!("{dst}.mlp.2.weight"),
        &format!("{f}/linear_1/weight"),
        &[d, 4 * d],
        WEIGHT_TYPE,
    )?;
    p.whole(
        format!("{dst}.mlp.2.bias"),
        &format!("{f}/linear_1/bias"),
        &[d],
        F32,
    )?;
    p.whole(
        format!("{dst}.mlp_ln.weight"),
        &format!("{f}/layer_norm/gamma"),
        &[d],
        F32,
    )?;
    p.whole(
        format!("{dst}.mlp_ln.bias"),
        &format!("{f}/layer_norm/beta"),
        &[d],
        F32,
    )?;
    Ok(())
}

fn write_ggml(
    w: &mut impl Write,
    model: &Ct2Model,
    hparams: &GgmlHparams,
    vocab: &[Vec<u8>],
    plan: &[Planned<'_>],
) -> io::Result<()> {
    let i32le = |w: &mut dyn Write, v: i32| w.write_all(&v.to_le_bytes());
    w.write_all(&GGML_MAGIC.to_le_bytes())?;
    for v in hparams.to_array() {
        i32le(w, v)?;
    }

    let filters = mel::slaney_mel_filterbank(mel::SAMPLE_RATE, mel::N_FFT, hparams.n_mels as usize);
    i32le(w, hparams.n_mels)?;
    i32le(w, mel::N_FREQS as i32)?;
    for f in &filters {
        w.write_all(&f.to_le_bytes())?;
    }

    i32le(w, vocab.len() as i32)?;
    for token in vocab {
        w.write_all(&(token.len() as u32).to_le_bytes())?;
        w.write_all(token)?;
    }

    let mut buf = Vec::new();
    for t in plan {
        i32le(w, t.shape.len() as i32)?;
        i32le(w, t.name.len() as i32)?;
        i32le(w, t.ty.code())?;
        for &dim in t.shape.iter().rev() {
            i32le(w, dim as i32)?;
        }
        w.write_all(t.name.as_bytes())?;
        let src = t.src;
        let esize = src.dtype.size();
        let raw = &model.bytes[src.start + t.elem_start * esize..][..t.elem_count * esize];
        buf.clear();
        convert_floats(raw, src.dtype, t.ty, &mut buf);
        w.write_all(&buf)?;
    }
    Ok(())
}

/// Re-encodes little-endian floats from CT2 `from` (f16 or f32, checked by
/// the planner) to ggml `to`, appending to `out`. For Q8_0 the values are
/// whole rows (the planner checked that rows are whole blocks).
fn convert_floats(raw: &[u8], from: Ct2Dtype, to: GgmlType, out: &mut Vec<u8>) {
    match (from, to) {
        (Ct2Dtype::F16, GgmlType::F16) | (Ct2Dtype::F32, GgmlType::F32) => {
            out.extend_from_slice(raw)
        }
        (_, GgmlType::F32) => {
            for v in floats(raw, from) {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        (_, GgmlType::F16) => {
            for v in floats(raw, from) {
                out.extend_from_slice(&f32_to_f16(v).to_le_bytes());
            }
        }
        (_, GgmlType::Q8_0) => {
            let values: Vec<f32> = floats(raw, from).collect();
            for block in values.chunks(Q8_0_BLOCK) {
                quantize_q8_0(block, out);
            }
        }
    }
}

/// The values of little-endian CT2 `dtype` data (f16 or f32).
fn floats(raw: &[u8], dtype: Ct2Dtype) -> impl Iterator<Item = f32> + '_ {
    let half = dtype == Ct2Dtype::F16;
    raw.chunks_exact(if half { 2 } else { 4 }).map(move |b| {
        if half {
            f16_to_f32(u16::from_le_bytes([b[0], b[1]]))
        } else {
            f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }
    })
}

/// One Q8_0 block as ggml's reference quantizer writes it: scale = the
/// largest magnitude / 127 (as f16), each value rounded to the nearest
/// multiple of the scale.
fn quantize_q8_0(block: &[f32], out: &mut Vec<u8>) {
    let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = amax / 127.0;
    let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    out.extend_from_slice(&f32_to_f16(scale).to_le_bytes());
    for i in 0..Q8_0_BLOCK {
        let v = block.get(i).copied().unwrap_or(0.0);
        out.push((v * inverse).round().clamp(-127.0, 127.0) as i8 as u8);
    }
}

/// IEEE half to single precision (exact).
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// Single to half precision, round to nearest even.
pub(crate) fn f32_to_f16(f: f32) -> u16 {
    half::f16::from_f32(f).to_bits()
}

// ---------------------------------------------------------------------------
// Vocabulary

/// GPT-2's byte-level alphabet: the char standing for each byte.
fn byte_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = (b'!'..=b'~').contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
        table[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(256 + n).unwrap_or('\0');
            n += 1;
            c
        };
    }
    table
}

/// The ordinary (non-special) tokens of a Hugging Face byte-level BPE
/// `tokenizer.json`, as raw bytes by id: ids `0..eot` where `eot` is the id
/// of `<|endoftext|>`.
fn read_vocab(path: &Path) -> Result<Vec<Vec<u8>>> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read tokenizer {}", path.display()))?;
    parse_vocab(&text).with_context(|| format!("tokenizer {} is not usable", path.display()))
}

fn parse_vocab(text: &str) -> Result<Vec<Vec<u8>>> {
    let json: serde_json::Value = serde_json::from_str(text).context("not valid JSON")?;
    let vocab = json
        .pointer("/model/vocab")
        .and_then(|v| v.as_object())
        .ok_or_else(|| anyhow!("no `model.vocab` object (not a BPE tokenizer.json)"))?;
    let id_of = |token: &str| -> Option<usize> {
        let from_added = json
            .get("added_tokens")
            .and_then(|a| a.as_array())
            .and_then(|a| {
                a.iter()
                    .find(|t| t.get("content").and_then(|c| c.as_str()) == Some(token))
            })
            .and_then(|t| t.get("id"))
            .and_then(|i| i.as_u64());
        from_added
            .or_else(|| vocab.get(token).and_then(|i| i.as_u64()))
            .map(|i| i as usize)
    };
    let eot = id_of("<|endoftext|>").ok_or_else(|| anyhow!("no `<|endoftext|>` token"))?;

    let mut from_char: HashMap<char, u8> = HashMap::new();
    for (b, c) in byte_to_unicode().into_iter().enumerate() {
        from_char.insert(c, b as u8);
    }
    let mut by_id: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
    for (token, id) in vocab {
        let Some(id) = id.as_u64().map(|i| i as usize) else {
            bail!("token {token:?} has a non-integer id {id}");
        };
        if id >= eot {
            continue;
        }
        let bytes = token
            .chars()
            .map(|c| from_char.get(&c).copied())
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| anyhow!("token {token:?} (id {id}) is not byte-level BPE"))?;
        if by_id.insert(id, bytes).is_some() {
            bail!("two tokens have id {id}");
        }
    }
    if by_id.len() != eot {
        let missing = (0..eot).find(|i| !by_id.contains_key(i)).unwrap_or(0);
        bail!("token id {missing} is missing (ids below `<|endoftext|>` = {eot} must all exist)");
    }
    Ok(by_id.into_values().collect())
}

// ---------------------------------------------------------------------------
// Reading a ggml file back (tests, diagnostics)

/// Reads the header, filters, vocabulary and tensor table of a whisper.cpp
/// ggml file (without loading tensor data), checking that each tensor's
/// data is present.
pub fn inspect_ggml(path: &Path) -> Result<GgmlInfo> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut r = GgmlReader {
        r: io::BufReader::new(file),
        pos: 0,
        path,
    };
    let magic = r.i32("the magic")? as u32;
    if magic != GGML_MAGIC {
        bail!("{}: bad magic {magic:#x} (not a ggml file)", path.display());
    }
    let mut hp = [0i32; 11];
    for v in &mut hp {
        *v = r.i32("the hparams")?;
    }
    let hparams = GgmlHparams {
        n_vocab: hp[0],
        n_audio_ctx: hp[1],
        n_audio_state: hp[2],
        n_audio_head: hp[3],
        n_audio_layer: hp[4],
        n_text_ctx: hp[5],
        n_text_state: hp[6],
        n_text_head: hp[7],
        n_text_layer: hp[8],
        n_mels: hp[9],
        ftype: hp[10],
    };
    let n_mel = r.i32("the filterbank size")?;
    let n_fft = r.i32("the filterbank size")?;
    let n_filters = usize::try_from(i64::from(n_mel) * i64::from(n_fft))
        .ok()
        .filter(|&n| n <= 1 << 20)
        .ok_or_else(|| anyhow!("{}: bad filterbank size {n_mel} x {n_fft}", path.display()))?;
    let mut mel_filters = Vec::with_capacity(n_filters);
    for _ in 0..n_filters {
        mel_filters.push(f32::from_bits(r.i32("the filterbank")? as u32));
    }
    let n_vocab = r.i32("the vocabulary size")?;
    let mut vocab = Vec::with_capacity(n_vocab.clamp(0, 1 << 20) as usize);
    for i in 0..n_vocab {
        let n = r.i32("a token length")? as u32 as usize;
        if n > 1 << 16 {
            bail!("{}: token {i} claims {n} bytes", path.display());
        }
        vocab.push(r.bytes(n, "a token")?);
    }
    let mut tensors = Vec::new();
    while r.pos < len {
        let n_dims = r.i32("a tensor header")?;
        let name_len = r.i32("a tensor header")?;
        let code = r.i32("a tensor header")?;
        if !(1..=4).contains(&n_dims) || !(1..=256).contains(&name_len) {
            bail!(
                "{}: bad tensor header (dims {n_dims}, name length {name_len})",
                path.display()
            );
        }
        let ty = GgmlType::from_code(code).ok_or_else(|| {
            anyhow!(
                "{}: tensor type {code} is not f32, f16 or q8_0",
                path.display()
            )
        })?;
        let mut shape = Vec::new();
        for _ in 0..n_dims {
            shape.push(r.i32("tensor dims")?.max(0) as usize);
        }
        shape.reverse();
        let name =
            String::from_utf8_lossy(&r.bytes(name_len as usize, "a tensor name")?).into_owned();
        let nbytes = ty.bytes(shape.iter().product::<usize>()) as u64;
        if r.pos + nbytes > len {
            bail!("{}: tensor `{name}` data is truncated", path.display());
        }
        tensors.push(GgmlTensorInfo {
            name,
            shape,
            ty,
            offset: r.pos,
        });
        r.skip(nbytes)?;
    }
    Ok(GgmlInfo {
        hparams,
        mel_dims: (n_mel, n_fft),
        mel_filters,
        vocab,
        tensors,
    })
}

struct GgmlReader<'p> {
    r: io::BufReader<File>,
    pos: u64,
    path: &'p Path,
}

impl GgmlReader<'_> {
    fn bytes(&mut self, n: usize, what: &str) -> Result<Vec<u8>> {
        let mut b = vec![0u8; n];
        self.r.read_exact(&mut b).with_context(|| {
            format!(
                "{}: truncated reading {what} at offset {}",
                self.path.display(),
                self.pos
            )
        })?;
        self.pos += n as u64;
        Ok(b)
    }

    fn i32(&mut self, what: &str) -> Result<i32> {
        let b = self.bytes(4, what)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn skip(&mut self, n: u64) -> Result<()> {
        let copied = io::copy(&mut (&mut self.r).take(n), &mut io::sink())
            .with_context(|| format!("reading {}", self.path.display()))?;
        if copied != n {
            bail!("{}: truncated tensor data", self.path.display());
        }
        self.pos += n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_floats_round_trip() {
        for v in [
            0.0f32,
            -0.0,
            1.0,
            -2.5,
            65504.0,
            6.1035156e-5,
            5.9604645e-8,
            0.333_251_95,
        ] {
            assert_eq!(f16_to_f32(f32_to_f16(v)), v, "{v}");
        }
        assert_eq!(f32_to_f16(1.0), 0x3c00);
        assert_eq!(f32_to_f16(70000.0), 0x7c00);
        assert_eq!(f32_to_f16(1.0 + 1.0 / 4096.0), 0x3c00, "ties to even");
        assert_eq!(f32_to_f16(1.0 + 6.0 / 4096.0), 0x3c02, "ties to even");
        assert_eq!(f32_to_f16(1.0 + 3.0 / 4096.0), 0x3c01, "nearest");
        assert!(f16_to_f32(0x7e00).is_nan());
        // Every half converts to f32 and back unchanged.
        for h in 0..=u16::MAX {
            let f = f16_to_f32(h);
            if !f.is_nan() {
                assert_eq!(f32_to_f16(f), h, "{h:#x}");
            }
        }
    }

    #[test]
    fn byte_level_alphabet() {
        let t = byte_to_unicode();
        assert_eq!(t[b'!' as usize], '!');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        let mut all: Vec<char> = t.to_vec();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 256);
    }

    #[test]
    fn vocab_maps_back_to_bytes() {
        let json = r#"{"added_tokens":[{"id":3,"content":"<|endoftext|>"}],
            "model":{"type":"BPE","vocab":{"a":0,"Ġthe":1,"Ã©":2,"<|endoftext|>":3}}}"#;
        let v = parse_vocab(json).expect("parses");
        assert_eq!(
            v,
            [b"a".to_vec(), b" the".to_vec(), "é".as_bytes().to_vec()]
        );
        let gap = json.replace("\"Ã©\":2", "\"Ã©\":5");
        let e = parse_vocab(&gap).expect_err("id 2 missing").to_string();
        assert!(e.contains("token id 2 is missing"), "{e}");
    }

    #[test]
    fn ct2_parse_errors_are_clear() {
        let p = Path::new("/x/model.bin");
        let e = Ct2Model::parse(p, vec![5, 0, 0, 0])
            .err()
            .expect("bad version")
            .to_string();
        assert!(e.contains("version 5"), "{e}");
        let mut b = 6u32.to_le_bytes().to_vec();
        b.extend_from_slice(&4u16.to_le_bytes());
        b.extend_from_slice(b"Foo\0");
        let e = Ct2Model::parse(p, b.clone())
            .err()
            .expect("bad spec")
            .to_string();
        assert!(e.contains("`Foo`"), "{e}");
        let mut b = 6u32.to_le_bytes().to_vec();
        b.extend_from_slice(&12u16.to_le_bytes());
        b.extend_from_slice(b"WhisperSpec\0");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes()); // one variable...
        b.extend_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(b"x\0");
        b.push(1);
        b.extend_from_slice(&4u32.to_le_bytes());
        b.push(4);
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&[0; 6]); // ...truncated
        let e = format!("{:#}", Ct2Model::parse(p, b).err().expect("truncated"));
        assert!(e.contains("truncated") && e.contains("`x`"), "{e}");
    }
}
