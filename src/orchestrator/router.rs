//! The router: before each answer, decides which experts the turn needs:
//! memory (recall of earlier talk and sights), vision (the current scene),
//! tools (functions the session declared), and skips the others, after
//! "Training-Free Multimodal LLM Orchestration". Rule-based and
//! training-free: cue phrases for each expert, plus, for memory, how close
//! the best recalled item is. Each decision carries its reason, and the
//! controller emits it as a `duplex.router.decision` event.

use serde::Serialize;

/// Why an expert is (not) consulted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Route {
    pub used: bool,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub memory: Route,
    pub vision: Route,
    pub tools: Route,
    /// The declared function the words asked for, when `tools.used`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
}

/// A tool the session declared: its name and description.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolInfo {
    pub name: String,
    pub description: String,
}

const MEMORY_CUES: &[&str] = &[
    "remember",
    "recall",
    "earlier",
    "before",
    "last time",
    "again",
    "did i",
    "have i",
    "my name",
    "who am i",
    "where did i",
    "what did i",
    "when did i",
    "i told you",
    "i said",
    "you said",
    "my",
    "ago",
    "previous",
    "forgot",
    "forget",
];

const VISION_CUES: &[&str] = &[
    "see",
    "look",
    "looking",
    "watch",
    "camera",
    "holding",
    "hold",
    "in my hand",
    "in front of",
    "this is",
    "what is this",
    "what's this",
    "what am i",
    "show",
    "showing",
    "picture",
    "color",
    "colour",
    "wearing",
    "on the desk",
    "on my desk",
    "room",
    "behind me",
    "visible",
    "screen",
];

/// Cosine similarity above which the best memory is relevant on its own.
pub const MEMORY_SCORE: f32 = 0.45;

fn normalized(text: &str) -> String {
    let lower: String = text
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '\'' {
                c
            } else {
                ' '
            }
        })
        .collect();
    format!(
        " {} ",
        lower.split_whitespace().collect::<Vec<_>>().join(" ")
    )
}

/// The first cue phrase found as whole words in `text` (from `normalized`).
fn cue<'a>(text: &str, cues: &[&'a str]) -> Option<&'a str> {
    cues.iter()
        .copied()
        .find(|c| text.contains(&format!(" {} ", c.trim())))
}

/// Decides the experts for `utterance`. `best_memory` is the score of the
/// best recalled item (None when memory is off or empty); `vision_available`
/// says whether a camera feed exists; `tools` are the session's functions.
pub fn route(
    utterance: &str,
    best_memory: Option<f32>,
    vision_available: bool,
    tools: &[ToolInfo],
) -> Decision {
    let text = normalized(utterance);
    let memory = match (best_memory, cue(&text, MEMORY_CUES)) {
        (None, _) => Route {
            used: false,
            reason: "memory is empty or off".into(),
        },
        (Some(score), Some(c)) => Route {
            used: true,
            reason: format!(
                "asks about the past (\"{}\"), best match {score:.2}",
                c.trim()
            ),
        },
        (Some(score), None) if score >= MEMORY_SCORE => Route {
            used: true,
            reason: format!("a remembered item matches closely ({score:.2})"),
        },
        (Some(score), None) => Route {
            used: false,
            reason: format!("no reference to the past, best match only {score:.2}"),
        },
    };
    let vision = match (vision_available, cue(&text, VISION_CUES)) {
        (false, _) => Route {
            used: false,
            reason: "no camera".into(),
        },
        (true, Some(c)) => Route {
            used: true,
            reason: format!("asks about the scene (\"{}\")", c.trim()),
        },
        (true, None) => Route {
            used: false,
            reason: "no reference to the scene".into(),
        },
    };
    let mut tool = None;
    let tools = if tools.is_empty() {
        Route {
            used: false,
            reason: "no tools declared".into(),
        }
    } else {
        let hit = tools.iter().find(|t| {
            let name_words = normalized(&t.name.replace(['_', '-'], " "));
            name_words
                .split_whitespace()
                .chain(normalized(&t.description).split_whitespace())
                .filter(|w| w.len() > 3)
                .any(|w| text.contains(&format!(" {w} ")))
        });
        tool = hit.map(|t| t.name.clone());
        match hit {
            Some(t) => Route {
                used: true,
                reason: format!("matches tool `{}`", t.name),
            },
            None => Route {
                used: false,
                reason: "no declared tool matches".into(),
            },
        }
    };
    Decision {
        memory,
        vision,
        tools,
        tool,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_consulted_for_the_past_and_close_matches_only() {
        assert!(route("What is my name?", Some(0.2), false, &[]).memory.used);
        assert!(
            route("Where did I park?", Some(0.1), false, &[])
                .memory
                .used
        );
        assert!(
            route("I parked somewhere", Some(0.7), false, &[])
                .memory
                .used
        );
        let d = route("Tell me a joke", Some(0.1), false, &[]);
        assert!(!d.memory.used, "{d:?}");
        assert!(!route("What is my name?", None, false, &[]).memory.used);
    }

    #[test]
    fn vision_needs_a_camera_and_a_reference_to_the_scene() {
        assert!(route("What do you see?", None, true, &[]).vision.used);
        assert!(route("what am I holding", None, true, &[]).vision.used);
        assert!(!route("What do you see?", None, false, &[]).vision.used);
        assert!(
            !route("What is the capital of France?", None, true, &[])
                .vision
                .used
        );
        assert!(
            !route("I'll seek it", None, true, &[]).vision.used,
            "no partial-word cue"
        );
    }

    #[test]
    fn tools_match_their_name_or_description() {
        let tools = [ToolInfo {
            name: "get_weather".into(),
            description: "Current weather for a city".into(),
        }];
        let d = route("How is the weather in Paris?", None, false, &tools);
        assert!(d.tools.used, "{d:?}");
        assert!(d.tools.reason.contains("get_weather"));
        assert!(!route("Tell me a story", None, false, &tools).tools.used);
    }
}
