//! Secrets kept out of the configuration file: the `*_file` fields.
//!
//! These secrets can sit inline in the file: an uplink's SASL `password`,
//! an HTTP `token`, an MQTT user's `password_hash`, and a Kafka user's
//! `password_hash`, `scram_sha_256` and `scram_sha_512`. Each has a `*_file`
//! twin (`password_file`, `token_file`, `password_hash_file`, ...) naming a file
//! that holds it instead, so the configuration itself holds nothing secret
//! and may be readable by the service's user.
//!
//! - A relative name is looked up in `$CREDENTIALS_DIRECTORY` when that is
//!   set (systemd's `LoadCredential=`: `password_file = "kafka-password"`
//!   reads the credential of that name), else in the current directory; an
//!   absolute path is read as it is.
//! - The file's content is the secret, without the line break(s) at its end
//!   (`echo secret > file` works); an empty secret is an error.
//! - [`Config::load`] reads the files (after the file's own rules hold) and
//!   fills the inline field, so the rest of sluice sees one value.
//!   [`Config::from_toml_str`] reads nothing: secrets given by file are
//!   checked for their sources only.
//! - [`permission_warnings`] (printed by `sluice check-config` and at start)
//!   names each secret file, and a configuration holding inline secrets,
//!   that users other than the owner and group may read.

use std::path::{Path, PathBuf};

use crate::error::{entry_labels, FieldError};
use crate::Config;

/// The environment variable systemd sets to the unit's credentials.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// One secret of the configuration: where it is and where it came from.
struct Secret<'a> {
    /// Field path of the inline value, e.g. `http.tokens[0].token`.
    field: String,
    /// The inline value (after [`resolve`], also a value read from a file).
    value: &'a mut String,
    /// The `*_file` field, if given.
    file: Option<&'a Path>,
}

/// Every secret of `cfg`, in file order. `http.tokens[].token` is an
/// `Option`: absent, it is read into a fresh string only when a file names
/// it, so the caller passes the slot.
fn secrets(cfg: &mut Config) -> Vec<Secret<'_>> {
    let mut out = Vec::new();
    let users = entry_labels("mqtt.users", cfg.mqtt.users.iter().map(|u| Some(u.name.as_str())));
    for (u, label) in cfg.mqtt.users.iter_mut().zip(users) {
        out.push(Secret {
            field: format!("{label}.password_hash"),
            value: &mut u.password_hash,
            file: u.password_hash_file.as_deref(),
        });
    }
    for (field, value, file) in crate::kafka_auth::secrets(&mut cfg.kafka.users) {
        out.push(Secret { field, value, file });
    }
    for (i, t) in cfg.http.tokens.iter_mut().enumerate() {
        let file = t.token_file.as_deref();
        if t.token.is_none() && file.is_none() {
            continue;
        }
        out.push(Secret {
            field: format!("http.tokens[{i}].token"),
            value: t.token.get_or_insert_with(String::new),
            file,
        });
    }
    let uplinks = entry_labels("uplink", cfg.uplinks.iter().map(|u| Some(u.name.as_str())));
    for (u, label) in cfg.uplinks.iter_mut().zip(uplinks) {
        if let Some(sasl) = &mut u.sasl {
            out.push(Secret {
                field: format!("{label}.sasl.password"),
                value: &mut sasl.password,
                file: sasl.password_file.as_deref(),
            });
        }
    }
    out
}

/// Problems of where the secrets come from: a secret given both inline and
/// by file, or a token given by file and by hash.
pub(crate) fn source_problems(cfg: &Config) -> Vec<FieldError> {
    let mut cfg = cfg.clone();
    let mut out: Vec<FieldError> = secrets(&mut cfg)
        .into_iter()
        .filter(|s| s.file.is_some() && !s.value.is_empty())
        .map(|s| FieldError {
            message: format!("give {} or {}_file, not both", last(&s.field), last(&s.field)),
            field: format!("{}_file", s.field),
        })
        .collect();
    for (i, t) in cfg.http.tokens.iter().enumerate() {
        if t.token_file.is_some() && t.token_hash.is_some() {
            out.push(FieldError {
                field: format!("http.tokens[{i}].token_file"),
                message: "give token_file or token_hash, not both".into(),
            });
        }
    }
    out
}

fn last(field: &str) -> &str {
    field.rsplit('.').next().unwrap_or(field)
}

/// Where a `*_file` name is read from: relative to `credentials` (the
/// value of `$CREDENTIALS_DIRECTORY`) when given.
pub fn secret_path(file: &Path, credentials: Option<&Path>) -> PathBuf {
    match credentials {
        Some(dir) if file.is_relative() => dir.join(file),
        _ => file.to_owned(),
    }
}

/// Reads every `*_file` secret into its inline field; one problem per file
/// that cannot be read or is empty, naming the `*_file` field.
pub(crate) fn resolve(cfg: &mut Config, credentials: Option<&Path>) -> Vec<FieldError> {
    let mut out = Vec::new();
    for s in secrets(cfg) {
        let Some(file) = s.file else { continue };
        let path = secret_path(file, credentials);
        let field = format!("{}_file", s.field);
        let from = match credentials {
            Some(dir) if file.is_relative() => format!(" ({CREDENTIALS_DIRECTORY} is {})", dir.display()),
            _ => String::new(),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let secret = text.trim_end_matches(['\n', '\r']);
                if secret.is_empty() {
                    out.push(FieldError { field, message: format!("{} is empty{from}", path.display()) });
                } else {
                    *s.value = secret.to_owned();
                }
            }
            Err(e) => {
                out.push(FieldError { field, message: format!("cannot read {}: {e}{from}", path.display()) })
            }
        }
    }
    // A token whose file could not be read is absent again (not empty),
    // so validation does not report it twice.
    for t in &mut cfg.http.tokens {
        if t.token_file.is_some() && t.token.as_deref() == Some("") {
            t.token = None;
        }
    }
    out
}

/// Warnings about secrets others may read: each `*_file` that is readable
/// by users other than its owner and group, and `config_path` when it holds
/// inline secrets and is. Files that cannot be examined are not reported
/// (loading already named them).
pub fn permission_warnings(cfg: &Config, config_path: &Path, credentials: Option<&Path>) -> Vec<String> {
    let mut cfg = cfg.clone();
    let mut out = Vec::new();
    let mut inline = Vec::new();
    for s in secrets(&mut cfg) {
        match s.file {
            Some(file) => {
                let path = secret_path(file, credentials);
                if let Some(mode) = world_readable(&path) {
                    out.push(format!(
                        "{}_file: {} is readable by every user (mode {mode:04o}); `chmod o-r` it, or pass it \
                         as a systemd credential (LoadCredential=)",
                        s.field,
                        path.display()
                    ));
                }
            }
            None => inline.push(s.field),
        }
    }
    if !inline.is_empty() {
        if let Some(mode) = world_readable(config_path) {
            out.push(format!(
                "{} holds secrets inline ({}) and is readable by every user (mode {mode:04o}); move them to \
                 *_file fields, `chmod o-r` the file, or pass it as a systemd credential (LoadCredential=)",
                config_path.display(),
                inline.join(", ")
            ));
        }
    }
    out
}

/// The permission bits of `path` when others may read it.
#[cfg(unix)]
fn world_readable(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o004 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn world_readable(_path: &Path) -> Option<u32> {
    None
}
