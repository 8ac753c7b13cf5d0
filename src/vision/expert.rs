//! The vision expert: what the camera shows and how it changed, as compact
//! text for the LLM and as observations for the cross-modal memory.
//!
//! It is fed one [`Analysis`] per encoded frame (the encoder's top ImageNet
//! labels, each with its confidence and where in the picture it scores
//! highest) and keeps a track per label: since when it is in view, where,
//! how sure, and when it left. [`Scene`] is a snapshot of those tracks that
//! the controller turns into the prompt's vision context at question time
//! ([`Scene::describe`]: "tabby cat (62%, center, for 12 s)"); a label that
//! comes into view with enough confidence becomes an [`Observation`] the
//! controller stores in memory with its time ("what was on the desk a minute
//! ago?").

use serde::Serialize;

/// One label the encoder found in a frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sighting {
    /// What it is: a class name ("coffee mug"), or the kind several likely
    /// classes share ("cat").
    pub label: String,
    /// The likely classes a shared kind stands for ("tabby cat", "Egyptian
    /// cat"); empty for a single class.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    /// Probability of the label for the whole frame, 0..1.
    pub confidence: f32,
    /// Where it scores highest: x and y in 0..1 (left..right, top..bottom).
    pub x: f32,
    pub y: f32,
}

impl Sighting {
    /// "left", "center", "top right", ...
    pub fn place(&self) -> &'static str {
        let col = (self.x * 3.0).clamp(0.0, 2.0) as usize;
        let row = (self.y * 3.0).clamp(0.0, 2.0) as usize;
        const PLACES: [[&str; 3]; 3] = [
            ["top left", "top", "top right"],
            ["left", "center", "right"],
            ["bottom left", "bottom", "bottom right"],
        ];
        PLACES[row][col]
    }

    /// "cat (tabby cat or Egyptian cat)", or the bare label.
    pub fn named(&self) -> String {
        match self.kinds.as_slice() {
            [] => self.label.clone(),
            [one] => format!("{} ({one})", self.label),
            [many @ .., last] => format!("{} ({} or {last})", self.label, many.join(", ")),
        }
    }

    /// "in the center", "on the left", "at the top right", ...
    pub fn place_phrase(&self) -> String {
        match self.place() {
            "center" => "in the center".into(),
            side @ ("left" | "right") => format!("on the {side}"),
            corner => format!("at the {corner}"),
        }
    }
}

/// What the encoder made of one frame: its labels, most likely first.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Analysis {
    pub sightings: Vec<Sighting>,
}

/// The expert's settings (the `vision` node's parameters).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExpertSettings {
    /// Labels under this confidence are not tracked (the top label always is).
    pub min_confidence: f32,
    /// A label coming into view at this confidence or more is an observation.
    pub observe_confidence: f32,
    /// The same label is not observed again within this many ms.
    pub observe_again_after_ms: u64,
    /// Labels listed per describe (in view, then gone).
    pub max_labels: usize,
}

impl Default for ExpertSettings {
    fn default() -> Self {
        ExpertSettings {
            min_confidence: 0.08,
            observe_confidence: 0.2,
            observe_again_after_ms: 60_000,
            max_labels: 3,
        }
    }
}

/// A label's history in this stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Track {
    pub label: String,
    /// Since when it is (or was last) continuously in view (session ms).
    pub since_ms: u64,
    /// When a frame last showed it.
    pub last_seen_ms: u64,
    /// Whether the latest analysed frame shows it.
    pub in_view: bool,
    /// The latest sighting.
    pub latest: Sighting,
    /// When it was last reported as an observation.
    observed_ms: Option<u64>,
}

/// Something worth remembering: a label that came into view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Observation {
    pub t_ms: u64,
    pub label: String,
    pub confidence: f32,
    /// The memory text: "Seen on camera: tabby cat, in the center."
    pub text: String,
}

/// The tracks at one moment, for the controller.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Scene {
    /// Session time of the latest analysed frame.
    pub at_ms: u64,
    /// In view first (most confident first), then gone (latest first).
    pub tracks: Vec<Track>,
    /// How many labels [`Scene::describe`] lists.
    pub max_labels: usize,
}

