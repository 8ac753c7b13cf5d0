//! One running graph per session: builds the actors of a pipeline, wires
//! their inboxes along the edges, and supervises their tasks.
//!
//! The caller feeds the input node through [`SessionGraph::input`] and reads
//! events from [`SessionGraph::events`]. Dropping the input handle ends the
//! stream: every actor drains, flushes and finishes in order, and the event
//! stream closes after the last event. Dropping the `SessionGraph` (a client
//! vanished) cancels every task of the session at once. A panicking actor
//! becomes an `error` event; the process and other sessions go on.

use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::actor::{Actor, Ctx, Outbox, SessionLink, mailbox, run_actor};
use super::events::{Event, EventSink, WeakEventSink};
use super::frame::SystemKind;
use super::nodes::{Resources, SessionShared};
use super::pipeline::Pipeline;

pub struct SessionGraph {
    /// Sends frames into the pipeline's input node. `None` once ended.
    pub input: Option<Outbox>,
    /// Every event of the session, in emission order; closes at the end.
    pub events: mpsc::UnboundedReceiver<Event>,
    link: Arc<SessionLink>,
    sink: WeakEventSink,
    cancel: CancellationToken,
    supervisor: Option<tokio::task::JoinHandle<SessionStats>>,
}

/// What the session's actors did, reported when it ends.
#[derive(Debug, Default, Clone)]
pub struct SessionStats {
    /// Data frames dropped because their response had been interrupted.
    pub dropped_dead_frames: u64,
    /// Actors that panicked.
    pub crashed: Vec<String>,
}

impl SessionGraph {
    /// Builds and starts a session. Node construction errors name the node.
    pub fn start(
        pipeline: &Pipeline,
        resources: &Arc<Resources>,
        shared: &Arc<SessionShared>,
    ) -> Result<SessionGraph> {
        let actors = pipeline
            .nodes
            .iter()
            .map(|node| {
                let actor = node
                    .kind
                    .build(resources, shared)
                    .with_context(|| format!("node `{}`", node.name))?;
                Ok((node.name.clone(), actor))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SessionGraph::spawn(actors, &pipeline.edges, pipeline.input))
    }

    /// Starts already-built actors wired by `edges` (indices into `actors`),
    /// with frames entering at `actors[input]`.
    pub fn spawn(
        actors: Vec<(String, Box<dyn Actor>)>,
        edges: &[(usize, usize)],
        input: usize,
    ) -> SessionGraph {
        let (events, events_rx) = EventSink::new();
        let link = SessionLink::new();
        let (outboxes, inboxes): (Vec<_>, Vec<_>) = actors.iter().map(|_| mailbox()).unzip();

        let mut tasks = JoinSet::new();
        let mut names = Vec::new();
        for (i, ((name, actor), inbox)) in actors.into_iter().zip(inboxes).enumerate() {
            let outputs = edges
                .iter()
                .filter(|&&(from, _)| from == i)
                .map(|&(_, to)| outboxes[to].clone())
                .collect();
            let ctx = Ctx::new(&name, outputs, events.clone(), link.clone());
            let id = tasks
                .spawn(async move { run_actor(actor, inbox, ctx).await })
                .id();
            names.push((id, name));
        }
        link.connect(&outboxes);
        let input = outboxes[input].clone();
        drop(outboxes);

        let cancel = CancellationToken::new();
        let sink = events.downgrade();
        let supervisor = tokio::spawn(supervise(tasks, names, events, cancel.clone()));
        SessionGraph {
            input: Some(input),
            events: events_rx,
            link,
            sink,
            cancel,
            supervisor: Some(supervisor),
        }
    }

    /// Raises a system frame from outside the graph (a client's cancel, say)
    /// into the input node; an interrupt or cancel reaches every actor at once.
    pub fn raise(&self, t_ms: u64, kind: SystemKind) {
        let frame = self.link.frame(t_ms, kind);
        if let Some(input) = &self.input {
            input.send_system(frame);
        }
    }

    /// Where to emit events of the session from outside the graph (the
    /// server's own replies), in the same ordered stream. `None` once the
    /// session has ended.
    pub fn sink(&self) -> Option<EventSink> {
        self.sink.upgrade()
    }

    /// Ends the input: the graph drains and finishes.
    pub fn end_input(&mut self) {
        self.input = None;
    }

    /// Waits until every actor has finished (call after `end_input` and after
    /// reading `events` to the end, or concurrently with it).
    pub async fn finish(mut self) -> SessionStats {
        self.input = None;
        match self.supervisor.take() {
            Some(handle) => handle.await.unwrap_or_default(),
            None => SessionStats::default(),
        }
    }
}

impl Drop for SessionGraph {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn supervise(
    mut tasks: JoinSet<u64>,
    names: Vec<(tokio::task::Id, String)>,
    events: EventSink,
    cancel: CancellationToken,
) -> SessionStats {
    let mut stats = SessionStats::default();
    loop {
        let joined = tokio::select! {
            joined = tasks.join_next_with_id() => joined,
            _ = cancel.cancelled() => {
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                return stats;
            }
        };
        match joined {
            None => return stats,
            Some(Ok((_, dropped))) => stats.dropped_dead_frames += dropped,
            Some(Err(e)) if e.is_panic() => {
                let name = names
                    .iter()
                    .find(|(id, _)| *id == e.id())
                    .map(|(_, n)| n.clone())
                    .unwrap_or_default();
                let message = format!("node `{name}` crashed: {}", panic_message(e));
                tracing::error!("{message}");
                events.error(0, "stage_crashed", &message);
                stats.crashed.push(name);
            }
            Some(Err(_)) => {}
        }
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    let payload = e.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}
