//! The local LLM engine on the real SmolLM2-135M-Instruct GGUF (installed by
//! `duplex models install`). Run with `cargo test --release`: candle is very
//! slow in a debug build.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use duplex::llm::local::{LoadOptions, LocalModel, LocalSession, WeightQuant, common_prefix};
use duplex::llm::{ChatMessage, GenerateOptions, Llm, Role, Usage};
use duplex::models::{ModelStore, Stamp};

fn model() -> &'static LocalModel {
    static MODEL: OnceLock<LocalModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        LocalModel::load(&ModelStore::from_env())
            .unwrap_or_else(|e| panic!("loading SmolLM2: {e:#}"))
    })
}

fn sys(text: &str) -> ChatMessage {
    ChatMessage::new(Role::System, text)
}
fn user(text: &str) -> ChatMessage {
    ChatMessage::new(Role::User, text)
}
fn assistant(text: &str) -> ChatMessage {
    ChatMessage::new(Role::Assistant, text)
}

const SYSTEM: &str = "You are a helpful assistant. Answer in one or two short sentences.";

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        temperature: 0.0,
        seed: 42,
    }
}

/// Runs one turn; returns the streamed text, the pieces and the usage.
fn run(
    session: &mut LocalSession,
    messages: &[ChatMessage],
    options: &GenerateOptions,
) -> (String, Vec<String>, Usage) {
    let cancel = AtomicBool::new(false);
    let mut pieces = Vec::new();
    let usage = session
        .generate(messages, options, &cancel, &mut |p| {
            pieces.push(p.to_string());
            true
        })
        .expect("generate");
    (pieces.concat(), pieces, usage)
}

/// The ids the session must hold after a turn: the prompt plus the reply's
/// tokens, minus the last sampled token when the reply hit `max_tokens`
/// (that token is never fed back).
fn expected_cache(prompt: &[u32], reply: &str, usage: &Usage, max_tokens: usize) -> Vec<u32> {
    let mut fed = prompt.to_vec();
    fed.extend(model().tokenize(reply).unwrap());
    if usage.output_tokens == max_tokens || usage.cancelled {
        fed.pop();
    }
    fed
}

fn looks_like_english(text: &str) -> bool {
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .collect();
    let ascii = text.chars().filter(|c| c.is_ascii()).count() as f64 / text.chars().count() as f64;
    let common = [
        "the", "is", "a", "of", "and", "to", "in", "it", "i", "you", "are", "that", "capital",
        "paris", "france", "city",
    ];
    words.len() >= 3 && ascii > 0.95 && words.iter().any(|w| common.contains(&w.as_str()))
}

#[test]
fn greedy_answer_is_english_and_deterministic_across_sessions() {
    let m = model();
    assert_eq!(m.config().architecture, "llama");
    assert_eq!(m.context_length(), 8192);
    let conv = [sys(SYSTEM), user("What is the capital of France?")];
    let (a, pieces, usage) = run(&mut m.session(), &conv, &greedy(64));
    let (b, _, usage_b) = run(&mut m.session(), &conv, &greedy(64));
    eprintln!("answer: {a:?} ({usage:?})");
    assert!(!a.trim().is_empty());
    assert!(looks_like_english(&a), "not English: {a:?}");
    assert_eq!(a, b, "greedy output differs between two sessions");
    assert_eq!(usage.output_tokens, usage_b.output_tokens);
    assert_eq!(usage.input_tokens, m.prompt_tokens(&conv).unwrap().len());
    assert_eq!(
        usage.prefilled_tokens, usage.input_tokens,
        "fresh session prefills all"
    );
    assert!(usage.output_tokens > 0 && usage.output_tokens <= 64);
    assert!(pieces.len() > 1, "text is streamed piece by piece");
    assert!(usage.time_to_first_token.is_some());
    assert!(!usage.cancelled);
    // The rendered prompt is ChatML and its tokens are what the engine ran.
    let rendered = m.render_prompt(&conv);
    assert!(rendered.starts_with("<|im_start|>system\nYou are a helpful assistant."));
    assert!(rendered.ends_with("<|im_end|>\n<|im_start|>assistant\n"));
    assert_eq!(
        m.detokenize(&m.prompt_tokens(&conv).unwrap()),
        rendered
            .replace("<|im_start|>", "")
            .replace("<|im_end|>", "")
    );
}

