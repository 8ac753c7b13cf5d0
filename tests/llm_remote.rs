//! `RemoteLlm` against a real OpenAI-compatible server: llama.cpp's server
//! from `llama-cpp-python[server]` (provisioned into `target/llama-venv` by
//! `scripts/llama-server-peer`; its first run builds llama.cpp, ~11 min),
//! serving the installed SmolLM2-135M GGUF.

use std::fs::File;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use duplex::llm::chunker::ClauseChunker;
use duplex::llm::remote::{RemoteLlm, RemoteOptions};
use duplex::llm::{ChatMessage, GenerateOptions, Llm, Role, Usage};
use duplex::models::ModelStore;

const MODEL_ALIAS: &str = "smollm2";

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's python. `scripts/llama-server-peer` is idempotent (half a
/// second when the venv is ready), so it always runs: it also replaces a venv
/// built with other flags. Its first run builds llama.cpp (~11 min).
fn peer_python() -> PathBuf {
    let python = repo_root().join("target/llama-venv/bin/python");
    if !python.exists() {
        eprintln!("llm_remote: provisioning the llama.cpp server (first time: ~11 min)");
    }
    let status = Command::new(repo_root().join("scripts/llama-server-peer"))
        .status()
        .expect("run scripts/llama-server-peer");
    assert!(
        status.success(),
        "scripts/llama-server-peer failed: {status}"
    );
    assert!(python.exists(), "{} still missing", python.display());
    python
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The llama.cpp server process; killed on drop, even when a test panics. A
/// watchdog also kills it should this test process die without unwinding.
struct Server {
    child: Child,
    watchdog: Option<(Child, ChildStdin)>,
    port: u16,
    log: PathBuf,
}

impl Server {
    fn start() -> Server {
        let python = peer_python();
        let model = ModelStore::from_env()
            .file("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
            .unwrap_or_else(|e| panic!("{e} (run `duplex models install smollm2`)"));
        let port = free_port();
        let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("llama-server-{port}.log"));
        let out = File::create(&log).unwrap();
        let child = Command::new(&python)
            .args(["-m", "llama_cpp.server", "--model"])
            .arg(&model)
            .args(["--model_alias", MODEL_ALIAS])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--n_ctx", "2048", "--n_threads", "2"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
        let pid = child.id();
        let watchdog = Command::new("bash")
            .args([
                "-c",
                &format!("read -r line; [ \"$line\" = stop ] || kill -9 {pid} 2>/dev/null"),
            ])
            .stdin(Stdio::piped())
            .spawn()
            .ok()
            .map(|mut w| {
                let stdin = w.stdin.take().unwrap();
                (w, stdin)
            });
        let mut server = Server {
            child,
            watchdog,
            port,
            log,
        };
        server.wait_ready(Duration::from_secs(120));
        server
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Polls `/v1/models` until it answers 200.
    fn wait_ready(&mut self, limit: Duration) {
        let url = format!("{}/models", self.base_url());
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(2)))
                .build(),
        );
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "llama.cpp server exited ({status}) before answering:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(resp) = agent.get(&url).call()
                && resp.status() == 200
            {
                eprintln!("llm_remote: server ready in {:?}", start.elapsed());
                return;
            }
            if start.elapsed() > limit {
                panic!(
                    "llama.cpp server did not answer {url} within {limit:?}:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some((mut w, mut stdin)) = self.watchdog.take() {
            let _ = writeln!(stdin, "stop");
            drop(stdin);
            let _ = w.wait();
        }
    }
}

fn llm(base_url: &str) -> RemoteLlm {
    let mut options = RemoteOptions::new(base_url, MODEL_ALIAS);
    options.connect_timeout = Duration::from_secs(2);
    options.read_timeout = Duration::from_secs(30);
    RemoteLlm::new(options).unwrap()
}

fn story() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new(Role::System, "You are a helpful assistant."),
        ChatMessage::new(
            Role::User,
            "Write a long story about a dragon who learns to bake bread.",
        ),
    ]
}

/// One generation, collecting its pieces.
fn generate(
    llm: &mut RemoteLlm,
    messages: &[ChatMessage],
    max_tokens: usize,
) -> (Usage, Vec<String>) {
    let mut pieces = Vec::new();
    let options = GenerateOptions {
        max_tokens,
        ..Default::default()
    };
    let usage = llm
        .generate(messages, &options, &AtomicBool::new(false), &mut |t| {
            pieces.push(t.to_string());
            true
        })
        .unwrap();
    (usage, pieces)
}

