//! `duplex bench llm`: the local LLM engine against llama.cpp on the same
//! GGUF, measured in the same run.
//!
//! Both engines get the same token ids: a ChatML prompt of about 300 tokens
//! (`prompt_tokens`), then greedy decoding of exactly `gen_tokens` tokens
//! (end-of-turn ignored, so both do the same work). Measured per engine:
//!
//! - cold: a fresh session (empty KV cache): time to first token (prefill of
//!   the whole prompt + one sampling step) and decode tokens/s after it;
//! - warm: a follow-up turn on the same session: the prompt is the first
//!   prompt + that engine's own reply + a short new user message, so only
//!   the new tokens need computing (both engines reuse their KV cache
//!   prefix);
//!
//! each the median of `runs` runs after one untimed warm-up; the engines
//! take turns run by run so that both see the same machine load (on a
//! shared machine, numbers move a lot with other processes: multi-threaded
//! runs suffer most). duplex uses one thread per core (`CANDLE_NUM_THREADS`
//! caps it); `threads` sets llama.cpp's. llama.cpp runs
//! through llama-cpp-python (`Llama.generate`, the same loop its OpenAI
//! server drives) in a Python child process; provision it with
//! `scripts/llama-server-peer` (a venv at `target/llama-venv`). When it is
//! missing the report says so and still has duplex's numbers.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::llm::local::{LoadOptions, LocalModel, WeightQuant};
use crate::llm::{ChatMessage, GenerateOptions, Role};
use crate::models::{ModelStore, files, ids};

/// One duplex configuration: `auto`, `q8_0`, `q4_0/candle`,
/// `auto/parallel` (multi-threaded decoding)...
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalEngine {
    pub quant: WeightQuant,
    /// duplex's packed AVX-512 VNNI kernel where the CPU has it.
    pub packed_kernel: bool,
    pub parallel_decode: bool,
}

impl Default for LocalEngine {
    fn default() -> Self {
        let o = LoadOptions::default();
        LocalEngine {
            quant: o.quant,
            packed_kernel: o.packed_kernel,
            parallel_decode: o.parallel_decode,
        }
    }
}

impl std::str::FromStr for LocalEngine {
    type Err = anyhow::Error;
    /// `<weight type>[/candle][/parallel]`.
    fn from_str(s: &str) -> Result<Self> {
        let mut parts = s.split('/');
        let mut e = LocalEngine {
            quant: parts.next().unwrap_or_default().parse()?,
            ..LocalEngine::default()
        };
        for flag in parts {
            match flag {
                "candle" => e.packed_kernel = false,
                "parallel" => e.parallel_decode = true,
                other => bail!("unknown engine flag `{other}` in `{s}` (candle, parallel)"),
            }
        }
        Ok(e)
    }
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The GGUF to run (`None`: the installed SmolLM2).
    pub model: Option<PathBuf>,
    /// The duplex configurations to run, one table row each.
    pub engines: Vec<LocalEngine>,
    /// Approximate length of the first prompt in tokens.
    pub prompt_tokens: usize,
    /// Tokens generated per turn.
    pub gen_tokens: usize,
    /// Timed runs (the median is reported).
    pub runs: usize,
    /// Threads for llama.cpp (duplex's candle uses every core; pass the
    /// machine's core count for a fair race).
    pub threads: usize,
    /// Python with llama-cpp-python (`None`: `$DUPLEX_LLAMA_PYTHON`, else
    /// `$LLAMA_VENV/bin/python`, else `target/llama-venv/bin/python` of this
    /// source tree, else `python3`).
    pub python: Option<PathBuf>,
    /// Race llama.cpp too.
    pub peer: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            model: None,
            engines: vec![
                LocalEngine::default(),
                LocalEngine {
                    parallel_decode: true,
                    ..LocalEngine::default()
                },
            ],
            prompt_tokens: 300,
            gen_tokens: 64,
            runs: 3,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            python: None,
            peer: true,
        }
    }
}

