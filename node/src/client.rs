//! The CLI's side of the local API: finds the running daemon through
//! `DATA_DIR/run.json` and `DATA_DIR/api.token`, and calls it.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use crate::daemon::{RunInfo, RUN_FILE, TOKEN_FILE};

/// How long the CLI waits for the daemon to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to a running daemon's API.
pub struct ApiClient {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl ApiClient {
    /// Finds the daemon serving `root`.
    pub fn discover(root: &Path) -> anyhow::Result<Self> {
        let run = std::fs::read_to_string(root.join(RUN_FILE)).with_context(|| {
            format!(
                "no daemon is running on {} (start one with `starling up`)",
                root.display()
            )
        })?;
        let info: RunInfo = serde_json::from_str(&run)
            .with_context(|| format!("reading {}", root.join(RUN_FILE).display()))?;
        let token = std::fs::read_to_string(root.join(TOKEN_FILE))
            .with_context(|| format!("reading {}", root.join(TOKEN_FILE).display()))?;
        let agent = ureq::AgentBuilder::new().timeout(REQUEST_TIMEOUT).build();
        Ok(Self {
            base: info.api,
            token: token.trim().to_owned(),
            agent,
        })
    }

    /// The daemon's API base URL (`http://HOST:PORT`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The bearer token, for clients other than ureq (the WebSocket).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// `GET path`, returning the JSON body; API errors become their message.
    pub fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.call("GET", path, None)?
            .into_json()
            .with_context(|| format!("reading the answer to GET {path}"))
    }

    /// `GET path`, returning the body as text.
    pub fn get_text(&self, path: &str) -> anyhow::Result<String> {
        self.call("GET", path, None)?
            .into_string()
            .with_context(|| format!("reading the answer to GET {path}"))
    }

    /// `POST path` with a JSON body, returning the JSON answer.
    pub fn post(&self, path: &str, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        self.call("POST", path, Some(body))?
            .into_json()
            .with_context(|| format!("reading the answer to POST {path}"))
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<ureq::Response> {
        let url = format!("{}{path}", self.base);
        let request = self
            .agent
            .request(method, &url)
            .set("Authorization", &format!("Bearer {}", self.token));
        let result = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        match result {
            Ok(response) => Ok(response),
            Err(ureq::Error::Status(code, response)) => {
                let body: serde_json::Value = response.into_json().unwrap_or_default();
                let message = body["message"].as_str().unwrap_or("no message");
                anyhow::bail!("the daemon answered {code}: {message}")
            }
            Err(other) => {
                Err(other).with_context(|| format!("calling the daemon at {}", self.base))
            }
        }
    }
}