impl Scene {
    /// The prompt's vision context at session time `now_ms`, e.g.
    /// "The camera shows: tabby cat (62%, center, for 12 s). Earlier: coffee
    /// mug (left, gone 40 s ago)." Empty before the first frame.
    pub fn describe(&self, now_ms: u64) -> String {
        let now: Vec<String> = self
            .tracks
            .iter()
            .filter(|t| t.in_view)
            .take(self.max_labels)
            .map(|t| {
                format!(
                    "{} ({:.0}%, {}, for {})",
                    t.latest.named(),
                    t.latest.confidence * 100.0,
                    t.latest.place(),
                    span(now_ms.saturating_sub(t.since_ms))
                )
            })
            .collect();
        let earlier: Vec<String> = self
            .tracks
            .iter()
            .filter(|t| !t.in_view)
            .take(self.max_labels)
            .map(|t| {
                format!(
                    "{} ({}, gone {} ago)",
                    t.label,
                    t.latest.place(),
                    span(now_ms.saturating_sub(t.last_seen_ms))
                )
            })
            .collect();
        let mut out = String::new();
        if !now.is_empty() {
            out.push_str(&format!("The camera shows: {}.", now.join("; ")));
        }
        if !earlier.is_empty() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&format!("Earlier: {}.", earlier.join("; ")));
        }
        out
    }

    /// The most confident label in view.
    pub fn main_label(&self) -> Option<&str> {
        self.tracks
            .iter()
            .find(|t| t.in_view)
            .map(|t| t.label.as_str())
    }
}

/// "under a second", "12 s", "3 min", "2 h".
fn span(ms: u64) -> String {
    match ms {
        0..1_000 => "under a second".into(),
        1_000..120_000 => format!("{} s", ms / 1000),
        120_000..7_200_000 => format!("{} min", ms / 60_000),
        _ => format!("{} h", ms / 3_600_000),
    }
}

/// One camera stream's expert.
#[derive(Debug, Clone)]
pub struct VisionExpert {
    settings: ExpertSettings,
    tracks: Vec<Track>,
    at_ms: u64,
}

impl VisionExpert {
    pub fn new(settings: ExpertSettings) -> Self {
        VisionExpert {
            settings,
            tracks: Vec::new(),
            at_ms: 0,
        }
    }

    /// Takes the analysis of the frame at `t_ms`; returns the labels that
    /// came into view confidently enough to remember.
    pub fn observe(&mut self, t_ms: u64, analysis: &Analysis) -> Vec<Observation> {
        self.at_ms = t_ms;
        let seen: Vec<&Sighting> = analysis
            .sightings
            .iter()
            .enumerate()
            .filter(|(i, s)| *i == 0 || s.confidence >= self.settings.min_confidence)
            .map(|(_, s)| s)
            .collect();
        // Which labels the previous frame showed: a label seen again after
        // a frame without it starts a new stay in view.
        let was_in_view: Vec<bool> = self.tracks.iter().map(|t| t.in_view).collect();
        for track in &mut self.tracks {
            track.in_view = false;
        }
        let mut observations = Vec::new();
        for s in seen {
            let index = match self.tracks.iter().position(|t| t.label == s.label) {
                Some(i) => i,
                None => {
                    self.tracks.push(Track {
                        label: s.label.clone(),
                        since_ms: t_ms,
                        last_seen_ms: t_ms,
                        in_view: false,
                        latest: s.clone(),
                        observed_ms: None,
                    });
                    self.tracks.len() - 1
                }
            };
            let track = &mut self.tracks[index];
            if !was_in_view.get(index).copied().unwrap_or(false) {
                track.since_ms = t_ms;
            }
            track.in_view = true;
            track.last_seen_ms = t_ms;
            track.latest = s.clone();
            let due = track
                .observed_ms
                .is_none_or(|at| t_ms.saturating_sub(at) >= self.settings.observe_again_after_ms);
            if s.confidence >= self.settings.observe_confidence && due {
                track.observed_ms = Some(t_ms);
                observations.push(Observation {
                    t_ms,
                    label: s.label.clone(),
                    confidence: s.confidence,
                    text: format!("Seen on camera: {}, {}.", s.named(), s.place_phrase()),
                });
            }
        }
        observations
    }

