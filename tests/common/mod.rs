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

/// Where speech really is in a clip, by energy (ms).
pub fn energy_speech_span(pcm: &Pcm) -> (u64, u64) {
    pcm.energy_speech_span().expect("clip has sound")
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

/// A session of a speech-out pipeline (`input -> tts -> output ...`) fed
/// with an orchestrator's frames: whole answers, clause by clause.
pub struct AnswerSession {
    pub graph: duplex::graph::SessionGraph,
    pub shared: Arc<duplex::graph::SessionShared>,
    /// Every event read so far, in order.
    pub events: Vec<duplex::graph::Event>,
}

impl AnswerSession {
    pub fn start(pipeline: &duplex::graph::Pipeline, session_id: &str) -> AnswerSession {
        let shared = duplex::graph::SessionShared::new(session_id);
        let graph = duplex::graph::SessionGraph::start(pipeline, &resources(), &shared).unwrap();
        AnswerSession {
            graph,
            shared,
            events: Vec::new(),
        }
    }

    pub async fn send(
        &self,
        response_id: duplex::graph::ResponseId,
        payload: duplex::graph::Payload,
    ) {
        let input = self.graph.input.as_ref().expect("input open");
        let frame = duplex::graph::DataFrame {
            t_ms: 0,
            response_id,
            payload,
        };
        assert!(
            input.send_data(frame).await,
            "the graph stopped taking input"
        );
    }

    /// The whole answer of `response_id`, clause by clause, then its end.
    pub async fn answer(&self, response_id: duplex::graph::ResponseId, clauses: &[&str]) {
        use duplex::graph::Payload;
        let item_id = duplex::realtime::assistant_item_id(response_id);
        for text in clauses {
            let clause = Payload::Clause {
                item_id: item_id.clone(),
                text: text.to_string(),
            };
            self.send(response_id, clause).await;
        }
        let summary = duplex::graph::frame::ResponseSummary {
            response_id: duplex::realtime::response_id(response_id),
            item_id,
            transcript: clauses.join(" "),
            modalities: vec!["audio".into()],
            ..Default::default()
        };
        self.send(response_id, Payload::ResponseEnd(Box::new(summary)))
            .await;
    }

    /// Reads events until one satisfies `done` (included); fails on an
    /// error event or a stalled session.
    pub async fn until(&mut self, done: impl Fn(&duplex::graph::Event) -> bool) {
        let limit = std::time::Duration::from_secs(60);
        events_until(&mut self.graph.events, &mut self.events, limit, done).await;
    }

    /// Ends the input and reads every event left; fails on an error event.
    pub async fn finish(mut self) -> Vec<duplex::graph::Event> {
        self.graph.end_input();
        while let Some(event) =
            tokio::time::timeout(std::time::Duration::from_secs(60), self.graph.events.recv())
                .await
                .expect("the session did not end")
        {
            assert_ne!(event["type"], "error", "{event:?}");
            self.events.push(event);
        }
        self.events
    }
}

/// Where `scripts/setup --dev` puts the real test photos (scikit-image's
/// `skimage/data`).
pub const TEST_PHOTOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-photos");

/// A real test photo by file name (e.g. `chelsea.png`).
pub fn test_photo(name: &str) -> PathBuf {
    let path = PathBuf::from(TEST_PHOTOS).join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `scripts/setup --dev` (it extracts scikit-image's test photos into target/test-photos)",
        path.display()
    );
    path
}

/// A real test photo decoded as RGB.
pub fn test_photo_rgb(name: &str) -> image::RgbImage {
    let path = test_photo(name);
    image::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}

/// The clip with `pause_ms` of silence inserted at the quietest 80 ms
/// between 35 % and 65 % of its speech (a word boundary mid-sentence);
/// returns it and where the inserted silence starts (ms).
pub fn split_mid_sentence(pcm: &Pcm, pause_ms: u64) -> (Pcm, u64) {
    let (start, end) = energy_speech_span(pcm);
    let frame = (pcm.sample_rate / 100) as usize; // 10 ms
    let energy = pcm.frame_energy();
    let span = end - start;
    let (lo, hi) = (
        ((start + span * 35 / 100) / 10) as usize,
        ((start + span * 65 / 100) / 10) as usize,
    );
    let valley = (lo..hi.saturating_sub(8))
        .min_by(|&a, &b| {
            let e = |i: usize| energy[i..i + 8].iter().sum::<f32>();
            e(a).total_cmp(&e(b))
        })
        .unwrap();
    let cut_ms = (valley as u64 + 4) * 10;
    let cut = cut_ms as usize * frame / 10;
    let mut samples = pcm.samples[..cut].to_vec();
    samples.extend(std::iter::repeat_n(0.0, pause_ms as usize * frame / 10));
    samples.extend_from_slice(&pcm.samples[cut..]);
    (Pcm::new(samples, pcm.sample_rate), cut_ms)
}

/// The events of type `kind`, in order.
pub fn of_type<'a>(
    events: &'a [duplex::graph::Event],
    kind: &str,
) -> Vec<&'a duplex::graph::Event> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

/// Streams `pcm`, with the camera frames `video`, through a new session of
/// `pipeline` at real-time pace (20 ms frames) and returns its events;
/// fails on an error event.
pub async fn run_realtime(
    pipeline: &duplex::graph::Pipeline,
    resources: &Arc<Resources>,
    pcm: &Pcm,
    video: duplex::runner::VideoFrames,
) -> Vec<duplex::graph::Event> {
    let pace = duplex::runner::Pace {
        chunk_ms: 20,
        realtime: true,
    };
    let events = duplex::runner::run_av(pipeline, resources, pcm, video, pace, |_| Ok(()))
        .await
        .unwrap();
    let errors = of_type(&events, "error");
    assert!(errors.is_empty(), "{errors:?}");
    events
}
