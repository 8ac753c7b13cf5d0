//! Reader for LEGACY (non-zip) torch `.pth` pickles: the state dict as named
//! f32 candle tensors, without torch.
//!
//! The legacy format (torch < 1.6 `torch.save`) is a sequence of pickles:
//! the magic number 0x1950a86a20f9469cfc6c, the protocol version, system
//! info, the state dict (tensors are `torch._utils._rebuild_tensor_v2` over
//! persistent ids `('storage', FloatStorage, key, location, numel)`), the
//! list of storage keys, then for each key in that order a little-endian u64
//! element count and the raw storage bytes. candle-core reads only the zip
//! format; its pickle VM (`candle_core::pickle::Stack`) is reused here for the
//! pickles themselves. Strided (e.g. channels-last) tensors are made
//! contiguous.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};

/// `\x80\x02` (protocol 2), LONG1 of 10 bytes, the magic number, STOP.
const MAGIC_PICKLE: [u8; 15] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e,
];

/// The tensors of a legacy `.pth` state dict, by name, as contiguous f32.
#[derive(Debug)]
pub struct PthTensors {
    tensors: HashMap<String, Tensor>,
}

struct Entry {
    name: String,
    key: String,
    dtype: DType,
    shape: Vec<usize>,
    stride: Vec<usize>,
    offset: usize,
}

impl PthTensors {
    /// Reads a legacy `.pth` file.
    pub fn read(path: &Path) -> Result<PthTensors> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        PthTensors::parse(&bytes)
            .with_context(|| format!("{}: not a readable legacy torch pickle", path.display()))
    }

    /// Parses the bytes of a legacy `.pth` file.
    pub fn parse(bytes: &[u8]) -> Result<PthTensors> {
        if bytes.starts_with(b"PK\x03\x04") {
            bail!(
                "this is a zip-format .pth (torch >= 1.6); this reader takes only the legacy \
                 pickle format (use candle_core::pickle::PthTensors for zip files)"
            );
        }
        if !bytes.starts_with(&MAGIC_PICKLE) {
            bail!("no legacy torch magic number at the start (file too short or not a .pth)");
        }
        let mut cur = Cursor::new(&bytes[MAGIC_PICKLE.len()..]);
        let protocol = read_pickle(&mut cur).context("protocol version pickle")?;
        match protocol {
            Object::Int(1001) | Object::Long(1001) => {}
            other => bail!("unsupported legacy protocol version {other:?} (expected 1001)"),
        }
        read_pickle(&mut cur).context("system info pickle")?;
        let state = read_pickle(&mut cur).context("state dict pickle (file truncated?)")?;
        let entries = state_entries(state)?;
        let keys =
            match read_pickle(&mut cur).context("storage key list pickle (file truncated?)")? {
                Object::List(keys) => keys
                    .into_iter()
                    .map(|k| {
                        k.unicode()
                            .map_err(|o| anyhow::anyhow!("storage key {o:?} is not a string"))
                    })
                    .collect::<Result<Vec<String>>>()?,
                other => bail!("storage key list is not a list: {other:?}"),
            };
        let mut storages: HashMap<String, Vec<f32>> = HashMap::new();
        let needed: HashMap<&str, DType> =
            entries.iter().map(|e| (e.key.as_str(), e.dtype)).collect();
        for key in &keys {
            let mut n = [0u8; 8];
            cur.read_exact(&mut n)
                .with_context(|| format!("storage {key}: element count (file truncated)"))?;
            let numel = u64::from_le_bytes(n) as usize;
            let dtype = needed.get(key.as_str()).copied().unwrap_or(DType::F32);
            let size = numel
                .checked_mul(dtype.size_in_bytes())
                .context("storage size overflows")?;
            let start = cur.position() as usize;
            let data = cur
                .get_ref()
                .get(start..start + size)
                .with_context(|| {
                    format!("storage {key}: {numel} elements of {dtype:?} run past the end of the file (truncated)")
                })?;
            cur.set_position((start + size) as u64);
            storages.insert(key.clone(), decode(data, dtype)?);
        }
        let mut tensors = HashMap::new();
        for e in entries {
            let storage = storages.get(&e.key).with_context(|| {
                format!("tensor {}: storage {} is not in the file", e.name, e.key)
            })?;
            let data = gather(storage, &e).with_context(|| format!("tensor {}", e.name))?;
            let t = Tensor::from_vec(data, e.shape.as_slice(), &Device::Cpu)?;
            tensors.insert(e.name, t);
        }
        Ok(PthTensors { tensors })
    }

    /// The tensor `name`, or an error naming it.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .with_context(|| format!("tensor {name} is not in the state dict"))
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// True when the state dict holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

