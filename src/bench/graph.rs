//! `duplex bench graph`: frames per second through a chain of five pass-through actors and
//! per-hop latency (median, p99), against the same chain built from bare
//! tokio channels and tasks (the floor any actor runtime pays).

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::graph::actor::{Ctx, Next, SessionLink, mailbox, run_actor};
use crate::graph::nodes::Passthrough;
use crate::graph::{DataFrame, EventSink, INPUT, Payload};

pub const HOPS: usize = 5;

/// Results of one side of the graph benchmark.
#[derive(Debug, Clone)]
pub struct ChainResult {
    pub frames_per_second: f64,
    pub hop_median: Duration,
    pub hop_p99: Duration,
}

fn probe(seq: u64) -> DataFrame {
    DataFrame {
        t_ms: seq,
        response_id: INPUT,
        payload: Payload::Probe {
            seq,
            sent: Instant::now(),
        },
    }
}

fn sent_at(frame: &DataFrame) -> Option<Instant> {
    match frame.payload {
        Payload::Probe { sent, .. } => Some(sent),
        _ => None,
    }
}

/// The entry of a chain under test.
enum Head {
    Actors(crate::graph::Outbox),
    Channels(mpsc::Sender<DataFrame>),
}

impl Head {
    async fn send(&self, frame: DataFrame) {
        match self {
            Head::Actors(outbox) => {
                outbox.send_data(frame).await;
            }
            Head::Channels(tx) => {
                let _ = tx.send(frame).await;
            }
        }
    }
}

/// The exit of a chain under test.
enum Tail {
    Actors(crate::graph::Inbox),
    Channels(mpsc::Receiver<DataFrame>),
}

impl Tail {
    async fn recv(&mut self) -> Option<DataFrame> {
        match self {
            Tail::Actors(inbox) => loop {
                match inbox.next().await {
                    Next::Data(f) => return Some(f),
                    Next::System(_) => continue,
                    Next::Closed => return None,
                }
            },
            Tail::Channels(rx) => rx.recv().await,
        }
    }
}

/// Five pass-through actors driven by the duplex runtime.
fn actor_chain() -> (Head, Tail) {
    let (events, _rx) = EventSink::new();
    let link = SessionLink::new();
    let (head, mut inbox) = mailbox();
    for i in 0..HOPS {
        let (next_out, next_in) = mailbox();
        let ctx = Ctx::new(
            &format!("p{i}"),
            vec![next_out],
            events.clone(),
            link.clone(),
        );
        tokio::spawn(run_actor(Box::new(Passthrough), inbox, ctx));
        inbox = next_in;
    }
    (Head::Actors(head), Tail::Actors(inbox))
}

/// The peer: the same chain as bare bounded channels and forwarding tasks.
fn channel_chain() -> (Head, Tail) {
    let cap = crate::graph::actor::DATA_QUEUE_CAPACITY;
    let (head, mut rx) = mpsc::channel::<DataFrame>(cap);
    for _ in 0..HOPS {
        let (tx, next_rx) = mpsc::channel(cap);
        let mut inbox = rx;
        tokio::spawn(async move {
            while let Some(f) = inbox.recv().await {
                if tx.send(f).await.is_err() {
                    break;
                }
            }
        });
        rx = next_rx;
    }
    (Head::Channels(head), Tail::Channels(rx))
}

async fn measure((head, mut tail): (Head, Tail), frames: u64, pings: usize) -> ChainResult {
    // Latency: one frame in flight at a time.
    let mut hops = Vec::with_capacity(pings);
    for seq in 0..pings as u64 {
        head.send(probe(seq)).await;
        if let Some(f) = tail.recv().await
            && let Some(sent) = sent_at(&f)
        {
            hops.push(sent.elapsed() / HOPS as u32);
        }
    }
    hops.sort();
    let pick = |q: f64| hops[((hops.len() - 1) as f64 * q).round() as usize];
    let (hop_median, hop_p99) = (pick(0.5), pick(0.99));

    // Throughput: a feeder keeps the chain full.
    let started = Instant::now();
    let feeder = tokio::spawn(async move {
        for seq in 0..frames {
            head.send(probe(seq)).await;
        }
    });
    let mut received = 0u64;
    while received < frames && tail.recv().await.is_some() {
        received += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = feeder.await;
    ChainResult {
        frames_per_second: received as f64 / elapsed,
        hop_median,
        hop_p99,
    }
}

/// Runs the graph benchmark `rounds` times and reports the median round of
/// each side: (actor runtime, bare channels).
pub async fn graph(frames: u64, pings: usize, rounds: usize) -> (ChainResult, ChainResult) {
    let mut ours = Vec::new();
    let mut peer = Vec::new();
    for _ in 0..rounds.max(1) {
        ours.push(measure(actor_chain(), frames, pings).await);
        peer.push(measure(channel_chain(), frames, pings).await);
    }
    (median_of(ours), median_of(peer))
}

fn median_of(mut runs: Vec<ChainResult>) -> ChainResult {
    runs.sort_by(|a, b| a.frames_per_second.total_cmp(&b.frames_per_second));
    let mid = runs.len() / 2;
    let mut hop_medians: Vec<_> = runs.iter().map(|r| r.hop_median).collect();
    let mut hop_p99s: Vec<_> = runs.iter().map(|r| r.hop_p99).collect();
    hop_medians.sort();
    hop_p99s.sort();
    ChainResult {
        frames_per_second: runs[mid].frames_per_second,
        hop_median: hop_medians[mid],
        hop_p99: hop_p99s[mid],
    }
}

/// Prints the graph benchmark as a table with ratios.
pub fn print_graph(ours: &ChainResult, peer: &ChainResult) {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("graph: {HOPS}-actor pass-through chain (median of rounds)");
    println!(
        "  {:<22} {:>14} {:>16} {:>14}",
        "", "frames/s", "hop median (us)", "hop p99 (us)"
    );
    for (name, r) in [("duplex actors", ours), ("bare tokio channels", peer)] {
        println!(
            "  {:<22} {:>14.0} {:>16.2} {:>14.2}",
            name,
            r.frames_per_second,
            us(r.hop_median),
            us(r.hop_p99)
        );
    }
    println!(
        "  ratio duplex/bare: throughput {:.2}x, hop median {:.2}x, hop p99 {:.2}x",
        ours.frames_per_second / peer.frames_per_second,
        us(ours.hop_median) / us(peer.hop_median).max(1e-9),
        us(ours.hop_p99) / us(peer.hop_p99).max(1e-9)
    );
}
