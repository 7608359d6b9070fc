//! Errors of the L7 config loader: which file, which object, which field, and what is wrong.

use std::fmt;
use std::path::PathBuf;

use super::ObjectRef;

/// One problem found while loading the config directory.
///
/// The loader never stops at the first problem: an object with an error is left out (and
/// reported here) while every other object of the directory is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in (the directory itself when it cannot be listed).
    pub file: PathBuf,
    /// The 1-based line of the problem, or of the object's document, when known.
    pub line: Option<usize>,
    /// The object the problem is in, when its kind and name could be read.
    pub object: Option<ObjectRef>,
    /// The path of the offending field from the object's root (`spec.http[0].timeout`).
    pub field: Option<String>,
    /// What is wrong.
    pub kind: ConfigErrorKind,
}

/// What is wrong, for a [`ConfigError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// The file or directory could not be read.
    #[error("cannot read: {0}")]
    Io(String),
    /// The file is not valid YAML; the rest of the file from this point is ignored.
    #[error("invalid YAML: {0}")]
    Yaml(String),
    /// A document is not a mapping (a Kubernetes object).
    #[error("document is not a Kubernetes object (expected a mapping)")]
    NotAnObject,
    /// A required field is absent (`apiVersion`, `kind`, `metadata.name`).
    #[error("missing required field")]
    MissingField,
    /// The kind is one this loader knows, in an API version it does not.
    #[error("unsupported apiVersion {api_version:?} for kind {kind}")]
    UnsupportedVersion {
        /// The `apiVersion` found.
        api_version: String,
        /// The `kind` found.
        kind: String,
    },
    /// A known field has a malformed value or violates a rule of the CRD.
    #[error("{0}")]
    Invalid(String),
    /// The same kind/namespace/name was already loaded; this copy is ignored.
    #[error("duplicate object: already defined in {0}")]
    Duplicate(String),
}

impl ConfigError {
    pub(crate) fn new(file: impl Into<PathBuf>, kind: ConfigErrorKind) -> Self {
        Self {
            file: file.into(),
            line: None,
            object: None,
            field: None,
            kind,
        }
    }

    pub(crate) fn with_line(mut self, line: Option<usize>) -> Self {
        self.line = line;
        self
    }

    pub(crate) fn with_object(mut self, object: Option<ObjectRef>) -> Self {
        self.object = object;
        self
    }

    pub(crate) fn with_field(mut self, field: impl Into<String>) -> Self {
        let field = field.into();
        self.field = (!field.is_empty() && field != ".").then_some(field);
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(object) = &self.object {
            write!(f, ": {object}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.kind)
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.kind)
    }
}
