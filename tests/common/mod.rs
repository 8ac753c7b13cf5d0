//! Shared helpers for integration tests: the real test data and the model cache.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use duplex::audio::Pcm;
use duplex::graph::Resources;
use duplex::models::ModelStore;

pub const LIBRIVOX: &str = "/usr/share/pocketsphinx/test/data/librivox";

/// The five LibriVox clips of Debian's pocketsphinx-testdata, sorted.
pub fn librivox_clips() -> Vec<PathBuf> {
    let mut clips: Vec<PathBuf> = std::fs::read_dir(LIBRIVOX)
        .unwrap_or_else(|e| panic!("{LIBRIVOX}: {e} (apt-get install pocketsphinx-testdata)"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wav"))
        .collect();
    clips.sort();
    assert_eq!(clips.len(), 5, "expected five LibriVox clips in {LIBRIVOX}");
    clips
}

/// Resources over the user's model cache; models must be installed
/// (`duplex models install`), which `.ci/run` does before the tests.
pub fn resources() -> Arc<Resources> {
    Resources::new(ModelStore::from_env())
}

/// `pcm` with `ms` of silence added at both ends.
pub fn pad(pcm: &Pcm, ms: u64) -> Pcm {
    pcm.padded(ms, ms)
}

/// Where speech really is in a clip, by energy: the first and last 10 ms
/// frame whose RMS is within 26 dB of the loudest frame. Returns ms.
pub fn energy_speech_span(pcm: &Pcm) -> (u64, u64) {
    let frame = (pcm.sample_rate / 100) as usize;
    let rms: Vec<f32> = pcm
        .samples
        .chunks(frame)
        .map(|c| (c.iter().map(|x| x * x).sum::<f32>() / c.len() as f32).sqrt())
        .collect();
    let peak = rms.iter().cloned().fold(0.0f32, f32::max);
    let loud = |r: &f32| *r > peak * 0.05;
    let first = rms.iter().position(loud).expect("clip has sound");
    let last = rms.iter().rposition(loud).expect("clip has sound");
    (first as u64 * 10, (last as u64 + 1) * 10)
}

pub const CARDS: &str = "/usr/share/pocketsphinx/test/data/cards";

/// The ten real test utterances with their reference transcripts: the five
/// LibriVox clips and the five cards clips of pocketsphinx-testdata.
pub fn speech_with_transcripts() -> Vec<(PathBuf, String)> {
    let all: Vec<(PathBuf, String)> = duplex::bench::asr::reference_clips()
        .unwrap()
        .into_iter()
        .map(|c| (c.path, c.transcript))
        .collect();
    for (path, _) in &all {
        assert!(path.is_file(), "{} is missing", path.display());
    }
    assert_eq!(all.len(), 10, "expected 10 transcribed clips");
    all
}

/// A temp folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("duplex-test-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Reads a session's events into `into` until one satisfies `done`
/// (included); fails on an `error` event or when nothing comes for
/// `limit`.
pub async fn events_until(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<duplex::graph::Event>,
    into: &mut Vec<duplex::graph::Event>,
    limit: std::time::Duration,
    done: impl Fn(&duplex::graph::Event) -> bool,
) {
    loop {
        let event = tokio::time::timeout(limit, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no event for {limit:?}"))
            .expect("the session ended early");
        assert_ne!(event["type"], "error", "{event:?}");
        let last = done(&event);
        into.push(event);
        if last {
            return;
        }
    }
}
