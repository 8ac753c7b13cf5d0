//! The orchestrator in real dialogues, through the graph with the real
//! models (SmolLM2, MiniLM, SQLite): a fact from turn 1 recalled in turn 5
//! through memory retrieval and again after a restart; a cancelled answer
//! that stops within one token, keeps only what reached the user, and a
//! next turn that prefills only its new tokens; `conversation.item.retrieve`.

mod common;

use common::TempDir;

use std::path::Path;
use std::time::Duration;

use duplex::graph::{
    Control, DataFrame, Event, INPUT, Payload, Pipeline, SessionGraph, SessionShared,
};
use serde_json::Value;

/// Text in, text out: the controller and the output stage (which files
/// `response.done`), with memory in `db`.
fn text_pipeline(db: &Path) -> Pipeline {
    let toml = format!(
        r#"
edges = ["input -> brain -> output"]
[nodes.input]
kind = "input"
sample_rate = 16000
[nodes.brain]
kind = "controller"
modalities = ["text"]
max_tokens = 40
memory_db = "{}"
user = "ada"
history_turns = 4
[nodes.output]
kind = "output"
"#,
        db.display()
    );
    Pipeline::parse(&toml, Path::new("dialogue.toml")).unwrap()
}

/// A session driven turn by turn.
struct Dialogue {
    graph: SessionGraph,
    turns: usize,
}

impl Dialogue {
    fn start(pipeline: &Pipeline) -> Dialogue {
        let shared = SessionShared::new("dialogue-test");
        let graph = SessionGraph::start(pipeline, &common::resources(), &shared).unwrap();
        Dialogue { graph, turns: 0 }
    }

    async fn send(&self, payload: Payload) {
        let input = self.graph.input.as_ref().unwrap();
        assert!(
            input
                .send_data(DataFrame {
                    t_ms: 0,
                    response_id: INPUT,
                    payload
                })
                .await
        );
    }

    /// Events until one satisfies `done` (included); fails on an error event.
    async fn until(&mut self, done: impl Fn(&Event) -> bool) -> Vec<Event> {
        let mut events = Vec::new();
        let limit = Duration::from_secs(120);
        common::events_until(&mut self.graph.events, &mut events, limit, done).await;
        events
    }

    /// The user says `text` (a final transcript, as the ASR would send);
    /// returns the turn's events up to its `response.done`.
    async fn say(&mut self, text: &str) -> Vec<Event> {
        self.turns += 1;
        let item_id = format!("item_user_{}", self.turns);
        self.send(Payload::Transcript {
            item_id,
            text: text.into(),
            is_final: true,
        })
        .await;
        self.until(|e| e["type"] == "response.done").await
    }

    async fn retrieve(&mut self, item_id: &str) -> Value {
        self.send(Payload::Control(
            Control::Retrieve {
                item_id: item_id.into(),
            }
            .into(),
        ))
        .await;
        let events = self
            .until(|e| e["type"] == "conversation.item.retrieved")
            .await;
        Value::Object(events.last().unwrap().clone())["item"].clone()
    }
}

fn answer(events: &[Event]) -> String {
    events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .filter_map(|e| e["delta"].as_str())
        .collect()
}

fn recalled(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .find(|e| e["type"] == "duplex.memory.recalled")
        .expect("a duplex.memory.recalled event")["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{} [{:.2}]",
                i["text"].as_str().unwrap(),
                i["score"].as_f64().unwrap()
            )
        })
        .collect()
}

