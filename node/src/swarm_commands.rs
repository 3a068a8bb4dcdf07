//! The swarm and peer subcommands: thin clients of the daemon's API that
//! print text, or the API's JSON with `--json`.

use std::path::Path;

use anyhow::Context as _;
use serde_json::{json, Value};

use crate::client::ApiClient;
use crate::commands::Context;
use crate::data_dir::write_atomic;

fn client(ctx: &Context) -> anyhow::Result<ApiClient> {
    ApiClient::discover(ctx.data_dir.root())
}

fn print(ctx: &Context, value: &Value, text: impl FnOnce() -> String) {
    ctx.print(value.clone(), text);
}

/// `starling peer add ACCOUNT_ID@HOST:PORT`.
pub fn peer_add(ctx: &Context, peer: &str) -> anyhow::Result<()> {
    let answer = client(ctx)?.post("/v1/peers", json!({ "peer": peer }))?;
    print(ctx, &answer, || {
        format!(
            "keeping a connection to {}",
            answer["peer"].as_str().unwrap_or(peer)
        )
    });
    Ok(())
}

/// `starling swarm create [--title T] [--mode M]`.
pub fn swarm_create(ctx: &Context, title: Option<&str>, mode: Option<&str>) -> anyhow::Result<()> {
    let answer = client(ctx)?.post("/v1/swarms", json!({ "title": title, "mode": mode }))?;
    print(ctx, &answer, || {
        answer["id"].as_str().unwrap_or("?").to_owned()
    });
    Ok(())
}

/// `starling swarm list`.
pub fn swarm_list(ctx: &Context) -> anyhow::Result<()> {
    let answer = client(ctx)?.get("/v1/swarms")?;
    print(ctx, &answer, || {
        lines(&answer, |s| {
            format!(
                "{}  {} members  {}",
                s["id"].as_str().unwrap_or("?"),
                s["members"],
                s["title"].as_str().unwrap_or("")
            )
        })
    });
    Ok(())
}

/// `starling swarm invite CONV ACCOUNT_ID`.
pub fn swarm_invite(ctx: &Context, conversation: &str, account: &str) -> anyhow::Result<()> {
    let answer = client(ctx)?.post(
        &format!("/v1/swarms/{conversation}/invites"),
        json!({ "account_id": account }),
    )?;
    print(ctx, &answer, || format!("invited {account}"));
    Ok(())
}

/// `starling swarm remove CONV ACCOUNT_ID`.
pub fn swarm_remove(ctx: &Context, conversation: &str, account: &str) -> anyhow::Result<()> {
    let answer = client(ctx)?.post(
        &format!("/v1/swarms/{conversation}/remove"),
        json!({ "account_id": account }),
    )?;
    print(ctx, &answer, || format!("removed {account}"));
    Ok(())
}

/// `starling swarm leave CONV`.
pub fn swarm_leave(ctx: &Context, conversation: &str) -> anyhow::Result<()> {
    let answer = client(ctx)?.post(&format!("/v1/swarms/{conversation}/leave"), json!({}))?;
    print(ctx, &answer, || format!("left {conversation}"));
    Ok(())
}

/// `starling swarm invites`.
pub fn swarm_invites(ctx: &Context) -> anyhow::Result<()> {
    let answer = client(ctx)?.get("/v1/invites")?;
    print(ctx, &answer, || {
        lines(&answer, |i| {
            format!(
                "{}  from {}",
                i["conversation"].as_str().unwrap_or("?"),
                i["from"]
            )
        })
    });
    Ok(())
}

/// `starling swarm join CONV`.
pub fn swarm_join(ctx: &Context, conversation: &str) -> anyhow::Result<()> {
    let answer = client(ctx)?.post(&format!("/v1/swarms/{conversation}/join"), json!({}))?;
    print(ctx, &answer, || format!("joined {conversation}"));
    Ok(())
}

/// `starling swarm members CONV`.
pub fn swarm_members(ctx: &Context, conversation: &str) -> anyhow::Result<()> {
    let answer = client(ctx)?.get(&format!("/v1/swarms/{conversation}/members"))?;
    print(ctx, &answer, || {
        lines(&answer, |m| {
            format!(
                "{}  {}",
                m["account_id"].as_str().unwrap_or("?"),
                m["role"].as_str().unwrap_or("?")
            )
        })
    });
    Ok(())
}

/// `starling swarm allowed-signers CONV --out FILE`.
pub fn swarm_allowed_signers(ctx: &Context, conversation: &str, out: &Path) -> anyhow::Result<()> {
    let text = client(ctx)?.get_text(&format!("/v1/swarms/{conversation}/allowed-signers"))?;
    write_atomic(out, text.as_bytes(), 0o644)
        .with_context(|| format!("writing {}", out.display()))?;
    let answer = json!({ "out": out.display().to_string(), "signers": text.lines().count() });
    print(ctx, &answer, || {
        format!(
            "wrote {} signers to {}",
            text.lines().count(),
            out.display()
        )
    });
    Ok(())
}

/// `starling send CONV TEXT [--reply-to ID]`.
pub fn send(
    ctx: &Context,
    conversation: &str,
    text: &str,
    reply_to: Option<&str>,
) -> anyhow::Result<()> {
    let answer = client(ctx)?.post(
        &format!("/v1/swarms/{conversation}/messages"),
        json!({ "text": text, "reply_to": reply_to }),
    )?;
    print(ctx, &answer, || {
        answer["id"].as_str().unwrap_or("?").to_owned()
    });
    Ok(())
}

