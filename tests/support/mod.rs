//! Helpers shared by the process-level tests: running the `starling` binary
//! and a `starling up` daemon that is killed on drop.

// Each test target uses a different subset of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a daemon may take to publish run.json or to stop.
const STARTUP_DEADLINE: Duration = Duration::from_secs(20);

/// Runs `starling --data-dir DIR ARGS…` with no ambient configuration.
pub fn starling(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_starling"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("STARLING_DATA_DIR")
        .env_remove("STARLING_API")
        .env_remove("STARLING_LISTEN")
        .env_remove("STARLING_PEERS")
        .output()
        .expect("the starling binary runs")
}

/// A running daemon; killed on drop so a failing test leaves no process behind.
pub struct Daemon {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub api: String,
    pub token: String,
}

impl Daemon {
    /// Starts `starling up` on free loopback ports and waits for run.json.
    pub fn start(data_dir: &Path) -> Daemon {
        let child = Command::new(env!("CARGO_BIN_EXE_starling"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(["up", "--api", "127.0.0.1:0", "--listen", "127.0.0.1:0"])
            // Loopback daemons need no discovery, and tests never touch the public DHT.
            .args(["--no-mdns", "--no-dht"])
            .env_remove("STARLING_API")
            .env_remove("STARLING_DATA_DIR")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starling up starts");
        let run_file = data_dir.join("run.json");
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let run: Value = loop {
            if let Some(run) = std::fs::read_to_string(&run_file)
                .ok()
                .and_then(|s| serde_json::from_str(&s).ok())
            {
                break run;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not publish run.json in time"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(run["pid"], child.id());
        let token = std::fs::read_to_string(data_dir.join("api.token"))
            .unwrap()
            .trim()
            .to_owned();
        Daemon {
            child: Some(child),
            data_dir: data_dir.to_owned(),
            api: run["api"].as_str().unwrap().to_owned(),
            token,
        }
    }

    /// `GET path`, with the bearer token if given: (status, body).
    pub fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut request =
            ureq::get(&format!("{}{path}", self.api)).timeout(Duration::from_secs(10));
        if let Some(token) = token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        match request.call() {
            Ok(response) => (response.status(), response.into_string().unwrap()),
            Err(ureq::Error::Status(code, response)) => (code, response.into_string().unwrap()),
            Err(other) => panic!("GET {path}: {other}"),
        }
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it succeeded.
    pub fn terminate(mut self) -> bool {
        let mut child = self.child.take().unwrap();
        let kill = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the daemon did not stop within {STARTUP_DEADLINE:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Asserts success and parses stdout as JSON.
pub fn json(output: Output) -> Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}
