//! Cross-modal memory on the real all-MiniLM-L6-v2 (models must be installed:
//! `duplex models install`): embedding properties, recall of facts from a
//! dialogue, persistence across a restart, per-user isolation, vision items,
//! the prompt format, and timings.
//!
//! Run with `cargo test --release --test memory -- --nocapture` to see the
//! measured numbers and the prompt lines.

mod common;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use duplex::models::ModelStore;
use duplex::orchestrator::embed::{Embedder, cosine};
use duplex::orchestrator::memory::{Memory, MemoryStore, Modality, format_for_prompt};

use common::TempDir;

/// One embedder for all tests (loading takes a fraction of a second, but
/// tests run in parallel and share it as the server does).
fn embedder() -> Arc<Embedder> {
    static E: OnceLock<Arc<Embedder>> = OnceLock::new();
    E.get_or_init(|| {
        Arc::new(
            Embedder::load(&ModelStore::from_env())
                .unwrap_or_else(|e| panic!("{e:#} (run `duplex models install`)")),
        )
    })
    .clone()
}

const T0: i64 = 1_760_000_000_000;
const MIN: i64 = 60_000;

/// Ten utterances of a conversation, one minute apart, starting at T0.
const DIALOGUE: [(Modality, &str); 10] = [
    (Modality::User, "Hi there, how are you doing today?"),
    (Modality::Assistant, "I'm doing well, thanks for asking."),
    (Modality::User, "My name is Ada."),
    (Modality::User, "The weather is nice this afternoon."),
    (Modality::User, "I like jazz, especially Coltrane."),
    (Modality::Assistant, "Jazz is a wonderful genre."),
    (Modality::User, "I parked on level 3 of the garage."),
    (Modality::User, "What time is it?"),
    (Modality::Assistant, "It is a quarter past four."),
    (
        Modality::User,
        "I'm thinking about ordering pizza for dinner.",
    ),
];

fn fill(memory: &mut Memory) -> Vec<i64> {
    let items: Vec<(Modality, &str, i64)> = DIALOGUE
        .iter()
        .enumerate()
        .map(|(i, &(m, t))| (m, t, T0 + i as i64 * MIN))
        .collect();
    memory.remember_many(&items).expect("remember dialogue")
}

fn top_text(memory: &Memory, query: &str, now: i64) -> (String, Vec<(String, f32)>) {
    let hits = memory.recall(query, 3, now).expect("recall");
    let listed: Vec<(String, f32)> = hits
        .iter()
        .map(|r| (r.item.text.clone(), r.score))
        .collect();
    println!("recall({query:?}):");
    for (t, s) in &listed {
        println!("  {s:.3}  {t}");
    }
    (
        hits.first()
            .map(|r| r.item.text.clone())
            .unwrap_or_default(),
        listed,
    )
}

#[test]
fn embeddings_are_unit_deterministic_and_semantic() {
    let e = embedder();
    assert_eq!(e.dim(), 384);
    let texts = [
        "A man is playing a guitar.",
        "Someone is strumming a guitar.",
        "The stock market fell sharply today.",
        "Where did I leave my car keys?",
        "I can't find my car keys.",
        "",
    ];
    let v = e.embed(&texts).expect("embed");
    assert_eq!(v.len(), texts.len());
    for (t, x) in texts.iter().zip(&v) {
        assert_eq!(x.len(), 384);
        let norm = x.iter().map(|a| a * a).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{t:?}: norm {norm}");
        assert!(x.iter().all(|a| a.is_finite()));
    }
    let para = cosine(&v[0], &v[1]);
    let unrel = cosine(&v[0], &v[2]);
    let para2 = cosine(&v[3], &v[4]);
    let unrel2 = cosine(&v[3], &v[2]);
    println!("paraphrase cos {para:.3} / {para2:.3}, unrelated {unrel:.3} / {unrel2:.3}");
    assert!(para > 0.6 && para2 > 0.6, "{para} {para2}");
    assert!(unrel < 0.2 && unrel2 < 0.2, "{unrel} {unrel2}");

    // Deterministic, and independent of batching/padding (1e-5).
    let again = e.embed(&texts).expect("embed");
    assert_eq!(v, again, "same batch, same bits");
    for (t, x) in texts.iter().zip(&v) {
        let alone = e.embed_one(t).expect("embed one");
        let d = alone
            .iter()
            .zip(x)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(d < 1e-5, "{t:?}: batch vs alone differ by {d}");
    }
    assert!(e.embed(&[]).expect("empty batch").is_empty());

    // Long inputs are truncated, not rejected.
    let long = "word ".repeat(2000);
    let lv = e.embed_one(&long).expect("long text");
    assert_eq!(lv.len(), 384);
}

