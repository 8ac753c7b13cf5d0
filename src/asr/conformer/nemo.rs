//! NeMo checkpoints as published: a `.nemo` file is a tar (gzipped in older
//! releases) holding `model_config.yaml`, `model_weights.ckpt` (a PyTorch
//! zip checkpoint of the state dict, read with candle's pickle reader) and
//! the tokenizer (`*tokenizer.model`, SentencePiece, or `*vocab.txt`). An
//! unpacked `.nemo` directory works too.
//!
//! [`write`] produces the same layout (uncompressed tar, a protocol-2
//! pickle of an `OrderedDict` of `torch._utils._rebuild_tensor_v2` calls
//! with one storage per tensor, as `torch.save` writes it) so tests and
//! benchmarks can make small models without PyTorch.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::Tensor;

use super::ConformerModel;
use super::config::ModelConfig;
use super::encoder::Weights;
use super::tokenizer::Tokenizer;

/// The parts of a `.nemo` this engine reads.
struct Parts {
    config: Option<String>,
    weights: Option<Vec<u8>>,
    sentencepiece: Option<Vec<u8>>,
    vocab_txt: Option<String>,
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl Parts {
    fn take(&mut self, name: &str, read: impl FnOnce() -> Result<Vec<u8>>) -> Result<()> {
        let base = file_name(name);
        if base == "model_config.yaml" {
            self.config =
                Some(String::from_utf8(read()?).context("model_config.yaml is not UTF-8")?);
        } else if base == "model_weights.ckpt" {
            self.weights = Some(read()?);
        } else if base.ends_with("tokenizer.model") {
            self.sentencepiece = Some(read()?);
        } else if base.ends_with("vocab.txt") {
            self.vocab_txt = Some(String::from_utf8(read()?).context("vocab.txt is not UTF-8")?);
        }
        Ok(())
    }
}

fn read_archive(path: &Path) -> Result<Parts> {
    let mut parts = Parts {
        config: None,
        weights: None,
        sentencepiece: None,
        vocab_txt: None,
    };
    if path.is_dir() {
        for entry in
            std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))?
        {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let p = entry.path();
            parts.take(&name, || {
                std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
            })?;
        }
        return Ok(parts);
    }
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut magic = [0u8; 2];
    let gz = file.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    drop(file);
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive
        .entries()
        .with_context(|| format!("{} is not a tar archive (.nemo)", path.display()))?
    {
        let mut entry = entry.with_context(|| format!("reading {}", path.display()))?;
        let name = entry.path()?.to_string_lossy().into_owned();
        parts.take(&name, || {
            let mut data = Vec::new();
            entry
                .read_to_end(&mut data)
                .with_context(|| format!("reading {name} from the archive"))?;
            Ok(data)
        })?;
    }
    Ok(parts)
}

/// Reads a PyTorch zip checkpoint (a state dict) from memory.
pub fn read_checkpoint(data: &[u8]) -> Result<HashMap<String, Tensor>> {
    // candle's reader wants a path.
    let tmp = TempFile::new("ckpt")?;
    std::fs::write(&tmp.0, data).with_context(|| format!("writing {}", tmp.0.display()))?;
    let mut tensors = candle_core::pickle::read_all(&tmp.0)
        .context("model_weights.ckpt is not a PyTorch zip checkpoint")?;
    if tensors.is_empty() {
        tensors = candle_core::pickle::read_all_with_key(&tmp.0, Some("state_dict"))
            .context("model_weights.ckpt has no tensors")?;
    }
    if tensors.is_empty() {
        bail!("model_weights.ckpt has no tensors");
    }
    Ok(tensors.into_iter().collect())
}

struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str) -> Result<TempFile> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "duplex-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        Ok(TempFile(path))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Loads a `.nemo` (file or unpacked directory).
pub fn load(path: &Path) -> Result<ConformerModel> {
    let what = || format!("loading the NeMo model {}", path.display());
    let parts = read_archive(path).with_context(what)?;
    let config_text = parts
        .config
        .with_context(|| format!("{} has no model_config.yaml", path.display()))?;
    let config = ModelConfig::from_yaml(&config_text).with_context(what)?;
    let weights = parts
        .weights
        .with_context(|| format!("{} has no model_weights.ckpt", path.display()))?;
    let tensors = read_checkpoint(&weights).with_context(what)?;
    let tokenizer = if let Some(sp) = &parts.sentencepiece {
        Tokenizer::from_sentencepiece(sp).with_context(what)?
    } else if let Some(vocab) = &parts.vocab_txt {
        Tokenizer::from_vocab_txt(vocab).with_context(what)?
    } else if let Some(chars) = &config.vocabulary {
        Tokenizer::from_chars(chars)
    } else {
        bail!(
            "{} has no tokenizer (tokenizer.model or vocab.txt) and the config no vocabulary",
            path.display()
        );
    };
    ConformerModel::new(config, &Weights::new(tensors), tokenizer).with_context(what)
}

