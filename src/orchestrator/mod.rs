//! The orchestrator: the controller around the frozen LLM, the router, and the cross-modal memory.

pub mod controller;
pub mod conversation;
pub mod embed;
pub mod heard;
pub mod memory;
pub mod router;
pub mod tool_call;