fn read_pickle(cur: &mut Cursor<&[u8]>) -> Result<Object> {
    let mut stack = Stack::empty();
    stack
        .read_loop(cur)
        .map_err(|e| anyhow::anyhow!("pickle: {e}"))?;
    stack.finalize().map_err(|e| anyhow::anyhow!("pickle: {e}"))
}

fn state_entries(state: Object) -> Result<Vec<Entry>> {
    let items = match state {
        Object::Dict(items) => items,
        // A state dict saved with its metadata attribute: OrderedDict built then.
        Object::Build { callable, .. } => match *callable {
            Object::Dict(items) => items,
            other => bail!("state dict is not a dict: {other:?}"),
        },
        other => bail!("state dict is not a dict: {other:?}"),
    };
    let mut entries = Vec::with_capacity(items.len());
    for (name, value) in items {
        let name = name
            .unicode()
            .map_err(|o| anyhow::anyhow!("state dict key {o:?} is not a string"))?;
        // Non-tensor entries (e.g. the `_metadata` of a saved OrderedDict)
        // are skipped.
        let Some(info) = value
            .into_tensor_info(Object::Unicode(name.clone()), Path::new(""))
            .map_err(|e| anyhow::anyhow!("tensor {name}: {e}"))?
        else {
            continue;
        };
        let layout = info.layout;
        entries.push(Entry {
            key: info.path.trim_start_matches('/').to_string(),
            dtype: info.dtype,
            shape: layout.dims().to_vec(),
            stride: layout.stride().to_vec(),
            offset: layout.start_offset() / info.dtype.size_in_bytes(),
            name,
        });
    }
    ensure!(!entries.is_empty(), "the state dict holds no tensor");
    Ok(entries)
}

fn decode(data: &[u8], dtype: DType) -> Result<Vec<f32>> {
    Ok(match dtype {
        DType::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        DType::F64 => data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
            .collect(),
        DType::I64 => data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
            .collect(),
        other => bail!(
            "unsupported storage type {other:?} (FloatStorage, DoubleStorage, LongStorage are read)"
        ),
    })
}

/// The contiguous elements of a strided view over `storage`.
fn gather(storage: &[f32], e: &Entry) -> Result<Vec<f32>> {
    let numel: usize = e.shape.iter().product();
    let mut out = Vec::with_capacity(numel);
    if numel == 0 {
        return Ok(out);
    }
    let max = e.offset
        + e.shape
            .iter()
            .zip(&e.stride)
            .map(|(d, s)| (d - 1) * s)
            .sum::<usize>();
    if max >= storage.len() {
        bail!(
            "view (offset {}, shape {:?}, stride {:?}) reaches past its storage of {} elements",
            e.offset,
            e.shape,
            e.stride,
            storage.len()
        );
    }
    let mut index = vec![0usize; e.shape.len()];
    for _ in 0..numel {
        let at = e.offset
            + index
                .iter()
                .zip(&e.stride)
                .map(|(i, s)| i * s)
                .sum::<usize>();
        out.push(storage[at]);
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < e.shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zip_and_garbage_are_refused_with_a_reason() {
        let err = PthTensors::parse(b"PK\x03\x04rest of a zip").unwrap_err();
        assert!(format!("{err:#}").contains("zip-format"), "{err:#}");
        let err = PthTensors::parse(b"hello").unwrap_err();
        assert!(format!("{err:#}").contains("magic"), "{err:#}");
    }

    #[test]
    fn strided_views_are_made_contiguous() {
        // A 2x3 tensor stored column-major (stride (1, 2)).
        let e = Entry {
            name: "t".into(),
            key: "0".into(),
            dtype: DType::F32,
            shape: vec![2, 3],
            stride: vec![1, 2],
            offset: 0,
        };
        let storage = [0.0, 3.0, 1.0, 4.0, 2.0, 5.0];
        assert_eq!(
            gather(&storage, &e).unwrap(),
            vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        );
        let short = [0.0, 1.0];
        assert!(gather(&short, &e).is_err());
    }
}