/// `starling messages CONV [--limit N] [--before ID]`: newest first in
/// JSON; oldest first (like a chat window) in text.
pub fn messages(
    ctx: &Context,
    conversation: &str,
    limit: Option<usize>,
    before: Option<&str>,
) -> anyhow::Result<()> {
    let mut query = Vec::new();
    if let Some(n) = limit {
        query.push(format!("limit={n}"));
    }
    if let Some(id) = before {
        query.push(format!("before={id}"));
    }
    let path = if query.is_empty() {
        format!("/v1/swarms/{conversation}/messages")
    } else {
        format!("/v1/swarms/{conversation}/messages?{}", query.join("&"))
    };
    let answer = client(ctx)?.get(&path)?;
    print(ctx, &answer, || {
        let mut out: Vec<String> = answer
            .as_array()
            .map(|a| a.iter().map(message_line).collect())
            .unwrap_or_default();
        out.reverse();
        out.join("\n")
    });
    Ok(())
}

fn message_line(m: &Value) -> String {
    let author = m["author"].as_str().unwrap_or("?");
    let id = m["id"].as_str().unwrap_or("?");
    let mut line = format!(
        "[{}] {} {}: ",
        m["timestamp"],
        &id[..id.len().min(12)],
        &author[..author.len().min(12)],
    );
    if let Some(reply_to) = m["reply_to"].as_str() {
        line.push_str(&format!(
            "(reply to {}) ",
            &reply_to[..reply_to.len().min(12)]
        ));
    }
    if m["deleted"].as_bool() == Some(true) {
        line.push_str("(deleted)");
    } else {
        line.push_str(m["body"].as_str().unwrap_or(""));
        if m["edited"].as_bool() == Some(true) {
            line.push_str(" (edited)");
        }
    }
    if let Some(reactions) = m["reactions"].as_array() {
        let shown: Vec<String> = reactions
            .iter()
            .map(|r| format!("{} {}", r["reaction"].as_str().unwrap_or("?"), r["count"]))
            .collect();
        if !shown.is_empty() {
            line.push_str(&format!("  [{}]", shown.join(", ")));
        }
    }
    line
}

/// `starling edit CONV MSG TEXT`.
pub fn edit(ctx: &Context, conversation: &str, message: &str, text: &str) -> anyhow::Result<()> {
    let answer = client(ctx)?.post(
        &format!("/v1/swarms/{conversation}/messages/{message}/edit"),
        json!({ "text": text }),
    )?;
    print(ctx, &answer, || {
        answer["id"].as_str().unwrap_or("?").to_owned()
    });
    Ok(())
}

/// `starling delete CONV MSG`.
pub fn delete(ctx: &Context, conversation: &str, message: &str) -> anyhow::Result<()> {
    let answer = client(ctx)?.post(
        &format!("/v1/swarms/{conversation}/messages/{message}/delete"),
        json!({}),
    )?;
    print(ctx, &answer, || {
        answer["id"].as_str().unwrap_or("?").to_owned()
    });
    Ok(())
}

/// `starling react CONV MSG REACTION`.
pub fn react(
    ctx: &Context,
    conversation: &str,
    message: &str,
    reaction: &str,
) -> anyhow::Result<()> {
    let answer = client(ctx)?.post(
        &format!("/v1/swarms/{conversation}/messages/{message}/reactions"),
        json!({ "reaction": reaction }),
    )?;
    print(ctx, &answer, || {
        answer["id"].as_str().unwrap_or("?").to_owned()
    });
    Ok(())
}

/// `starling swarm ban|unban CONV ACCOUNT_ID` (`action` is `ban` or `unban`).
pub fn swarm_vote(
    ctx: &Context,
    conversation: &str,
    account: &str,
    action: &str,
) -> anyhow::Result<()> {
    let answer = client(ctx)?.post(
        &format!("/v1/swarms/{conversation}/{action}"),
        json!({ "account_id": account }),
    )?;
    print(ctx, &answer, || {
        if answer["done"].as_bool() == Some(true) {
            format!("{action} of {account} done")
        } else {
            format!("voted to {action} {account}; waiting for more admins to vote")
        }
    });
    Ok(())
}

/// `starling swarm profile CONV [--title T] [--description D]`: shows the
/// profile, or changes it when given a field.
pub fn swarm_profile(
    ctx: &Context,
    conversation: &str,
    title: Option<&str>,
    description: Option<&str>,
) -> anyhow::Result<()> {
    let client = client(ctx)?;
    let path = format!("/v1/swarms/{conversation}/profile");
    if title.is_none() && description.is_none() {
        let answer = client.get(&path)?;
        print(ctx, &answer, || {
            format!(
                "title: {}\ndescription: {}",
                answer["title"].as_str().unwrap_or(""),
                answer["description"].as_str().unwrap_or("")
            )
        });
        return Ok(());
    }
    let answer = client.post(&path, json!({ "title": title, "description": description }))?;
    print(ctx, &answer, || {
        answer["id"].as_str().unwrap_or("?").to_owned()
    });
    Ok(())
}

fn lines(value: &Value, line: impl Fn(&Value) -> String) -> String {
    value
        .as_array()
        .map(|a| a.iter().map(line).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}
