//! The model cache: where installed model packages live and how other
//! modules find their files.
//!
//! This file owns the cache layout, the per-package stamp file, the error
//! type every model lookup returns ([`ModelError`]), `duplex models status`
//! ([`status`]) and the ONNX Runtime library lookup
//! ([`onnxruntime_library`]). Installing is in `install.rs`.
//!
//! Layout: `<root>/<id>/<files...>` plus `<root>/<id>/.installed.json`, the
//! stamp, written last by the installer. A package counts as installed when
//! the stamp is present, its version and wheel sha256 match the manifest,
//! and every file it lists exists with the recorded size.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::manifest::{Manifest, Package, check_relative};

/// Name of the stamp file inside each package folder.
pub const STAMP_FILE: &str = ".installed.json";

/// Environment variable that sets the cache root.
pub const MODELS_DIR_ENV: &str = "DUPLEX_MODELS_DIR";

/// Errors from model lookups. Every message tells the user which
/// `duplex models install` command fixes it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The package (or the requested file) is not in the cache.
    #[error("model package `{id}` is not installed (missing {}): run `duplex models install`", path.display())]
    NotInstalled { id: String, path: PathBuf },

    /// The installed version differs from the one this binary pins.
    #[error(
        "model package `{id}` is installed at version {installed} but this duplex needs {wanted}: run `duplex models install`"
    )]
    Outdated {
        id: String,
        installed: String,
        wanted: String,
    },

    /// A file's size differs from the stamp, or the stamp is unreadable.
    #[error("model file {} of `{id}` is corrupt ({detail}): run `duplex models install --force {id}`", path.display())]
    Corrupt {
        id: String,
        path: PathBuf,
        detail: String,
    },

    /// The package is installed but has no such file.
    #[error(
        "model package `{id}` has no installed file `{rel}` (installed: {known}): run `duplex models install --force {id}`"
    )]
    UnknownFile {
        id: String,
        rel: String,
        known: String,
    },

    /// A file exists but failed to load (see [`corrupt_model_error`]).
    #[error(
        "model file {} of `{id}` is corrupt or unreadable ({cause}): run `duplex models install --force {id}`", path.display()
    )]
    Unloadable {
        id: String,
        path: PathBuf,
        cause: String,
    },

    /// The id is not in the manifest.
    #[error("unknown model package `{id}` (known: {known}); see `duplex models install`")]
    UnknownPackage { id: String, known: String },
}

impl ModelError {
    /// The package id the error is about.
    pub fn id(&self) -> &str {
        match self {
            ModelError::NotInstalled { id, .. }
            | ModelError::Outdated { id, .. }
            | ModelError::Corrupt { id, .. }
            | ModelError::UnknownFile { id, .. }
            | ModelError::Unloadable { id, .. }
            | ModelError::UnknownPackage { id, .. } => id,
        }
    }
}

/// The error other modules return when a model file exists but fails to load
/// (bad header, wrong shapes, ONNX Runtime refuses it...). Its message says
/// to reinstall that package with `duplex models install --force <id>`.
pub fn corrupt_model_error(id: &str, path: &Path, cause: impl fmt::Display) -> anyhow::Error {
    ModelError::Unloadable {
        id: id.to_string(),
        path: path.to_path_buf(),
        cause: cause.to_string(),
    }
    .into()
}

/// What the installer records in `<root>/<id>/.installed.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub id: String,
    /// PyPI project name.
    pub package: String,
    pub version: String,
    pub wheel: String,
    pub wheel_sha256: String,
    /// Cache-relative path -> size in bytes, for every file the install wrote
    /// (extracted files and any conversion outputs).
    pub files: BTreeMap<String, u64>,
    /// Seconds since the Unix epoch.
    #[serde(default)]
    pub installed_at: u64,
}

/// The model cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelStore {
    root: PathBuf,
}

impl ModelStore {
    /// A store rooted at `root` (need not exist yet).
    pub fn new(root: PathBuf) -> ModelStore {
        ModelStore { root }
    }

    /// The cache root from the environment: `$DUPLEX_MODELS_DIR`, else
    /// `$XDG_CACHE_HOME/duplex/models`, else `$HOME/.cache/duplex/models`,
    /// else (no home at all) `.cache/duplex/models` under the current folder.
    pub fn from_env() -> ModelStore {
        ModelStore::new(default_root(|k| std::env::var_os(k)))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder of package `id`.
    pub fn package_dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// The stamp file of package `id`.
    pub fn stamp_path(&self, id: &str) -> PathBuf {
        self.package_dir(id).join(STAMP_FILE)
    }

    /// Read the stamp of `id`: `Ok(None)` when there is none.
    pub fn read_stamp(&self, id: &str) -> Result<Option<Stamp>, ModelError> {
        let path = self.stamp_path(id);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(ModelError::Corrupt {
                    id: id.to_string(),
                    path,
                    detail: format!("cannot read the install stamp: {e}"),
                });
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| ModelError::Corrupt {
                id: id.to_string(),
                path,
                detail: format!("install stamp is not valid: {e}"),
            })
    }