/// Medians of one engine's runs.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineResult {
    /// What ran, e.g. `duplex (candle, q8_0)`.
    pub engine: String,
    pub ttft_cold: Duration,
    pub decode_tps_cold: f64,
    pub ttft_warm: Duration,
    pub decode_tps_warm: f64,
    /// Prompt tokens computed in the cold and warm turns.
    pub prefilled_cold: usize,
    pub prefilled_warm: usize,
    /// The greedy tokens of the cold turn (to compare engines).
    pub cold_tokens: Vec<u32>,
}

/// Everything `duplex bench llm` prints.
#[derive(Debug, Clone)]
pub struct Report {
    pub model: String,
    pub model_path: PathBuf,
    /// Quantization stored in the file (what llama.cpp runs).
    pub file_quant: String,
    pub prompt_tokens: usize,
    pub followup_tokens: usize,
    pub gen_tokens: usize,
    pub runs: usize,
    pub threads: usize,
    pub duplex: Vec<(EngineResult, Duration)>,
    /// llama.cpp's result, or why it could not run.
    pub peer: std::result::Result<PeerResult, String>,
}

#[derive(Debug, Clone)]
pub struct PeerResult {
    pub result: EngineResult,
    pub version: String,
    /// llama.cpp's own tokenization of the rendered prompt equals duplex's.
    pub same_tokenization: bool,
    pub load_time: Duration,
}

const PASSAGE: &[&str] = &[
    "The old lighthouse on the northern cape was built in 1871 to guide fishing boats past the reef.",
    "For ninety years a keeper lived in the small stone house beside it, trimming the wick every evening.",
    "In 1962 the lamp was replaced by an electric beacon, and the last keeper moved to the village.",
    "Today the tower is a museum run by volunteers, open from April to October.",
    "Visitors climb one hundred and twelve steps to reach the lantern room at the top.",
    "On a clear day they can see the islands to the west and the mountains far to the south.",
    "The museum keeps the keeper's logbooks, which record storms, shipwrecks and the birds that nested on the rocks.",
    "One entry from 1899 describes a schooner that struck the reef at night; all eleven sailors were rescued by rowing boats from the village.",
    "The volunteers also run a small cafe in the former oil store, famous for its apple cake.",
    "Every August the village holds a festival with music, boat races and a lantern procession to the cape.",
    "Local children paint the lanterns in school during the weeks before the festival.",
    "The path to the lighthouse follows the cliffs for two kilometres from the harbour.",
    "In winter the path can be icy, and the museum closes when the wind is too strong.",
    "Seals are often seen on the rocks below the cliffs in the spring.",
    "A new visitor centre with a small library opened next to the car park in 2019.",
    "It was paid for by a fund raised by the villagers over ten years.",
    "The library holds maps of the coast drawn by the first keeper's daughter.",
    "She later became a well known painter, and three of her paintings hang in the lantern room.",
    "Guided tours in English and German leave from the visitor centre every hour.",
    "School groups can book a special tour that ends with a picnic on the headland.",
    "The museum's next project is to restore the fog horn, silent since 1975.",
    "Engineers from the university have offered to help with the work.",
];

/// The benchmark conversation: a system prompt and a user message of about
/// `target` tokens, and the follow-up question.
fn conversation(model: &LocalModel, target: usize) -> Result<(Vec<ChatMessage>, ChatMessage)> {
    let system = ChatMessage::new(
        Role::System,
        "You are a helpful assistant. Answer questions about the text the user gives you.",
    );
    let mut text = String::new();
    let mut i = 0;
    loop {
        let user = ChatMessage::new(
            Role::User,
            format!("{text}\n\nWhat is the most interesting fact in this text, and why?"),
        );
        let conv = vec![system.clone(), user];
        if model.prompt_tokens(&conv)?.len() >= target || i >= 10 * PASSAGE.len() {
            let followup = ChatMessage::new(Role::User, "Summarize the text in one sentence.");
            return Ok((conv, followup));
        }
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(PASSAGE[i % PASSAGE.len()]);
        i += 1;
    }
}

