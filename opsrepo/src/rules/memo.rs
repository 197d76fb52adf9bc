//! A process-wide memo for pure functions of a text (a PromQL expression's parse, a regex):
//! the daemon validates every commit it applies, and nearly all expressions are the last
//! pass's. Bounded: texts longer than `max_len` are not remembered, and the memo is emptied
//! when it holds `entries` of them.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use sha2::{Digest, Sha256};

/// A memo key for a long text: `scope`, then the SHA-256 of `text` (so a key never stands for
/// two texts, and a memo of long texts stays small).
pub(crate) fn text_key(scope: &str, text: &str) -> String {
    use std::fmt::Write;
    let mut key = String::with_capacity(scope.len() + 65);
    key.push_str(scope);
    key.push('\0');
    for b in Sha256::digest(text.as_bytes()) {
        let _ = write!(key, "{b:02x}");
    }
    key
}

pub(crate) struct Memo<V> {
    map: OnceLock<Mutex<HashMap<String, V>>>,
    entries: usize,
    max_len: usize,
}

impl<V: Clone> Memo<V> {
    pub(crate) const fn new(entries: usize, max_len: usize) -> Memo<V> {
        Memo {
            map: OnceLock::new(),
            entries,
            max_len,
        }
    }

    /// The remembered value of `key`, or `f(key)`, remembered when `key` is short enough.
    /// `f` runs outside the lock, so rules on other threads are never held up by it.
    pub(crate) fn get_or(&self, key: &str, f: impl FnOnce(&str) -> V) -> V {
        if key.len() > self.max_len {
            return f(key);
        }
        let map = self.map.get_or_init(Default::default);
        if let Some(hit) = map.lock().ok().and_then(|m| m.get(key).cloned()) {
            return hit;
        }
        let v = f(key);
        if let Ok(mut m) = map.lock() {
            if m.len() >= self.entries {
                m.clear();
            }
            m.insert(key.to_owned(), v.clone());
        }
        v
    }
}
