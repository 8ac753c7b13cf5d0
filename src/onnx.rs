//! ONNX Runtime: the one environment of the process, loaded at run time from
//! the onnxruntime package in the model cache, and session loading with
//! errors that name the fix.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow};
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

use crate::models::ModelStore;

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();

/// The process-wide ONNX Runtime environment, created on first use from the
/// library in the model cache (or `ORT_DYLIB_PATH`).
pub fn environment(store: &ModelStore) -> Result<&'static Environment> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let library = crate::models::onnxruntime_library(store)?;
    // ort panics inside dlopen on a missing file: check first.
    if !library.is_file() {
        return Err(anyhow!(
            "ONNX Runtime library {} is missing: run `duplex models install`",
            library.display()
        ));
    }
    let builder = ort::init_from(&library).map_err(|e| {
        anyhow!(
            "cannot load ONNX Runtime from {} ({e}): run `duplex models install --force onnxruntime`",
            library.display()
        )
    })?;
    let env = builder
        .with_name("duplex")
        .build()
        .map_err(|e| anyhow!("cannot start ONNX Runtime: {e}"))?;
    Ok(ENVIRONMENT.get_or_init(|| env))
}

/// Loads an ONNX model of package `package` with `threads` intra-op threads.
/// A file that exists but does not load is reported as corrupt, with the
/// command that reinstalls it.
pub fn load_session(
    store: &ModelStore,
    package: &str,
    model: &Path,
    threads: usize,
) -> Result<Session> {
    let env = environment(store)?;
    let session = Session::builder(env)
        .and_then(|b| {
            b.with_optimization_level(GraphOptimizationLevel::Level3)
                .map_err(|e| e.into())
        })
        .and_then(|b| b.with_intra_threads(threads).map_err(|e| e.into()))
        .and_then(|b| b.with_inter_threads(1).map_err(|e| e.into()))
        // Idle worker threads sleep instead of spinning: the cores are
        // shared with whisper.cpp and the LLM.
        .and_then(|b| b.with_intra_op_spinning(false).map_err(|e| e.into()))
        .and_then(|mut b| b.commit_from_file(model));
    session
        .map_err(|e| crate::models::corrupt_model_error(package, model, e))
        .with_context(|| format!("loading model {}", model.display()))
}