#[test]
fn default_system_prompt_is_inserted_like_the_chat_template() {
    let m = model();
    let rendered = m.render_prompt(&[user("Hi")]);
    assert!(
        rendered.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"),
        "{rendered}"
    );
}

#[test]
fn second_turn_prefills_only_new_tokens_and_matches_a_fresh_session() {
    let m = model();
    let opts = greedy(48);
    let turn1 = vec![sys(SYSTEM), user("What is the capital of France?")];
    let mut s = m.session();
    let (reply1, _, u1) = run(&mut s, &turn1, &opts);
    let p1 = m.prompt_tokens(&turn1).unwrap();
    let fed = expected_cache(&p1, &reply1, &u1, opts.max_tokens);
    assert_eq!(
        s.cached_tokens(),
        fed.as_slice(),
        "cache = prompt + fed reply tokens"
    );

    let mut turn2 = turn1.clone();
    turn2.push(assistant(&reply1));
    turn2.push(user("And what is the capital of Germany?"));
    let p2 = m.prompt_tokens(&turn2).unwrap();
    let new_tokens = p2.len() - common_prefix(&fed, &p2);
    assert!(
        new_tokens < 30,
        "turn 2 adds a short message, got {new_tokens} new tokens"
    );

    let (reply2, _, u2) = run(&mut s, &turn2, &opts);
    eprintln!("turn 1: {reply1:?}\nturn 2: {reply2:?} ({u2:?})");
    assert_eq!(u2.input_tokens, p2.len());
    assert_eq!(
        u2.prefilled_tokens, new_tokens,
        "only the new tokens are computed"
    );

    let (fresh2, _, f2) = run(&mut m.session(), &turn2, &opts);
    assert_eq!(f2.prefilled_tokens, p2.len());
    assert_eq!(reply2, fresh2, "cached and fresh sessions disagree");
    assert_eq!(u2.output_tokens, f2.output_tokens);

    // A third turn keeps reusing the cache.
    let mut turn3 = turn2.clone();
    turn3.push(assistant(&reply2));
    turn3.push(user("Thank you!"));
    let fed2 = expected_cache(&p2, &reply2, &u2, opts.max_tokens);
    let p3 = m.prompt_tokens(&turn3).unwrap();
    let (reply3, _, u3) = run(&mut s, &turn3, &opts);
    assert_eq!(u3.prefilled_tokens, p3.len() - common_prefix(&fed2, &p3));
    let (fresh3, _, _) = run(&mut m.session(), &turn3, &opts);
    assert_eq!(reply3, fresh3);
}

/// Greedy tokens from raw ids, end-of-turn ignored.
fn tokens_of(session: &mut LocalSession, prompt: &[u32], n: usize) -> (Vec<u32>, Usage) {
    let mut ids = Vec::new();
    let usage = session
        .generate_ids(
            prompt,
            &greedy(n),
            false,
            &AtomicBool::new(false),
            &mut |id, _| {
                ids.extend(id);
                true
            },
        )
        .unwrap();
    (ids, usage)
}

/// 96 greedy tokens past the end of turn amplify any numerical difference
/// between a batched prefill and token-by-token decoding.
fn check_long_continuation(m: &LocalModel) {
    let p1 = m
        .prompt_tokens(&[
            sys(SYSTEM),
            user("Describe a walk through a forest in autumn."),
        ])
        .unwrap();
    let mut s = m.session();
    let (reply, u1) = tokens_of(&mut s, &p1, 24);
    assert_eq!(u1.output_tokens, 24);
    assert_eq!(s.cached_tokens().len(), p1.len() + 23);
    let mut p2 = p1.clone();
    p2.extend(&reply);
    p2.push(m.end_of_turn_token());
    p2.extend(m.tokenize("\nGo on, in more detail.").unwrap());
    let (cached, u2) = tokens_of(&mut s, &p2, 96);
    assert_eq!(u2.prefilled_tokens, p2.len() - (p1.len() + 23));
    let (fresh, f2) = tokens_of(&mut m.session(), &p2, 96);
    assert_eq!(f2.prefilled_tokens, p2.len());
    assert_eq!(
        cached,
        fresh,
        "{} kernel: cached and fresh token streams differ",
        m.kernel()
    );
}

#[test]
fn cached_continuation_is_token_identical_over_a_long_generation() {
    check_long_continuation(model());
}