    /// Path of installed file `rel` of package `id` (e.g.
    /// `store.file("silero-vad", "silero_vad.onnx")`).
    ///
    /// Errors when the package is not installed, the file is missing, its size
    /// differs from the stamp, or (for ids of the embedded manifest) the
    /// installed version is not the pinned one. Cheap: one stamp read and one
    /// `stat`, no hashing.
    pub fn file(&self, id: &str, rel: &str) -> Result<PathBuf, ModelError> {
        let dir = self.package_dir(id);
        let path = dir.join(rel);
        if check_relative(id).is_err() || id.contains('/') || check_relative(rel).is_err() {
            return Err(ModelError::UnknownFile {
                id: id.to_string(),
                rel: rel.to_string(),
                known: "(invalid path)".into(),
            });
        }
        let Some(stamp) = self.read_stamp(id)? else {
            // Name the file the caller wanted when it is absent; otherwise
            // the stamp (an interrupted install left files but no stamp).
            let missing = if path.exists() {
                self.stamp_path(id)
            } else {
                path
            };
            return Err(ModelError::NotInstalled {
                id: id.to_string(),
                path: missing,
            });
        };
        if let Ok(manifest) = Manifest::embedded()
            && let Some(pkg) = manifest.get(id)
            && (stamp.version != pkg.version || stamp.wheel_sha256 != pkg.sha256)
        {
            return Err(ModelError::Outdated {
                id: id.to_string(),
                installed: stamp.version,
                wanted: pkg.version.clone(),
            });
        }
        let Some(&want) = stamp.files.get(rel) else {
            return Err(ModelError::UnknownFile {
                id: id.to_string(),
                rel: rel.to_string(),
                known: stamp.files.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        };
        match fs::metadata(&path) {
            Ok(m) if m.is_file() && m.len() == want => Ok(path),
            Ok(m) if m.is_file() => Err(ModelError::Corrupt {
                id: id.to_string(),
                path,
                detail: format!("size {} bytes, expected {want}", m.len()),
            }),
            Ok(_) => Err(ModelError::Corrupt {
                id: id.to_string(),
                path,
                detail: "not a regular file".into(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ModelError::NotInstalled {
                id: id.to_string(),
                path,
            }),
            Err(e) => Err(ModelError::Corrupt {
                id: id.to_string(),
                path,
                detail: format!("cannot stat: {e}"),
            }),
        }
    }

    /// Whether `pkg` is fully installed: `Ok(stamp)` if so, else a one-line
    /// description of what is wrong ("not installed", "outdated: ...", ...).
    pub fn check_installed(&self, pkg: &Package) -> Result<Stamp, String> {
        let stamp = match self.read_stamp(&pkg.id) {
            Ok(Some(s)) => s,
            Ok(None) => return Err("not installed".into()),
            Err(e) => return Err(format!("bad install stamp: {e}")),
        };
        if stamp.version != pkg.version {
            return Err(format!(
                "version {} installed, {} wanted",
                stamp.version, pkg.version
            ));
        }
        if stamp.wheel_sha256 != pkg.sha256 {
            return Err("installed from a wheel with a different sha256".into());
        }
        // Conversion outputs too: a stamp from before the package had a
        // conversion lacks them.
        if let Some(rel) = pkg
            .installed_files()
            .into_iter()
            .find(|rel| !stamp.files.contains_key(*rel))
        {
            return Err(format!("{rel} was not installed"));
        }
        let dir = self.package_dir(&pkg.id);
        for (rel, &want) in &stamp.files {
            if check_relative(rel).is_err() {
                return Err(format!("stamp lists an invalid path `{rel}`"));
            }
            match fs::metadata(dir.join(rel)) {
                Ok(m) if m.is_file() && m.len() == want => {}
                Ok(m) if m.is_file() => {
                    return Err(format!("{rel}: size {} bytes, expected {want}", m.len()));
                }
                Ok(_) => return Err(format!("{rel}: not a regular file")),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(format!("{rel} is missing"));
                }
                Err(e) => return Err(format!("{rel}: {e}")),
            }
        }
        Ok(stamp)
    }
}

fn default_root(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    let non_empty = |k: &str| var(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = non_empty(MODELS_DIR_ENV) {
        return dir;
    }
    // The XDG spec says to ignore a relative XDG_CACHE_HOME.
    if let Some(xdg) = non_empty("XDG_CACHE_HOME").filter(|p| p.is_absolute()) {
        return xdg.join("duplex").join("models");
    }
    if let Some(home) = non_empty("HOME") {
        return home.join(".cache").join("duplex").join("models");
    }
    PathBuf::from(".cache").join("duplex").join("models")
}

/// One row of `duplex models status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageStatus {
    pub id: String,
    /// PyPI project name.
    pub name: String,
    pub version: String,
    pub description: String,
    pub installed: bool,
    /// What is wrong when not installed ("not installed", "outdated ...").
    pub problem: Option<String>,
    /// Bytes on disk under the package folder (0 when absent).
    pub size_bytes: u64,
    pub dir: PathBuf,
}

impl fmt::Display for PackageStatus {
    /// One line: `silero-vad  6.2.3  installed  2.2 MiB  Silero VAD ...`, or
    /// the problem and the fix when not installed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<20} {:<8} ", self.id, self.version)?;
        match &self.problem {
            None => write!(f, "installed  {:>9}", human_size(self.size_bytes))?,
            Some(p) => write!(
                f,
                "NOT INSTALLED ({p}): run `duplex models install {}`",
                self.id
            )?,
        }
        if self.problem.is_none() && !self.description.is_empty() {
            write!(f, "  {}", self.description)?;
        }
        Ok(())
    }
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The state of every package of `manifest` in `store`. Reads only stamps and
/// file sizes; never hashes or downloads.
pub fn status(store: &ModelStore, manifest: &Manifest) -> Vec<PackageStatus> {
    manifest
        .packages
        .iter()
        .map(|pkg| {
            let dir = store.package_dir(&pkg.id);
            let problem = store.check_installed(pkg).err();
            PackageStatus {
                id: pkg.id.clone(),
                name: pkg.name.clone(),
                version: pkg.version.clone(),
                description: pkg.description.clone(),
                installed: problem.is_none(),
                problem,
                size_bytes: dir_size(&dir),
                dir,
            }
        })
        .collect()
}

/// Total size of the regular files under `dir` (0 if it does not exist).
pub(crate) fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for entry in entries.flatten() {
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_dir() {
            total += dir_size(&entry.path());
        } else if ft.is_file() {
            total += entry.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    total
}

/// Package id of the ONNX Runtime library.
pub const ONNXRUNTIME_ID: &str = "onnxruntime";
/// Cache-relative path of the ONNX Runtime library.
pub const ONNXRUNTIME_LIB: &str = "libonnxruntime.so.1.32.0";

/// Path of the ONNX Runtime shared library to hand to `ort` (load-dynamic).
///
/// `$ORT_DYLIB_PATH` wins when it is set and names an existing file;
/// otherwise the cached `libonnxruntime.so.1.32.0` of package `onnxruntime`.
/// Check this before initialising `ort`: it panics on a missing library.
pub fn onnxruntime_library(store: &ModelStore) -> Result<PathBuf, ModelError> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        tracing::warn!(
            path = %p.display(),
            "ORT_DYLIB_PATH does not name an existing file; using the model cache"
        );
    }
    store.file(ONNXRUNTIME_ID, ONNXRUNTIME_LIB)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::testutil::TempDir;

    fn write_stamp(store: &ModelStore, id: &str, files: &[(&str, u64)]) {
        let m = Manifest::embedded().expect("manifest");
        let pkg = m.get(id).expect("id");
        let stamp = Stamp {
            id: id.into(),
            package: pkg.name.clone(),
            version: pkg.version.clone(),
            wheel: pkg.wheel.clone(),
            wheel_sha256: pkg.sha256.clone(),
            files: files.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            installed_at: 0,
        };
        fs::create_dir_all(store.package_dir(id)).expect("mkdir");
        fs::write(
            store.stamp_path(id),
            serde_json::to_string(&stamp).expect("json"),
        )
        .expect("write stamp");
    }

    #[test]
    fn empty_store_says_to_install() {
        let tmp = TempDir::new("store-empty");
        let store = ModelStore::new(tmp.path().to_path_buf());
        let err = store
            .file("silero-vad", "silero_vad.onnx")
            .expect_err("nothing installed");
        assert!(matches!(err, ModelError::NotInstalled { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("duplex models install"), "{msg}");
        assert!(msg.contains("`silero-vad`"), "{msg}");
        assert!(msg.contains("silero_vad.onnx"), "{msg}");
    }

    #[test]
    fn wrong_size_is_corrupt() {
        let tmp = TempDir::new("store-corrupt");
        let store = ModelStore::new(tmp.path().to_path_buf());
        write_stamp(&store, "silero-vad", &[("silero_vad.onnx", 10)]);
        let file = store.package_dir("silero-vad").join("silero_vad.onnx");
        fs::write(&file, b"12345").expect("write");
        let err = store
            .file("silero-vad", "silero_vad.onnx")
            .expect_err("size mismatch");
        assert!(matches!(err, ModelError::Corrupt { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("duplex models install --force silero-vad"),
            "{msg}"
        );
        assert!(msg.contains("expected 10"), "{msg}");

        fs::write(&file, b"0123456789").expect("write");
        assert_eq!(store.file("silero-vad", "silero_vad.onnx").ok(), Some(file));

        let err = store
            .file("silero-vad", "other.onnx")
            .expect_err("not in stamp");
        assert!(matches!(err, ModelError::UnknownFile { .. }), "{err:?}");
        assert!(err.to_string().contains("duplex models install"));
    }

    #[test]
    fn outdated_and_garbage_stamps() {
        let tmp = TempDir::new("store-outdated");
        let store = ModelStore::new(tmp.path().to_path_buf());
        write_stamp(&store, "smollm2", &[]);
        let path = store.stamp_path("smollm2");
        let text = fs::read_to_string(&path)
            .expect("read")
            .replace("\"0.1.2\"", "\"0.0.1\"");
        fs::write(&path, text).expect("write");
        let err = store.file("smollm2", "x.gguf").expect_err("outdated");
        assert!(matches!(err, ModelError::Outdated { .. }), "{err:?}");
        assert!(err.to_string().contains("duplex models install"));

        fs::write(&path, "{ not json").expect("write");
        let err = store.file("smollm2", "x.gguf").expect_err("garbage");
        assert!(matches!(err, ModelError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("duplex models install"));
    }

    #[test]
    fn status_on_empty_store() {
        let tmp = TempDir::new("store-status");
        let store = ModelStore::new(tmp.path().join("does-not-exist"));
        let m = Manifest::embedded().expect("manifest");
        let rows = status(&store, m);
        assert_eq!(rows.len(), m.packages.len());
        for r in &rows {
            assert!(!r.installed, "{}", r.id);
            assert_eq!(r.problem.as_deref(), Some("not installed"));
            assert_eq!(r.size_bytes, 0);
        }
    }

    #[test]
    fn status_sees_a_complete_install() {
        let tmp = TempDir::new("store-status-ok");
        let store = ModelStore::new(tmp.path().to_path_buf());
        write_stamp(&store, "silero-vad", &[("silero_vad.onnx", 4)]);
        let m = Manifest::embedded().expect("manifest");
        let row = |store: &ModelStore| {
            status(store, m)
                .into_iter()
                .find(|r| r.id == "silero-vad")
                .expect("row")
        };
        let r = row(&store);
        assert!(!r.installed);
        assert_eq!(r.problem.as_deref(), Some("silero_vad.onnx is missing"));
        let line = r.to_string();
        assert!(
            line.contains("NOT INSTALLED (silero_vad.onnx is missing)"),
            "{line}"
        );
        assert!(line.contains("duplex models install silero-vad"), "{line}");
        fs::write(
            store.package_dir("silero-vad").join("silero_vad.onnx"),
            b"abcd",
        )
        .expect("write");
        let r = row(&store);
        assert!(r.installed, "{:?}", r.problem);
        assert!(r.size_bytes > 4);
        let line = r.to_string();
        assert!(
            line.starts_with("silero-vad") && line.contains(" installed "),
            "{line}"
        );
        assert_eq!(human_size(2_327_524), "2.2 MiB");
        assert_eq!(human_size(12), "12 B");
    }

    #[test]
    fn root_from_env_vars() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        assert_eq!(
            default_root(env(&[("DUPLEX_MODELS_DIR", "/m"), ("HOME", "/h")])),
            PathBuf::from("/m")
        );
        assert_eq!(
            default_root(env(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")])),
            PathBuf::from("/x/duplex/models")
        );
        assert_eq!(
            default_root(env(&[("XDG_CACHE_HOME", "rel"), ("HOME", "/h")])),
            PathBuf::from("/h/.cache/duplex/models")
        );
        assert_eq!(
            default_root(env(&[("DUPLEX_MODELS_DIR", ""), ("HOME", "/h")])),
            PathBuf::from("/h/.cache/duplex/models")
        );
    }

    #[test]
    fn corrupt_model_error_message() {
        let e = corrupt_model_error("silero-vad", Path::new("/p/x.onnx"), "bad header");
        let msg = e.to_string();
        assert_eq!(
            msg,
            "model file /p/x.onnx of `silero-vad` is corrupt or unreadable (bad header): run `duplex models install --force silero-vad`"
        );
        assert!(matches!(
            e.downcast_ref::<ModelError>(),
            Some(ModelError::Unloadable { .. })
        ));
    }
}