/// Reference vectors for all-MiniLM-L6-v2, computed by an independent NumPy
/// reimplementation of sentence-transformers' pipeline (BERT in float64, mean
/// pooling, L2 normalisation; Hugging Face `tokenizers` 0.23 for the ids) on
/// the same safetensors: the first 16 of 384 dimensions, the sum of all 384
/// and their alternating sum (v0 - v1 + v2 - ...). Matched to 1e-3 (measured
/// max difference over all 384 dimensions: see `DUPLEX_EMBED_REF` below).
const REFERENCE: [(&str, [f32; 16], f32, f32); 5] = [
    (
        "A man is playing a guitar.",
        [
            0.021664, -0.004864, -0.009649, -0.063401, -0.167494, 0.004676, 0.080600, -0.024142,
            -0.012695, 0.060556, -0.004113, 0.017189, -0.030610, -0.001943, 0.048673, 0.001600,
        ],
        0.040264,
        0.277684,
    ),
    (
        "My name is Ada.",
        [
            -0.085438, -0.053985, -0.014768, 0.070208, -0.045802, -0.027315, 0.176089, -0.016246,
            0.001587, -0.064892, -0.063314, -0.068795, -0.026087, -0.002698, -0.015692, 0.067878,
        ],
        0.583246,
        -2.437447,
    ),
    (
        "I parked on level 3 of the garage.",
        [
            0.014490, 0.031831, -0.002008, -0.007633, 0.063126, -0.018271, -0.018996, 0.075365,
            -0.008031, -0.020017, 0.057114, 0.003972, 0.071552, -0.033042, 0.072268, 0.084384,
        ],
        0.188579,
        -1.205186,
    ),
    (
        "a red coffee mug on the desk",
        [
            -0.075275, 0.069655, -0.026805, 0.072467, 0.032779, 0.068673, 0.118292, 0.034454,
            0.087718, -0.006148, -0.039358, -0.029973, -0.079511, 0.046849, -0.050711, -0.114510,
        ],
        0.457754,
        -0.466284,
    ),
    (
        "Don't forget: the café opens at 7:30!",
        [
            0.053176, -0.039887, -0.000528, 0.065850, 0.037716, 0.099769, -0.040346, -0.059078,
            -0.015010, -0.000357, -0.014811, -0.029305, -0.054529, 0.040024, 0.066677, -0.083356,
        ],
        0.388046,
        0.331465,
    ),
];

#[test]
fn matches_numpy_reference() {
    let e = embedder();
    let texts: Vec<&str> = REFERENCE.iter().map(|r| r.0).collect();
    let vs = e.embed(&texts).expect("embed");
    for ((text, head, sum, alt), v) in REFERENCE.iter().zip(&vs) {
        let d = v
            .iter()
            .zip(head.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            d < 1e-3,
            "{text:?}: max |diff| {d} over the first 16 dims: {:?}",
            &v[..16]
        );
        let s: f32 = v.iter().sum();
        let a: f32 = v
            .iter()
            .enumerate()
            .map(|(i, x)| if i % 2 == 0 { *x } else { -x })
            .sum();
        assert!(
            (s - sum).abs() < 2e-3 && (a - alt).abs() < 2e-3,
            "{text:?}: sum {s} vs {sum}, alt {a} vs {alt}"
        );
    }
    // Optionally the full vectors: DUPLEX_EMBED_REF=ref.json, a JSON list of
    // [text, [384 floats]] pairs (what the NumPy reference writes).
    if let Ok(path) = std::env::var("DUPLEX_EMBED_REF") {
        let json = std::fs::read_to_string(&path).expect("read DUPLEX_EMBED_REF");
        let refs: Vec<(String, Vec<f32>)> = serde_json::from_str(&json).expect("parse reference");
        let mut worst = 0.0f32;
        for (text, want) in &refs {
            let got = e.embed_one(text).expect("embed");
            assert_eq!(got.len(), want.len());
            let d = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            println!(
                "reference {text:?}: max |diff| {d:.2e}, cosine {:.6}",
                cosine(&got, want)
            );
            assert!(d < 1e-3, "{text:?}: max |diff| {d}");
            worst = worst.max(d);
        }
        println!(
            "reference: {} texts, worst max |diff| {worst:.2e}",
            refs.len()
        );
    }
}

