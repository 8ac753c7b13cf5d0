//! Actors: the `Actor` trait, their inboxes and outboxes, and the loop that
//! drives one actor as a tokio task.
//!
//! Each actor owns one inbox with two queues: an unbounded queue of system
//! frames, always served first, and a bounded queue of data frames (the
//! backpressure). When an interrupt or cancel arrives, the inbox pulls every
//! queued data frame out of its channel and drops those of dead responses,
//! so nothing stale reaches the actor; the frame is then handed to the actor
//! (so it can stop work in flight) and forwarded downstream, where every
//! actor flushes in turn. An error returned by the actor becomes an `error`
//! event for the session and the actor goes on with the next frame.
//!
//! Actors must not run model inference on the async reactor: use
//! `tokio::task::spawn_blocking` (or a dedicated model thread) for it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::events::EventSink;
use super::frame::{DataFrame, Frame, ResponseId, SystemFrame, SystemKind};

/// Data frames an inbox holds before its senders wait.
pub const DATA_QUEUE_CAPACITY: usize = 64;

/// A stage of the pipeline. Implementations keep their per-session state in
/// `self`; shared models live behind an `Arc`.
#[async_trait]
pub trait Actor: Send + 'static {
    /// An ordered data frame of a live response (or user input).
    async fn on_data(&mut self, frame: DataFrame, ctx: &Ctx) -> anyhow::Result<()>;

    /// A system frame. It is forwarded downstream after this returns, so an
    /// actor only handles what concerns it (stop in-flight work on an
    /// interrupt, say).
    async fn on_system(&mut self, _frame: &SystemFrame, _ctx: &Ctx) -> anyhow::Result<()> {
        Ok(())
    }

    /// The input has ended: emit what is still buffered. Outputs close after.
    async fn on_end(&mut self, _ctx: &Ctx) -> anyhow::Result<()> {
        Ok(())
    }

    /// If set, `on_tick` runs at this interval between frames (pacing
    /// output audio, idle animation).
    fn tick_interval(&self) -> Option<Duration> {
        None
    }

    async fn on_tick(&mut self, _ctx: &Ctx) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The sending side of an actor's inbox. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    data: mpsc::Sender<DataFrame>,
    system: mpsc::UnboundedSender<SystemFrame>,
}

impl Outbox {
    /// Sends a data frame, waiting while the inbox is full. Returns false if
    /// the receiving actor has finished.
    pub async fn send_data(&self, frame: DataFrame) -> bool {
        self.data.send(frame).await.is_ok()
    }

    /// Sends a system frame; never waits, never drops while the actor lives.
    pub fn send_system(&self, frame: SystemFrame) -> bool {
        self.system.send(frame).is_ok()
    }

    pub async fn send(&self, frame: Frame) -> bool {
        match frame {
            Frame::Data(d) => self.send_data(d).await,
            Frame::System(s) => self.send_system(s),
        }
    }

    /// A handle to the system queue that does not keep the inbox open.
    pub fn downgrade_system(&self) -> mpsc::WeakUnboundedSender<SystemFrame> {
        self.system.downgrade()
    }
}

/// What every actor of one session shares: unique ids for system frames,
/// which responses are dead, and a line to every actor at once, so an
/// interrupt reaches the output stage at once even while a stage before it
/// is busy synthesizing or decoding.
#[derive(Default)]
pub struct SessionLink {
    next_system_id: AtomicU64,
    killed_upto: AtomicU64,
    everyone: OnceLock<Vec<mpsc::WeakUnboundedSender<SystemFrame>>>,
}

impl SessionLink {
    pub fn new() -> Arc<SessionLink> {
        Arc::new(SessionLink {
            next_system_id: AtomicU64::new(1),
            ..Default::default()
        })
    }

    /// Registers every actor of the session (once, after wiring).
    pub fn connect(&self, actors: &[Outbox]) {
        let _ = self
            .everyone
            .set(actors.iter().map(Outbox::downgrade_system).collect());
    }

