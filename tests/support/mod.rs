//! Helpers shared by the process-level tests: running the `starling` binary,
//! a `starling up` daemon that is killed on drop ([`Daemon`] for one,
//! [`node::Node`] for several that talk to each other), and bounded waits.

// Each test target uses a different subset of these helpers.
#![allow(dead_code)]

pub mod node;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a daemon may take to publish run.json or to stop.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(20);
/// How long a message, an invitation, a contact request or an event may take
/// to reach another daemon on loopback: generous, since several daemons share
/// two cores with the debug build.
pub const SYNC_DEADLINE: Duration = Duration::from_secs(60);

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
        let pid = child.id();
        // Owned before the wait, so a daemon that never comes up is killed too.
        let mut daemon = Daemon {
            child: Some(child),
            data_dir: data_dir.to_owned(),
            api: String::new(),
            token: String::new(),
        };
        let run = wait_for_run(data_dir, pid, "the daemon");
        daemon.api = run["api"].as_str().unwrap().to_owned();
        daemon.token = read_token(data_dir);
        daemon
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
        sigterm_and_wait(&mut child, "the daemon").success()
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

/// Polls `check` until it returns `Some`, and fails after [`SYNC_DEADLINE`]:
/// daemons sync in the background, so a test waits for what a user would
/// see, and something that never arrives fails the test instead of hanging it.
pub fn wait_for<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    wait_within(SYNC_DEADLINE, Duration::from_millis(100), what, check)
}

/// [`wait_for`] with its own deadline, checking every `poll`.
pub fn wait_within<T>(
    deadline: Duration,
    poll: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(started.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(poll);
    }
}

/// Waits for the run.json of the daemon with process id `pid` in `data_dir`:
/// it is written once the API listens, so the daemon can be used from then on.
fn wait_for_run(data_dir: &Path, pid: u32, who: &str) -> Value {
    let run_file = data_dir.join("run.json");
    let deadline = Instant::now() + STARTUP_DEADLINE;
    loop {
        if let Some(run) = std::fs::read_to_string(&run_file)
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .filter(|run| run["pid"] == pid)
        {
            return run;
        }
        assert!(
            Instant::now() < deadline,
            "{who} did not publish run.json in time"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The API token the daemon in `data_dir` wrote at start-up.
fn read_token(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("api.token"))
        .unwrap()
        .trim()
        .to_owned()
}

/// Sends SIGTERM, as an operator or systemd would, and waits for the exit; a
/// daemon that ignores it is killed and the test fails.
fn sigterm_and_wait(child: &mut Child, who: &str) -> ExitStatus {
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + STARTUP_DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{who} did not stop within {STARTUP_DEADLINE:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
