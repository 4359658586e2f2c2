//! Config errors that name the file, the line and the key.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A config file that could not be read, parsed or validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the config came from.
    pub path: PathBuf,
    /// 1-based line of the offending value, when known.
    pub line: Option<usize>,
    /// Dotted key of the offending value, e.g. `upstream.api.servers[0].weight`.
    pub key: Option<String>,
    /// What is wrong, in words.
    pub message: String,
}

impl ConfigError {
    /// An error about the file as a whole (e.g. it cannot be read).
    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        Self {
            path: path.to_path_buf(),
            line: None,
            key: None,
            message: message.into(),
        }
    }

    /// An error at a byte span of the source.
    pub fn at(
        path: &Path,
        source: &str,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let key: String = key.into();
        Self {
            path: path.to_path_buf(),
            line: span.map(|s| line_of(source, s.start)),
            key: (!key.is_empty()).then_some(key),
            message: message.into(),
        }
    }
}

/// 1-based line number of a byte offset.
pub fn line_of(source: &str, offset: usize) -> usize {
    let end = offset.min(source.len());
    source.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config file {}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_line_and_key() {
        let src = "a = 1\nb = 2\n";
        let err = ConfigError::at(Path::new("x.toml"), src, Some(6..7), "b", "is bad");
        assert_eq!(err.to_string(), "config file x.toml:2: b: is bad");
    }
}
