//! Deployment tests: what `deploy/` ships, checked against the real thing.
//!
//! - The Grafana dashboard is valid, and every metric it queries is one a real
//!   `starling up` daemon exports (or one Prometheus makes itself, like `up`).
//! - The systemd unit passes `systemd-analyze verify` and its sandbox scores
//!   "OK" in `systemd-analyze security`, where systemd-analyze exists.
//! - The deploy scripts pass shellcheck, where shellcheck exists.
//! - The compose fleet, where Docker exists: build the images without a
//!   registry, run 2 nodes per university and Prometheus, see every container
//!   healthy, ask Prometheus's own HTTP API that every node is scraped and
//!   that every dashboard query has data, cut the universities apart and heal
//!   them with `deploy/partition.sh` and probe reachability from inside the
//!   containers, sync a swarm across the cut and heal (below), recreate the containers and find every account kept, scale
//!   out and see Prometheus find the new nodes, and `fleet.sh down` leaving
//!   nothing behind (a guard tears the fleet down on failure too).
//!
//! A test whose tool is missing prints `SKIPPED: <why>` (shown in the test
//! output by `.config/nextest.toml`) instead of passing silently.
//!
//! The fleet test also drives swarm sync through each node's API: every node
//! is told about every other (`POST /v1/peers`), a1 creates a swarm and
//! invites all, everyone joins, each university writes during the cut and
//! sees only its own side's messages, and after the heal every node holds
//! every message.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

mod support;

use support::{json, starling, Daemon};

/// Bound on building the images (a fresh machine debootstraps the base and
/// installs Prometheus from Debian's mirror).
const IMAGE_BUILD_SECONDS_MAX: u64 = 900;
/// Bound on `fleet.sh up` including every container turning healthy.
const FLEET_UP_SECONDS_MAX: u64 = 300;
/// Bound on `fleet.sh down`.
const FLEET_DOWN_SECONDS_MAX: u64 = 120;
/// Bound on Prometheus showing what the test waits for.
const PROMETHEUS_DEADLINE: Duration = Duration::from_secs(90);
/// Bound on swarm sync in the fleet: an invitation, a join, replicas
/// converging (after a heal that includes QUIC noticing the dead connection,
/// 30 s idle timeout, and redialling).
const SYNC_DEADLINE: Duration = Duration::from_secs(150);
/// Messages each node sends during the cut.
const MESSAGES_PER_NODE_DURING_CUT: usize = 2;
/// Bound on one reachability probe from inside a container.
const PROBE_SECONDS_MAX: u64 = 3;
/// Series Prometheus makes for every target itself; a dashboard may query them.
const PROMETHEUS_SYNTHETIC_METRICS: &[&str] = &[
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
];
/// Nodes per university in the fleet test.
const NODES_PER_UNIVERSITY: usize = 2;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("node/ sits in the workspace")
        .to_owned()
}

fn skip(why: &str) {
    // stdout: nextest shows it for these tests (see .config/nextest.toml).
    println!("SKIPPED: {why}");
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

// ---------------------------------------------------------------------------
// Metric names in PromQL and in the exposition format.

/// Metric names a PromQL expression reads. Enough PromQL for dashboards:
/// strings, label matchers `{…}`, ranges `[…]`, grouping lists `by (…)`,
/// function names, keywords, numbers and `$grafana_variables` are not names.
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // Blank out strings, {…} and […] so only the skeleton remains.
    let mut skeleton = String::with_capacity(expr.len());
    let mut chars = expr.chars().peekable();
    let mut depth_braces = 0usize;
    let mut depth_brackets = 0usize;
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                let quote = c;
                while let Some(inner) = chars.next() {
                    if inner == '\\' {
                        chars.next();
                    } else if inner == quote {
                        break;
                    }
                }
                skeleton.push(' ');
            }
            '{' => depth_braces += 1,
            '}' => depth_braces = depth_braces.saturating_sub(1),
            '[' => depth_brackets += 1,
            ']' => depth_brackets = depth_brackets.saturating_sub(1),
            _ if depth_braces > 0 || depth_brackets > 0 => {}
            _ => skeleton.push(c),
        }
        if matches!(c, '{' | '}' | '[' | ']') {
            skeleton.push(' ');
        }
    }
    // Tokens: identifiers (with a `$` marking a Grafana variable) and single
    // punctuation characters.
    let mut tokens: Vec<String> = Vec::new();
    let mut chars = skeleton.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '$' || c == '.' {
            let mut word = String::new();
            while let Some(&w) = chars.peek() {
                if w.is_ascii_alphanumeric() || w == '_' || w == ':' || w == '$' || w == '.' {
                    word.push(w);
                    chars.next();
                } else {
                    break;
                }
            }
            tokens.push(word);
        } else {
            if !c.is_whitespace() {
                tokens.push(c.to_string());
            }
            chars.next();
        }
    }
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < tokens.len() {
        let token = tokens[i].as_str();
        let next = tokens.get(i + 1).map(String::as_str);
        if GROUPING.contains(&token) && next == Some("(") {
            // Skip the label list.
            while i < tokens.len() && tokens[i] != ")" {
                i += 1;
            }
        } else if matches!(next, Some("(" | "by" | "without"))
            || KEYWORDS.contains(&token.to_ascii_lowercase().as_str())
            || token.starts_with('$')
            || !token.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == ':')
        {
            // Function call, keyword, Grafana variable, number or punctuation.
        } else {
            names.insert(token.to_owned());
        }
        i += 1;
    }
    names
}

/// Every series name the exposition text can contain, from its `# TYPE` lines
/// (a histogram `x` shows up as `x_bucket`, `x_sum` and `x_count`).
fn exported_metric_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("#") || words.next() != Some("TYPE") {
            continue;
        }
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        names.insert(name.to_owned());
        match kind {
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            "summary" => {
                for suffix in ["_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {}
        }
    }
    names
}