#[test]
fn cached_continuation_is_token_identical_on_candle_kernels_too() {
    // What CPUs without AVX-512 VNNI run (Q8_0 on candle's kernels).
    let candle = LocalModel::load_with(
        &ModelStore::from_env(),
        &LoadOptions {
            packed_kernel: false,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(candle.kernel(), "candle");
    assert_eq!(candle.weight_quant(), WeightQuant::Q8_0);
    check_long_continuation(&candle);
}

#[test]
fn edited_history_rebuilds_from_the_first_changed_token() {
    let m = model();
    let opts = greedy(48);
    let turn1 = vec![
        sys(SYSTEM),
        user("Tell me about the planet Mars in two sentences."),
    ];
    let mut s = m.session();
    let (reply1, _, u1) = run(&mut s, &turn1, &opts);
    let p1 = m.prompt_tokens(&turn1).unwrap();
    let fed = expected_cache(&p1, &reply1, &u1, opts.max_tokens);
    let words: Vec<&str> = reply1.split_whitespace().collect();
    assert!(words.len() > 5, "reply too short to truncate: {reply1:?}");

    // The reply was cut short (an interruption): keep its first 3 words.
    let short = words[..3].join(" ");
    let edited = vec![
        sys(SYSTEM),
        user("Tell me about the planet Mars in two sentences."),
        assistant(&short),
        user("What colour is it?"),
    ];
    let pe = m.prompt_tokens(&edited).unwrap();
    let lcp = common_prefix(&fed, &pe);
    assert!(lcp >= p1.len(), "the first prompt is still reusable");
    assert!(lcp < fed.len(), "the cut is inside the old reply");
    let (out, _, ue) = run(&mut s, &edited, &opts);
    let (fresh, _, _) = run(&mut m.session(), &edited, &opts);
    eprintln!("edited: {out:?} ({ue:?})");
    assert_eq!(
        ue.prefilled_tokens,
        pe.len() - lcp,
        "prefill starts at the first changed token"
    );
    assert_eq!(
        out, fresh,
        "edited history: cached and fresh sessions disagree"
    );

    // A deleted item: drop the whole first exchange.
    let fed_e = expected_cache(&pe, &out, &ue, opts.max_tokens);
    let deleted = vec![sys(SYSTEM), user("What colour is Mars?")];
    let pd = m.prompt_tokens(&deleted).unwrap();
    let (out_d, _, ud) = run(&mut s, &deleted, &opts);
    assert_eq!(ud.prefilled_tokens, pd.len() - common_prefix(&fed_e, &pd));
    let (fresh_d, _, _) = run(&mut m.session(), &deleted, &opts);
    assert_eq!(out_d, fresh_d);
}

#[test]
fn cancel_from_the_callback_stops_within_one_token() {
    let m = model();
    let conv = [
        sys(SYSTEM),
        user("Write a long story about a dragon and a knight."),
    ];
    let cancel = AtomicBool::new(false);
    let mut pieces = 0usize;
    let mut s = m.session();
    let usage = s
        .generate(&conv, &greedy(200), &cancel, &mut |_| {
            pieces += 1;
            if pieces == 3 {
                cancel.store(true, Ordering::SeqCst);
            }
            true
        })
        .unwrap();
    assert!(usage.cancelled);
    assert_eq!(pieces, 3);
    assert!(
        usage.output_tokens <= pieces + 1,
        "{} tokens after {pieces} pieces",
        usage.output_tokens
    );

    // `on_text` returning false stops too.
    let never = AtomicBool::new(false);
    let mut seen = 0usize;
    let usage = m
        .session()
        .generate(&conv, &greedy(200), &never, &mut |_| {
            seen += 1;
            seen < 2
        })
        .unwrap();
    assert!(usage.cancelled);
    assert_eq!(seen, 2);
    assert!(usage.output_tokens <= 3);

    // Raised before the call: nothing is generated.
    let raised = AtomicBool::new(true);
    let usage = s
        .generate(&conv, &greedy(200), &raised, &mut |_| {
            panic!("no text expected")
        })
        .unwrap();
    assert!(usage.cancelled);
    assert_eq!(usage.output_tokens, 0);

    // The session still works after a cancel, and agrees with a fresh one.
    let (a, _, _) = run(&mut s, &conv, &greedy(16));
    let (b, _, _) = run(&mut m.session(), &conv, &greedy(16));
    assert_eq!(a, b);
}

#[test]
fn cancel_from_another_thread() {
    let m = model();
    let conv = [sys(SYSTEM), user("Count from one to one hundred.")];
    let cancel = AtomicBool::new(false);
    let started = std::sync::Mutex::new(0usize);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while *started.lock().unwrap() < 2 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            cancel.store(true, Ordering::SeqCst);
        });
        let usage = m
            .session()
            .generate(&conv, &greedy(400), &cancel, &mut |_| {
                *started.lock().unwrap() += 1;
                true
            })
            .unwrap();
        assert!(usage.cancelled);
        assert!(usage.output_tokens < 50, "{usage:?}");
    });
}

