//! The tokenizer of a GGUF model, built from its metadata
//! (`tokenizer.ggml.tokens`, `tokenizer.ggml.merges`, `tokenizer.ggml.pre`):
//! byte-level BPE through the `tokenizers` crate for encoding, and a table of
//! raw bytes per token for decoding (so a streaming decoder can hold back a
//! UTF-8 character split across tokens).
//!
//! Control tokens (`<|im_start|>`, `<|im_end|>`, ...) are never produced from
//! text: user text that spells `<|im_end|>` is tokenized as plain text, and
//! the chat renderer inserts control tokens by id. This is both the
//! prompt-injection-safe choice and what keeps tokenization of each message
//! independent of its neighbours.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use candle_core::quantized::gguf_file;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{SplitDelimiterBehavior, Tokenizer};

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: u32 = 3;

/// GPT-2's byte-level pre-tokenization regex (also the one HF's ByteLevel
/// pre-tokenizer applies with `use_regex`).
const REGEX_LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const REGEX_QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub(crate) struct GgufTokenizer {
    bpe: Tokenizer,
    /// Raw bytes each token stands for (empty for control tokens).
    bytes: Vec<Vec<u8>>,
    control: Vec<bool>,
    by_text: HashMap<String, u32>,
    pub eos: Option<u32>,
}

fn metadata<'a>(ct: &'a gguf_file::Content, key: &str) -> Result<&'a gguf_file::Value> {
    ct.metadata
        .get(key)
        .with_context(|| format!("missing GGUF metadata key `{key}`"))
}

fn string_array(ct: &gguf_file::Content, key: &str) -> Result<Vec<String>> {
    let values = metadata(ct, key)?
        .to_vec()
        .with_context(|| format!("GGUF metadata `{key}` is not an array"))?;
    values
        .iter()
        .map(|v| {
            v.to_string()
                .cloned()
                .with_context(|| format!("GGUF metadata `{key}` holds a non-string"))
        })
        .collect()
}

fn as_u32(v: &gguf_file::Value) -> Option<u32> {
    use gguf_file::Value::*;
    Some(match v {
        U8(v) => *v as u32,
        I8(v) => *v as u32,
        U16(v) => *v as u32,
        I16(v) => *v as u32,
        U32(v) => *v,
        I32(v) => *v as u32,
        U64(v) => *v as u32,
        I64(v) => *v as u32,
        _ => return None,
    })
}

/// GPT-2's byte -> printable char table, inverted.
fn unicode_to_byte() -> HashMap<char, u8> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars = printable.clone();
    let mut n = 0;
    for b in 0..=255u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    printable
        .into_iter()
        .zip(chars)
        .map(|(b, c)| (char::from_u32(c).expect("valid char"), b as u8))
        .collect()
}