/// Median of `xs` (sorted copy).
fn median<T: Copy + PartialOrd>(xs: &[T]) -> T {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    v[v.len() / 2]
}

struct Turn {
    ttft: Duration,
    decode_tps: f64,
    prefilled: usize,
    tokens: Vec<u32>,
}

fn duplex_turn(
    session: &mut crate::llm::local::LocalSession,
    prompt: &[u32],
    n: usize,
) -> Result<Turn> {
    let opts = GenerateOptions {
        max_tokens: n,
        temperature: 0.0,
        seed: 0,
    };
    let cancel = AtomicBool::new(false);
    let started = Instant::now();
    let mut first = None;
    let mut last = started;
    let mut tokens = Vec::with_capacity(n);
    let usage = session.generate_ids(prompt, &opts, false, &cancel, &mut |id, _| {
        if let Some(id) = id {
            let now = Instant::now();
            first.get_or_insert(now);
            last = now;
            tokens.push(id);
        }
        true
    })?;
    let first = first.context("no token generated")?;
    let decode = last.duration_since(first).as_secs_f64();
    Ok(Turn {
        ttft: first.duration_since(started),
        decode_tps: if decode > 0.0 {
            (tokens.len() - 1) as f64 / decode
        } else {
            0.0
        },
        prefilled: usage.prefilled_tokens,
        tokens,
    })
}

/// The follow-up turn's prompt: the first prompt, the reply, then `tail`.
fn followup_prompt(p1: &[u32], reply: &[u32], tail: &[u32]) -> Vec<u32> {
    let mut p = p1.to_vec();
    p.extend(reply);
    p.extend(tail);
    p
}

fn summarize(engine: String, cold: &[Turn], warm: &[Turn]) -> EngineResult {
    let ttft = |ts: &[Turn]| median(&ts.iter().map(|t| t.ttft).collect::<Vec<_>>());
    let tps = |ts: &[Turn]| median(&ts.iter().map(|t| t.decode_tps).collect::<Vec<_>>());
    EngineResult {
        engine,
        ttft_cold: ttft(cold),
        decode_tps_cold: tps(cold),
        ttft_warm: ttft(warm),
        decode_tps_warm: tps(warm),
        prefilled_cold: cold[0].prefilled,
        prefilled_warm: warm[0].prefilled,
        cold_tokens: cold[0].tokens.clone(),
    }
}