    /// Whether `response_id` has been interrupted or cancelled.
    pub fn is_dead(&self, response_id: ResponseId) -> bool {
        response_id != super::frame::INPUT && response_id <= self.killed_upto.load(Ordering::SeqCst)
    }

    /// A new system frame with a session-unique id. A frame that kills a
    /// response marks it dead session-wide; interrupts, cancels and output
    /// pauses are also sent to every actor directly.
    pub fn frame(&self, t_ms: u64, kind: SystemKind) -> SystemFrame {
        let frame = SystemFrame {
            id: self.next_system_id.fetch_add(1, Ordering::Relaxed),
            t_ms,
            kind,
        };
        if let Some(killed) = frame.kind.kills() {
            self.killed_upto.fetch_max(killed, Ordering::SeqCst);
        }
        if frame.kind.broadcast() {
            for weak in self.everyone.get().into_iter().flatten() {
                if let Some(tx) = weak.upgrade() {
                    let _ = tx.send(frame.clone());
                }
            }
        }
        frame
    }
}

/// What an inbox hands its actor next.
#[derive(Debug)]
pub enum Next {
    System(SystemFrame),
    Data(DataFrame),
    /// Every sender is gone and nothing is queued: the stream has ended.
    Closed,
}

/// The receiving side: priority to system frames, flush on interrupt.
pub struct Inbox {
    data: mpsc::Receiver<DataFrame>,
    system: mpsc::UnboundedReceiver<SystemFrame>,
    /// Data frames pulled out of the channel by a flush, still live.
    pending: VecDeque<DataFrame>,
    /// Responses with ids up to this one are dead.
    dead_upto: ResponseId,
    /// Ids of recently seen system frames (a diamond delivers them twice).
    seen: VecDeque<u64>,
    /// Data frames dropped because their response was dead.
    dropped: u64,
}

/// Creates a connected outbox/inbox pair.
pub fn mailbox() -> (Outbox, Inbox) {
    let (data_tx, data_rx) = mpsc::channel(DATA_QUEUE_CAPACITY);
    let (sys_tx, sys_rx) = mpsc::unbounded_channel();
    (
        Outbox {
            data: data_tx,
            system: sys_tx,
        },
        Inbox {
            data: data_rx,
            system: sys_rx,
            pending: VecDeque::new(),
            dead_upto: 0,
            seen: VecDeque::new(),
            dropped: 0,
        },
    )
}

impl Inbox {
    /// The next frame: queued system frames first, then live data in order.
    pub async fn next(&mut self) -> Next {
        loop {
            if let Ok(sys) = self.system.try_recv() {
                if let Some(frame) = self.accept_system(sys) {
                    return Next::System(frame);
                }
                continue;
            }
            if let Some(frame) = self.pending.pop_front() {
                if let Some(frame) = self.accept_data(frame) {
                    return Next::Data(frame);
                }
                continue;
            }
            tokio::select! {
                biased;
                Some(sys) = self.system.recv() => {
                    if let Some(frame) = self.accept_system(sys) {
                        return Next::System(frame);
                    }
                }
                Some(data) = self.data.recv() => {
                    if let Some(frame) = self.accept_data(data) {
                        return Next::Data(frame);
                    }
                }
                else => return Next::Closed,
            }
        }
    }

    /// Data frames dropped so far because their response was dead.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn is_dead(&self, response_id: ResponseId) -> bool {
        response_id != super::frame::INPUT && response_id <= self.dead_upto
    }

    fn accept_data(&mut self, frame: DataFrame) -> Option<DataFrame> {
        if self.is_dead(frame.response_id) {
            self.dropped += 1;
            None
        } else {
            Some(frame)
        }
    }

    fn accept_system(&mut self, frame: SystemFrame) -> Option<SystemFrame> {
        if self.seen.contains(&frame.id) {
            return None;
        }
        if self.seen.len() == 64 {
            self.seen.pop_front();
        }
        self.seen.push_back(frame.id);
        if let Some(killed) = frame.kind.kills() {
            self.dead_upto = self.dead_upto.max(killed);
            self.flush();
        }
        Some(frame)
    }

    /// Pulls every queued data frame out of the channel and keeps the live ones.
    fn flush(&mut self) {
        while let Ok(frame) = self.data.try_recv() {
            self.pending.push_back(frame);
        }
        let before = self.pending.len();
        let dead_upto = self.dead_upto;
        self.pending
            .retain(|f| f.response_id == super::frame::INPUT || f.response_id > dead_upto);
        self.dropped += (before - self.pending.len()) as u64;
    }
}

