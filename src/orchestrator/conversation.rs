//! The conversation as the LLM sees it: the instructions and the items
//! (user and assistant messages) in order, with the edits a Realtime API
//! client may make (truncate an assistant item to what was heard, delete an
//! item).
//!
//! A user message keeps the exact text the model was given (including any
//! recalled memory or scene description put before it), so the prompt of the
//! next turn starts with the same tokens and the LLM's KV cache is reused.

use anyhow::{Result, bail};

use crate::llm::{ChatMessage, Role};

#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub id: String,
    pub role: Role,
    /// What the user said or the assistant answered (as heard).
    pub text: String,
    /// What the model was given for this item, when it differs from `text`.
    pub prompt: Option<String>,
    /// The assistant item was cut short by an interruption.
    pub truncated: bool,
}

impl Item {
    /// The item as a Realtime API `realtime.item` (assistant content as
    /// `output_audio` transcript or `output_text` by `modalities`).
    pub fn to_realtime(&self, modalities: &[String]) -> serde_json::Value {
        match self.role {
            Role::Assistant => crate::realtime::assistant_item(
                &self.id,
                if self.truncated {
                    "incomplete"
                } else {
                    "completed"
                },
                modalities,
                &self.text,
            ),
            role => serde_json::json!({
                "id": self.id,
                "object": "realtime.item",
                "type": "message",
                "status": "completed",
                "role": role,
                "content": [{"type": "input_text", "text": self.text}],
            }),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Conversation {
    pub instructions: String,
    items: Vec<Item>,
    /// Most user turns the prompt holds (`None`: all).
    window: Option<usize>,
    /// Index of the first item in the prompt.
    prompt_start: usize,
}

impl Conversation {
    pub fn new(instructions: impl Into<String>) -> Self {
        Conversation {
            instructions: instructions.into(),
            items: Vec::new(),
            window: None,
            prompt_start: 0,
        }
    }

    /// Keeps at most `turns` user turns (and what followed them) in the
    /// prompt. Beyond that the oldest half is dropped at once, so the KV
    /// cache is rebuilt once every `turns / 2` turns rather than every turn;
    /// older turns stay in the conversation (and in memory, for recall).
    pub fn with_window(mut self, turns: Option<usize>) -> Self {
        self.window = turns.map(|t| t.max(1));
        self
    }

    fn slide_window(&mut self) {
        let Some(window) = self.window else {
            return;
        };
        let users: Vec<usize> = (self.prompt_start..self.items.len())
            .filter(|&i| self.items[i].role == Role::User)
            .collect();
        if users.len() > window {
            let drop = window.div_ceil(2).max(users.len() - window);
            self.prompt_start = users[drop.min(users.len() - 1)];
        }
    }

    pub fn items(&self) -> &[Item] {
        &self.items
    }

    pub fn get(&self, id: &str) -> Option<&Item> {
        self.items.iter().find(|i| i.id == id)
    }

    /// Appends an item; `prompt` is what the model sees instead of `text`.
    pub fn push(&mut self, id: &str, role: Role, text: &str, prompt: Option<String>) {
        self.items.push(Item {
            id: id.to_string(),
            role,
            text: text.to_string(),
            prompt,
            truncated: false,
        });
        if role == Role::User {
            self.slide_window();
        }
    }

    /// Keeps only `heard` of an assistant item's text (what was played to
    /// the user before they interrupted).
    pub fn truncate(&mut self, id: &str, heard: &str) -> Result<()> {
        let Some(item) = self.items.iter_mut().find(|i| i.id == id) else {
            bail!("no conversation item `{id}`");
        };
        if item.role != Role::Assistant {
            bail!("item `{id}` is not an assistant message; only those can be truncated");
        }
        if heard.len() < item.text.len() {
            item.text = heard.trim_end().to_string();
            item.truncated = true;
        }
        Ok(())
    }

    /// Marks an assistant item as cut short (its response was stopped),
    /// even if what was kept is all it said.
    pub fn mark_incomplete(&mut self, id: &str) {
        if let Some(item) = self.items.iter_mut().find(|i| i.id == id) {
            item.truncated = true;
        }
    }

    pub fn delete(&mut self, id: &str) -> Result<Item> {
        match self.items.iter().position(|i| i.id == id) {
            Some(at) => {
                if at < self.prompt_start {
                    self.prompt_start -= 1;
                }
                Ok(self.items.remove(at))
            }
            None => bail!("no conversation item `{id}`"),
        }
    }

    /// The messages for the LLM: the instructions, then every item in the
    /// window that has text (an assistant answer interrupted before any word
    /// was heard is left out).
    pub fn messages(&self) -> Vec<ChatMessage> {
        let mut messages = vec![ChatMessage::new(Role::System, self.instructions.clone())];
        for item in self.items.iter().skip(self.prompt_start) {
            let content = item.prompt.as_deref().unwrap_or(&item.text);
            if !content.trim().is_empty() {
                messages.push(ChatMessage::new(item.role, content));
            }
        }
        messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_follow_items_and_prompts() {
        let mut c = Conversation::new("Be brief.");
        c.push("u1", Role::User, "hi", Some("[memory: none]\nhi".into()));
        c.push("a1", Role::Assistant, "Hello there, how can I help?", None);
        let m = c.messages();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0], ChatMessage::new(Role::System, "Be brief."));
        assert_eq!(m[1].content, "[memory: none]\nhi");
        assert_eq!(m[2].content, "Hello there, how can I help?");
    }

    #[test]
    fn the_window_drops_the_oldest_half_at_once() {
        let mut c = Conversation::new("sys").with_window(Some(4));
        let users_in_prompt = |c: &Conversation| -> Vec<String> {
            c.messages()
                .iter()
                .filter(|m| m.role == Role::User)
                .map(|m| m.content.clone())
                .collect()
        };
        for turn in 1..=4 {
            c.push(&format!("u{turn}"), Role::User, &format!("q{turn}"), None);
            c.push(
                &format!("a{turn}"),
                Role::Assistant,
                &format!("r{turn}"),
                None,
            );
        }
        assert_eq!(users_in_prompt(&c), ["q1", "q2", "q3", "q4"]);
        c.push("u5", Role::User, "q5", None);
        assert_eq!(users_in_prompt(&c), ["q3", "q4", "q5"]);
        assert_eq!(c.messages()[1].content, "q3", "starts at a user turn");
        c.push("a5", Role::Assistant, "r5", None);
        c.push("u6", Role::User, "q6", None);
        assert_eq!(
            users_in_prompt(&c),
            ["q3", "q4", "q5", "q6"],
            "stable for a turn"
        );
        c.delete("u1").unwrap();
        assert_eq!(
            users_in_prompt(&c),
            ["q3", "q4", "q5", "q6"],
            "deleting before the window"
        );
        assert_eq!(
            c.items().len(),
            10,
            "every other item is kept in the conversation"
        );
    }

    #[test]
    fn truncate_keeps_the_heard_words_and_refuses_user_items() {
        let mut c = Conversation::new("");
        c.push("u1", Role::User, "tell me a story", None);
        c.push(
            "a1",
            Role::Assistant,
            "Once upon a time there was a fox.",
            None,
        );
        c.truncate("a1", "Once upon a ").unwrap();
        assert_eq!(c.get("a1").unwrap().text, "Once upon a");
        assert!(c.get("a1").unwrap().truncated);
        assert!(c.truncate("u1", "tell").is_err());
        assert!(c.truncate("nope", "").is_err());
    }

    #[test]
    fn an_answer_interrupted_before_any_word_leaves_no_message() {
        let mut c = Conversation::new("sys");
        c.push("a1", Role::Assistant, "Sure, here", None);
        c.truncate("a1", "").unwrap();
        assert_eq!(c.messages().len(), 1);
        c.delete("a1").unwrap();
        assert!(c.items().is_empty());
        assert!(c.delete("a1").is_err());
    }
}
