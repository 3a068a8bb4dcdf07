//! An interrupted `starling-sim` removes its nodes' data (on a tmpfs it
//! would hold RAM) and exits with 130.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn run_dirs(root: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(root)
        .map(|dir| dir.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn an_interrupted_run_removes_its_node_data() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_starling-sim"))
        .args([
            "run",
            "internet-shutdown",
            "--nodes-per-group",
            "2",
            "--quiet",
        ])
        .arg("--out")
        .arg(out.path())
        .env("STARLING_SIM_DATA", data.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Interrupt once nodes have written repositories.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !run_dirs(data.path())
        .iter()
        .any(|run| run.join("nodes").is_dir())
    {
        assert!(Instant::now() < deadline, "no node data within 60 s");
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running 30 s after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130));
    assert_eq!(run_dirs(data.path()), Vec::<std::path::PathBuf>::new());
}
