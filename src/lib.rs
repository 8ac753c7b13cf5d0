//! duplex: a real-time voice and video AI agent server.
//!
//! The crate is one binary (`src/main.rs`) over this library, so integration
//! tests and benchmarks drive the same code the server runs.

pub mod asr;
pub mod audio;
pub mod avatar;
pub mod bench;
pub mod graph;
pub mod huge_pages;
pub mod latency;
pub mod llm;
pub mod models;
pub mod onnx;
pub mod orchestrator;
pub mod realtime;
pub mod runner;
pub mod server;
pub mod tts;
pub mod turn;
pub mod vision;
