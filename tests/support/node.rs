//! [`Node`]: a named `starling up` daemon for the tests that run several at
//! once, on loopback or inside a network namespace, driven through its CLI and
//! its API like a user's client would.

use std::fs::OpenOptions;
use std::net::UdpSocket;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{json, read_token, sigterm_and_wait, starling, wait_for_run};

/// How long one API call may take: a stuck daemon fails the test rather than
/// hanging it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The library of Debian's `faketime` package (its thread-safe variant when
/// installed), if it is. Tests preload it themselves rather than run the
/// `faketime` wrapper, which forks: the daemon's pid would not be the
/// child's, and SIGTERM to the wrapper would not reach the daemon.
pub fn libfaketime() -> Option<PathBuf> {
    let mut dirs = vec![PathBuf::from("/usr/lib/faketime")];
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        dirs.extend(entries.flatten().map(|e| e.path().join("faketime")));
    }
    ["libfaketimeMT.so.1", "libfaketime.so.1"]
        .iter()
        .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
        .find(|path| path.is_file())
}

/// The environment that makes a process's wall clock run `offset` (e.g.
/// `+20m`, `-1d`) from the machine's: only the wall clock, as on a device
/// whose clock is wrong; monotonic clocks stay true.
pub fn faketime_env(library: &Path, offset: &str) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".into(), library.display().to_string()),
        ("FAKETIME".into(), offset.into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

/// A UDP port free right now on loopback (the daemon binds it a moment later).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A daemon with its own data dir and account, which a test starts, stops and
/// restarts; killed on drop, and on a failing test its log's tail is printed,
/// since that is usually where the reason is.
pub struct Node {
    pub name: &'static str,
    pub dir: PathBuf,
    pub account_id: String,
    pub device_id: String,
    /// The QUIC address given to `--listen`; fixed at creation so that peers
    /// can be told it before the node first starts, and it keeps it across
    /// restarts.
    pub listen: String,
    /// The network namespace its processes run in (`ip netns exec`); `None`
    /// for the host's loopback.
    pub netns: Option<String>,
    /// A wall-clock offset its processes run with, in libfaketime's syntax
    /// (`+20m`, `-1d`; see [`libfaketime`]); `None` for the machine's clock.
    /// The account is created before, with the real clock.
    pub faketime: Option<String>,
    /// Base URL of the API and its bearer token, as of the last start.
    pub api: String,
    pub token: String,
    child: Option<Child>,
}

impl Node {
    /// A node with a new account that will listen on a free loopback port.
    pub fn create(root: &Path, name: &'static str) -> Node {
        Node::new(root, name, format!("127.0.0.1:{}", free_udp_port()), None)
    }

    /// A node with a new account whose daemon and CLI run inside namespace
    /// `ns`, listening on `port` on all of its addresses.
    pub fn create_in_netns(root: &Path, name: &'static str, ns: &str, port: u16) -> Node {
        Node::new(root, name, format!("0.0.0.0:{port}"), Some(ns.to_owned()))
    }

    fn new(root: &Path, name: &'static str, listen: String, netns: Option<String>) -> Node {
        let dir = root.join(name);
        // Creating an account needs no network, so it runs on the host.
        json(starling(
            &dir,
            &["--json", "account", "create", "--display-name", name],
        ));
        let shown = json(starling(&dir, &["--json", "account", "show"]));
        Node {
            name,
            dir,
            account_id: shown["account_id"].as_str().unwrap().to_owned(),
            device_id: shown["device_id"].as_str().unwrap().to_owned(),
            listen,
            netns,
            faketime: None,
            api: String::new(),
            token: String::new(),
            child: None,
        }
    }

    /// `ACCOUNT@HOST:PORT`, as another node's static peer list takes it.
    pub fn peer_addr(&self) -> String {
        format!("{}@{}", self.account_id, self.listen)
    }

    /// `starling --data-dir DIR`, in the node's namespace if it has one and
    /// under its fake clock if it has one, with no ambient configuration from
    /// the environment the tests run in.
    fn command(&self) -> Command {
        let starling = env!("CARGO_BIN_EXE_starling");
        let mut command = match &self.netns {
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns, starling]);
                command
            }
            None => Command::new(starling),
        };
        if let Some(offset) = &self.faketime {
            let library = libfaketime().expect("a node with a fake clock needs libfaketime");
            command.envs(faketime_env(&library, offset));
        }
        command.arg("--data-dir").arg(&self.dir);
        for variable in [
            "STARLING_DATA_DIR",
            "STARLING_API",
            "STARLING_LISTEN",
            "STARLING_PEERS",
            "STARLING_MDNS",
            "STARLING_DHT",
            "STARLING_DHT_BOOTSTRAP",
        ] {
            command.env_remove(variable);
        }
        command
    }

    /// Starts `starling up` with `peers` as its static peers and `args` added
    /// to its command line, and waits until it serves its API.
    pub fn start(&mut self, peers: &[String], args: &[&str]) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        // Appended, so that after a restart the log still shows what the
        // earlier run did.
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .unwrap();
        let mut command = self.command();
        command
            .args(["up", "--api", "127.0.0.1:0", "--listen", &self.listen])
            .args(args)
            .env("STARLING_PEERS", peers.join(","))
            .env("STARLING_LOG", "info,mdns_sd=warn,mainline=warn")
            .stdout(Stdio::null())
            .stderr(log);
        if self.netns.is_none() {
            // On the host, peers are static: discovery would reach the real
            // LAN and the public DHT. In a namespace, discovery is what the
            // test is about, and `args` choose it.
            command
                .env("STARLING_MDNS", "false")
                .env("STARLING_DHT", "false");
        }
        let child = command.spawn().expect("starling up starts");
        let pid = child.id();
        // Owned before the wait, so a daemon that never comes up is killed too.
        self.child = Some(child);
        let run = wait_for_run(&self.dir, pid, self.name);
        assert_eq!(
            run["listen"],
            self.listen.as_str(),
            "{}'s listen",
            self.name
        );
        self.api = run["api"].as_str().unwrap().to_owned();
        self.token = read_token(&self.dir);
    }

    /// Stops the daemon with SIGTERM, as an operator would, and requires a
    /// clean exit: shutdown is part of what is tested.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        let status = sigterm_and_wait(&mut child, self.name);
        assert!(status.success(), "{} exited with {status}", self.name);
    }

    /// Kills the daemon with SIGKILL, as a crash or an OOM killer would,
    /// and reaps it.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL is sent");
        child.wait().expect("the killed daemon is reaped");
    }

    /// Runs `starling --json ARGS…`: its JSON output, or its stderr if it
    /// failed, for tests of what the CLI refuses.
    pub fn try_cli(&self, args: &[&str]) -> Result<Value, String> {
        let output = self
            .command()
            .arg("--json")
            .args(args)
            .output()
            .expect("starling runs");
        if output.status.success() {
            Ok(serde_json::from_slice(&output.stdout).expect("--json prints JSON"))
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// Runs `starling ARGS…` for its text output (what a person reads),
    /// which must succeed.
    pub fn cli_text(&self, args: &[&str]) -> String {
        let output = self.command().args(args).output().expect("starling runs");
        assert!(
            output.status.success(),
            "{} {args:?}: {}",
            self.name,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("text output is UTF-8")
    }

    /// Runs `starling --json ARGS…`, which must succeed.
    pub fn cli(&self, args: &[&str]) -> Value {
        self.try_cli(args)
            .unwrap_or_else(|stderr| panic!("{} {args:?}: {stderr}", self.name))
    }

    /// The `id` field of what `starling --json ARGS…` prints, for the commands
    /// that write something (create, send, edit, react…).
    pub fn id_of(&self, args: &[&str]) -> String {
        self.cli(args)["id"].as_str().unwrap().to_owned()
    }

    /// Sends `text` to `conversation`; the message's id.
    pub fn send(&self, conversation: &str, text: &str) -> String {
        self.id_of(&["send", conversation, text])
    }

    /// The bodies of every message in `conversation`, newest first.
    pub fn bodies(&self, conversation: &str) -> Vec<String> {
        self.cli(&["messages", conversation, "--limit", "1000"])
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["body"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Calls the API with the node's own token: (status, body).
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        self.request(method, path, &self.token, body)
    }

    /// Calls the API with `token` (a wrong one, to test refusals): (status,
    /// body). Error statuses are returned, not raised.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&str>,
    ) -> (u16, String) {
        self.request_within(REQUEST_TIMEOUT, method, path, token, body)
    }

    /// [`Node::request`] with its own timeout, for calls a test loads the
    /// daemon with on purpose.
    pub fn request_within(
        &self,
        timeout: Duration,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&str>,
    ) -> (u16, String) {
        let url = format!("{}{path}", self.api);
        let what = format!("{method} {path}");
        let method = method.to_owned();
        let authorization = format!("Bearer {token}");
        let body = body.map(str::to_owned);
        self.on_network(move || {
            let request = ureq::request(&method, &url)
                .timeout(timeout)
                .set("Authorization", &authorization)
                .set("Content-Type", "application/json");
            let result = match &body {
                Some(body) => request.send_string(body),
                None => request.call(),
            };
            match result {
                Ok(response) => (response.status(), response.into_string().unwrap()),
                Err(ureq::Error::Status(code, response)) => (code, response.into_string().unwrap()),
                Err(other) => panic!("{what}: {other}"),
            }
        })
    }

    /// The Prometheus text of `/metrics`.
    pub fn metrics_text(&self) -> String {
        let url = format!("{}/metrics", self.api);
        self.on_network(move || {
            ureq::get(&url)
                .timeout(REQUEST_TIMEOUT)
                .call()
                .unwrap_or_else(|e| panic!("GET /metrics: {e}"))
                .into_string()
                .unwrap()
        })
    }

    /// The sum of the samples of metric `name` whose labels include every
    /// `(label, value)` pair: counters are split by labels the test may not
    /// care about.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let pairs: Vec<String> = labels
            .iter()
            .map(|(label, value)| format!("{label}=\"{value}\""))
            .collect();
        self.metrics_text()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter(|l| pairs.iter().all(|p| l.contains(p.as_str())))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// What the daemon has logged so far (empty before its first start).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// Runs `call` where the node's API is reachable: its loopback is the
    /// namespace's own, which only a thread that entered it can reach.
    fn on_network<T: Send + 'static>(&self, call: impl FnOnce() -> T + Send + 'static) -> T {
        match &self.netns {
            None => call(),
            Some(ns) => in_netns(ns, call),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            if let Ok(log) = std::fs::read_to_string(self.dir.join("daemon.log")) {
                eprintln!("--- {} log (last lines, newest first) ---", self.name);
                for line in log.lines().rev().take(40) {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Runs `f` on a thread that has entered namespace `ns` (setns affects only
/// the calling thread, and the test's own threads must stay on the host).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("namespace file");
        // SAFETY: setns on a descriptor we own; it changes only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}");
        f()
    })
    .join()
    .expect("namespace thread")
}
