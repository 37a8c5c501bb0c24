//! Conversation history for one call, kept by us (not by ollama-rs), with a budget.

use std::collections::VecDeque;

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The system prompt.
    System,
    /// The caller (what speech-to-text heard).
    User,
    /// The bot (what was actually spoken).
    Assistant,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: String,
}

impl Message {
    /// A rough token count for budgeting: about 4 characters a token plus a few tokens
    /// of per-message overhead (role markers of the chat template).
    pub fn estimated_tokens(&self) -> usize {
        estimate_tokens(&self.content) + MESSAGE_OVERHEAD_TOKENS
    }
}

const MESSAGE_OVERHEAD_TOKENS: usize = 4;

/// A rough token estimate of `text` (about 4 characters a token, rounded up).
pub fn estimate_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

/// How much history is sent with each request. The oldest turns are trimmed first; the
/// system prompt and the newest user message always stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryBudget {
    /// Maximum number of user/assistant messages kept (the system prompt not counted).
    pub max_messages: usize,
    /// Maximum estimated tokens of all messages, system prompt included
    /// (see [`estimate_tokens`]); keep it below the model's `num_ctx`.
    pub max_tokens: usize,
}

impl Default for HistoryBudget {
    /// 24 messages (12 exchanges) and 1,500 estimated tokens: enough for a phone call,
    /// small enough for a 2,048-token context with room for the reply.
    fn default() -> Self {
        HistoryBudget {
            max_messages: 24,
            max_tokens: 1_500,
        }
    }
}

/// The conversation of one call: an optional system prompt and the turns since.
///
/// Add what the caller said with [`History::push_user`], start a reply with
/// [`crate::ChatModel::start_reply`], and when the bot has finished speaking (or was
/// interrupted) record what was **actually spoken** with [`History::commit_assistant`]:
/// a reply cut short by barge-in is remembered as the part the caller heard.
#[derive(Debug, Clone)]
pub struct History {
    system: Option<Message>,
    turns: VecDeque<Message>,
    budget: HistoryBudget,
    trimmed: u64,
}

impl History {
    /// An empty conversation. An empty or blank `system_prompt` means none.
    pub fn new(system_prompt: Option<&str>, budget: HistoryBudget) -> History {
        let system = system_prompt.filter(|s| !s.trim().is_empty()).map(|s| Message {
            role: Role::System,
            content: s.to_string(),
        });
        History {
            system,
            turns: VecDeque::new(),
            budget,
            trimmed: 0,
        }
    }

    /// Records what the caller said and trims the oldest turns to the budget.
    /// Blank text is ignored.
    pub fn push_user(&mut self, text: &str) {
        self.push(Role::User, text);
    }

    /// Records what the bot actually said: the whole reply, or only the part spoken
    /// before the caller interrupted. Blank text (interrupted before any word) records
    /// nothing, so the model does not believe it said something the caller never heard.
    pub fn commit_assistant(&mut self, spoken_text: &str) {
        self.push(Role::Assistant, spoken_text);
    }

    fn push(&mut self, role: Role, text: &str) {
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        // Two messages in a row from the same side (a reply interrupted before any
        // word, then the caller speaks again) are merged: chat templates expect turns
        // to alternate.
        if let Some(last) = self.turns.back_mut()
            && last.role == role
        {
            last.content.push(' ');
            last.content.push_str(text);
            self.trim();
            return;
        }
        self.turns.push_back(Message {
            role,
            content: text.to_string(),
        });
        self.trim();
    }

    fn trim(&mut self) {
        while self.turns.len() > 1
            && (self.turns.len() > self.budget.max_messages
                || self.estimated_tokens() > self.budget.max_tokens)
        {
            self.turns.pop_front();
            self.trimmed += 1;
            // Never start the history with an assistant message: drop it with its user turn.
            if self.turns.len() > 1 && self.turns.front().is_some_and(|m| m.role == Role::Assistant) {
                self.turns.pop_front();
                self.trimmed += 1;
            }
        }
    }

