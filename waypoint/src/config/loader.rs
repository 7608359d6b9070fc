//! Reading L7 configuration: files of a config directory or objects from the Kubernetes API
//! server, YAML documents, typed objects, errors with locations. Both sources go through
//! [`ConfigSet::add_documents`], so an object means the same wherever it comes from.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::authz::{Action, Attachment, AuthorizationPolicySpec, RejectedPolicy};
use super::error::{ConfigError, ConfigErrorKind};
use super::{ConfigSet, DEFAULT_NAMESPACE, Kind, Object, ObjectMeta, ObjectRef, Source};

/// Files larger than this are reported and skipped. Config comes from operators, but a stray
/// multi-gigabyte file in the directory must not exhaust the waypoint's memory.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// An object's document, as far as the loader reads it (`apiVersion`, `kind` and `status`
/// are not needed once the kind is known).
#[derive(Deserialize)]
struct Document<S> {
    #[serde(default)]
    metadata: ObjectMeta,
    spec: S,
}

impl ConfigSet {
    /// Loads every `*.yaml` and `*.yml` file of `dir` (not recursive; names starting with `.`
    /// are skipped, such as the `..data` links of a mounted ConfigMap), in name order.
    ///
    /// Returns the valid objects and one error per problem found. Fails only when the
    /// directory itself cannot be listed.
    pub fn load_dir(dir: &Path) -> std::io::Result<(ConfigSet, Vec<ConfigError>)> {
        let mut files: Vec<PathBuf> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
            if yaml && !name.starts_with('.') && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        let mut config = ConfigSet::default();
        let mut errors = Vec::new();
        for file in files {
            errors.extend(config.load_file(&file));
        }
        Ok((config, errors))
    }

    /// Loads one file into the set; returns the problems found in it.
    pub fn load_file(&mut self, file: &Path) -> Vec<ConfigError> {
        let io_error = |e: String| vec![ConfigError::new(file, ConfigErrorKind::Io(e))];
        match std::fs::metadata(file) {
            Ok(m) if m.len() > MAX_FILE_BYTES => {
                return io_error(format!("file is larger than {MAX_FILE_BYTES} bytes"));
            }
            Ok(_) => {}
            Err(e) => return io_error(e.to_string()),
        }
        match std::fs::read_to_string(file) {
            Ok(content) => self.parse_file(file, &content),
            Err(e) => io_error(e.to_string()),
        }
    }

    /// Parses the YAML documents of `content` (read from `file`) into the set; returns the
    /// problems found. Documents of kinds the loader does not read are skipped.
    pub fn parse_file(&mut self, file: &Path, content: &str) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut values = Vec::new();
        let mut syntax_error = false;
        for document in serde_yaml_ng::Deserializer::from_str(content) {
            match serde_yaml_ng::Value::deserialize(document) {
                Ok(value) => values.push(value),
                Err(e) => {
                    let line = e.location().map(|l| l.line());
                    let message = strip_location(&e.to_string());
                    errors.push(
                        ConfigError::new(file, ConfigErrorKind::Yaml(message)).with_line(line),
                    );
                    syntax_error = true;
                    break;
                }
            }
        }
        let starts = document_starts(content);
        let lines_known = !syntax_error && starts.len() == values.len();
        let documents = serde_yaml_ng::Deserializer::from_str(content)
            .zip(&values)
            .enumerate()
            .map(|(i, (typed, value))| Parsed {
                origin: file.to_owned(),
                line: if lines_known {
                    starts.get(i).copied()
                } else {
                    None
                },
                value,
                typed,
            })
            .collect();
        errors.extend(self.add_documents(documents));
        errors
    }

    /// Adds objects read from the Kubernetes API server to the set; returns the problems
    /// found. Each object is decoded exactly as a document of a file, and named
    /// `<kind> <namespace>/<name>` where a file name would be. Objects of kinds the loader does
    /// not read are skipped.
    pub fn add_objects(&mut self, objects: &[serde_yaml_ng::Value]) -> Vec<ConfigError> {
        let documents = objects
            .iter()
            .map(|value| Parsed {
                origin: PathBuf::from(describe(value)),
                line: None,
                value,
                typed: value,
            })
            .collect();
        self.add_documents(documents)
    }

    /// The one path from generic documents to typed objects, for every source: identifies
    /// each document (kind and name), then decodes the ones the loader reads into the set.
    /// A document with a problem is left out and reported; the others are kept.
    fn add_documents<'de, D>(&mut self, documents: Vec<Parsed<'_, D>>) -> Vec<ConfigError>
    where
        D: serde::Deserializer<'de, Error = serde_yaml_ng::Error>,
    {
        let mut errors = Vec::new();
        // First pass: identify each document (kind and name) from its generic value.
        let mut identified: Vec<Option<ObjectRef>> = Vec::with_capacity(documents.len());
        for document in &documents {
            match identify(document.value) {
                Ok(found) => identified.push(found),
                Err((object, field, kind)) => {
                    let mut error = ConfigError::new(&document.origin, kind)
                        .with_line(document.line)
                        .with_object(object);
                    if let Some(field) = field {
                        error = error.with_field(field);
                    }
                    self.reject_policy(document.value, &error);
                    errors.push(error);
                    identified.push(None);
                }
            }
        }

        // Second pass: typed decoding (from the text for files, for field paths and lines).
        for (document, object) in documents.into_iter().zip(identified) {
            let Some(object) = object else { continue };
            let Parsed {
                origin,
                line,
                value,
                typed,
            } = document;
            let source = Source {
                file: origin.clone(),
                line,
            };
            if let Some(first) = self.seen.get(&object) {
                let kind = ConfigErrorKind::Duplicate(first.display().to_string());
                errors.push(
                    ConfigError::new(&origin, kind)
                        .with_line(line)
                        .with_object(Some(object)),
                );
                continue;
            }
            let added = match object.kind {
                Kind::VirtualService => decode(typed, source, &mut self.virtual_services),
                Kind::DestinationRule => decode(typed, source, &mut self.destination_rules),
                Kind::ServiceEntry => decode(typed, source, &mut self.service_entries),
                Kind::HttpRoute => decode(typed, source, &mut self.http_routes),
                Kind::GrpcRoute => decode(typed, source, &mut self.grpc_routes),
                Kind::RequestAuthentication => {
                    decode(typed, source, &mut self.request_authentications)
                }
                Kind::AuthorizationPolicy => decode_policy(typed, source, self),
            };
            match added {
                Ok(()) => {
                    self.seen.insert(object, origin);
                }
                Err(error) => {
                    let error = error.into_config_error(&origin, object);
                    self.reject_policy(value, &error);
                    errors.push(error);
                }
            }
        }
        errors
    }
}

