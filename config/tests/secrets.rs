//! `*_file` secrets (`password_file`, `token_file`, `password_hash_file`):
//! read by `Config::load`, relative names in the credentials directory,
//! errors that name the field, and the warnings about files others may
//! read.
#![allow(clippy::unwrap_used)]

use sluice_config::secrets::permission_warnings;
use sluice_config::{Config, ConfigError};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

const HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// A config with one MQTT user, one token and one SASL uplink; the
/// arguments are their secret lines (user, token) and SASL fields.
fn config(user: &str, token: &str, sasl: &str) -> String {
    format!(
        r#"
[[mqtt.users]]
name = "sensor"
{user}
[[http.tokens]]
{token}
services = ["*"]
produce = true
[[uplink]]
name = "central"
kind = "kafka"
brokers = ["kafka-1:9092"]
sasl = {{ mechanism = "scram-sha-512", username = "edge", {sasl} }}
"#
    )
}

fn by_file() -> String {
    config("password_hash_file = \"mqtt-hash\"", "token_file = \"http-token\"", "password_file = \"kafka\"")
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn problems(e: ConfigError) -> Vec<String> {
    e.problems().iter().map(ToString::to_string).collect()
}

#[test]
fn secrets_are_read_from_the_credentials_directory() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    write(&creds.join("mqtt-hash"), &format!("{HASH}\n"), 0o400);
    write(&creds.join("http-token"), "0123456789abcdef-token\r\n", 0o400);
    write(&creds.join("kafka"), "kafka secret", 0o400);
    let file = dir.path().join("sluice.toml");
    write(&file, &by_file(), 0o644);

    let cfg = Config::load_with_credentials(&file, Some(&creds)).unwrap();
    assert_eq!(cfg.mqtt.users[0].password_hash, HASH);
    assert_eq!(cfg.http.tokens[0].token.as_deref(), Some("0123456789abcdef-token"));
    assert_eq!(cfg.uplinks[0].sasl.as_ref().unwrap().password, "kafka secret");
    assert!(!format!("{cfg:?}").contains("kafka secret"), "Debug shows the password");
    // Nothing secret in the file and every secret file private: no warning.
    assert_eq!(permission_warnings(&cfg, &file, Some(&creds)), Vec::<String>::new());

    // An absolute path is read as it is, with or without the directory.
    let absolute =
        by_file().replace("password_file = \"kafka\"", &format!("password_file = {:?}", creds.join("kafka")));
    write(&file, &absolute, 0o644);
    let elsewhere = dir.path().join("elsewhere");
    let err = Config::load_with_credentials(&file, Some(&elsewhere)).unwrap_err();
    let p = problems(err);
    assert!(p.iter().all(|m| !m.starts_with("uplink[\"central\"]")), "{p:?}");
    assert!(p[0].starts_with("mqtt.users[\"sensor\"].password_hash_file: cannot read "), "{p:?}");
    assert!(p[0].contains(&format!("(CREDENTIALS_DIRECTORY is {})", elsewhere.display())), "{p:?}");

    // from_toml_str reads nothing and accepts secrets given by file.
    let cfg = Config::from_toml_str(&by_file()).unwrap();
    assert_eq!(cfg.http.tokens[0].token, None);
}

#[test]
fn bad_secret_sources_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    let load = |text: &str| {
        write(&file, text, 0o600);
        problems(Config::load_with_credentials(&file, Some(dir.path())).expect_err(text))
    };
    let both = config(
        &format!("password_hash = \"{HASH}\"\npassword_hash_file = \"h\""),
        "token = \"0123456789abcdef-token\"\ntoken_file = \"t\"",
        "password = \"p\", password_file = \"k\"",
    );
    assert_eq!(
        load(&both),
        [
            "mqtt.users[\"sensor\"].password_hash_file: give password_hash or password_hash_file, not both",
            "http.tokens[0].token_file: give token or token_file, not both",
            "uplink[\"central\"].sasl.password_file: give password or password_file, not both",
        ]
    );

    // Missing, empty, and too short once read; nothing given at all.
    write(&dir.path().join("empty"), "\n", 0o600);
    write(&dir.path().join("short"), "short\n", 0o600);
    let p = load(&config(
        "password_hash_file = \"missing\"",
        "token_file = \"short\"",
        "password_file = \"empty\"",
    ));
    assert_eq!(p.len(), 3, "{p:?}");
    assert!(p[0].starts_with("mqtt.users[\"sensor\"].password_hash_file: cannot read "), "{p:?}");
    assert!(p[0].contains("missing: No such file or directory"), "{p:?}");
    assert_eq!(
        p[1],
        format!(
            "uplink[\"central\"].sasl.password_file: {} is empty (CREDENTIALS_DIRECTORY is {})",
            dir.path().join("empty").display(),
            dir.path().display()
        )
    );
    assert!(p[2].starts_with("http.tokens[0].token: is too short"), "{p:?}");
    let p = problems(Config::from_toml_str(&config("", "", "password = \"\"")).unwrap_err());
    for missing in [
        "mqtt.users[\"sensor\"].password_hash: is missing: give password_hash or password_hash_file",
        "http.tokens[0].token: is missing: give token, token_file or token_hash",
        "uplink[\"central\"].sasl.password: is missing: give password or password_file",
    ] {
        assert!(p.iter().any(|m| m == missing), "{missing} not in {p:?}");
    }
}

#[test]
fn secrets_readable_by_others_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("mqtt-hash"), HASH, 0o644);
    write(&dir.path().join("http-token"), "0123456789abcdef-token", 0o600);
    write(&dir.path().join("kafka"), "kafka secret", 0o604);
    let file = dir.path().join("sluice.toml");
    write(&file, &by_file(), 0o644);
    let cfg = Config::load_with_credentials(&file, Some(dir.path())).unwrap();
    let warnings = permission_warnings(&cfg, &file, Some(dir.path()));
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].starts_with(&format!(
            "mqtt.users[\"sensor\"].password_hash_file: {} is readable by every user (mode 0644)",
            dir.path().join("mqtt-hash").display()
        )),
        "{warnings:?}"
    );
    assert!(warnings[1].starts_with("uplink[\"central\"].sasl.password_file: "), "{warnings:?}");

    // Inline secrets in a world-readable file; not once it is private.
    let inline = config(
        &format!("password_hash = \"{HASH}\""),
        "token = \"0123456789abcdef-token\"",
        "password = \"p\"",
    );
    write(&file, &inline, 0o644);
    let cfg = Config::load_with_credentials(&file, None).unwrap();
    let warnings = permission_warnings(&cfg, &file, None);
    assert_eq!(
        warnings,
        [format!(
            "{} holds secrets inline (mqtt.users[\"sensor\"].password_hash, http.tokens[0].token, \
             uplink[\"central\"].sasl.password) and is readable by every user (mode 0644); move them to *_file \
             fields, `chmod o-r` the file, or pass it as a systemd credential (LoadCredential=)",
            file.display()
        )]
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(permission_warnings(&cfg, &file, None), Vec::<String>::new());
}
