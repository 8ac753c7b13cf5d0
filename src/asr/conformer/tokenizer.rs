//! Token ids to text: a SentencePiece model (`tokenizer.model`, the
//! protobuf `ModelProto` NeMo ships in the `.nemo`), a `vocab.txt` (one
//! piece a line, WordPiece `##` continuations), or a character vocabulary
//! from the model config. Pieces starting with `▁` begin a word.

use anyhow::{Context, Result, bail};

/// What a piece is (SentencePiece's `Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceKind {
    Normal,
    Unknown,
    Control,
    Byte,
}

#[derive(Debug, Clone)]
pub struct Tokenizer {
    pieces: Vec<(String, PieceKind)>,
    /// `vocab.txt` style: `##` marks a continuation, others start words.
    wordpiece: bool,
}

fn varint(data: &[u8], at: &mut usize) -> Result<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *data.get(*at).context("truncated varint")?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    bail!("varint too long")
}

/// One protobuf field: number, wire type, payload (length-delimited and
/// fixed fields), value (varints).
type Field<'a> = (u64, u8, &'a [u8], u64);

/// Walks the fields of one protobuf message.
fn fields(data: &[u8]) -> Result<Vec<Field<'_>>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let key = varint(data, &mut at)?;
        let (field, wire) = (key >> 3, (key & 7) as u8);
        match wire {
            0 => {
                let v = varint(data, &mut at)?;
                out.push((field, wire, &data[0..0], v));
            }
            1 => {
                let end = at + 8;
                out.push((
                    field,
                    wire,
                    data.get(at..end).context("truncated fixed64")?,
                    0,
                ));
                at = end;
            }
            2 => {
                let len = varint(data, &mut at)? as usize;
                let end = at.checked_add(len).context("bad length")?;
                out.push((
                    field,
                    wire,
                    data.get(at..end).context("truncated field")?,
                    0,
                ));
                at = end;
            }
            5 => {
                let end = at + 4;
                out.push((
                    field,
                    wire,
                    data.get(at..end).context("truncated fixed32")?,
                    0,
                ));
                at = end;
            }
            other => bail!("unsupported protobuf wire type {other}"),
        }
    }
    Ok(out)
}

impl Tokenizer {
    /// Parses a SentencePiece `ModelProto` (field 1: pieces, each with
    /// `piece` (1), `score` (2), `type` (3)).
    pub fn from_sentencepiece(data: &[u8]) -> Result<Tokenizer> {
        let mut pieces = Vec::new();
        for (field, wire, payload, _) in
            fields(data).context("tokenizer.model is not a SentencePiece model")?
        {
            if field != 1 || wire != 2 {
                continue;
            }
            let mut text = None;
            let mut kind = PieceKind::Normal;
            for (f, w, p, v) in fields(payload)? {
                match (f, w) {
                    (1, 2) => text = Some(String::from_utf8_lossy(p).into_owned()),
                    (3, 0) => {
                        kind = match v {
                            2 => PieceKind::Unknown,
                            3 | 5 => PieceKind::Control,
                            6 => PieceKind::Byte,
                            _ => PieceKind::Normal,
                        }
                    }
                    _ => {}
                }
            }
            pieces.push((text.context("a SentencePiece piece without text")?, kind));
        }
        if pieces.is_empty() {
            bail!("the SentencePiece model has no pieces");
        }
        Ok(Tokenizer {
            pieces,
            wordpiece: false,
        })
    }

    /// A `vocab.txt`: one piece a line.
    pub fn from_vocab_txt(text: &str) -> Result<Tokenizer> {
        let pieces: Vec<(String, PieceKind)> = text
            .lines()
            .map(|l| (l.trim_end_matches('\r').to_string(), PieceKind::Normal))
            .collect();
        if pieces.is_empty() {
            bail!("vocab.txt is empty");
        }
        Ok(Tokenizer {
            pieces,
            wordpiece: true,
        })
    }

    /// A character vocabulary (char-based CTC models).
    pub fn from_chars(chars: &[String]) -> Tokenizer {
        Tokenizer {
            pieces: chars
                .iter()
                .map(|c| {
                    let c = if c == " " {
                        "▁".to_string()
                    } else {
                        c.clone()
                    };
                    (c, PieceKind::Normal)
                })
                .collect(),
            wordpiece: false,
        }
    }

    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// A SentencePiece `ModelProto` holding these pieces (for tests and
    /// exports).
    pub fn sentencepiece_bytes(pieces: &[&str]) -> Vec<u8> {
        fn put_varint(out: &mut Vec<u8>, mut v: u64) {
            while v >= 0x80 {
                out.push((v as u8) | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
        }
        let mut out = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let mut msg = Vec::new();
            msg.push(0x0a);
            put_varint(&mut msg, piece.len() as u64);
            msg.extend_from_slice(piece.as_bytes());
            msg.push(0x15);
            msg.extend_from_slice(&(-(i as f32)).to_le_bytes());
            let kind = match *piece {
                "<unk>" => 2,
                "<s>" | "</s>" | "<pad>" => 3,
                p if p.starts_with("<0x") && p.ends_with('>') && p.len() == 6 => 6,
                _ => 1,
            };
            msg.push(0x18);
            put_varint(&mut msg, kind);
            out.push(0x0a);
            put_varint(&mut out, msg.len() as u64);
            out.extend(msg);
        }
        out
    }

    /// Text of token ids (ids past the vocabulary are skipped).
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes: Vec<u8> = Vec::new();
        for &id in ids {
            let Some((piece, kind)) = self.pieces.get(id as usize) else {
                continue;
            };
            match kind {
                PieceKind::Control | PieceKind::Unknown => {}
                PieceKind::Byte => {
                    let hex = piece.trim_start_matches("<0x").trim_end_matches('>');
                    if let Ok(b) = u8::from_str_radix(hex, 16) {
                        bytes.push(b);
                    }
                }
                PieceKind::Normal if self.wordpiece => match piece.strip_prefix("##") {
                    Some(rest) => bytes.extend_from_slice(rest.as_bytes()),
                    None => {
                        bytes.push(b' ');
                        bytes.extend_from_slice(piece.as_bytes());
                    }
                },
                PieceKind::Normal => {
                    bytes.extend_from_slice(piece.replace('▁', " ").as_bytes());
                }
            }
        }
        String::from_utf8_lossy(&bytes).trim().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentencepiece_model_round_trips_and_decodes_words() {
        let bytes = Tokenizer::sentencepiece_bytes(&["<unk>", "▁he", "llo", "▁world", "<0x21>"]);
        let tok = Tokenizer::from_sentencepiece(&bytes).unwrap();
        assert_eq!(tok.len(), 5);
        assert_eq!(tok.decode(&[1, 2, 3, 0]), "hello world");
        assert_eq!(tok.decode(&[3, 4]), "world!");
    }

    #[test]
    fn vocab_txt_and_chars_decode() {
        let tok = Tokenizer::from_vocab_txt("[UNK]\nhel\n##lo\nthere\n").unwrap();
        assert_eq!(tok.decode(&[1, 2, 3]), "hello there");
        let chars: Vec<String> = [" ", "a", "b"].iter().map(|s| s.to_string()).collect();
        assert_eq!(Tokenizer::from_chars(&chars).decode(&[1, 0, 2, 1]), "a ba");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Tokenizer::from_sentencepiece(&[0x0a, 0x50, 1]).is_err());
    }
}