#[test]
fn recalls_facts_from_a_dialogue_and_survives_restart() {
    let dir = TempDir::new("dialogue");
    let db = dir.0.join("memory.sqlite");
    let now = T0 + 15 * MIN;
    let ids = {
        let store = MemoryStore::open(&db).expect("open");
        let mut memory = Memory::new(store, embedder(), "ada", "session-1").expect("memory");
        assert!(memory.is_empty());
        let ids = fill(&mut memory);
        assert_eq!(memory.len(), 10);
        assert_eq!(ids.len(), 10);

        let (top, _) = top_text(&memory, "what is my name?", now);
        assert_eq!(top, "My name is Ada.");
        let (top, _) = top_text(&memory, "where did I park my car?", now);
        assert_eq!(top, "I parked on level 3 of the garage.");
        let hits = memory.recall("what is my name?", 3, now).expect("recall");
        println!("{}", format_for_prompt(&hits, now));
        ids
        // memory and store drop here: a restart
    };

    // Restart: a new store on the same file, a new session of the same user.
    let store = MemoryStore::open(&db).expect("reopen");
    let memory = Memory::new(store.clone(), embedder(), "ada", "session-2").expect("memory");
    assert_eq!(memory.len(), 10);
    assert_eq!(memory.items().iter().map(|i| i.id).collect::<Vec<_>>(), ids);
    assert!(memory.items().iter().all(|i| i.session == "session-1"));
    let (top, _) = top_text(&memory, "what is my name?", now);
    assert_eq!(top, "My name is Ada.");
    let (top, _) = top_text(&memory, "where did I park my car?", now);
    assert_eq!(top, "I parked on level 3 of the garage.");

    // Another user sees nothing.
    let other = Memory::new(store.clone(), embedder(), "bob", "session-3").expect("memory");
    assert_eq!(other.len(), 0);
    assert!(
        other
            .recall("what is my name?", 3, now)
            .expect("recall")
            .is_empty()
    );
}

#[test]
fn sessions_of_one_user_share_memory() {
    let store = MemoryStore::in_memory().expect("store");
    let mut a = Memory::new(store.clone(), embedder(), "ada", "s1").expect("memory");
    let mut b = Memory::new(store.clone(), embedder(), "ada", "s2").expect("memory");
    a.remember(Modality::User, "My sister lives in Lisbon.", T0)
        .expect("remember");
    assert_eq!(b.len(), 0);
    assert_eq!(b.refresh().expect("refresh"), 1);
    let hits = b
        .recall("where does my sister live?", 1, T0 + MIN)
        .expect("recall");
    assert_eq!(hits[0].item.text, "My sister lives in Lisbon.");
    assert_eq!(hits[0].item.session, "s1");
    b.remember(Modality::User, "My brother lives in Oslo.", T0 + MIN)
        .expect("remember");
    assert_eq!(a.refresh().expect("refresh"), 1);
    assert_eq!(a.len(), 2);
    // A fresh memory of the same user sees both.
    let c = Memory::new(store, embedder(), "ada", "s3").expect("memory");
    assert_eq!(c.len(), 2);
    assert!(a.remember(Modality::User, "   ", T0).is_err());
}

