//! The actor runtime: system frames jump the queue, an interrupt flushes
//! queued frames of the dead response in every downstream actor, errors and
//! panics become error events, and shutdown drains everything in order.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use duplex::graph::actor::{SessionLink, run_actor};
use duplex::graph::{
    Actor, AudioChunk, Ctx, DataFrame, EventSink, INPUT, Next, ResponseId, SystemFrame, SystemKind,
    mailbox,
};
use tokio::sync::Notify;

fn frame(t_ms: u64, response_id: ResponseId) -> DataFrame {
    DataFrame::audio(t_ms, response_id, AudioChunk::new(vec![0.0; 4], 16_000))
}

fn interrupt(id: u64, response_id: ResponseId) -> SystemFrame {
    SystemFrame {
        id,
        t_ms: 0,
        kind: SystemKind::Interrupt { response_id },
    }
}

#[tokio::test]
async fn system_frames_jump_the_queue_and_interrupt_flushes_the_dead_response() {
    let (out, mut inbox) = mailbox();
    for t in 0..10 {
        assert!(out.send_data(frame(t, 1)).await);
        assert!(out.send_data(frame(100 + t, INPUT)).await);
    }
    out.send_system(interrupt(1, 1));
    out.send_data(frame(200, 2)).await;
    drop(out);

    let Next::System(first) = inbox.next().await else {
        panic!("the interrupt must come first");
    };
    assert_eq!(first.kind, SystemKind::Interrupt { response_id: 1 });
    let mut seen = Vec::new();
    loop {
        match inbox.next().await {
            Next::Data(f) => seen.push((f.t_ms, f.response_id)),
            Next::System(s) => panic!("unexpected {s:?}"),
            Next::Closed => break,
        }
    }
    let expected: Vec<(u64, u64)> = (100..110).map(|t| (t, INPUT)).chain([(200, 2)]).collect();
    assert_eq!(
        seen, expected,
        "user input and the new response survive, in order"
    );
    assert_eq!(inbox.dropped(), 10);
}

#[tokio::test]
async fn a_frame_heard_over_two_paths_is_handled_once() {
    let (out, mut inbox) = mailbox();
    out.send_system(interrupt(7, 1));
    out.send_system(interrupt(7, 1));
    drop(out);
    assert!(matches!(inbox.next().await, Next::System(_)));
    assert!(matches!(inbox.next().await, Next::Closed));
}

