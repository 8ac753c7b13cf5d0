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

#[derive(Debug, Clone, Default)]
pub struct Conversation {
    pub instructions: String,
    items: Vec<Item>,
}

impl Conversation {
    pub fn new(instructions: impl Into<String>) -> Self {
        Conversation {
            instructions: instructions.into(),
            items: Vec::new(),
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

    pub fn delete(&mut self, id: &str) -> Result<Item> {
        match self.items.iter().position(|i| i.id == id) {
            Some(at) => Ok(self.items.remove(at)),
            None => bail!("no conversation item `{id}`"),
        }
    }

    /// The messages for the LLM: the instructions, then every item that has
    /// text (an assistant answer interrupted before any word was heard is
    /// left out).
    pub fn messages(&self) -> Vec<ChatMessage> {
        let mut messages = vec![ChatMessage::new(Role::System, self.instructions.clone())];
        for item in &self.items {
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
