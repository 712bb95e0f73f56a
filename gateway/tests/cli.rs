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
