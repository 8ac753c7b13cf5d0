//! The CTC head (NeMo's `ConvASRDecoder`: one 1x1 convolution to the
//! vocabulary plus blank, blank last) and greedy decoding: the best class
//! per frame, repeats merged, blanks dropped.

use anyhow::Result;
use candle_core::Tensor;

use super::encoder::Weights;

pub struct CtcHead {
    /// `d_model x classes`.
    wt: Tensor,
    b: Tensor,
    /// Index of the blank class (the last).
    pub blank: u32,
}

impl CtcHead {
    /// Loads `{prefix}.decoder_layers.0.{weight,bias}` with `classes`
    /// outputs (vocabulary + blank).
    pub fn load(w: &Weights, prefix: &str, d_model: usize, classes: usize) -> Result<CtcHead> {
        let weight = w.get(
            &format!("{prefix}.decoder_layers.0.weight"),
            &[classes, d_model, 1],
        )?;
        let b = w.get(&format!("{prefix}.decoder_layers.0.bias"), &[classes])?;
        Ok(CtcHead {
            wt: weight.reshape((classes, d_model))?.t()?.contiguous()?,
            b,
            blank: classes as u32 - 1,
        })
    }

    /// Log-probabilities (`frames x classes`) of encoder output
    /// (`frames x d_model`).
    pub fn log_probs(&self, encoded: &Tensor) -> Result<Tensor> {
        super::encoder::log_softmax(&encoded.matmul(&self.wt)?.broadcast_add(&self.b)?)
    }

    /// The best class of each frame.
    pub fn best(&self, encoded: &Tensor) -> Result<Vec<u32>> {
        let logits = encoded.matmul(&self.wt)?.broadcast_add(&self.b)?;
        Ok(logits.argmax(1)?.to_vec1::<u32>()?)
    }
}

/// Greedy CTC collapse of per-frame best classes into token ids.
pub fn collapse(best: &[u32], blank: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut previous = None;
    for &id in best {
        if Some(id) != previous && id != blank {
            out.push(id);
        }
        previous = Some(id);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_merge_and_blanks_separate() {
        assert_eq!(collapse(&[3, 3, 9, 3, 1, 1, 9, 9, 2], 9), vec![3, 3, 1, 2]);
        assert!(collapse(&[9, 9], 9).is_empty());
    }
}
