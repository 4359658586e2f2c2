//! The TOML the importer writes: tables of keys in the order they were set, each with a comment naming
//! the nginx file and line it came from.

/// A TOML string literal.
pub fn string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// A TOML key: bare when it can be, quoted otherwise.
pub fn key(text: &str) -> String {
    let bare = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        text.to_string()
    } else {
        string(text)
    }
}

/// One table (`[x]` or `[[x]]`) and its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// `[upstream.api]`, `[[route]]`, ...
    pub header: String,
    /// Where it came from, `FILE:LINE`.
    pub origin: String,
    /// Keys and TOML values, in order.
    pub keys: Vec<(String, String)>,
}

impl Table {
    /// An empty table.
    pub fn new(header: impl Into<String>, origin: impl Into<String>) -> Self {
        Table {
            header: header.into(),
            origin: origin.into(),
            keys: Vec::new(),
        }
    }

    /// Sets `key` to the TOML `value`, replacing an earlier one.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self.keys.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.keys.push((key.to_string(), value)),
        }
    }

    /// The TOML value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.keys
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Appends the table's text.
    pub fn write(&self, out: &mut String) {
        out.push_str(&format!("# {}\n{}\n", self.origin, self.header));
        for (key, value) in &self.keys {
            out.push_str(&format!("{key} = {value}\n"));
        }
        out.push('\n');
    }
}
