//! The one error type of the config layer.

use std::path::Path;

/// A config file that cannot be used, naming the file and the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}: {}{message}", if field.is_empty() { String::new() } else { format!("{field}: ") })]
pub struct ConfigError {
    /// The file as the user named it.
    pub file: String,
    /// JSON path of the offending field (`tunnels[0].hosting_listener`), empty for the whole file.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    pub fn new(file: &Path, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: file.display().to_string(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// From a serde_json error; strips serde's " at line L column C" into a clearer suffix.
    pub(crate) fn json(file: &Path, field: &str, e: &serde_json::Error) -> Self {
        let text = e.to_string();
        let message = match text.rfind(" at line ") {
            Some(at) if e.line() > 0 => {
                format!("{} (line {}, column {})", &text[..at], e.line(), e.column())
            }
            _ => text,
        };
        Self::new(file, field, message)
    }
}