/// Runs the benchmark.
pub fn run(options: &BenchOptions) -> Result<Report> {
    if options.engines.is_empty() || options.runs == 0 || options.gen_tokens < 2 {
        bail!("bench llm needs at least one engine, one run and two generated tokens");
    }
    let path = match &options.model {
        Some(p) => p.clone(),
        None => ModelStore::from_env().file(ids::SMOLLM2, files::SMOLLM2_GGUF)?,
    };
    let load = |e: LocalEngine| {
        LocalModel::load_gguf(
            &path,
            &LoadOptions {
                quant: e.quant,
                packed_kernel: e.packed_kernel,
                parallel_decode: e.parallel_decode,
                package_id: options.model.is_none().then(|| ids::SMOLLM2.to_string()),
                ..LoadOptions::default()
            },
        )
    };
    let first_model = load(options.engines[0])?;
    let (conv, followup) = conversation(&first_model, options.prompt_tokens)?;
    let p1 = first_model.prompt_tokens(&conv)?;
    // The tokens between the reply and the next reply: `<|im_end|>\n`, the
    // follow-up message, the assistant header.
    let mut with_followup = conv.clone();
    with_followup.push(ChatMessage::new(Role::Assistant, ""));
    with_followup.push(followup);
    let tail = first_model.prompt_tokens(&with_followup)?[p1.len()..].to_vec();
    let n = options.gen_tokens;
    let model_name = first_model.name().to_string();
    let rendered = first_model.render_prompt(&conv);

    let mut peer = if options.peer {
        Peer::start(options, &path, &p1, &rendered)
    } else {
        Err("not requested".to_string())
    };
    let mut peer_cold = Vec::new();
    let mut peer_warm = Vec::new();

    // The engines take turns, run by run, so both see the same machine load.
    let mut duplex = Vec::new();
    let mut model = Some(first_model);
    for &engine in &options.engines {
        let m = match model.take() {
            Some(m) => m,
            None => load(engine)?,
        };
        let load_time = m.load_time();
        let name = format!(
            "duplex ({}, {}{})",
            m.kernel(),
            m.weight_quant(),
            if engine.parallel_decode {
                ", parallel decode"
            } else {
                ""
            }
        );
        // Warm-up: one untimed turn each.
        duplex_turn(&mut m.session(), &p1, n)?;
        if let Ok(p) = &mut peer
            && peer_cold.is_empty()
            && let Err(e) = p.turn(&p1, n, true)
        {
            peer = Err(e);
        }
        let mut cold = Vec::new();
        let mut warm = Vec::new();
        for _ in 0..options.runs {
            let mut s = m.session();
            let c = duplex_turn(&mut s, &p1, n)?;
            warm.push(duplex_turn(
                &mut s,
                &followup_prompt(&p1, &c.tokens, &tail),
                n,
            )?);
            cold.push(c);
            if let Ok(p) = &mut peer {
                let turns = p.turn(&p1, n, true).and_then(|c| {
                    let w = p.turn(&followup_prompt(&p1, &c.tokens, &tail), n, false)?;
                    Ok((c, w))
                });
                match turns {
                    Ok((c, w)) => {
                        peer_cold.push(c);
                        peer_warm.push(w);
                    }
                    Err(e) => peer = Err(e),
                }
            }
        }
        duplex.push((summarize(name, &cold, &warm), load_time));
    }
    let peer = peer.map(|p| PeerResult {
        result: summarize("llama.cpp".into(), &peer_cold, &peer_warm),
        version: p.version.clone(),
        same_tokenization: p.same_tokenization,
        load_time: p.load_time,
    });
    let file_quant = file_quant_name(&path).unwrap_or_else(|| "as stored".into());
    Ok(Report {
        model: model_name,
        model_path: path,
        file_quant,
        prompt_tokens: p1.len(),
        followup_tokens: tail.len(),
        gen_tokens: n,
        runs: options.runs,
        threads: options.threads,
        duplex,
        peer,
    })
}

/// The GGUF's `general.file_type` as a name (llama.cpp's `llama_ftype`).
fn file_quant_name(path: &std::path::Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let ct = candle_core::quantized::gguf_file::Content::read(&mut f).ok()?;
    let ft = ct.metadata.get("general.file_type")?.to_u32().ok()?;
    Some(
        match ft {
            0 => "f32",
            1 => "f16",
            2 => "q4_0",
            3 => "q4_1",
            7 => "q8_0",
            8 => "q5_0",
            9 => "q5_1",
            10 => "q2_k",
            12 => "q3_k_m",
            15 => "q4_k_m",
            17 => "q5_k_m",
            18 => "q6_k",
            _ => return Some(format!("ftype {ft}")),
        }
        .to_string(),
    )
}

