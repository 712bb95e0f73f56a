//! Errors of loading a configuration: the file could not be read, it is not
//! valid TOML for our schema, or it is valid TOML with invalid values.
//!
//! Every message names the field in the same path syntax: `store.max_bytes`,
//! `service["alarms"].weight`, `route[0].mqtt`. Entries of a `[[table]]` are
//! named by their `name` when it is valid and unique, otherwise by their
//! 0-based position in the file (`service[2]`); routes have no name and are
//! always named by position.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use crate::locate;
use crate::names::check_topic_name;

/// Path labels for the entries of one `[[kind]]` array, in order: by name
/// (`service["alarms"]`) when the name is valid and unique, else by 0-based
/// position (`service[2]`). `None` is an entry whose name is unknown.
pub(crate) fn entry_labels<'a>(
    kind: &str,
    names: impl Iterator<Item = Option<&'a str>> + Clone,
) -> Vec<String> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for name in names.clone().flatten() {
        *counts.entry(name).or_default() += 1;
    }
    names
        .enumerate()
        .map(|(i, name)| match name {
            Some(name) if counts.get(name) == Some(&1) && check_topic_name(name).is_ok() => {
                format!("{kind}[{name:?}]")
            }
            _ => format!("{kind}[{i}]"),
        })
        .collect()
}

/// A problem with one field of an otherwise well-formed configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `service["alarms"].weight`.
    pub field: String,
    /// What is wrong, naming the bad value, e.g. `0 is out of range 1..=1000`.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read. The I/O error is part of the message
    /// (and so deliberately not also the `source()`, which would print it
    /// twice in error chains).
    #[error("cannot read config file {}: {error}", path.display())]
    Read {
        /// The path as given.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// The text is not TOML, or does not fit the schema (unknown field,
    /// wrong type, bad size or duration, missing required field).
    #[error("invalid TOML: {}", TomlDisplay { field: field.as_deref(), message, line: *line, column: *column })]
    Toml {
        /// The parser's message, e.g. ``unknown field `wieght`, expected ...``.
        message: String,
        /// Best-effort path of the field at the error position, e.g.
        /// `service[1].wieght`; `None` when it cannot be told.
        field: Option<String>,
        /// 1-based line of the error, when known.
        line: Option<usize>,
        /// 1-based column (in characters) of the error, when known.
        column: Option<usize>,
    },
    /// Well-formed, but some values are invalid. All problems found are
    /// listed, in file order within each section; `Display` joins them
    /// with `"; "`.
    #[error("{}", DisplayProblems(problems))]
    Invalid {
        /// One entry per bad field; never empty.
        problems: Vec<FieldError>,
    },
}

impl ConfigError {
    /// The field problems of an [`ConfigError::Invalid`], else empty.
    pub fn problems(&self) -> &[FieldError] {
        match self {
            ConfigError::Invalid { problems } => problems,
            _ => &[],
        }
    }

    /// Converts a `toml` error, adding line, column and field path from the
    /// source text.
    pub(crate) fn from_toml(err: &toml::de::Error, src: &str) -> ConfigError {
        // Some parser messages span several lines; keep the error one line.
        let message =
            err.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
        let (field, line, column) = match err.span() {
            Some(span) => {
                let (line, column) = locate::line_column(src, span.start);
                (locate::field_path(src, span), Some(line), Some(column))
            }
            None => (None, None, None),
        };
        ConfigError::Toml { message, field, line, column }
    }
}

struct TomlDisplay<'a> {
    field: Option<&'a str>,
    message: &'a str,
    line: Option<usize>,
    column: Option<usize>,
}

impl fmt::Display for TomlDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(field) = self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(self.message)?;
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, " at line {line} column {column}"),
            (Some(line), None) => write!(f, " at line {line}"),
            _ => Ok(()),
        }
    }
}

struct DisplayProblems<'a>(&'a [FieldError]);

impl fmt::Display for DisplayProblems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}
