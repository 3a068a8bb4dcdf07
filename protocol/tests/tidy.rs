//! Tidy checks (after rust-analyzer's `tidy.rs`): cheap tests that keep the
//! workspace's layering and habits true as it grows.

use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("protocol/ sits in the workspace root")
        .to_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target" && !name.to_string_lossy().starts_with('.') {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn workspace_rust_files() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut files = Vec::new();
    for dir in ["protocol", "actors", "node", "simulations", "tests"] {
        if root.join(dir).exists() {
            rust_files(&root.join(dir), &mut files);
        }
    }
    assert!(files.len() > 5, "found the workspace's sources");
    files
}

#[test]
fn protocol_depends_on_no_runtime_socket_or_git_crate() {
    let manifest = std::fs::read_to_string(workspace_root().join("protocol/Cargo.toml")).unwrap();
    let forbidden = [
        "actix",
        "tokio",
        "quinn",
        "rustls",
        "git2",
        "mio",
        "async-std",
        "socket2",
        "mdns-sd",
        "mainline",
        "gstreamer",
    ];
    for line in manifest.lines().map(str::trim) {
        let name = line.split(['=', '.', ' ']).next().unwrap_or("");
        assert!(
            !forbidden.contains(&name),
            "protocol/Cargo.toml must stay sans-I/O but depends on {name}"
        );
    }
}

#[test]
fn every_rust_file_starts_with_a_module_doc() {
    for file in workspace_rust_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        assert!(
            first.starts_with("//!"),
            "{} must open with a `//!` doc saying what it is",
            file.display()
        );
    }
}

#[test]
fn no_placeholders_in_the_code() {
    let needles = [
        concat!("todo", "!("),
        concat!("unimplemented", "!("),
        concat!("FIX", "ME"),
    ];
    for file in workspace_rust_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for needle in needles {
            assert!(
                !text.contains(needle),
                "{} contains {needle}: finish it or file an issue",
                file.display()
            );
        }
    }
}