#[test]
fn promql_metric_names_are_found_and_nothing_else() {
    let table: &[(&str, &[&str])] = &[
        ("up", &["up"]),
        (r#"up{job="starling", university=~"$university"}"#, &["up"]),
        (
            r#"sum by (route) (rate(starling_api_requests_total{job="x"}[$__rate_interval]))"#,
            &["starling_api_requests_total"],
        ),
        (
            r#"sum(rate(a_total[5m])) by (instance) / on (instance) group_left (university) b"#,
            &["a_total", "b"],
        ),
        (r#"count(up{status=~"4..|5.."} == 0) or vector(0)"#, &["up"]),
        (
            "histogram_quantile(0.99, sum by (le) (rate(starling_sync_seconds_bucket[1m])))",
            &["starling_sync_seconds_bucket"],
        ),
        ("x offset 5m and bool y unless z", &["x", "y", "z"]),
        (
            r#"label_replace(up, "a", "$1", "instance", "(.*)")"#,
            &["up"],
        ),
        ("1e3 * 2.5", &[]),
    ];
    for (expr, expected) in table {
        let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
        assert_eq!(promql_metric_names(expr), expected, "{expr}");
    }
}

#[test]
fn exported_names_come_from_type_lines() {
    let exposition = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 2\n\
                      # TYPE lat_seconds histogram\nlat_seconds_bucket{le=\"1\"} 0\n";
    let names = exported_metric_names(exposition);
    let expected: BTreeSet<String> = [
        "a_total",
        "lat_seconds",
        "lat_seconds_bucket",
        "lat_seconds_sum",
        "lat_seconds_count",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(names, expected);
}

// ---------------------------------------------------------------------------
// A local daemon, for the metrics it really exports.

/// The metric names a real daemon exports after serving some requests (a
/// labelled family only appears once it has a child).
fn metrics_of_a_real_node() -> BTreeSet<String> {
    let tmp = tempfile::tempdir().unwrap();
    let node = tmp.path().join("node");
    json(starling(
        &node,
        &["--json", "account", "create", "--display-name", "Metrics"],
    ));
    let daemon = Daemon::start(&node);
    assert_eq!(daemon.get("/v1/status", Some(&daemon.token)).0, 200);
    assert_eq!(daemon.get("/v1/status", None).0, 401);
    let (code, exposition) = daemon.get("/metrics", None);
    assert_eq!(code, 200);
    let names = exported_metric_names(&exposition);
    assert!(
        !names.is_empty(),
        "the node exports no metric:\n{exposition}"
    );
    names
}

// ---------------------------------------------------------------------------
// The Grafana dashboard and its provisioning.

fn dashboard() -> Value {
    let path = repo_root().join("deploy/grafana/dashboards/starling.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels is a list") {
        all.push(panel);
        if let Some(inner) = panel["panels"].as_array() {
            all.extend(inner);
        }
    }
    all
}

/// (panel title, PromQL) for every query the dashboard runs, template
/// variable queries included (`label_values(SELECTOR, LABEL)` reads SELECTOR).
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {:?} has a target without expr", panel["title"]));
            queries.push((
                panel["title"].as_str().unwrap_or("?").to_owned(),
                expr.to_owned(),
            ));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let query = variable["query"]["query"]
            .as_str()
            .or_else(|| variable["query"].as_str())
            .expect("a query variable has a query");
        let selector = query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.rsplit_once(','))
            .map(|(selector, _label)| selector)
            .unwrap_or(query);
        queries.push((
            format!("variable {}", variable["name"]),
            selector.to_owned(),
        ));
    }
    queries
}