fn usage(events: &[Event]) -> Value {
    let done = events
        .iter()
        .rfind(|e| e["type"] == "response.done")
        .unwrap();
    done["response"]["usage"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fact_from_turn_one_is_recalled_in_turn_five_and_after_a_restart() {
    let dir = TempDir::new("dialogue-memory");
    let pipeline = text_pipeline(&dir.path().join("memory.sqlite"));
    let fact = "Hi! My name is Ada and I parked my car on level 3.";
    let question = "Do you remember what my name is?";

    let mut dialogue = Dialogue::start(&pipeline);
    println!("turn 1: {fact} -> {}", answer(&dialogue.say(fact).await));
    for small_talk in [
        "What is the capital of France?",
        "Tell me one fun fact about octopuses.",
        "What should I cook for dinner tonight?",
    ] {
        println!(
            "{small_talk} -> {}",
            answer(&dialogue.say(small_talk).await)
        );
    }
    let turn5 = dialogue.say(question).await;
    let (items, reply) = (recalled(&turn5), answer(&turn5));
    println!("turn 5: recalled {items:?}\n  -> {reply}");
    assert!(
        items.iter().any(|i| i.contains("Ada")),
        "turn 1 not recalled: {items:?}"
    );
    assert!(
        reply.contains("Ada"),
        "turn 5 answer lacks the name: {reply}"
    );
    dialogue.graph.end_input();
    dialogue.graph.finish().await;

    // A new session of the same user: no history, only the SQLite memory.
    let mut dialogue = Dialogue::start(&pipeline);
    let after = dialogue.say(question).await;
    let (items, reply) = (recalled(&after), answer(&after));
    println!("after restart: recalled {items:?}\n  -> {reply}");
    assert_eq!(
        items.first().map(|i| i.contains("Ada")),
        Some(true),
        "the fact is not the best match after the restart: {items:?}"
    );
    assert!(
        reply.contains("Ada"),
        "answer after restart lacks the name: {reply}"
    );
    dialogue.graph.end_input();
    dialogue.graph.finish().await;

    // And the other fact, in another new session.
    let mut dialogue = Dialogue::start(&pipeline);
    let parked = dialogue.say("On which level did I park my car?").await;
    let (items, reply) = (recalled(&parked), answer(&parked));
    println!("parking: recalled {items:?}\n  -> {reply}");
    assert!(items.iter().any(|i| i.contains("level 3")), "{items:?}");
    assert!(
        reply.contains('3') || reply.to_lowercase().contains("three"),
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_answer_stops_within_a_token_and_keeps_only_what_was_sent() {
    let dir = TempDir::new("dialogue-cancel");
    let mut dialogue = Dialogue::start(&text_pipeline(&dir.path().join("memory.sqlite")));
    let first = dialogue.say("Hello there, how are you today?").await;
    println!("turn 1 -> {} (usage {})", answer(&first), usage(&first));

    dialogue.turns += 1;
    let item_id = format!("item_user_{}", dialogue.turns);
    dialogue
        .send(Payload::Transcript {
            item_id,
            text: "Tell me a long story about a dragon who lives in a lighthouse.".into(),
            is_final: true,
        })
        .await;
    let started = dialogue
        .until(|e| e["type"] == "response.output_text.delta")
        .await;
    let assistant_item = started
        .iter()
        .find(|e| e["type"] == "response.created")
        .map(|e| e["response"]["id"].as_str().unwrap().to_string());
    assert!(
        assistant_item.is_some(),
        "no response.created before the first delta"
    );
    dialogue
        .send(Payload::Control(
            Control::CancelResponse { response_id: None }.into(),
        ))
        .await;
    let stopped = dialogue.until(|e| e["type"] == "duplex.llm.stopped").await;
    let mut sent: String = answer(&started);
    sent.push_str(&answer(&stopped));
    let done = stopped
        .iter()
        .find(|e| e["type"] == "response.done")
        .expect("response.done before the engine stopped");
    assert_eq!(done["response"]["status"], "cancelled");
    let report = stopped.last().unwrap();
    println!("cancelled after {:?}: {report:?}", sent);
    assert!(
        report["pieces_after_cancel"].as_u64().unwrap() <= 1,
        "the engine went on after the cancel: {report:?}"
    );
    assert_eq!(report["sent_text"].as_str().unwrap(), sent.trim());

    // The history keeps only what the client was sent.
    let item_id = done["response"]["output"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let item = dialogue.retrieve(&item_id).await;
    println!("retrieved {item}");
    assert_eq!(item["status"], "incomplete");
    assert_eq!(item["content"][0]["text"].as_str().unwrap(), sent.trim());

    // The next turn computes only its own tokens: the rest of the prompt
    // (system prompt, earlier turns, the cut answer) comes from the cache.
    let next = dialogue.say("Thanks, that is enough.").await;
    let u = usage(&next);
    let input = u["input_tokens"].as_u64().unwrap();
    let cached = u["input_token_details"]["cached_tokens"].as_u64().unwrap();
    println!("next turn: {} (usage {u})", answer(&next));
    let new_tokens = input - cached;
    // "<|im_start|>user\nThanks, that is enough.<|im_end|>\n<|im_start|>assistant\n"
    // plus the cut answer's end-of-turn: about 20 tokens.
    assert!(
        (5..=30).contains(&new_tokens),
        "prefilled {new_tokens} of {input} prompt tokens"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_function_is_called_and_its_result_answers_the_user() {
    let dir = TempDir::new("dialogue-tools");
    let mut dialogue = Dialogue::start(&text_pipeline(&dir.path().join("memory.sqlite")));
    let weather = duplex::realtime::Tool {
        name: "get_weather".into(),
        description: "Get the current weather for a city".into(),
        parameters: serde_json::json!({
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city name"}},
            "required": ["city"],
        }),
    };
    let settings = duplex::realtime::SessionSettings {
        tools: Some(vec![weather]),
        ..Default::default()
    };
    dialogue
        .send(Payload::Control(Control::Configure(settings).into()))
        .await;
    let call = dialogue
        .say("What is the weather like in Paris right now?")
        .await;
    let done = call
        .iter()
        .find(|e| e["type"] == "response.function_call_arguments.done")
        .expect("a function call");
    println!("call: {done:?}");
    assert_eq!(done["name"], "get_weather");
    let arguments: Value = serde_json::from_str(done["arguments"].as_str().unwrap()).unwrap();
    assert!(arguments.is_object(), "{arguments}");
    assert_eq!(arguments["city"], "Paris", "{arguments}");
    let response = &call.last().unwrap()["response"];
    assert_eq!(response["status"], "completed");
    assert_eq!(response["output"][0]["type"], "function_call");
    let call_id = done["call_id"].as_str().unwrap().to_string();

    // The client runs it and asks for the answer.
    dialogue
        .send(Payload::Control(
            Control::AddItem {
                item_id: "item_result".into(),
                previous_item_id: None,
                role: duplex::llm::Role::User,
                text: "{\"city\": \"Paris\", \"weather\": \"sunny\", \"temperature_c\": 21}".into(),
                call_id: Some(call_id),
            }
            .into(),
        ))
        .await;
    dialogue
        .send(Payload::Control(
            Control::CreateResponse {
                instructions: None,
                modalities: None,
                max_tokens: None,
            }
            .into(),
        ))
        .await;
    let answer_events = dialogue.until(|e| e["type"] == "response.done").await;
    let reply = answer(&answer_events).to_lowercase();
    println!("answer with the result: {reply}");
    assert!(
        reply.contains("sunny") || reply.contains("21"),
        "the answer does not use the result: {reply}"
    );
    assert!(
        !reply.contains('{'),
        "the answer echoes the raw result: {reply}"
    );
}

/// What the vision expert makes of frames showing `label` (probability
/// `p`, centre of the picture) at `t_ms`.
fn scene_of(
    expert: &mut duplex::vision::expert::VisionExpert,
    t_ms: u64,
    label: &str,
    p: f32,
) -> Payload {
    let analysis = duplex::vision::expert::Analysis {
        sightings: vec![duplex::vision::expert::Sighting {
            label: label.into(),
            kinds: Vec::new(),
            confidence: p,
            x: 0.5,
            y: 0.5,
        }],
    };
    let observations = expert.observe(t_ms, &analysis);
    Payload::Scene {
        scene: std::sync::Arc::new(expert.scene()),
        observations,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scene_answers_questions_about_the_camera_and_is_remembered() {
    use duplex::vision::expert::{ExpertSettings, VisionExpert};
    let dir = TempDir::new("dialogue-vision");
    let pipeline = text_pipeline(&dir.path().join("memory.sqlite"));
    let mut dialogue = Dialogue::start(&pipeline);
    let mut expert = VisionExpert::new(ExpertSettings::default());
    dialogue
        .send(scene_of(&mut expert, 1_000, "tabby cat", 0.6))
        .await;
    let seen = dialogue.say("What do you see?").await;
    let context = seen
        .iter()
        .find(|e| e["type"] == "duplex.vision.context")
        .expect("the question is routed to vision");
    let reply = answer(&seen);
    println!("vision context: {}\n  -> {reply}", context["text"]);
    assert!(context["text"].as_str().unwrap().contains("tabby cat"));
    assert!(reply.to_lowercase().contains("cat"), "{reply}");
    // Not about the scene: no vision context.
    let other = dialogue.say("What is the capital of France?").await;
    assert!(!other.iter().any(|e| e["type"] == "duplex.vision.context"));
    dialogue.graph.end_input();
    dialogue.graph.finish().await;

    // A new session without a camera: the observation is in memory.
    let mut dialogue = Dialogue::start(&pipeline);
    let before = dialogue
        .say("What animal did you see on the camera earlier?")
        .await;
    let (items, reply) = (recalled(&before), answer(&before));
    println!("recalled {items:?}\n  -> {reply}");
    assert!(
        items
            .iter()
            .any(|i| i.contains("Seen on camera: tabby cat")),
        "{items:?}"
    );
    assert!(reply.to_lowercase().contains("cat"), "{reply}");
}