/// What an actor can do besides receiving: send downstream, raise system
/// frames, emit client events. A clone lets a task of the actor (a streaming
/// generation, say) do the same.
#[derive(Clone)]
pub struct Ctx {
    node: Arc<str>,
    outputs: Vec<Outbox>,
    events: EventSink,
    link: Arc<SessionLink>,
}

impl Ctx {
    pub fn new(
        node: &str,
        outputs: Vec<Outbox>,
        events: EventSink,
        link: Arc<SessionLink>,
    ) -> Self {
        Ctx {
            node: node.into(),
            outputs,
            events,
            link,
        }
    }

    /// Whether `response_id` has been interrupted or cancelled: long work
    /// checks this before emitting its result.
    pub fn is_dead(&self, response_id: ResponseId) -> bool {
        self.link.is_dead(response_id)
    }

    /// This actor's node name in the pipeline.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn events(&self) -> &EventSink {
        &self.events
    }

    /// Sends a data frame to every downstream actor, in order.
    pub async fn send(&self, frame: DataFrame) {
        if let [only] = self.outputs.as_slice() {
            only.send_data(frame).await;
            return;
        }
        for out in &self.outputs {
            out.send_data(frame.clone()).await;
        }
    }

    /// Raises a new system frame and sends it downstream ahead of queued
    /// data (an interrupt or cancel goes to every actor of the session).
    pub fn raise(&self, t_ms: u64, kind: SystemKind) -> SystemFrame {
        let frame = self.link.frame(t_ms, kind);
        self.forward(&frame);
        frame
    }

    /// Forwards a system frame downstream unchanged.
    pub fn forward(&self, frame: &SystemFrame) {
        for out in &self.outputs {
            out.send_system(frame.clone());
        }
    }
}

/// Drives one actor until its inbox closes. Errors become `error` events.
pub async fn run_actor(mut actor: Box<dyn Actor>, mut inbox: Inbox, ctx: Ctx) -> u64 {
    let mut clock = 0u64;
    let mut ticker = actor.tick_interval().map(|every| {
        let mut t = tokio::time::interval(every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    loop {
        let next = match &mut ticker {
            Some(t) => tokio::select! {
                biased;
                next = inbox.next() => next,
                _ = t.tick() => {
                    if let Err(e) = actor.on_tick(&ctx).await {
                        report(&ctx, clock, &e);
                    }
                    continue;
                }
            },
            None => inbox.next().await,
        };
        match next {
            Next::Data(frame) => {
                clock = clock.max(frame.t_ms);
                if let Err(e) = actor.on_data(frame, &ctx).await {
                    report(&ctx, clock, &e);
                }
            }
            Next::System(frame) => {
                clock = clock.max(frame.t_ms);
                if let Err(e) = actor.on_system(&frame, &ctx).await {
                    report(&ctx, clock, &e);
                }
                ctx.forward(&frame);
            }
            Next::Closed => {
                if let Err(e) = actor.on_end(&ctx).await {
                    report(&ctx, clock, &e);
                }
                return inbox.dropped();
            }
        }
    }
}

/// An actor's failure: an `error` event for the client, and an error frame
/// downstream so later stages know the turn is impaired.
fn report(ctx: &Ctx, t_ms: u64, error: &anyhow::Error) {
    let message = format!("node `{}`: {error:#}", ctx.node());
    tracing::warn!(node = ctx.node(), "{message}");
    ctx.events().error(t_ms, "stage_error", &message);
    ctx.raise(
        t_ms,
        SystemKind::Error {
            node: ctx.node().to_string(),
            message,
        },
    );
}