#[test]
fn against_a_real_llama_cpp_server() {
    let server = Server::start();
    let base = server.base_url();
    let mut llm = llm(&base);

    // Streaming: several deltas, text, usage.
    let messages = vec![
        ChatMessage::new(
            Role::System,
            "You are a helpful assistant. Answer in one or two sentences.",
        ),
        ChatMessage::new(Role::User, "What color is the sky on a clear day?"),
    ];
    let t = Instant::now();
    let (usage, pieces) = generate(&mut llm, &messages, 48);
    let took = t.elapsed();
    let text: String = pieces.concat();
    eprintln!(
        "llm_remote: {} pieces in {took:?}, {usage:?}: {text:?}",
        pieces.len()
    );
    assert!(pieces.len() >= 3, "{pieces:?}");
    assert!(!text.trim().is_empty());
    assert!(!usage.cancelled);
    // llama-cpp-python sends no `usage` chunk (it ignores `stream_options`):
    // output tokens are the pieces counted, the prompt size is unknown (0).
    if usage.input_tokens == 0 {
        assert_eq!(usage.output_tokens, pieces.len(), "{usage:?}");
        assert_eq!(usage.prefilled_tokens, 0, "{usage:?}");
    } else {
        assert!(
            usage.input_tokens > 10,
            "the prompt has more tokens: {usage:?}"
        );
        assert!(usage.prefilled_tokens <= usage.input_tokens, "{usage:?}");
    }
    assert!((3..=48).contains(&usage.output_tokens), "{usage:?}");
    let ttft = usage.time_to_first_token.expect("time to first token");
    assert!(ttft <= took);
    // The chunker turns the stream into speakable chunks.
    let mut chunker = ClauseChunker::default();
    let mut chunks: Vec<String> = pieces.iter().flat_map(|p| chunker.push(p)).collect();
    chunks.extend(chunker.finish());
    assert!(!chunks.is_empty(), "{text:?}");

    // Greedy decoding is deterministic: the same question, the same answer.
    let (_, again) = generate(&mut llm, &messages, 48);
    assert_eq!(again.concat(), text);

    // Cancel by the flag after the 2nd piece: returns promptly.
    let cancel = AtomicBool::new(false);
    let mut seen = 0;
    let mut raised_at = None;
    let usage = llm
        .generate(&story(), &GenerateOptions::default(), &cancel, &mut |_| {
            seen += 1;
            if seen == 2 {
                cancel.store(true, Ordering::Relaxed);
                raised_at = Some(Instant::now());
            }
            true
        })
        .unwrap();
    let stop_latency = raised_at.expect("2 pieces").elapsed();
    eprintln!("llm_remote: cancel flag -> return in {stop_latency:?}");
    assert!(usage.cancelled);
    assert_eq!(seen, 2, "no piece after the cancel");
    assert!(
        stop_latency < Duration::from_millis(1000),
        "{stop_latency:?}"
    );

    // Cancel by on_text returning false after the 2nd piece.
    let mut seen = 0;
    let mut refused_at = None;
    let usage = llm
        .generate(
            &story(),
            &GenerateOptions::default(),
            &AtomicBool::new(false),
            &mut |_| {
                seen += 1;
                if seen == 2 {
                    refused_at = Some(Instant::now());
                }
                seen < 2
            },
        )
        .unwrap();
    let stop_latency = refused_at.expect("2 pieces").elapsed();
    eprintln!("llm_remote: on_text false -> return in {stop_latency:?}");
    assert!(usage.cancelled);
    assert_eq!(usage.output_tokens, 2, "{usage:?}");
    assert!(
        stop_latency < Duration::from_millis(1000),
        "{stop_latency:?}"
    );

    // The server is fine after the dropped connections, and its next answer
    // does not wait for the abandoned stories to finish.
    let t = Instant::now();
    let (usage, pieces) = generate(&mut llm, &messages, 8);
    eprintln!(
        "llm_remote: after cancels: first token in {:?}, all in {:?}",
        usage.time_to_first_token,
        t.elapsed()
    );
    assert!(!pieces.is_empty());

    // An HTTP error (wrong path) names the status and the URL.
    let mut wrong = self::llm(&format!("http://127.0.0.1:{}/nope", server.port));
    let err = wrong
        .generate(
            &messages,
            &GenerateOptions::default(),
            &AtomicBool::new(false),
            &mut |_| true,
        )
        .unwrap_err()
        .to_string();
    eprintln!("llm_remote: wrong path: {err}");
    assert!(err.contains("HTTP 404 Not Found: Not Found"), "{err}");
    assert!(
        err.contains(&format!(
            "http://127.0.0.1:{}/nope/chat/completions",
            server.port
        )),
        "{err}"
    );

    // A prompt over the context window: this server fails inside the
    // stream (200, then the connection closes without [DONE]).
    let long = vec![ChatMessage::new(Role::User, "word ".repeat(3000))];
    let err = llm
        .generate(
            &long,
            &GenerateOptions::default(),
            &AtomicBool::new(false),
            &mut |_| true,
        )
        .unwrap_err()
        .to_string();
    eprintln!("llm_remote: prompt too long: {err}");
    assert!(err.contains(&format!("{base}/chat/completions")), "{err}");
    assert!(
        err.contains("closed the stream before it finished"),
        "{err}"
    );

    // And it still answers afterwards.
    let (_, pieces) = generate(&mut llm, &messages, 4);
    assert!(!pieces.is_empty());

    drop(server);
}

#[test]
fn a_dead_url_fails_fast_naming_it() {
    let port = free_port(); // bound then closed: nothing listens there
    let base = format!("http://127.0.0.1:{port}/v1");
    let mut llm = llm(&base);
    let t = Instant::now();
    let err = llm
        .generate(
            &[ChatMessage::new(Role::User, "Hi")],
            &GenerateOptions::default(),
            &AtomicBool::new(false),
            &mut |_| true,
        )
        .unwrap_err()
        .to_string();
    let took = t.elapsed();
    assert_eq!(
        err,
        format!(
            "cannot reach LLM server at http://127.0.0.1:{port}/v1/chat/completions: connection refused"
        )
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
}