    /// A snapshot for the controller.
    pub fn scene(&self) -> Scene {
        let mut in_view: Vec<Track> = self.tracks.iter().filter(|t| t.in_view).cloned().collect();
        in_view.sort_by(|a, b| b.latest.confidence.total_cmp(&a.latest.confidence));
        let mut gone: Vec<Track> = self.tracks.iter().filter(|t| !t.in_view).cloned().collect();
        gone.sort_by_key(|t| std::cmp::Reverse(t.last_seen_ms));
        in_view.extend(gone);
        Scene {
            at_ms: self.at_ms,
            tracks: in_view,
            max_labels: self.settings.max_labels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(label: &str, confidence: f32, x: f32, y: f32) -> Sighting {
        Sighting {
            label: label.into(),
            kinds: Vec::new(),
            confidence,
            x,
            y,
        }
    }

    fn frame(sightings: &[Sighting]) -> Analysis {
        Analysis {
            sightings: sightings.to_vec(),
        }
    }

    #[test]
    fn places_name_the_thirds_of_the_picture() {
        assert_eq!(seen("a", 1.0, 0.5, 0.5).place(), "center");
        assert_eq!(seen("a", 1.0, 0.1, 0.5).place(), "left");
        assert_eq!(seen("a", 1.0, 0.9, 0.05).place(), "top right");
        assert_eq!(seen("a", 1.0, 1.0, 1.0).place(), "bottom right");
        assert_eq!(seen("a", 1.0, 0.5, 0.5).place_phrase(), "in the center");
        assert_eq!(seen("a", 1.0, 0.9, 0.5).place_phrase(), "on the right");
        assert_eq!(seen("a", 1.0, 0.5, 0.0).place_phrase(), "at the top");
    }

    #[test]
    fn a_shared_kind_names_its_classes() {
        let mut cat = seen("cat", 0.5, 0.5, 0.5);
        assert_eq!(cat.named(), "cat");
        cat.kinds = vec![
            "tabby cat".into(),
            "tiger cat".into(),
            "Egyptian cat".into(),
        ];
        assert_eq!(cat.named(), "cat (tabby cat, tiger cat or Egyptian cat)");
        let mut e = VisionExpert::new(ExpertSettings::default());
        let obs = e.observe(0, &frame(&[cat]));
        assert_eq!(
            obs[0].text,
            "Seen on camera: cat (tabby cat, tiger cat or Egyptian cat), in the center."
        );
    }

    #[test]
    fn tracks_say_since_when_and_what_left() {
        let mut e = VisionExpert::new(ExpertSettings::default());
        let cat = seen("tabby cat", 0.62, 0.5, 0.5);
        let obs = e.observe(
            1_000,
            &frame(&[cat.clone(), seen("doormat", 0.03, 0.2, 0.9)]),
        );
        assert_eq!(obs.len(), 1, "the cat is observed, the unsure doormat not");
        assert_eq!(obs[0].text, "Seen on camera: tabby cat, in the center.");
        // Still there 12 s later: not observed again, and "for 12 s".
        assert!(
            e.observe(13_000, &frame(std::slice::from_ref(&cat)))
                .is_empty()
        );
        assert_eq!(
            e.scene().describe(13_000),
            "The camera shows: tabby cat (62%, center, for 12 s)."
        );
        // A mug replaces it.
        let obs = e.observe(20_000, &frame(&[seen("coffee mug", 0.4, 0.2, 0.5)]));
        assert_eq!(obs[0].label, "coffee mug");
        let scene = e.scene();
        assert_eq!(scene.main_label(), Some("coffee mug"));
        assert_eq!(
            scene.describe(60_000),
            "The camera shows: coffee mug (40%, left, for 40 s). \
             Earlier: tabby cat (center, gone 47 s ago)."
        );
        // The cat comes back: a new stay, observed again only after a minute.
        assert!(
            e.observe(30_000, &frame(std::slice::from_ref(&cat)))
                .is_empty()
        );
        assert_eq!(e.scene().tracks[0].since_ms, 30_000);
        // A minute after the first observation it may be observed again.
        assert_eq!(
            e.observe(75_000, &frame(&[seen("tabby cat", 0.7, 0.5, 0.5)]))
                .len(),
            1
        );
        assert_eq!(e.observe(76_000, &frame(&[])).len(), 0);
        assert!(!e.scene().tracks[0].in_view);
        assert_eq!(
            e.observe(80_000, &frame(std::slice::from_ref(&cat))).len(),
            0
        );
    }

    #[test]
    fn nothing_seen_describes_nothing() {
        let e = VisionExpert::new(ExpertSettings::default());
        assert_eq!(e.scene().describe(5_000), "");
        assert_eq!(e.scene().main_label(), None);
    }
}