fn python(options: &BenchOptions) -> PathBuf {
    if let Some(p) = &options.python {
        return p.clone();
    }
    if let Some(p) = std::env::var_os("DUPLEX_LLAMA_PYTHON") {
        return p.into();
    }
    if let Some(v) = std::env::var_os("LLAMA_VENV") {
        return PathBuf::from(v).join("bin/python");
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/llama-venv/bin/python");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("python3")
}

/// The llama.cpp side, driven from Python: a JSON job line on stdin, a
/// JSON "ready" line back, then one JSON turn request per line, each
/// answered by one JSON line.
const PEER_SCRIPT: &str = r#"
import json, sys, time

def out(o):
    sys.stdout.write(json.dumps(o) + "\n")
    sys.stdout.flush()

job = json.loads(sys.stdin.readline())
try:
    import llama_cpp
    from llama_cpp import Llama
except Exception as e:
    out({"error": "llama-cpp-python is not importable: %s" % e})
    sys.exit(0)
t0 = time.perf_counter()
llm = Llama(model_path=job["model"], n_threads=job["threads"], n_threads_batch=job["threads"],
            n_ctx=job["n_ctx"], n_batch=512, verbose=False)
out({"version": getattr(llama_cpp, "__version__", "?"),
     "load_s": time.perf_counter() - t0,
     "same_tokenization":
         llm.tokenize(job["rendered"].encode("utf-8"), add_bos=False, special=True) == job["p1"]})

for line in sys.stdin:
    req = json.loads(line)
    if req["reset"]:
        llm.reset()
    tokens, n = req["tokens"], req["n"]
    cached = list(llm._input_ids[: llm.n_tokens])
    lcp = 0
    for a, b in zip(cached, tokens):
        if a != b:
            break
        lcp += 1
    if lcp == len(tokens):
        lcp -= 1
    start = time.perf_counter()
    first = last = None
    toks = []
    for tok in llm.generate(tokens, temp=0.0, top_k=1, top_p=1.0, min_p=0.0,
                            repeat_penalty=1.0, reset=True):
        now = time.perf_counter()
        if first is None:
            first = now
        last = now
        toks.append(int(tok))
        if len(toks) >= n:
            break
    decode = last - first
    out({"ttft": first - start, "tps": (len(toks) - 1) / decode if decode > 0 else 0.0,
         "prefilled": len(tokens) - lcp, "tokens": toks})
"#;

#[derive(Deserialize)]
struct PeerHello {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    version: String,
    #[serde(default)]
    load_s: f64,
    #[serde(default)]
    same_tokenization: bool,
}

#[derive(Deserialize)]
struct PeerTurn {
    ttft: f64,
    tps: f64,
    prefilled: usize,
    tokens: Vec<u32>,
}

/// A running llama-cpp-python child process.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    python: PathBuf,
    version: String,
    same_tokenization: bool,
    load_time: Duration,
}

