//! Training-free token pruning (placeholder while the encoder is checked).