impl GgufTokenizer {
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<GgufTokenizer> {
        let kind = metadata(ct, "tokenizer.ggml.model")?
            .to_string()
            .context("`tokenizer.ggml.model` is not a string")?
            .to_lowercase();
        if kind != "gpt2" {
            bail!(
                "unsupported tokenizer `{kind}`: the local engine reads byte-level BPE (`gpt2`) tokenizers only"
            );
        }
        let tokens = string_array(ct, "tokenizer.ggml.tokens")?;
        let merges: Vec<(String, String)> = string_array(ct, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .with_context(|| format!("invalid BPE merge `{m}`"))
            })
            .collect::<Result<_>>()?;
        let types: Vec<u32> = match ct.metadata.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .context("`tokenizer.ggml.token_type` is not an array")?
                .iter()
                .map(|v| as_u32(v).unwrap_or(1))
                .collect(),
            None => vec![1; tokens.len()],
        };
        let pre = ct
            .metadata
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_else(|| "gpt2".into());

        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the BPE tokenizer: {e}"))?;
        let mut tokenizer = Tokenizer::new(bpe);
        let split = |regex: &str| -> Result<PreTokenizerWrapper> {
            Ok(Split::new(
                SplitPattern::Regex(regex.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| anyhow::anyhow!("bad pre-tokenizer regex: {e}"))?
            .into())
        };
        // Mirrors llama.cpp's `tokenizer.ggml.pre` cases and the matching
        // Hugging Face tokenizer.json pipelines.
        let pretok: PreTokenizerWrapper = match pre.as_str() {
            "llama-bpe" | "llama3" | "smaug-bpe" | "lfm2" => Sequence::new(vec![
                split(REGEX_LLAMA3)?,
                ByteLevel::new(false, false, false).into(),
            ])
            .into(),
            "qwen2" => {
                tokenizer
                    .with_normalizer(Some(NFC))
                    .map_err(|e| anyhow::anyhow!("cannot set the NFC normalizer: {e}"))?;
                Sequence::new(vec![
                    split(REGEX_QWEN2)?,
                    ByteLevel::new(false, false, false).into(),
                ])
                .into()
            }
            // SmolLM2, StarCoder: digits one by one, then GPT-2's regex.
            "smollm" | "starcoder" | "refact" | "codeshell" => Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])
            .into(),
            _ => ByteLevel::new(false, true, true).into(),
        };
        tokenizer.with_pre_tokenizer(Some(pretok));

        let table = unicode_to_byte();
        let control: Vec<bool> = (0..tokens.len())
            .map(|i| types.get(i).copied() == Some(TOKEN_TYPE_CONTROL))
            .collect();
        let bytes = tokens
            .iter()
            .zip(&control)
            .map(|(t, &ctl)| {
                if ctl {
                    return Vec::new();
                }
                let mut out = Vec::with_capacity(t.len());
                for c in t.chars() {
                    match table.get(&c) {
                        Some(&b) => out.push(b),
                        None => {
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                    }
                }
                out
            })
            .collect();
        let by_text = tokens
            .iter()
            .enumerate()
            .filter(|(i, _)| control[*i])
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let eos = ct
            .metadata
            .get("tokenizer.ggml.eos_token_id")
            .and_then(as_u32);
        Ok(GgufTokenizer {
            bpe: tokenizer,
            bytes,
            control,
            by_text,
            eos,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    /// The id of control token `text` (e.g. `<|im_start|>`).
    pub fn control_id(&self, text: &str) -> Option<u32> {
        self.by_text.get(text).copied()
    }

    pub fn is_control(&self, id: u32) -> bool {
        self.control.get(id as usize).copied().unwrap_or(false)
    }

    /// Plain text to ids; control-token spellings stay plain text.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let enc = self
            .bpe
            .encode_fast(text, false)
            .map_err(|e| anyhow::anyhow!("tokenization failed: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The raw bytes of token `id` (empty for control or unknown ids).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Ids back to text (lossy on invalid UTF-8).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&id| self.token_bytes(id).iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Turns a stream of token bytes into text pieces, holding back an
/// incomplete UTF-8 sequence until the token that completes it arrives.
#[derive(Default)]
pub(crate) struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds bytes; returns the text that is now complete (may be empty).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).expect("valid"));
                    match e.error_len() {
                        // Incomplete sequence at the end: wait for more.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        // Invalid bytes: replace them and go on.
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + n);
                        }
                    }
                }
            }
        }
    }

    /// Whatever is left at the end of the stream.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection() {
        let t = unicode_to_byte();
        assert_eq!(t.len(), 256);
        assert_eq!(t[&'Ġ'], b' ');
        assert_eq!(t[&'Ċ'], b'\n');
        assert_eq!(t[&'a'], b'a');
    }

    #[test]
    fn utf8_stream_holds_back_split_characters() {
        let mut s = Utf8Stream::default();
        let euro = "€".as_bytes(); // 3 bytes
        assert_eq!(s.push(b"a"), "a");
        assert_eq!(s.push(&euro[..1]), "");
        assert_eq!(s.push(&euro[1..2]), "");
        assert_eq!(s.push(&[euro[2], b'b']), "€b");
        assert_eq!(s.push(&[0xff, b'c']), "\u{fffd}c");
        assert_eq!(s.push(&euro[..2]), "");
        assert_eq!(s.finish(), "\u{fffd}");
    }
}