impl Peer {
    fn start(
        options: &BenchOptions,
        path: &std::path::Path,
        p1: &[u32],
        rendered: &str,
    ) -> std::result::Result<Peer, String> {
        let py = python(options);
        let mut child = Command::new(&py)
            .arg("-c")
            .arg(PEER_SCRIPT)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot run {} ({e}); provision llama.cpp with scripts/llama-server-peer",
                    py.display()
                )
            })?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut peer = Peer {
            child,
            stdin,
            stdout,
            python: py,
            version: String::new(),
            same_tokenization: false,
            load_time: Duration::ZERO,
        };
        let n_ctx = (p1.len() + 2 * options.gen_tokens + 256).next_power_of_two();
        let job = serde_json::json!({
            "model": path,
            "threads": options.threads,
            "n_ctx": n_ctx.max(2048),
            "p1": p1,
            "rendered": rendered,
        });
        let hello: PeerHello = peer.exchange(&job)?;
        if let Some(e) = hello.error {
            return Err(format!(
                "{e} (python {}); provision it with scripts/llama-server-peer",
                peer.python.display()
            ));
        }
        peer.version = hello.version;
        peer.same_tokenization = hello.same_tokenization;
        peer.load_time = Duration::from_secs_f64(hello.load_s.max(0.0));
        Ok(peer)
    }

    fn exchange<T: for<'de> Deserialize<'de>>(
        &mut self,
        msg: &serde_json::Value,
    ) -> std::result::Result<T, String> {
        let fail = |what: String| format!("llama.cpp peer ({}): {what}", self.python.display());
        writeln!(self.stdin, "{msg}")
            .and_then(|_| self.stdin.flush())
            .map_err(|e| fail(format!("cannot write: {e}")))?;
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) => Err(fail("exited without answering".into())),
            Ok(_) => serde_json::from_str(&line).map_err(|e| fail(format!("bad answer: {e}"))),
            Err(e) => Err(fail(format!("cannot read: {e}"))),
        }
    }

    /// One turn; `reset` empties llama.cpp's KV cache first (cold).
    fn turn(&mut self, tokens: &[u32], n: usize, reset: bool) -> std::result::Result<Turn, String> {
        let t: PeerTurn = self.exchange(&serde_json::json!({
            "tokens": tokens,
            "n": n,
            "reset": reset,
        }))?;
        Ok(Turn {
            ttft: Duration::from_secs_f64(t.ttft.max(0.0)),
            decode_tps: t.tps,
            prefilled: t.prefilled,
            tokens: t.tokens,
        })
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prints the report as a table with ratios against llama.cpp.
pub fn print(report: &Report) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "llm: {} ({}), {} threads, median of {} runs",
        report.model,
        report.model_path.display(),
        report.threads,
        report.runs
    );
    println!(
        "  cold: fresh session, {}-token prompt; warm: follow-up turn on the same session ({} new tokens after the reply); {} tokens generated per turn (greedy)",
        report.prompt_tokens, report.followup_tokens, report.gen_tokens
    );
    let peer_name = report
        .peer
        .as_ref()
        .map(|p| format!("llama.cpp {} ({})", p.version, report.file_quant))
        .unwrap_or_default();
    let w = report
        .duplex
        .iter()
        .map(|(r, _)| r.engine.len())
        .chain([peer_name.len()])
        .max()
        .unwrap_or(0);
    println!(
        "  {:<w$} {:>13} {:>13} {:>11} {:>11} {:>14} {:>10}",
        "",
        "TTFT cold ms",
        "TTFT warm ms",
        "tok/s cold",
        "tok/s warm",
        "prefill tok/s",
        "prefilled"
    );
    let row = |name: &str, r: &EngineResult| {
        println!(
            "  {:<w$} {:>13.1} {:>13.1} {:>11.1} {:>11.1} {:>14.0} {:>10}",
            name,
            ms(r.ttft_cold),
            ms(r.ttft_warm),
            r.decode_tps_cold,
            r.decode_tps_warm,
            r.prefilled_cold as f64 / r.ttft_cold.as_secs_f64().max(1e-9),
            format!("{}/{}", r.prefilled_cold, r.prefilled_warm),
        );
    };
    for (r, _) in &report.duplex {
        row(&r.engine, r);
    }
    match &report.peer {
        Ok(p) => {
            row(&peer_name, &p.result);
            for (r, _) in &report.duplex {
                let agree = r
                    .cold_tokens
                    .iter()
                    .zip(&p.result.cold_tokens)
                    .take_while(|(a, b)| a == b)
                    .count();
                println!(
                    "  ratio {}/llama.cpp: TTFT cold {:.2}x, TTFT warm {:.2}x (lower is better); decode cold {:.2}x, warm {:.2}x (higher is better); greedy tokens agree for {}/{}",
                    r.engine,
                    ms(r.ttft_cold) / ms(p.result.ttft_cold).max(1e-9),
                    ms(r.ttft_warm) / ms(p.result.ttft_warm).max(1e-9),
                    r.decode_tps_cold / p.result.decode_tps_cold.max(1e-9),
                    r.decode_tps_warm / p.result.decode_tps_warm.max(1e-9),
                    agree,
                    report.gen_tokens
                );
            }
            println!(
                "  llama.cpp tokenizes the rendered prompt {} duplex",
                if p.same_tokenization {
                    "exactly like"
                } else {
                    "DIFFERENTLY from"
                }
            );
        }
        Err(why) => println!("  llama.cpp peer unavailable: {why}"),
    }
    for (r, load) in &report.duplex {
        println!(
            "  {} loads ({} file) in {:.0} ms",
            r.engine,
            report.file_quant,
            ms(*load)
        );
    }
    if let Ok(p) = &report.peer {
        println!("  llama.cpp loads in {:.0} ms", ms(p.load_time));
    }
}