#[test]
fn vision_items_are_recalled_and_formatted() {
    let store = MemoryStore::in_memory().expect("store");
    let mut memory = Memory::new(store, embedder(), "ada", "s1").expect("memory");
    fill(&mut memory);
    let seen_at = T0 + 11 * MIN;
    memory
        .remember(Modality::Vision, "a red coffee mug on the desk", seen_at)
        .expect("remember");
    memory
        .remember(
            Modality::Vision,
            "a person waving at the camera",
            seen_at + 5_000,
        )
        .expect("remember");
    let now = seen_at + 20_000;
    let (top, _) = top_text(&memory, "what was on the desk?", now);
    assert_eq!(top, "a red coffee mug on the desk");

    let hits = memory
        .recall("what was on the desk?", 1, now)
        .expect("recall");
    assert_eq!(hits[0].item.modality, Modality::Vision);
    let mut prompt_items = hits.clone();
    prompt_items.extend(memory.recall("where did I park?", 1, now).expect("recall"));
    let text = format_for_prompt(&prompt_items, now);
    println!("format_for_prompt:\n{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "- (just now, seen) a red coffee mug on the desk");
    assert_eq!(
        lines[1],
        "- (5 min ago, user said) I parked on level 3 of the garage."
    );

    // recall_embedding with the query's vector agrees with recall.
    let q = memory
        .embedder()
        .embed_one("what was on the desk?")
        .expect("embed");
    let by_vec = memory.recall_embedding(&q, 1).expect("recall_embedding");
    assert_eq!(by_vec[0].item.id, hits[0].item.id);
    assert!((by_vec[0].score - hits[0].score).abs() < 1e-5);
    assert!(memory.recall_embedding(&q[..10], 1).is_err());
}

#[test]
fn recency_breaks_ties_but_not_clear_matches() {
    let store = MemoryStore::in_memory().expect("store");
    let mut memory = Memory::new(store, embedder(), "ada", "s1").expect("memory");
    let old = memory
        .remember(Modality::User, "I parked on level 3.", T0)
        .expect("remember");
    let new = memory
        .remember(Modality::User, "I parked on level 3.", T0 + 60 * MIN)
        .expect("remember");
    memory
        .remember(Modality::User, "I enjoy hiking on weekends.", T0 + 61 * MIN)
        .expect("remember");
    let hits = memory
        .recall("where did I park?", 3, T0 + 62 * MIN)
        .expect("recall");
    assert_eq!(hits[0].item.id, new, "same text: newer first");
    assert_eq!(hits[1].item.id, old);
    assert_eq!(hits[0].score, hits[1].score, "score is the plain cosine");
    assert_eq!(hits[2].item.text, "I enjoy hiking on weekends.");
}

#[test]
fn timings() {
    let e = embedder();
    let batch: Vec<&str> = DIALOGUE.iter().map(|(_, t)| *t).collect();
    e.embed(&batch).expect("warm-up");
    let runs = 5;
    let t = Instant::now();
    for _ in 0..runs {
        e.embed(&batch).expect("embed");
    }
    let per_sentence = t.elapsed().as_secs_f64() * 1000.0 / (runs * batch.len()) as f64;
    let t = Instant::now();
    e.embed_one("where did I park my car?").expect("embed");
    let single = t.elapsed().as_secs_f64() * 1000.0;
    println!(
        "embed: {per_sentence:.2} ms per sentence (batch of 10), {single:.2} ms for one query"
    );

    // 1000 items: the dialogue repeated with numbered variants, one batch.
    let store = MemoryStore::in_memory().expect("store");
    let mut memory = Memory::new(store, e.clone(), "ada", "s1").expect("memory");
    let texts: Vec<String> = (0..1000)
        .map(|i| format!("{} (note {i})", DIALOGUE[i % 10].1))
        .collect();
    let items: Vec<(Modality, &str, i64)> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| (Modality::User, t.as_str(), T0 + i as i64 * 1000))
        .collect();
    let t = Instant::now();
    memory.remember_many(&items).expect("remember 1000");
    let remember_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(memory.len(), 1000);
    let q = e.embed_one("what is my name?").expect("embed");
    let reps = 200;
    let t = Instant::now();
    let mut top = Vec::new();
    for _ in 0..reps {
        top = memory.recall_embedding(&q, 5).expect("recall");
    }
    let search_ms = t.elapsed().as_secs_f64() * 1000.0 / reps as f64;
    let t = Instant::now();
    let full = memory.recall("what is my name?", 5, T0).expect("recall");
    let recall_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert!(top[0].item.text.starts_with("My name is Ada."));
    assert!(full[0].item.text.starts_with("My name is Ada."));
    println!(
        "1000 items: remember_many {remember_ms:.0} ms ({:.2} ms/item, embedding + SQLite); \
         search {search_ms:.3} ms (recall_embedding, k=5); recall incl. query embedding {recall_ms:.2} ms",
        remember_ms / 1000.0
    );
}

#[test]
fn missing_and_corrupt_models_name_the_fix() {
    // Nothing installed: the error names `duplex models install`.
    let empty = TempDir::new("no-models");
    let err = Embedder::load(&ModelStore::new(empty.0.clone()))
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(err.contains("duplex models install"), "{err}");

    // A same-size but unparsable config.json goes through corrupt_model_error.
    let real = ModelStore::from_env();
    let src = real.package_dir("minilm");
    let root = TempDir::new("bad-models");
    let dst = root.0.join("minilm");
    std::fs::create_dir_all(dst.join("1_Pooling")).expect("mkdir");
    for rel in [
        ".installed.json",
        "tokenizer.json",
        "model.safetensors",
        "1_Pooling/config.json",
    ] {
        std::os::unix::fs::symlink(src.join(rel), dst.join(rel)).expect("symlink");
    }
    let size = std::fs::metadata(src.join("config.json"))
        .expect("config")
        .len();
    std::fs::write(dst.join("config.json"), vec![b'#'; size as usize]).expect("write");
    let err = Embedder::load(&ModelStore::new(root.0.clone()))
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(err.contains("config.json"), "{err}");
    assert!(
        err.contains("duplex models install --force minilm"),
        "{err}"
    );
}