#[test]
fn dashboard_is_valid_and_queries_only_metrics_the_node_exports() {
    let dashboard = dashboard();
    assert!(dashboard["uid"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(dashboard["title"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(dashboard["schemaVersion"].as_u64().is_some());

    // Panel ids are unique and every panel has a place on the grid; every
    // data source is the provisioned one.
    let provisioned = std::fs::read_to_string(
        repo_root().join("deploy/grafana/provisioning/datasources/starling.yaml"),
    )
    .unwrap();
    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let id = panel["id"].as_u64().expect("every panel has a numeric id");
        assert!(ids.insert(id), "panel id {id} is used twice");
        for key in ["h", "w", "x", "y"] {
            assert!(
                panel["gridPos"][key].as_u64().is_some(),
                "panel {id} has no gridPos.{key}"
            );
        }
        let uids = std::iter::once(&panel["datasource"]).chain(
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| &t["datasource"]),
        );
        for datasource in uids.filter(|d| !d.is_null()) {
            let uid = datasource["uid"].as_str().expect("data source by uid");
            assert!(
                provisioned.contains(&format!("uid: {uid}\n")),
                "panel {id} uses data source {uid}, which deploy/grafana/provisioning does not define"
            );
        }
    }
    let provider = std::fs::read_to_string(
        repo_root().join("deploy/grafana/provisioning/dashboards/starling.yaml"),
    )
    .unwrap();
    assert!(provider.contains("type: file"), "{provider}");

    let exported = metrics_of_a_real_node();
    let mut queried_ours = 0;
    let mut unknown = BTreeMap::new();
    for (title, expr) in dashboard_queries(&dashboard) {
        let names = promql_metric_names(&expr);
        assert!(!names.is_empty(), "{title}: no metric in {expr:?}");
        for name in names {
            if exported.contains(&name) {
                queried_ours += 1;
            } else if !PROMETHEUS_SYNTHETIC_METRICS.contains(&name.as_str()) {
                unknown.insert(name, title.clone());
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics the node does not export: {unknown:?}; it exports {exported:?}"
    );
    assert!(
        queried_ours > 0,
        "the dashboard queries none of the node's metrics"
    );
}

// ---------------------------------------------------------------------------
// The systemd unit.

#[test]
fn systemd_unit_verifies_and_is_sandboxed() {
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(analyze) = analyze else {
        skip("systemd-analyze is not installed; deploy/starling.service was not verified");
        return;
    };
    let unit = std::fs::read_to_string(repo_root().join("deploy/starling.service")).unwrap();
    for directive in [
        "DynamicUser=yes",
        "StateDirectory=starling",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(unit.contains(directive), "the unit lacks {directive:?}");
    }
    // `verify` checks that ExecStart's binary exists, and no CI machine has
    // /usr/local/bin/starling: point that one path at the binary under test.
    let installed = "ExecStart=/usr/local/bin/starling ";
    assert_eq!(unit.matches(installed).count(), 1, "{unit}");
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("starling.service");
    std::fs::write(
        &copy,
        unit.replace(
            installed,
            &format!("ExecStart={} ", env!("CARGO_BIN_EXE_starling")),
        ),
    )
    .unwrap();
    let verify = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        verify.status.success() && text(&verify).trim().is_empty(),
        "systemd-analyze verify: {}",
        text(&verify)
    );
    // Exposure 2.0 or lower ("OK"); the threshold is in tenths.
    let security = Command::new(analyze)
        .args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        security.status.success(),
        "the unit's sandbox scores worse than 2.0:\n{}",
        text(&security)
    );
}

#[test]
fn deploy_scripts_pass_shellcheck() {
    let Ok(version) = Command::new("shellcheck").arg("--version").output() else {
        skip("shellcheck is not installed; deploy/*.sh were not linted");
        return;
    };
    assert!(version.status.success());
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(repo_root().join("deploy"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    scripts.sort();
    assert!(scripts.len() >= 5, "found the deploy scripts: {scripts:?}");
    let lint = Command::new("shellcheck").args(&scripts).output().unwrap();
    assert!(lint.status.success(), "{}", text(&lint));
}

// ---------------------------------------------------------------------------
// The compose fleet.

/// Runs `program args` under coreutils `timeout`, from the repository root.
fn run_bounded(seconds: u64, program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new("timeout")
        .arg("--kill-after=10")
        .arg(seconds.to_string())
        .arg(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"))
}

fn docker(args: &[&str]) -> String {
    let output = run_bounded(60, "docker", args, &[]);
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        text(&output)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Why the fleet test cannot run here, if it cannot.
fn docker_missing() -> Option<String> {
    // `timeout` exits 127 when it cannot run the command at all.
    let info = run_bounded(
        30,
        "docker",
        &["info", "--format", "{{.ServerVersion}}"],
        &[],
    );
    match info.status.code() {
        Some(0) => {}
        Some(127) => return Some("docker is not installed".into()),
        _ => {
            return Some(format!(
                "the Docker daemon does not answer: {}",
                text(&info).trim()
            ))
        }
    }
    let plugin = run_bounded(30, "docker", &["compose", "version"], &[]);
    let v1 = run_bounded(30, "docker-compose", &["version"], &[]);
    if !plugin.status.success() && !v1.status.success() {
        return Some("neither `docker compose` nor `docker-compose` is installed".into());
    }
    None
}

/// One compose fleet under a project name of its own; torn down on drop, so
/// a failing assertion leaves no container, network, volume or image behind.
struct Fleet {
    project: String,
    tag: String,
    down: bool,
}

impl Fleet {
    fn env(&self) -> Vec<(&str, &str)> {
        vec![
            ("COMPOSE_PROJECT_NAME", self.project.as_str()),
            ("STARLING_TAG", self.tag.as_str()),
            ("STARLING_PROMETHEUS_PUBLISH", "127.0.0.1::9090"),
            ("STARLING_HEALTHY_TIMEOUT_SECONDS", "180"),
        ]
    }

    fn script(&self, seconds: u64, script: &str, args: &[&str]) -> Output {
        let mut argv = vec![script];
        argv.extend_from_slice(args);
        run_bounded(seconds, "bash", &argv, &self.env())
    }

    fn containers(&self, service: &str) -> Vec<String> {
        let mut ids = lines(&docker(&[
            "ps",
            "-a",
            "-q",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ]));
        ids.sort();
        ids
    }

    fn network(&self, name: &str) -> String {
        format!("{}_{name}", self.project)
    }

    fn tear_down(&mut self) -> Output {
        self.down = true;
        let output = self.script(FLEET_DOWN_SECONDS_MAX, "deploy/fleet.sh", &["down"]);
        for image in ["starling", "starling-prometheus"] {
            let _ = run_bounded(
                60,
                "docker",
                &["rmi", &format!("{image}:{}", self.tag)],
                &[],
            );
        }
        output
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if !self.down {
            // The nodes' own account of a failure, before it is torn down.
            for service in ["uni-a", "uni-b"] {
                for id in self.containers(service) {
                    let logs = run_bounded(30, "docker", &["logs", "--tail", "400", &id], &[]);
                    eprintln!("--- {service} {id} (last 400 lines) ---\n{}", text(&logs));
                }
            }
            let output = self.tear_down();
            eprintln!(
                "fleet {} torn down after a failure: {}",
                self.project,
                text(&output)
            );
        }
    }
}

/// Project names of test fleets: the prefix, the test process's pid, its start time.
const FLEET_PROJECT_PREFIX: &str = "starlingtest-";

/// Tears down fleets left by test processes that no longer exist (killed
/// before their guard could run, e.g. by a runner's timeout). Fleets of
/// live processes, such as a concurrent run's, are left alone.
fn reap_abandoned_fleets() {
    let projects: BTreeSet<String> = lines(&docker(&[
        "ps",
        "-a",
        "--filter",
        "label=com.docker.compose.project",
        "--format",
        "{{.Label \"com.docker.compose.project\"}}",
    ]))
    .into_iter()
    .filter(|p| p.starts_with(FLEET_PROJECT_PREFIX))
    .collect();
    for project in projects {
        let id = &project[FLEET_PROJECT_PREFIX.len()..];
        let Some(pid) = id.split('-').next().filter(|p| p.parse::<u32>().is_ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        println!("tearing down fleet {project}, abandoned by process {pid}");
        let mut abandoned = Fleet {
            project: project.clone(),
            tag: format!("test-{id}"),
            down: false,
        };
        let output = abandoned.tear_down();
        assert!(output.status.success(), "{}", text(&output));
    }
}

/// This container's IP address on `network`, if it is on it.
fn ip_on(container: &str, network: &str) -> Option<String> {
    let ip = docker(&[
        "inspect",
        "--format",
        &format!("{{{{with index .NetworkSettings.Networks \"{network}\"}}}}{{{{.IPAddress}}}}{{{{end}}}}"),
        container,
    ]);
    Some(ip.trim().to_owned()).filter(|ip| !ip.is_empty())
}

/// Whether `from` reaches a Starling API at `ip:7421`: an HTTP GET of
/// /metrics over bash's /dev/tcp inside the container (the image has no
/// curl), answered with our metrics.
fn reaches(from: &str, ip: &str) -> bool {
    let script = format!(
        "exec 3<>/dev/tcp/{ip}/7421 && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
    );
    let output = run_bounded(
        PROBE_SECONDS_MAX + 20,
        "docker",
        &[
            "exec",
            from,
            "timeout",
            &PROBE_SECONDS_MAX.to_string(),
            "bash",
            "-c",
            &script,
        ],
        &[],
    );
    output.status.success()
        && String::from_utf8_lossy(&output.stdout).contains("starling_api_requests_total")
}

/// A node's API, called from the host with the node's own bearer token. The
/// host reaches every container at its address on its university's network,
/// during a cut too: the test stands outside the shutdown, so it can drive
/// both sides (the swarm and messaging assertions of issue 8 go through this).
struct NodeApi {
    container: String,
    base: String,
    token: String,
}

impl NodeApi {
    /// Reads the token from the node's data dir; it changes at every start,
    /// so make a new NodeApi after a restart.
    fn of(fleet: &Fleet, container: &str, university: &str) -> NodeApi {
        let ip = ip_on(container, &fleet.network(university)).expect("node on its university");
        let token = docker(&["exec", container, "cat", "/var/lib/starling/api.token"]);
        NodeApi {
            container: container.to_owned(),
            base: format!("http://{ip}:7421"),
            token: token.trim().to_owned(),
        }
    }

    /// `GET path`, with the token or without; (status, JSON body).
    fn get(&self, path: &str, with_token: bool) -> (u16, Value) {
        let mut request =
            ureq::get(&format!("{}{path}", self.base)).timeout(Duration::from_secs(10));
        if with_token {
            request = request.set("Authorization", &format!("Bearer {}", self.token));
        }
        match request.call() {
            Ok(r) => (r.status(), r.into_json().unwrap_or_default()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or_default()),
            Err(e) => panic!("GET {path} on node {}: {e}", self.container),
        }
    }

    /// `POST path` with a JSON body and the token; (status, JSON body).
    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let request = ureq::post(&format!("{}{path}", self.base))
            .timeout(Duration::from_secs(30))
            .set("Authorization", &format!("Bearer {}", self.token));
        match request.send_json(body) {
            Ok(r) => (r.status(), r.into_json().unwrap_or_default()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or_default()),
            Err(e) => panic!("POST {path} on node {}: {e}", self.container),
        }
    }

    /// `GET path` with the token, which must answer 200; its JSON body.
    fn get_ok(&self, path: &str) -> Value {
        let (code, body) = self.get(path, true);
        assert_eq!(code, 200, "GET {path} on node {}: {body}", self.container);
        body
    }

    /// (id, author, body) of every message of the swarm this node holds.
    fn messages(&self, swarm: &str) -> BTreeSet<(String, String, String)> {
        let list = self.get_ok(&format!("/v1/swarms/{swarm}/messages?limit=1000"));
        list.as_array()
            .unwrap_or_else(|| panic!("messages on node {}: {list}", self.container))
            .iter()
            .map(|m| {
                (
                    m["id"].as_str().unwrap_or_default().to_owned(),
                    m["author"].as_str().unwrap_or_default().to_owned(),
                    m["body"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// (account, role) of every member of the swarm this node knows.
    fn members(&self, swarm: &str) -> BTreeSet<(String, String)> {
        let (code, list) = self.get(&format!("/v1/swarms/{swarm}/members"), true);
        if code != 200 {
            return BTreeSet::new();
        }
        list.as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                (
                    m["account_id"].as_str().unwrap_or_default().to_owned(),
                    m["role"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }
}

/// Every node of the fleet, with its API.
fn node_apis(fleet: &Fleet) -> Vec<NodeApi> {
    let mut apis = Vec::new();
    for university in ["uni-a", "uni-b"] {
        for id in fleet.containers(university) {
            apis.push(NodeApi::of(fleet, &id, university));
        }
    }
    apis
}

/// Base URL of the Prometheus container's port published on the host's loopback.
fn prometheus_url(container: &str) -> String {
    let published = docker(&["port", container, "9090/tcp"]);
    let address = lines(&published)
        .into_iter()
        .find(|a| a.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("Prometheus is not published on 127.0.0.1: {published}"));
    format!("http://{address}")
}

/// Prometheus's HTTP API: `GET /api/v1/query`.
fn prometheus_query(base: &str, query: &str) -> Value {
    let response = ureq::get(&format!("{base}/api/v1/query"))
        .query("query", query)
        .timeout(Duration::from_secs(10))
        .call();
    let body: Value = match response {
        Ok(r) => r.into_json().unwrap(),
        Err(ureq::Error::Status(_, r)) => r.into_json().unwrap_or_default(),
        Err(e) => panic!("querying Prometheus for {query:?}: {e}"),
    };
    assert_eq!(body["status"], "success", "query {query:?}: {body}");
    body
}

/// The vector result's series, as (label set, value).
fn series(result: &Value) -> Vec<(Value, String)> {
    result["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["metric"].clone(),
                s["value"][1].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// Polls `check` until it returns Ok, or fails after PROMETHEUS_DEADLINE.
fn eventually<T>(what: &str, check: impl FnMut() -> Result<T, String>) -> T {
    eventually_within(PROMETHEUS_DEADLINE, what, check)
}

/// Polls `check` every second until it returns Ok, or fails after `bound`.
fn eventually_within<T>(
    bound: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + bound;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() > deadline => {
                panic!("{what}: not true within {bound:?}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

/// A fleet node in the swarm test: its API, university and account.
struct SwarmNode {
    api: NodeApi,
    university: &'static str,
    account: String,
}

impl SwarmNode {
    /// Short name for messages and failures: university and container id prefix.
    fn name(&self) -> String {
        format!("{}/{}", self.university, &self.api.container[..12])
    }
}

/// Every fleet node with its account id, uni-a's first.
fn swarm_nodes(fleet: &Fleet) -> Vec<SwarmNode> {
    let mut nodes = Vec::new();
    for university in ["uni-a", "uni-b"] {
        for id in fleet.containers(university) {
            let api = NodeApi::of(fleet, &id, university);
            let status = api.get_ok("/v1/status");
            let account = status["account_id"].as_str().unwrap().to_owned();
            nodes.push(SwarmNode {
                api,
                university,
                account,
            });
        }
    }
    nodes
}

/// Tells every node of `nodes` about every other (`POST /v1/peers`): within
/// a university at the campus address, which a cut leaves alone; across at
/// the internet address. With `across_only`, just the latter (after a heal,
/// whose reconnection may give the nodes new internet addresses).
fn introduce_peers(fleet: &Fleet, nodes: &[SwarmNode], across_only: bool) {
    for node in nodes {
        for other in nodes {
            let same = node.university == other.university;
            if node.account == other.account || (same && across_only) {
                continue;
            }
            let network = if same {
                fleet.network(other.university)
            } else {
                fleet.network("internet")
            };
            let ip = ip_on(&other.api.container, &network)
                .unwrap_or_else(|| panic!("{} is not on {network}", other.name()));
            let peer = format!("{}@{ip}:7420", other.account);
            let (code, body) = node
                .api
                .post("/v1/peers", serde_json::json!({ "peer": peer }));
            assert_eq!(code, 200, "{} adding peer {peer}: {body}", node.name());
        }
    }
}

/// Message ids held by each node of `nodes`.
fn message_ids(nodes: &[&SwarmNode], swarm: &str) -> Vec<BTreeSet<String>> {
    nodes
        .iter()
        .map(|n| n.api.messages(swarm).into_iter().map(|m| m.0).collect())
        .collect()
}

/// Instances whose latest scrape, newer than `since` (Unix seconds),
/// succeeded. The age matters: a target that vanished without a staleness
/// marker (Prometheus itself was restarted) keeps its last `up` visible for
/// the 5-minute lookback. `timestamp()` gives a sample's own time only when
/// applied directly to a selector, not to an expression like `up == 1`.
fn scraped_instances(base: &str, since: f64) -> BTreeSet<String> {
    let query = format!(
        r#"up{{job="starling"}} == 1 and on (instance) (timestamp(up{{job="starling"}}) > {since:.3})"#
    );
    series(&prometheus_query(base, &query))
        .into_iter()
        .filter_map(|(labels, _)| labels["instance"].as_str().map(str::to_owned))
        .collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn compose_fleet_is_healthy_scraped_partitioned_healed_and_removed() {
    if let Some(why) = docker_missing() {
        skip(&format!("{why}; the compose fleet test did not run"));
        return;
    }
    let started = Instant::now();
    reap_abandoned_fleets();
    let id = format!("{}-{}", std::process::id(), unix_now() as u64);
    let mut fleet = Fleet {
        project: format!("{FLEET_PROJECT_PREFIX}{id}"),
        tag: format!("test-{id}"),
        down: false,
    };

    // Images, from no registry: base by debootstrap, node binary under test.
    let mut build_env = fleet.env();
    build_env.push(("STARLING_BIN", env!("CARGO_BIN_EXE_starling")));
    let built = run_bounded(
        IMAGE_BUILD_SECONDS_MAX,
        "bash",
        &["deploy/build-images.sh"],
        &build_env,
    );
    assert!(built.status.success(), "build-images.sh: {}", text(&built));
    println!("images built in {:?}", started.elapsed());
    // Prometheus's own check of the configuration, in the image we built.
    let config = repo_root().join("deploy/prometheus.yml");
    let checked = run_bounded(
        120,
        "docker",
        &[
            "run",
            "--rm",
            "--entrypoint",
            "promtool",
            "-v",
            &format!("{}:/etc/prometheus/prometheus.yml:ro", config.display()),
            &format!("starling-prometheus:{}", fleet.tag),
            "check",
            "config",
            "/etc/prometheus/prometheus.yml",
        ],
        &[],
    );
    assert!(checked.status.success(), "promtool: {}", text(&checked));

    // Two nodes per university and Prometheus; fleet.sh waits for health.
    let up = fleet.script(
        FLEET_UP_SECONDS_MAX,
        "deploy/fleet.sh",
        &["up", &NODES_PER_UNIVERSITY.to_string()],
    );
    assert!(up.status.success(), "fleet.sh up: {}", text(&up));
    println!("fleet up and healthy at {:?}", started.elapsed());
    let uni_a = fleet.containers("uni-a");
    let uni_b = fleet.containers("uni-b");
    let prometheus = fleet.containers("prometheus");
    assert_eq!(
        (uni_a.len(), uni_b.len(), prometheus.len()),
        (NODES_PER_UNIVERSITY, NODES_PER_UNIVERSITY, 1)
    );
    for id in uni_a.iter().chain(&uni_b).chain(&prometheus) {
        let health = docker(&["inspect", "--format", "{{.State.Health.Status}}", id]);
        assert_eq!(health.trim(), "healthy", "container {id}");
    }
    // Nodes run as the image's non-root user, and the entrypoint named each
    // account after its container (no STARLING_DISPLAY_NAME in compose).
    for id in uni_a.iter().chain(&uni_b) {
        assert_eq!(docker(&["exec", id, "id", "-u"]).trim(), "10001");
        let status: Value =
            serde_json::from_str(&docker(&["exec", id, "starling", "--json", "status"])).unwrap();
        let hostname = docker(&["exec", id, "hostname"]);
        assert_eq!(status["display_name"], hostname.trim(), "container {id}");
    }
    // Volumes to check after `down`: each node's data dir is its own.
    let mut volumes = BTreeSet::new();
    for id in uni_a.iter().chain(&uni_b).chain(&prometheus) {
        volumes.extend(lines(&docker(&[
            "inspect",
            "--format",
            "{{range .Mounts}}{{if eq .Type \"volume\"}}{{.Name}}\n{{end}}{{end}}",
            id,
        ])));
    }
    assert!(
        volumes.len() >= 5,
        "each node and Prometheus has its own volume: {volumes:?}"
    );

    // Prometheus's HTTP API: every node is scraped and exports our series.
    let base = prometheus_url(&prometheus[0]);
    let node_address = |id: &String, university: &str| {
        format!(
            "{}:7421",
            ip_on(id, &fleet.network(university)).expect("node on its university")
        )
    };
    let expected: BTreeSet<String> = uni_a
        .iter()
        .map(|id| node_address(id, "uni-a"))
        .chain(uni_b.iter().map(|id| node_address(id, "uni-b")))
        .collect();
    eventually("Prometheus scrapes all four nodes", || {
        let up = scraped_instances(&base, 0.0);
        if up == expected {
            Ok(())
        } else {
            Err(format!("{up:?} != {expected:?}"))
        }
    });
    assert!(
        scraped_instances(&base, unix_now() + 3600.0).is_empty(),
        "the freshness filter is not vacuous"
    );
    let universities = series(&prometheus_query(
        &base,
        r#"count by (university) (up{job="starling"})"#,
    ));
    assert_eq!(universities.len(), 2, "{universities:?}");
    eventually("every node's own starling_ series reach Prometheus", || {
        let got: BTreeSet<String> = series(&prometheus_query(
            &base,
            r#"starling_api_requests_total{job="starling", route="/metrics", status="200"}"#,
        ))
        .into_iter()
        .filter_map(|(labels, _)| labels["instance"].as_str().map(str::to_owned))
        .collect();
        if got == expected {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });

    // Every dashboard query runs on the real Prometheus and has data. A
    // panel whose metric stays empty in a healthy fleet (rejected commits,
    // say) needs the test to provoke it, as the 401s below do for the
    // error panels.
    for node in node_apis(&fleet) {
        let (code, status) = node.get("/v1/status", true);
        assert_eq!(code, 200, "node {}: {status}", node.container);
        let shown: Value = serde_json::from_str(&docker(&[
            "exec",
            &node.container,
            "starling",
            "--json",
            "account",
            "show",
        ]))
        .unwrap();
        assert_eq!(
            status["account_id"], shown["account_id"],
            "node {}",
            node.container
        );
        let (code, error) = node.get("/v1/status", false);
        assert_eq!((code, error["code"].as_str()), (401, Some("unauthorized")));
    }
    for (title, expr) in dashboard_queries(&dashboard()) {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$university", ".*");
        eventually(&format!("dashboard panel {title:?} has data"), || {
            let result = series(&prometheus_query(&base, &expr));
            if result.is_empty() {
                Err(format!("{expr} is empty"))
            } else {
                Ok(())
            }
        });
    }
    println!("Prometheus checked at {:?}", started.elapsed());

    // The shutdown: before, across and within universities all reach.
    let (a1, a2, b1) = (&uni_a[0], &uni_a[1], &uni_b[0]);
    let internet = fleet.network("internet");
    let b1_internet = ip_on(b1, &internet).expect("b1 is on the internet network");
    let a1_internet = ip_on(a1, &internet).expect("a1 is on the internet network");
    let b1_campus = ip_on(b1, &fleet.network("uni-b")).unwrap();
    let a2_campus = ip_on(a2, &fleet.network("uni-a")).unwrap();
    assert!(
        reaches(a1, &b1_internet),
        "before the cut, uni-a reaches uni-b"
    );
    assert!(
        reaches(b1, &a1_internet),
        "before the cut, uni-b reaches uni-a"
    );
    assert!(reaches(a1, &a2_campus), "uni-a reaches its own nodes");

    // The swarm, through the API: every node keeps a connection to every
    // other; a1 creates a swarm and invites all; each invitee joins.
    let nodes = swarm_nodes(&fleet);
    assert_eq!(nodes.len(), 2 * NODES_PER_UNIVERSITY);
    assert_eq!(&nodes[0].api.container, a1);
    introduce_peers(&fleet, &nodes, false);
    let creator = &nodes[0];
    let (code, created) = creator
        .api
        .post("/v1/swarms", serde_json::json!({ "title": "Fleet" }));
    assert_eq!(code, 201, "creating the swarm: {created}");
    let swarm = created["id"].as_str().unwrap().to_owned();
    for invitee in &nodes[1..] {
        // 409 while a1 is not yet connected to the invitee.
        eventually_within(
            SYNC_DEADLINE,
            &format!("a1 invites {}", invitee.name()),
            || {
                let (code, body) = creator.api.post(
                    &format!("/v1/swarms/{swarm}/invites"),
                    serde_json::json!({ "account_id": invitee.account }),
                );
                match code {
                    200 | 201 => Ok(()),
                    409 => Err(body.to_string()),
                    _ => panic!("inviting {}: {code} {body}", invitee.name()),
                }
            },
        );
    }
    for invitee in &nodes[1..] {
        eventually_within(
            SYNC_DEADLINE,
            &format!("{} receives the invitation", invitee.name()),
            || {
                let invites = invitee.api.get_ok("/v1/invites");
                let found = invites
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|i| i["conversation"] == swarm.as_str());
                if found {
                    Ok(())
                } else {
                    Err(invites.to_string())
                }
            },
        );
        eventually_within(SYNC_DEADLINE, &format!("{} joins", invitee.name()), || {
            let (code, body) = invitee
                .api
                .post(&format!("/v1/swarms/{swarm}/join"), serde_json::json!({}));
            if code == 200 || code == 201 {
                Ok(())
            } else {
                Err(format!("{code} {body}"))
            }
        });
    }
    let expected_members: BTreeSet<(String, String)> = nodes
        .iter()
        .map(|n| {
            let role = if n.account == creator.account {
                "admin"
            } else {
                "member"
            };
            (n.account.clone(), role.to_owned())
        })
        .collect();
    eventually_within(SYNC_DEADLINE, "all four list the same members", || {
        let lists: Vec<_> = nodes.iter().map(|n| n.api.members(&swarm)).collect();
        if lists.iter().all(|l| l == &expected_members) {
            Ok(())
        } else {
            Err(format!("{lists:?}"))
        }
    });
    let (code, hello) = creator.api.post(
        &format!("/v1/swarms/{swarm}/messages"),
        serde_json::json!({ "text": "before the cut" }),
    );
    assert_eq!(code, 201, "{hello}");
    let before_cut: BTreeSet<String> = [hello["id"].as_str().unwrap().to_owned()].into();
    let everyone: Vec<&SwarmNode> = nodes.iter().collect();
    eventually_within(SYNC_DEADLINE, "every node holds the first message", || {
        let held = message_ids(&everyone, &swarm);
        if held.iter().all(|h| h == &before_cut) {
            Ok(())
        } else {
            Err(format!("{held:?}"))
        }
    });
    println!("swarm of four joined at {:?}", started.elapsed());

    let cut_at = unix_now();
    let cut = fleet.script(60, "deploy/partition.sh", &["cut"]);
    assert!(cut.status.success(), "partition.sh cut: {}", text(&cut));
    assert_eq!(ip_on(a1, &internet), None, "a1 left the internet network");
    for address in [&b1_internet, &b1_campus] {
        assert!(
            !reaches(a1, address),
            "during the cut, uni-a reaches uni-b at {address}"
        );
    }
    assert!(
        !reaches(b1, &a1_internet),
        "during the cut, uni-b reaches uni-a"
    );
    assert!(
        reaches(a1, &a2_campus),
        "during the cut, uni-a still reaches its own nodes"
    );
    eventually("Prometheus still scrapes both sides during the cut", || {
        let up = scraped_instances(&base, cut_at);
        if up == expected {
            Ok(())
        } else {
            Err(format!("{up:?}"))
        }
    });
    for node in node_apis(&fleet) {
        assert_eq!(
            node.get("/v1/status", true).0,
            200,
            "the test reaches {} during the cut",
            node.container
        );
    }
    let status = fleet.script(30, "deploy/partition.sh", &["status"]);
    assert_eq!(
        text(&status).matches("internet=cut").count(),
        4,
        "{}",
        text(&status)
    );

    // Each side writes during the cut, and sees its own side's messages and
    // none of the other's.
    let mut written: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for node in &nodes {
        for i in 0..MESSAGES_PER_NODE_DURING_CUT {
            let text = format!("{} during the cut #{i}", node.name());
            let (code, sent) = node.api.post(
                &format!("/v1/swarms/{swarm}/messages"),
                serde_json::json!({ "text": text }),
            );
            assert_eq!(code, 201, "{} sending: {sent}", node.name());
            written
                .entry(node.university)
                .or_default()
                .insert(sent["id"].as_str().unwrap().to_owned());
        }
    }
    for (university, other) in [("uni-a", "uni-b"), ("uni-b", "uni-a")] {
        let side: Vec<&SwarmNode> = nodes
            .iter()
            .filter(|n| n.university == university)
            .collect();
        let expected: BTreeSet<String> = before_cut.union(&written[university]).cloned().collect();
        eventually_within(
            SYNC_DEADLINE,
            &format!("{university} holds its own side's messages during the cut"),
            || {
                let held = message_ids(&side, &swarm);
                if held.iter().all(|h| h == &expected) {
                    Ok(())
                } else {
                    Err(format!("{held:?}"))
                }
            },
        );
        for held in message_ids(&side, &swarm) {
            assert!(
                held.is_disjoint(&written[other]),
                "{university} holds {other}'s messages during the cut"
            );
        }
    }
    println!("each side wrote during the cut at {:?}", started.elapsed());

    let heal = fleet.script(60, "deploy/partition.sh", &["heal"]);
    assert!(heal.status.success(), "partition.sh heal: {}", text(&heal));
    let b1_internet = ip_on(b1, &internet).expect("b1 is back on the internet network");
    let a1_internet = ip_on(a1, &internet).expect("a1 is back on the internet network");
    assert!(
        reaches(a1, &b1_internet),
        "after the heal, uni-a reaches uni-b"
    );
    assert!(
        reaches(b1, &a1_internet),
        "after the heal, uni-b reaches uni-a"
    );
    println!("partition cut and healed at {:?}", started.elapsed());

    // After the heal every node ends with every message.
    introduce_peers(&fleet, &nodes, true);
    let all: BTreeSet<String> = before_cut
        .iter()
        .chain(written.values().flatten())
        .cloned()
        .collect();
    assert_eq!(all.len(), 1 + nodes.len() * MESSAGES_PER_NODE_DURING_CUT);
    let healed_at = Instant::now();
    eventually_within(SYNC_DEADLINE, "every node holds every message", || {
        let held = message_ids(&everyone, &swarm);
        if held.iter().all(|h| h == &all) {
            Ok(())
        } else {
            Err(format!("{held:?}"))
        }
    });
    let lists: Vec<_> = nodes.iter().map(|n| n.api.messages(&swarm)).collect();
    assert!(
        lists.windows(2).all(|w| w[0] == w[1]),
        "the nodes disagree on the messages: {lists:?}"
    );
    println!(
        "every node holds all {} messages {:?} after the heal",
        all.len(),
        healed_at.elapsed()
    );
    for node in &nodes {
        let health = docker(&[
            "inspect",
            "--format",
            "{{.State.Health.Status}}",
            &node.api.container,
        ]);
        assert_eq!(health.trim(), "healthy", "{} after the heal", node.name());
    }

    // The upgrade path: recreating the containers (as a new image would)
    // keeps every node's data dir, so every node keeps its account.
    let accounts = |fleet: &Fleet| -> BTreeSet<String> {
        node_apis(fleet)
            .iter()
            .map(|node| {
                let (code, status) = node.get("/v1/status", true);
                assert_eq!(code, 200, "node {}: {status}", node.container);
                status["account_id"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    let before = accounts(&fleet);
    assert_eq!(
        before.len(),
        2 * NODES_PER_UNIVERSITY,
        "one account per node"
    );
    let per_uni = NODES_PER_UNIVERSITY.to_string();
    let recreate = fleet.script(
        FLEET_UP_SECONDS_MAX,
        "deploy/fleet.sh",
        &[
            "compose",
            "up",
            "-d",
            "--force-recreate",
            "--scale",
            &format!("uni-a={per_uni}"),
            "--scale",
            &format!("uni-b={per_uni}"),
        ],
    );
    assert!(recreate.status.success(), "recreate: {}", text(&recreate));
    assert!(
        fleet
            .containers("uni-a")
            .iter()
            .all(|id| !uni_a.contains(id)),
        "the uni-a containers were recreated"
    );
    let up = fleet.script(FLEET_UP_SECONDS_MAX, "deploy/fleet.sh", &["up", &per_uni]);
    assert!(
        up.status.success(),
        "fleet.sh up after recreate: {}",
        text(&up)
    );
    assert_eq!(
        accounts(&fleet),
        before,
        "recreated nodes keep their accounts"
    );
    println!(
        "containers recreated with their data at {:?}",
        started.elapsed()
    );

    // Scaling out: one more node per university, and Prometheus finds the
    // new ones by DNS without a config change. (Prometheus was recreated
    // too, on a new host port.)
    let base = prometheus_url(&fleet.containers("prometheus")[0]);
    let scaled = (NODES_PER_UNIVERSITY + 1).to_string();
    let up = fleet.script(FLEET_UP_SECONDS_MAX, "deploy/fleet.sh", &["up", &scaled]);
    assert!(up.status.success(), "fleet.sh up {scaled}: {}", text(&up));
    let expected: BTreeSet<String> = fleet
        .containers("uni-a")
        .iter()
        .map(|id| node_address(id, "uni-a"))
        .chain(
            fleet
                .containers("uni-b")
                .iter()
                .map(|id| node_address(id, "uni-b")),
        )
        .collect();
    assert_eq!(expected.len(), 2 * (NODES_PER_UNIVERSITY + 1));
    let scaled_at = unix_now();
    eventually("Prometheus scrapes the added nodes", || {
        let up = scraped_instances(&base, scaled_at);
        if up == expected {
            Ok(())
        } else {
            Err(format!("{up:?} != {expected:?}"))
        }
    });
    // Their volumes go with `down` as well.
    for id in fleet
        .containers("uni-a")
        .iter()
        .chain(&fleet.containers("uni-b"))
    {
        volumes.extend(lines(&docker(&[
            "inspect",
            "--format",
            "{{range .Mounts}}{{if eq .Type \"volume\"}}{{.Name}}\n{{end}}{{end}}",
            id,
        ])));
    }
    println!("scaled out at {:?}", started.elapsed());

    // Down leaves nothing behind.
    let project = fleet.project.clone();
    let down = fleet.tear_down();
    assert!(down.status.success(), "fleet.sh down: {}", text(&down));
    let label = format!("label=com.docker.compose.project={project}");
    assert_eq!(
        lines(&docker(&["ps", "-a", "-q", "--filter", &label])),
        Vec::<String>::new()
    );
    let networks = lines(&docker(&["network", "ls", "--format", "{{.Name}}"]));
    let left: Vec<_> = networks
        .iter()
        .filter(|n| n.starts_with(&format!("{project}_")))
        .collect();
    assert!(left.is_empty(), "networks left behind: {left:?}");
    let all_volumes: BTreeSet<String> = lines(&docker(&["volume", "ls", "-q"]))
        .into_iter()
        .collect();
    let left: Vec<_> = volumes.intersection(&all_volumes).collect();
    assert!(left.is_empty(), "volumes left behind: {left:?}");
    println!("fleet test done in {:?}", started.elapsed());
}