struct Pickle(Vec<u8>);

impl Pickle {
    fn global(&mut self, module: &str, name: &str) {
        self.0.push(b'c');
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }
    fn unicode(&mut self, s: &str) {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn int(&mut self, v: usize) {
        self.0.push(b'J');
        self.0.extend_from_slice(&(v as i32).to_le_bytes());
    }
    fn ints(&mut self, values: &[usize]) {
        self.0.push(b'(');
        for &v in values {
            self.int(v);
        }
        self.0.push(b't');
    }
    fn ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.0.extend_from_slice(b")R");
    }
}

/// A PyTorch zip checkpoint of `tensors` (f32), as `torch.save(state_dict)`.
pub fn checkpoint_bytes(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let mut pickle = Pickle(vec![0x80, 0x02]);
    pickle.ordered_dict();
    pickle.0.push(b'(');
    let mut storages = Vec::new();
    for (i, (name, tensor)) in tensors.iter().enumerate() {
        let dims = tensor.dims().to_vec();
        let mut strides = vec![1usize; dims.len()];
        for d in (0..dims.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * dims[d + 1];
        }
        pickle.unicode(name);
        pickle.global("torch._utils", "_rebuild_tensor_v2");
        pickle.0.push(b'(');
        pickle.0.push(b'(');
        pickle.unicode("storage");
        pickle.global("torch", "FloatStorage");
        pickle.unicode(&i.to_string());
        pickle.unicode("cpu");
        pickle.int(tensor.elem_count());
        pickle.0.extend_from_slice(b"tQ");
        pickle.int(0);
        pickle.ints(&dims);
        pickle.ints(&strides);
        pickle.0.push(0x89);
        pickle.ordered_dict();
        pickle.0.extend_from_slice(b"tR");
        let values = tensor
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        storages.push(
            values
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        );
    }
    pickle.0.extend_from_slice(b"u.");

    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", options)?;
    zip.write_all(&pickle.0)?;
    zip.start_file("archive/byteorder", options)?;
    zip.write_all(b"little")?;
    for (i, data) in storages.iter().enumerate() {
        zip.start_file(format!("archive/data/{i}"), options)?;
        zip.write_all(data)?;
    }
    zip.start_file("archive/version", options)?;
    zip.write_all(b"3\n")?;
    Ok(zip.finish()?.into_inner())
}

/// Writes a `.nemo`: the config (with a CTC head of `pieces.len()` tokens),
/// the weights and a SentencePiece tokenizer of `pieces`.
pub fn write(
    path: &Path,
    config: &ModelConfig,
    weights: &HashMap<String, Tensor>,
    pieces: &[&str],
) -> Result<()> {
    let mut named: Vec<(String, Tensor)> = weights
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let ckpt = checkpoint_bytes(&named)?;
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut tar = tar::Builder::new(file);
    let mut add = |name: &str, data: &[u8]| -> Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, data)
            .with_context(|| format!("writing {name} to {}", path.display()))
    };
    add(
        "./model_config.yaml",
        config.to_yaml(pieces.len()).as_bytes(),
    )?;
    add("./model_weights.ckpt", &ckpt)?;
    add(
        "./a1b2c3_tokenizer.model",
        &Tokenizer::sentencepiece_bytes(pieces),
    )?;
    tar.into_inner()?.flush()?;
    Ok(())
}

/// Pieces of a small made-up vocabulary (for generated test models):
/// mostly word starts, so a random model's output reads as many words.
pub fn toy_pieces() -> Vec<&'static str> {
    vec![
        "<unk>", "▁the", "▁a", "▁to", "▁of", "▁and", "▁in", "▁sun", "▁road", "▁ka", "▁mo", "▁ri",
        "▁ta", "▁ne", "▁so", "▁lu", "▁ver", "ing", "ed", "s",
    ]
}