    /// The system prompt, if any.
    pub fn system_prompt(&self) -> Option<&str> {
        self.system.as_ref().map(|m| m.content.as_str())
    }

    /// The messages to send: the system prompt first, then the kept turns, oldest first.
    pub fn messages(&self) -> impl Iterator<Item = &Message> {
        self.system.iter().chain(self.turns.iter())
    }

    /// The kept user/assistant messages, oldest first.
    pub fn turns(&self) -> &VecDeque<Message> {
        &self.turns
    }

    /// The most recent user message, if the last message is one (what a reply answers).
    pub fn pending_user(&self) -> Option<&str> {
        self.turns
            .back()
            .filter(|m| m.role == Role::User)
            .map(|m| m.content.as_str())
    }

    /// Estimated tokens of everything that would be sent, system prompt included.
    pub fn estimated_tokens(&self) -> usize {
        self.messages().map(Message::estimated_tokens).sum()
    }

    /// How many messages have been trimmed to stay within the budget so far.
    pub fn trimmed_messages(&self) -> u64 {
        self.trimmed
    }

    /// The budget.
    pub fn budget(&self) -> HistoryBudget {
        self.budget
    }

    /// Forgets every turn (the system prompt stays).
    pub fn clear(&mut self) {
        self.turns.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(max_messages: usize, max_tokens: usize) -> HistoryBudget {
        HistoryBudget {
            max_messages,
            max_tokens,
        }
    }

    #[test]
    fn oldest_turns_are_trimmed_and_system_prompt_stays() {
        let mut h = History::new(Some("Be brief."), budget(4, 10_000));
        for i in 0..5 {
            h.push_user(&format!("question {i}"));
            h.commit_assistant(&format!("answer {i}"));
        }
        let texts: Vec<&str> = h.messages().map(|m| m.content.as_str()).collect();
        assert_eq!(
            texts,
            ["Be brief.", "question 3", "answer 3", "question 4", "answer 4"]
        );
        assert_eq!(h.trimmed_messages(), 6);
        assert_eq!(h.messages().next().map(|m| m.role), Some(Role::System));
    }

    #[test]
    fn token_budget_trims_but_keeps_the_newest_user_message() {
        let mut h = History::new(Some("system"), budget(100, 40));
        h.push_user(&"a".repeat(60)); // 15 + 4 tokens
        h.commit_assistant(&"b".repeat(60));
        assert!(h.estimated_tokens() <= 40 || h.turns().len() == 1);
        h.push_user(&"c".repeat(400)); // alone over budget: still kept
        assert_eq!(h.turns().len(), 1);
        assert_eq!(h.pending_user().map(str::len), Some(400));
        assert_eq!(h.system_prompt(), Some("system"));
    }

    #[test]
    fn trimming_never_leaves_an_assistant_message_first() {
        let mut h = History::new(None, budget(3, 10_000));
        h.push_user("u1");
        h.commit_assistant("a1");
        h.push_user("u2");
        h.commit_assistant("a2");
        assert_eq!(h.turns().front().map(|m| m.role), Some(Role::User));
        assert!(h.turns().len() <= 3);
    }

    #[test]
    fn barge_in_records_only_what_was_spoken() {
        let mut h = History::new(None, HistoryBudget::default());
        h.push_user("Tell me a story.");
        h.commit_assistant("Once upon a time, ");
        assert_eq!(
            h.turns().back(),
            Some(&Message {
                role: Role::Assistant,
                content: "Once upon a time,".to_string()
            })
        );
        // Interrupted before any word: nothing recorded, the next user turn merges.
        h.push_user("Stop.");
        h.commit_assistant("  ");
        h.push_user("Hello?");
        assert_eq!(h.pending_user(), Some("Stop. Hello?"));
    }

    #[test]
    fn blank_system_prompt_is_none() {
        let h = History::new(Some("  "), HistoryBudget::default());
        assert_eq!(h.system_prompt(), None);
        assert_eq!(h.messages().count(), 0);
        assert_eq!(h.estimated_tokens(), 0);
    }
}