/// Records what reaches it; blocks on its first frame until released.
struct Gated {
    gate: Arc<Notify>,
    blocked_once: bool,
    log: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl Actor for Gated {
    async fn on_data(&mut self, frame: DataFrame, _ctx: &Ctx) -> anyhow::Result<()> {
        if !self.blocked_once {
            self.blocked_once = true;
            self.gate.notified().await;
        }
        self.log
            .lock()
            .unwrap()
            .push(format!("data r{} t{}", frame.response_id, frame.t_ms));
        Ok(())
    }

    async fn on_system(&mut self, frame: &SystemFrame, _ctx: &Ctx) -> anyhow::Result<()> {
        self.log.lock().unwrap().push(format!("{:?}", frame.kind));
        Ok(())
    }
}

struct Forward;

#[async_trait]
impl Actor for Forward {
    async fn on_data(&mut self, frame: DataFrame, ctx: &Ctx) -> anyhow::Result<()> {
        ctx.send(frame).await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_flushes_queued_frames_in_every_downstream_actor() {
    let (events, _events_rx) = EventSink::new();
    let link = SessionLink::new();
    let log = Arc::new(Mutex::new(Vec::new()));
    let gate = Arc::new(Notify::new());

    // source -> forward -> gated recorder
    let (gated_out, gated_in) = mailbox();
    let (head, forward_in) = mailbox();
    let forward = tokio::spawn(run_actor(
        Box::new(Forward),
        forward_in,
        Ctx::new("forward", vec![gated_out], events.clone(), link.clone()),
    ));
    let gated = tokio::spawn(run_actor(
        Box::new(Gated {
            gate: gate.clone(),
            blocked_once: false,
            log: log.clone(),
        }),
        gated_in,
        Ctx::new("gated", vec![], events.clone(), link.clone()),
    ));

    // Response 1 piles up in the gated actor's inbox (it is stuck on frame 0).
    for t in 0..20 {
        head.send_data(frame(t, 1)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    head.send_system(interrupt(1, 1));
    tokio::time::sleep(Duration::from_millis(50)).await;
    head.send_data(frame(50, 2)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.notify_one();
    drop(head);
    forward.await.unwrap();
    let dropped = gated.await.unwrap();

    let log = log.lock().unwrap().clone();
    assert_eq!(
        log,
        vec![
            "data r1 t0".to_string(), // was in progress when the interrupt came
            "Interrupt { response_id: 1 }".to_string(),
            "data r2 t50".to_string(),
        ],
        "nothing of the dead response after the interrupt"
    );
    assert_eq!(dropped, 19, "the queued frames were flushed downstream");
}

/// Fails on odd frames, panics on t = 99.
struct Flaky {
    handled: Arc<AtomicU64>,
}

#[async_trait]
impl Actor for Flaky {
    async fn on_data(&mut self, frame: DataFrame, _ctx: &Ctx) -> anyhow::Result<()> {
        if frame.t_ms == 99 {
            panic!("flaky actor exploded");
        }
        if frame.t_ms % 2 == 1 {
            anyhow::bail!("cannot handle frame {}", frame.t_ms);
        }
        self.handled
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_error_becomes_an_error_event_and_the_actor_goes_on() {
    let (events, mut events_rx) = EventSink::new();
    let handled = Arc::new(AtomicU64::new(0));
    let (head, inbox) = mailbox();
    let task = tokio::spawn(run_actor(
        Box::new(Flaky {
            handled: handled.clone(),
        }),
        inbox,
        Ctx::new("flaky", vec![], events, SessionLink::new()),
    ));
    for t in 0..6 {
        head.send_data(frame(t, INPUT)).await;
    }
    drop(head);
    task.await.unwrap();
    assert_eq!(handled.load(std::sync::atomic::Ordering::Relaxed), 3);
    let mut errors = Vec::new();
    while let Some(e) = events_rx.recv().await {
        assert_eq!(e["type"], "error");
        errors.push(e["error"]["message"].as_str().unwrap().to_string());
    }
    assert_eq!(errors.len(), 3);
    assert!(
        errors[0].contains("node `flaky`") && errors[0].contains("frame 1"),
        "{errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_actor_becomes_an_error_event_and_other_sessions_go_on() {
    use duplex::graph::SessionGraph;
    let flaky = || -> Vec<(String, Box<dyn Actor>)> {
        vec![
            ("head".into(), Box::new(Forward)),
            (
                "flaky".into(),
                Box::new(Flaky {
                    handled: Arc::new(AtomicU64::new(0)),
                }),
            ),
        ]
    };
    let mut crashing = SessionGraph::spawn(flaky(), &[(0, 1)], 0);
    let mut healthy = SessionGraph::spawn(flaky(), &[(0, 1)], 0);

    let input = crashing.input.take().unwrap();
    input.send_data(frame(99, INPUT)).await;
    let crash_event = crashing.events.recv().await.expect("an error event");
    assert_eq!(crash_event["type"], "error");
    let message = crash_event["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("node `flaky` crashed") && message.contains("exploded"),
        "{message}"
    );
    drop(input);
    let stats = crashing.finish().await;
    assert_eq!(stats.crashed, vec!["flaky".to_string()]);

    // The other session still works to the end.
    let input = healthy.input.take().unwrap();
    assert!(input.send_data(frame(2, INPUT)).await);
    drop(input);
    assert!(
        healthy.events.recv().await.is_none(),
        "no errors, clean end"
    );
    assert!(healthy.finish().await.crashed.is_empty());
}

/// Logs every frame it sees.
struct Recorder {
    log: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl Actor for Recorder {
    async fn on_data(&mut self, frame: DataFrame, _ctx: &Ctx) -> anyhow::Result<()> {
        self.log
            .lock()
            .unwrap()
            .push(format!("data r{} t{}", frame.response_id, frame.t_ms));
        Ok(())
    }

    async fn on_system(&mut self, frame: &SystemFrame, _ctx: &Ctx) -> anyhow::Result<()> {
        self.log.lock().unwrap().push(format!("{:?}", frame.kind));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupt_reaches_the_last_stage_while_an_earlier_one_is_busy() {
    use duplex::graph::SessionGraph;
    let gate = Arc::new(Notify::new());
    let busy_log = Arc::new(Mutex::new(Vec::new()));
    let sink_log = Arc::new(Mutex::new(Vec::new()));
    let actors: Vec<(String, Box<dyn Actor>)> = vec![
        (
            "busy".into(),
            Box::new(Gated {
                gate: gate.clone(),
                blocked_once: false,
                log: busy_log.clone(),
            }),
        ),
        (
            "sink".into(),
            Box::new(Recorder {
                log: sink_log.clone(),
            }),
        ),
    ];
    let mut session = SessionGraph::spawn(actors, &[(0, 1)], 0);
    let input = session.input.clone().unwrap();
    input.send_data(frame(0, 1)).await; // "busy" is now stuck on it
    tokio::time::sleep(Duration::from_millis(30)).await;
    session.raise(0, SystemKind::Interrupt { response_id: 1 });
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(
        sink_log.lock().unwrap().clone(),
        vec!["Interrupt { response_id: 1 }".to_string()],
        "the last stage heard the interrupt while the first was busy"
    );
    gate.notify_one();
    drop(input);
    session.end_input();
    while session.events.recv().await.is_some() {}
    session.finish().await;
    // The busy stage saw the interrupt once, though it came two ways.
    let busy = busy_log.lock().unwrap().clone();
    assert_eq!(
        busy.iter().filter(|l| l.starts_with("Interrupt")).count(),
        1,
        "{busy:?}"
    );
    let sink = sink_log.lock().unwrap().clone();
    assert_eq!(
        sink.iter().filter(|l| l.starts_with("Interrupt")).count(),
        1,
        "{sink:?}"
    );
}