/// One document for [`ConfigSet::add_documents`].
struct Parsed<'a, D> {
    /// Where it was read: its file, or `<kind> <namespace>/<name>` for an API server object.
    origin: PathBuf,
    /// The 1-based line its document starts at, when known.
    line: Option<usize>,
    /// The document as a generic value.
    value: &'a serde_yaml_ng::Value,
    /// A deserializer of the same document, for the typed decoding.
    typed: D,
}

/// Names an object as `<kind> <namespace>/<name>` from whatever of those it has.
fn describe(value: &serde_yaml_ng::Value) -> String {
    let text = |v: Option<&serde_yaml_ng::Value>| {
        v.and_then(serde_yaml_ng::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let metadata = value.get("metadata");
    let kind = text(value.get("kind"));
    let namespace = text(metadata.and_then(|m| m.get("namespace")));
    let name = text(metadata.and_then(|m| m.get("name")));
    let kind = if kind.is_empty() {
        "object".to_owned()
    } else {
        kind
    };
    let namespace = if namespace.is_empty() {
        DEFAULT_NAMESPACE.to_owned()
    } else {
        namespace
    };
    format!("{kind} {namespace}/{name}")
}

impl ConfigSet {
    /// Keeps an AuthorizationPolicy that failed to load aside, with what can be read of its
    /// targets; other kinds are only reported.
    fn reject_policy(&mut self, document: &serde_yaml_ng::Value, error: &ConfigError) {
        let Some(object) = error
            .object
            .as_ref()
            .filter(|o| o.kind == Kind::AuthorizationPolicy)
        else {
            return;
        };
        let mut reason = String::new();
        if let Some(field) = &error.field {
            reason.push_str(field);
            reason.push_str(": ");
        }
        reason.push_str(&error.kind.to_string());
        self.rejected_authorization_policies.push(RejectedPolicy {
            object: object.clone(),
            source: Source {
                file: error.file.clone(),
                line: error.line,
            },
            attachment: Attachment::read(document),
            action: Action::read(document),
            reason,
        });
    }
}

/// Decodes an AuthorizationPolicy and checks what depends on its namespace.
fn decode_policy<'de, D: serde::Deserializer<'de, Error = serde_yaml_ng::Error>>(
    document: D,
    source: Source,
    config: &mut ConfigSet,
) -> Result<(), DecodeError> {
    let line = source.line;
    let mut decoded: Vec<Object<AuthorizationPolicySpec>> = Vec::with_capacity(1);
    decode(document, source, &mut decoded)?;
    for policy in decoded {
        if let Err((field, message)) = policy.spec.check_namespace(policy.namespace()) {
            return Err(DecodeError {
                field,
                line,
                message,
            });
        }
        config.authorization_policies.push(policy);
    }
    Ok(())
}

/// A typed decoding failure: field path, line, message.
struct DecodeError {
    field: String,
    line: Option<usize>,
    message: String,
}

impl DecodeError {
    fn into_config_error(self, file: &Path, object: ObjectRef) -> ConfigError {
        ConfigError::new(file, ConfigErrorKind::Invalid(self.message))
            .with_line(self.line)
            .with_object(Some(object))
            .with_field(self.field)
    }
}

fn decode<'de, S, D>(
    document: D,
    source: Source,
    into: &mut Vec<Object<S>>,
) -> Result<(), DecodeError>
where
    S: DeserializeOwned,
    D: serde::Deserializer<'de, Error = serde_yaml_ng::Error>,
{
    match serde_path_to_error::deserialize::<_, Document<S>>(document) {
        Ok(doc) => {
            let mut meta = doc.metadata;
            meta.namespace
                .get_or_insert_with(|| DEFAULT_NAMESPACE.to_owned());
            into.push(Object {
                meta,
                source,
                spec: doc.spec,
            });
            Ok(())
        }
        Err(e) => {
            let field = e.path().to_string();
            let inner = e.into_inner();
            let line = inner.location().map(|l| l.line()).or(source.line);
            let message = strip_path(&strip_location(&inner.to_string()), &field);
            Err(DecodeError {
                field,
                line,
                message,
            })
        }
    }
}

type IdentifyError = (Option<ObjectRef>, Option<&'static str>, ConfigErrorKind);

/// Reads `apiVersion`, `kind` and `metadata` of a document: `Ok(None)` for an empty document
/// or a kind the loader does not read.
fn identify(value: &serde_yaml_ng::Value) -> Result<Option<ObjectRef>, IdentifyError> {
    use serde_yaml_ng::Value;
    let map = match value {
        Value::Null => return Ok(None),
        Value::Mapping(map) => map,
        _ => return Err((None, None, ConfigErrorKind::NotAnObject)),
    };
    let text = |key: &str| map.get(key).and_then(Value::as_str);
    let Some(api_version) = text("apiVersion") else {
        return Err((None, Some("apiVersion"), ConfigErrorKind::MissingField));
    };
    let Some(kind_name) = text("kind") else {
        return Err((None, Some("kind"), ConfigErrorKind::MissingField));
    };
    let metadata = map.get("metadata");
    let name = metadata
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let namespace = metadata
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_NAMESPACE);
    let object = |kind| ObjectRef {
        kind,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    };
    let object = match Kind::from_type(api_version, kind_name) {
        None => return Ok(None),
        Some(Ok(kind)) => object(kind),
        Some(Err(kind)) => {
            let unsupported = ConfigErrorKind::UnsupportedVersion {
                api_version: api_version.to_owned(),
                kind: kind_name.to_owned(),
            };
            return Err((Some(object(kind)), Some("apiVersion"), unsupported));
        }
    };
    if name.is_empty() {
        return Err((
            Some(object),
            Some("metadata.name"),
            ConfigErrorKind::MissingField,
        ));
    }
    Ok(Some(object))
}

/// Removes the ` at line L column C` suffix of a `serde_yaml_ng` message (the line is
/// reported separately).
fn strip_location(message: &str) -> String {
    if let Some(at) = message.rfind(" at line ") {
        let tail = &message[at + " at line ".len()..];
        let mut parts = tail.splitn(2, " column ");
        let numeric = |s: Option<&str>| {
            s.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        };
        if numeric(parts.next()) && numeric(parts.next()) {
            return message[..at].to_owned();
        }
    }
    message.to_owned()
}

/// Removes the path prefix `serde_yaml_ng` puts on a message (`spec.http[0]: …`) when it is
/// part of the field path reported separately.
fn strip_path(message: &str, field: &str) -> String {
    if let Some((prefix, rest)) = message.split_once(": ")
        && !prefix.is_empty()
        && !prefix.contains(' ')
        && field.starts_with(prefix)
    {
        return rest.to_owned();
    }
    message.to_owned()
}

/// The 1-based first line of each YAML document of `content`, as libyaml splits them: an
/// explicit `---` always starts a document, content outside a document starts an implicit one,
/// `...` ends one. Used only when its count agrees with the parser's.
fn document_starts(content: &str) -> Vec<usize> {
    let is_marker = |line: &str, marker: &str| {
        line.strip_prefix(marker)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
    };
    let is_content = |line: &str| {
        let trimmed = line.trim_start();
        !trimmed.is_empty() && !trimmed.starts_with('#') && !line.starts_with('%')
    };
    let mut starts = Vec::new();
    // `open`: the current document's start is recorded. `pending`: a `---` was seen on this
    // line and the document's first content line is still to come.
    let mut open = false;
    let mut pending: Option<usize> = None;
    for (i, line) in content.lines().enumerate() {
        let number = i + 1;
        if is_marker(line, "---") {
            if let Some(marker) = pending.take() {
                starts.push(marker);
            }
            if is_content(&line[3..]) {
                starts.push(number);
                open = true;
            } else {
                pending = Some(number);
                open = false;
            }
        } else if is_marker(line, "...") {
            if let Some(marker) = pending.take() {
                starts.push(marker);
            }
            open = false;
        } else if is_content(line) && !open {
            pending = None;
            starts.push(number);
            open = true;
        }
    }
    if let Some(marker) = pending {
        starts.push(marker);
    }
    starts
}