#[test]
fn temperature_sampling_is_seeded() {
    let m = model();
    let conv = [sys(SYSTEM), user("Say something about cats.")];
    let opts = |seed| GenerateOptions {
        max_tokens: 24,
        temperature: 0.8,
        seed,
    };
    let (a, _, _) = run(&mut m.session(), &conv, &opts(7));
    let (b, _, _) = run(&mut m.session(), &conv, &opts(7));
    assert_eq!(a, b, "same seed, same text");
    let others: Vec<String> = (8..11)
        .map(|s| run(&mut m.session(), &conv, &opts(s)).0)
        .collect();
    assert!(others.iter().any(|o| *o != a), "seeds change the sample");
}

#[test]
fn multibyte_text_round_trips_through_the_tokenizer() {
    let m = model();
    let text = "Café 🎉 naïve 日本語 — ok";
    let ids = m.tokenize(text).unwrap();
    assert_eq!(m.detokenize(&ids), text);
    // Some tokens hold only part of a character: streaming must hold them back.
    let partial = ids
        .iter()
        .any(|&id| m.detokenize(&[id]).contains('\u{fffd}'));
    assert!(partial, "expected a token that splits a UTF-8 character");
    // Control-token spellings in user text are not control tokens.
    let ids = m.tokenize("<|im_end|>").unwrap();
    assert!(!ids.contains(&m.end_of_turn_token()));
    // Digits are split one by one (SmolLM2's pre-tokenizer).
    assert_eq!(m.tokenize("2024").unwrap().len(), 4);
}

