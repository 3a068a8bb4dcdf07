//! `starling events`: follows the daemon's event stream (`GET /v1/events`,
//! a WebSocket) and prints one line per event, as text or, with `--json`,
//! as JSON lines exactly as the daemon sent them. It ends, with status 0,
//! when the daemon closes the stream or goes away.

use std::io::Write;

use anyhow::Context as _;
use serde_json::Value;
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::Message;

use crate::client::ApiClient;
use crate::commands::Context;

/// `starling events [--json]`.
pub fn events(ctx: &Context) -> anyhow::Result<()> {
    let client = ApiClient::discover(ctx.data_dir.root())?;
    let url = format!(
        "{}/v1/events",
        client.base().replacen("http://", "ws://", 1)
    );
    let mut request = url
        .as_str()
        .into_client_request()
        .with_context(|| format!("event stream URL {url}"))?;
    request.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {}", client.token()))
            .context("the API token is not a valid header value")?,
    );
    let (mut socket, _) = tungstenite::connect(request).map_err(|e| match e {
        tungstenite::Error::Http(response) => {
            anyhow::anyhow!("the daemon refused the event stream: {}", response.status())
        }
        other => anyhow::anyhow!("connecting to the event stream at {url}: {other}"),
    })?;
    let stdout = std::io::stdout();
    loop {
        let text = match socket.read() {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => break,
            Err(tungstenite::Error::Io(_))
            | Err(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            )) => {
                eprintln!("the daemon went away");
                break;
            }
            Err(e) => return Err(e).context("reading the event stream"),
        };
        let line = if ctx.json {
            text.to_string()
        } else {
            match serde_json::from_str::<Value>(&text) {
                Ok(event) => describe(&event),
                Err(_) => text.to_string(),
            }
        };
        let mut out = stdout.lock();
        // A closed stdout (a pipe whose reader left) ends us quietly.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    Ok(())
}

fn short(value: &Value) -> &str {
    let text = value.as_str().unwrap_or("?");
    &text[..text.len().min(12)]
}

/// One human-readable line for an event.
fn describe(event: &Value) -> String {
    let conversation = short(&event["conversation"]);
    match event["type"].as_str().unwrap_or("?") {
        "message" => {
            let author = short(&event["author"]);
            let body = event["body"].as_str().unwrap_or("");
            let what = match event["kind"].as_str().unwrap_or("text") {
                "reply" => format!("(reply to {}) {body}", short(&event["reply_to"])),
                "edit" => format!("(edit of {}) {body}", short(&event["target"])),
                "delete" => format!("(deleted {})", short(&event["target"])),
                "reaction" => format!("(reacted {body} to {})", short(&event["target"])),
                _ => body.to_owned(),
            };
            format!(
                "[{}] {conversation} {} {author}: {what}",
                event["timestamp"],
                short(&event["id"])
            )
        }
        "member" => format!(
            "{conversation} member {} {} by {}",
            short(&event["account_id"]),
            event["action"].as_str().unwrap_or("?"),
            short(&event["by"])
        ),
        "profile" => format!("{conversation} profile changed by {}", short(&event["by"])),
        "sync" => format!(
            "{conversation} sync from {}: {} ({} commits), tips {}",
            short(&event["peer"]),
            event["state"].as_str().unwrap_or("?"),
            event["accepted"],
            event["tips"]
                .as_array()
                .map(|tips| tips.iter().map(short).collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        ),
        "connection" => format!(
            "peer {} (account {}) {}",
            short(&event["device_id"]),
            short(&event["account_id"]),
            event["state"].as_str().unwrap_or("?")
        ),
        "rejected" => format!(
            "{conversation} REFUSED by peer {}: our commit {} ({}): {}",
            short(&event["peer"]),
            short(&event["id"]),
            event["reason"].as_str().unwrap_or("?"),
            event["detail"].as_str().unwrap_or("")
        ),
        "clock" => match event["state"].as_str() {
            Some("skewed") => format!(
                "clock: this device's clock is off by {} s against {} peer(s)",
                event["offset_seconds"], event["peers"]
            ),
            _ => format!(
                "clock: back in step ({} s against {} peer(s))",
                event["offset_seconds"], event["peers"]
            ),
        },
        "health" => match event["state"].as_str() {
            Some("unhealthy") => format!(
                "{conversation} CANNOT WRITE ({}): {}",
                event["reason"].as_str().unwrap_or("?"),
                event["detail"].as_str().unwrap_or("")
            ),
            _ => format!("{conversation} writes again"),
        },
        "lagged" => format!(
            "lagged: {} events lost (reading too slowly)",
            event["dropped"]
        ),
        "omitted" => format!(
            "{conversation}: {} more commits arrived than described",
            event["omitted"]
        ),
        other => format!("{other}: {event}"),
    }
}
