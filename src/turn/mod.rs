//! Turn-taking: deciding when the user has finished speaking.
//!
//! `semantic_vad` (the Realtime API's name) scores each pause with the frozen
//! LLM ([`end_of_turn`]): the ASR sends the words heard so far when the VAD
//! reports a pause, the turn actor ([`actor`]) scores them and raises the
//! score to every stage, and the VAD turns it into how much more silence to
//! wait for ([`window`]) before it ends the turn.

pub mod actor;
pub mod end_of_turn;
pub mod window;

pub use window::Eagerness;
