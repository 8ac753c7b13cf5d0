//! The actor graph: frames, actors and their inboxes, pipelines as config,
//! the node registry, and one running graph per session.

pub mod actor;
pub mod events;
pub mod frame;
pub mod nodes;
pub mod pipeline;
pub mod session;

pub use actor::{Actor, Ctx, Inbox, Next, Outbox, SessionLink, mailbox};
pub use events::{Event, EventSink};
pub use frame::{
    AudioChunk, Control, DataFrame, Frame, INPUT, Payload, ResponseId, SystemFrame, SystemKind,
};
pub use nodes::{NodeKind, Resources, SessionShared};
pub use pipeline::Pipeline;
pub use session::{SessionGraph, SessionStats};
