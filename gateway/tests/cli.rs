//! The command line: check-config and start-up failures.
#![allow(clippy::unwrap_used)]

mod common;

use common::sluice;

/// (The full example names TLS files under /etc/sluice: tests/tls.rs
/// checks it with real files in their place.)
#[test]
fn check_config_accepts_the_minimal_example() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/examples/minimal.toml");
    let (ok, err) = sluice(&["check-config", path]);
    assert!(ok, "{err}");
    assert!(err.contains("ok"), "{err}");
}

#[test]
fn check_config_names_the_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[[service]]\nname = \"a\"\nweight = 0\n", "weight"),
        ("[[service]]\nname = \"a\"\nwieght = 2\n", "wieght"),
        ("[store]\nmax_bytes = \"lots\"\n", "max_bytes"),
        ("[[topic]]\nname = \"t\"\nservice = \"nope\"\n", "nope"),
        ("[[topic]]\nname = \"bad name\"\n", "bad name"),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let (ok, err) = sluice(&["check-config", path.to_str().unwrap()]);
        assert!(!ok, "{text} should be refused");
        assert!(err.contains(needle), "error for {text:?} should name {needle:?}: {err}");
    }
    let (ok, err) = sluice(&["check-config", "/nonexistent/sluice.toml"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/sluice.toml"), "{err}");
}

#[test]
fn unusable_data_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let (ok, err) = sluice(&["run", "--data-dir", file.to_str().unwrap(), "--http-listen", "127.0.0.1:0"]);
    assert!(!ok);
    assert!(err.contains("not-a-dir"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // Garbage where sled's files are.
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("log")).unwrap();
    std::fs::write(data.join("log/conf"), b"\xff\xfe garbage").unwrap();
    std::fs::write(data.join("log/db"), vec![0xAB; 4096]).unwrap();
    let (ok, err) = sluice(&["run", "--data-dir", data.to_str().unwrap(), "--http-listen", "127.0.0.1:0"]);
    assert!(!ok, "corrupt store must not start");
    assert!(err.contains("log"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// `check-config` under systemd credentials: relative `*_file` names are
/// read from `$CREDENTIALS_DIRECTORY`; a missing one names its field; a
/// secret file or a config with inline secrets that every user may read
/// is warned about, and the check still passes.
#[test]
fn check_config_reads_secret_files_and_warns_about_readable_ones() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    let token = creds.join("secret_http-token");
    std::fs::write(&token, "0123456789abcdef-token\n").unwrap();
    let mode = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let config = dir.path().join("sluice.toml");
    let check = |text: &str| {
        std::fs::write(&config, text).unwrap();
        mode(&config, 0o644);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["check-config", config.to_str().unwrap()])
            .env("CREDENTIALS_DIRECTORY", &creds)
            .env("SLUICE_LOG", "off")
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let by_file = "[[http.tokens]]\ntoken_file = \"secret_http-token\"\nadmin = true\n";

    mode(&token, 0o400);
    let (ok, err) = check(by_file);
    assert!(ok && !err.contains("warning"), "{err}");
    mode(&token, 0o644);
    let (ok, err) = check(by_file);
    assert!(ok, "{err}");
    let warning = format!(
        "warning: http.tokens[0].token_file: {} is readable by every user (mode 0644)",
        token.display()
    );
    assert!(err.contains(&warning), "{err}");

    let (ok, err) = check(&by_file.replace("secret_http-token", "secret_missing"));
    assert!(!ok);
    assert!(err.contains("http.tokens[0].token_file: cannot read "), "{err}");
    assert!(err.contains("secret_missing: No such file or directory"), "{err}");

    let (ok, err) = check("[[http.tokens]]\ntoken = \"0123456789abcdef-token\"\nadmin = true\n");
    assert!(ok, "{err}");
    assert!(
        err.contains("holds secrets inline (http.tokens[0].token) and is readable by every user"),
        "{err}"
    );
}

/// A process whose open-files limit cannot hold `mqtt.max_connections`
/// (4 descriptors a connection) says so at start, naming the setting.
#[test]
fn a_too_low_open_files_limit_is_a_warning_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let log = dir.path().join("stderr");
    let mut child = std::process::Command::new("sh")
        .args(["-c", "ulimit -n 1500 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--data-dir"])
        .arg(&data)
        .args(["--http-listen", "127.0.0.1:0", "--mqtt-listen", "127.0.0.1:0"])
        .env("SLUICE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !data.join("listen.json").exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "sluice exited: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        assert!(std::time::Instant::now() < deadline, "sluice never listened");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(
        stderr.contains("open files limit") && stderr.contains("mqtt.max_connections = 1000"),
        "a warning naming the limit and the setting: {stderr}"
    );
}