#[test]
fn overlong_conversation_drops_oldest_turns_or_fails_clearly() {
    let small = LocalModel::load_with(
        &ModelStore::from_env(),
        &LoadOptions {
            context_length: Some(160),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(small.context_length(), 160);
    let filler = "This sentence is filler to use up the context window. ".repeat(2);
    let mut conv = vec![sys("Be brief.")];
    for i in 0..8 {
        conv.push(user(&format!("Message {i}. {filler}")));
        conv.push(assistant("Noted."));
    }
    conv.push(user("Say hi."));
    assert!(small.prompt_tokens(&conv).unwrap().len() > 160);
    let (text, _, usage) = run(&mut small.session(), &conv, &greedy(16));
    assert!(usage.input_tokens + 16 <= 160, "{usage:?}");
    assert!(!text.is_empty());

    let huge = vec![user(&"word ".repeat(400))];
    let err = small
        .session()
        .generate(&huge, &greedy(16), &AtomicBool::new(false), &mut |_| true)
        .unwrap_err();
    assert!(format!("{err:#}").contains("context"), "{err:#}");
}

#[test]
fn weight_types_and_kernels_are_parameters() {
    let store = ModelStore::from_env();
    let conv = [sys(SYSTEM), user("What is the capital of France?")];
    // The default runs SmolLM2's own Q4_1 weights on the packed VNNI
    // kernel where the CPU has it, else requantizes to Q8_0 for candle.
    let m = model();
    match m.kernel() {
        "avx512-vnni" => assert_eq!(m.weight_quant(), WeightQuant::Q4_1),
        "candle" => assert_eq!(m.weight_quant(), WeightQuant::Q8_0),
        other => panic!("unknown kernel {other}"),
    }
    let (reference, _, _) = run(&mut m.session(), &conv, &greedy(32));

    // Requantized to Q4_0 (lossy): still sensible.
    let q4 = LocalModel::load_with(
        &store,
        &LoadOptions {
            quant: WeightQuant::Q4_0,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(q4.weight_quant(), WeightQuant::Q4_0);
    let (a, _, _) = run(&mut q4.session(), &conv, &greedy(32));
    assert!(looks_like_english(&a), "Q4_0 answer: {a:?}");

    // candle's kernels on the same Q4_1 weights agree with the packed ones.
    let candle = LocalModel::load_with(
        &store,
        &LoadOptions {
            quant: WeightQuant::AsStored,
            packed_kernel: false,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(candle.kernel(), "candle");
    assert_eq!(candle.weight_quant(), WeightQuant::Q4_1);
    let (c, _, _) = run(&mut candle.session(), &conv, &greedy(32));
    assert!(looks_like_english(&c), "candle answer: {c:?}");
    if m.kernel() == "avx512-vnni" {
        assert_eq!(c, reference, "packed and candle kernels disagree on Q4_1");
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("duplex-llm-local-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn corrupt_or_missing_gguf_names_the_install_command() {
    let dir = temp_dir("corrupt");
    let garbage: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();

    // A store whose smollm2 stamp is valid but whose GGUF is garbage.
    let store = ModelStore::new(dir.join("store"));
    let pkg = store.package_dir("smollm2");
    std::fs::create_dir_all(&pkg).unwrap();
    let gguf = pkg.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    std::fs::write(&gguf, &garbage).unwrap();
    let real = ModelStore::from_env()
        .read_stamp("smollm2")
        .unwrap()
        .expect("smollm2 installed");
    let stamp = Stamp {
        files: [(
            "SmolLM2-135M-Instruct.Q4_1.gguf".to_string(),
            garbage.len() as u64,
        )]
        .into(),
        ..real
    };
    std::fs::write(
        store.stamp_path("smollm2"),
        serde_json::to_string(&stamp).unwrap(),
    )
    .unwrap();
    let err = format!("{:#}", LocalModel::load(&store).unwrap_err());
    assert!(
        err.contains("duplex models install --force smollm2"),
        "{err}"
    );

    // A GGUF cut short: the header parses, the tensors do not.
    let original = ModelStore::from_env()
        .file("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
        .unwrap();
    let head = std::fs::read(&original).unwrap()[..4_000_000].to_vec();
    std::fs::write(&gguf, &head).unwrap();
    let stamp = Stamp {
        files: [(
            "SmolLM2-135M-Instruct.Q4_1.gguf".to_string(),
            head.len() as u64,
        )]
        .into(),
        ..stamp
    };
    std::fs::write(
        store.stamp_path("smollm2"),
        serde_json::to_string(&stamp).unwrap(),
    )
    .unwrap();
    let err = format!("{:#}", LocalModel::load(&store).unwrap_err());
    assert!(
        err.contains("duplex models install --force smollm2"),
        "{err}"
    );

    // Garbage given directly as a path.
    let loose = dir.join("garbage.gguf");
    std::fs::write(&loose, &garbage).unwrap();
    let err = format!(
        "{:#}",
        LocalModel::load_gguf(&loose, &LoadOptions::default()).unwrap_err()
    );
    assert!(err.contains("duplex models install"), "{err}");

    // Not installed at all.
    let empty = ModelStore::new(dir.join("empty"));
    let err = format!("{:#}", LocalModel::load(&empty).unwrap_err());
    assert!(err.contains("duplex models install"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn other_architectures_are_refused_clearly() {
    use candle_core::quantized::gguf_file::{self, Value};
    let dir = temp_dir("arch");
    let path = dir.join("neox.gguf");
    let mut f = std::fs::File::create(&path).unwrap();
    let arch = Value::String("gptneox".into());
    gguf_file::write(&mut f, &[("general.architecture", &arch)], &[]).unwrap();
    drop(f);
    let err = format!(
        "{:#}",
        LocalModel::load_gguf(&path, &LoadOptions::default()).unwrap_err()
    );
    assert!(
        err.contains("architecture `gptneox` is not supported"),
        "{err}"
    );
    assert!(err.contains("llama"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sessions_share_weights_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}
    assert_send_sync::<LocalModel>();
    assert_send::<LocalSession>();
    let m = model().clone();
    let conv = [sys(SYSTEM), user("Name a fruit.")];
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let m = m.clone();
            let conv = conv.clone();
            std::thread::spawn(move || run(&mut m.session(), &conv, &greedy(12)).0)
        })
        .collect();
    let outs: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(outs[0], outs[1]);
}
